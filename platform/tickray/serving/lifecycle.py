"""The versions a gateway replica serves and how they change: the champion, and the challenger that takes
``canary_share`` of the requests, both following the registry's aliases; when weights follow realised
accuracy, each version's live predictions are scored here against the mids published after them.

A new version is loaded beside the old one (in the gateway and in every family deployment) and swapped in
only when ready, so no request fails or waits on the registry.
"""

from __future__ import annotations

import asyncio
import logging
import random

import orjson
from ray.serve.handle import DeploymentHandle

from tickray.serving.config import ServeConfig
from tickray.serving.features import doc_problem
from tickray.serving.models import ModelVersions, bases_of
from tickray.serving.realised import RealisedAccuracy, RecentMids
from tickray.stream.keys import FEATURES_HISTORY
from tickray.training import registry
from tickray.training.ensemble import Ensemble

log = logging.getLogger("ray.serve")


class ServedVersions:
    def __init__(self, cfg: ServeConfig, families: dict[str, DeploymentHandle], redis_async):
        self.cfg, self.handles, self.redis = cfg, families, redis_async
        self.versions = ModelVersions(cfg.tracking_uri, cfg.model)
        aliases = self.versions.aliases()
        self.live: dict[str, registry.LoadedModel | None] = {
            registry.CHAMPION: self.versions.champion_now(),
            registry.CHALLENGER: (self.versions.get_now(aliases[registry.CHALLENGER])
                                  if cfg.canary_share > 0 and aliases[registry.CHALLENGER] else None)}
        self._poller: asyncio.Task | None = None
        self._realised: dict[str, RealisedAccuracy] = {}  # version → its families' scored live predictions
        self._mids = RecentMids(keep=3600)  # the published mids the predictions are scored against
        self._scorer: asyncio.Task | None = None

    @property
    def champion(self) -> registry.LoadedModel:
        return self.live[registry.CHAMPION]

    def served(self) -> dict[str, registry.LoadedModel]:
        """alias → version for the aliases being served."""
        return {a: m for a, m in self.live.items() if m is not None}

    def pick(self) -> tuple[str, registry.LoadedModel]:
        """The alias and version that answer the next request (the canary draw)."""
        challenger = self.live[registry.CHALLENGER]
        if challenger is not None and random.random() < self.cfg.canary_share:
            return registry.CHALLENGER, challenger
        return registry.CHAMPION, self.live[registry.CHAMPION]

    def follow(self) -> None:
        """Keep the background tasks running (started from a request: the replica's loop runs by then)."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_aliases())
        if self.cfg.realised_weights and (self._scorer is None or self._scorer.done()):
            self._scorer = asyncio.get_running_loop().create_task(self._score_realised())

    async def _poll_aliases(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_poll_s)
            try:
                aliases = await asyncio.to_thread(self.versions.aliases)
                for alias, version in aliases.items():
                    if alias == registry.CHALLENGER and (self.cfg.canary_share == 0 or version is None):
                        self.live[alias] = None
                        continue
                    current = self.live[alias]
                    if version is None or (current is not None and current.version == version):
                        continue  # a champion alias removed by mistake keeps the last one serving
                    loaded = await self.versions.get(version)
                    await asyncio.gather(*(h.load.remote(version) for f, h in self.handles.items()
                                           if f in bases_of(loaded)))
                    self.live[alias] = loaded  # swapped only when ready: requests never wait on a load
                    log.info("%s %s now v%s", self.cfg.model, alias, version)
            except Exception as e:  # noqa: BLE001 (the registry being away must not stop serving)
                log.warning("alias poll of %s failed: %s", self.cfg.model, e)

    # ---- realised accuracy ------------------------------------------------------------------------

    def tracker(self, loaded: registry.LoadedModel) -> RealisedAccuracy | None:
        """The version's realised-accuracy record, when weights follow it (ensembles only)."""
        rw = self.cfg.realised_weights
        if rw is None or not isinstance(loaded.model.model, Ensemble):
            return None
        if loaded.version not in self._realised:
            self._realised[loaded.version] = RealisedAccuracy(list(bases_of(loaded)), loaded.horizons, rw.window,
                                                              rw.min_scored)
        return self._realised[loaded.version]

    async def _score_realised(self) -> None:
        """Score the live predictions whose horizons have passed, from the published rows' mids."""
        while True:
            await asyncio.sleep(self.cfg.realised_weights.score_every_s)
            try:
                served = {m.version for m in self.served().values()}
                for version in [v for v in self._realised if v not in served]:
                    del self._realised[version]
                trackers = list(self._realised.values())
                for symbol in {s for t in trackers for s, p in t.pending.items() if p}:
                    oldest = min(min(t.pending[symbol]) for t in trackers if t.pending.get(symbol))
                    await self._read_mids(symbol, max(self._mids.newest(symbol), oldest - 1))
                    ts, mid = self._mids.series(symbol)  # once for every version served
                    for t in trackers:
                        t.score(symbol, ts, mid)
            except Exception as e:  # noqa: BLE001 (Redis away or a foreign row: scoring waits, serving goes on)
                log.warning("scoring realised accuracy failed: %s", e)

    async def _read_mids(self, symbol: str, after_ts: int, page: int = 200) -> None:
        """The symbol's rows published after ``after_ts`` from its feature history, newest first."""
        got, end = [], "+"
        while True:
            entries = await self.redis.xrevrange(FEATURES_HISTORY.format(symbol=symbol), max=end, count=page)
            for _, f in entries:
                try:
                    doc = orjson.loads(f.get(b"doc", b"{}"))
                except orjson.JSONDecodeError:
                    continue
                if doc_problem(doc) is not None:
                    continue  # not a stream actor's row (LiveFeatures skips it too)
                if doc["ts_ns"] <= after_ts:
                    return self._mids.add(symbol, got)
                if isinstance(doc.get("mid"), float) and doc["mid"] > 0:
                    got.append((doc["ts_ns"], doc["mid"]))
            if len(entries) < page:
                return self._mids.add(symbol, got)
            end = "(" + entries[-1][0].decode()
