"""Predictions of the served versions: each base family's answer (in the gateway's process or through its
own deployment), combined by the version's meta-learner, from a symbol's live features or from explicit
rows. A family that fails or cannot see enough seconds degrades the answer, and the answer says why.

A live prediction is computed once per version and published feature row: callers asking before the
next row (a second later) get the same answer, each with its own feature age and stale flag.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import numpy as np
from ray.serve.handle import DeploymentHandle

from tickray.serving.api import ApiError, FeatureRow
from tickray.serving.config import ServeConfig
from tickray.serving.features import FeatureError, LiveFeatures, Reading
from tickray.serving.lifecycle import ServedVersions
from tickray.serving.metrics import ServeMetrics
from tickray.serving.models import Inputs, bases_of, combine
from tickray.training import registry

NS = 1_000_000_000
FAILED = "failed:"  # how a family that could not answer is reported (never remembered as an answer)
UNDEFINED = "features"  # the key under `degraded` naming the features a row lacked (the others are families)
RECENT_PREDICTIONS = 4096  # live predictions kept per gateway replica, keyed by version and published row
BOOK_UNSYNCED = "book_unsynced"  # the reason under `degraded["book"]` for a row built on a book being rebuilt
UNSYNCED_WHY = "the stream's order book is being rebuilt after a gap; the row carries the book from before it"


def book_synced(r: Reading) -> bool:
    """Whether the row's book was the venue's when the stream published it (rows from before the stream
    said so count as synced)."""
    return r.latest.get("book_synced", True) is not False


def _names(loaded: registry.LoadedModel, which: np.ndarray) -> str:
    """The features flagged in ``which`` (F,), the first six named."""
    names = [loaded.features[k] for k in np.flatnonzero(which)]
    return f"{', '.join(names[:6])}{' …' if len(names) > 6 else ''}"


def _last_line(e: BaseException) -> str:
    """The line of an error that says what happened: the last one, never a native backtrace frame."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.lstrip().startswith("[bt]")]
    return lines[-1][:200] if lines else ""


class Predictor:
    def __init__(self, cfg: ServeConfig, families: dict[str, DeploymentHandle], served: ServedVersions,
                 redis_async, metrics: ServeMetrics):
        self.cfg, self.handles, self.served, self.redis, self.metrics = cfg, families, served, redis_async, metrics
        self._recent: OrderedDict[tuple, dict] = OrderedDict()

    async def _base(self, loaded: registry.LoadedModel, inputs: Inputs, undefined: np.ndarray) -> tuple[dict, dict]:
        """Each family's predictions for the targets (NaN where it could not answer) and why not. A family
        that reads missing values (``reads_missing``: XGBoost's trees send them down the branch learned for
        them) answers for a row with some features undefined; the others leave such rows out."""
        m = inputs.targets.size
        base, why = {}, {}
        calls = {}
        for fam, model in bases_of(loaded).items():
            missing_ok = getattr(model, "reads_missing", False) and model.window == 1
            ends = inputs.targets[~undefined.all(axis=1)] if missing_ok else inputs.ends_for(model.window)
            if ends.size < m:
                names = _names(loaded, undefined.any(axis=0))
                why[fam] = (f"features undefined: {names} (a stream warming up?)" if names else
                            f"needs {model.window} consecutive seconds of features")
            if ends.size == 0:
                continue
            if fam in self.handles:
                calls[fam] = (ends, self.handles[fam].predict.remote(loaded.version, inputs.x, ends))
            else:
                calls[fam] = (ends, model.predict(inputs.x, ends))
        async def answer(call):
            return call if isinstance(call, np.ndarray) else await asyncio.wait_for(call, self.cfg.family_timeout_s)

        results = await asyncio.gather(*(answer(call) for _, call in calls.values()), return_exceptions=True)
        pos = {int(t): i for i, t in enumerate(inputs.targets)}
        for (fam, (ends, _)), p in zip(calls.items(), results):
            if isinstance(p, BaseException):  # one family failing degrades the answer, never fails it
                why[fam] = f"{FAILED} {type(p).__name__} {_last_line(p)}".strip()
                continue
            full = np.full((m, len(loaded.horizons)), np.nan)
            full[[pos[int(e)] for e in ends]] = p
            base[fam] = full
        return base, why

    async def _predict(self, loaded: registry.LoadedModel, alias: str, inputs: Inputs,
                       live: list[Reading] | None = None) -> list[dict]:
        """Predictions for the targets; ``live``: the readings they are the latest rows of (scored later)."""
        t0 = time.perf_counter()
        undefined = np.isnan(inputs.x[inputs.targets])  # (targets, F)
        base, why = await self._base(loaded, inputs, undefined)
        t1 = time.perf_counter()
        self.metrics.stage_ms.observe((t1 - t0) * 1e3, tags={"stage": "models"})
        if not base:
            raise ApiError(503, "no model could answer: " + "; ".join(f"{f} {w}" for f, w in why.items()))
        tracker = self.served.tracker(loaded)
        weights = tracker.weights() if tracker else None
        p, conf = combine(loaded, inputs.x[inputs.targets], base, weights)
        conf = conf * (1 - undefined.mean(axis=1))[:, None]  # what was said from fewer features says less
        self.metrics.stage_ms.observe((time.perf_counter() - t1) * 1e3, tags={"stage": "combine"})
        if tracker and live:
            nan = np.full((inputs.targets.size, len(loaded.horizons)), np.nan)
            probs = np.stack([base.get(f, nan) for f in tracker.families], axis=1)  # (targets, families, H)
            for r, pr in zip(live, probs):
                if isinstance(r.latest.get("mid"), float) and book_synced(r):  # scored only on a true book
                    tracker.record(r.symbol, r.ts_ns, r.latest["mid"], pr)
        out = []
        for i in range(inputs.targets.size):
            missing = {f: w for f, w in why.items() if f not in base or np.isnan(base[f][i]).all()}
            if undefined[i].any():  # answered all the same by the families that read missing values
                missing[UNDEFINED] = f"undefined, taken as missing: {_names(loaded, undefined[i])}"
            row = {"horizons": {f"{h}s": {"prob_up": round(float(p[i, j]), 6), "confidence": round(float(conf[i, j]), 6)}
                                for j, h in enumerate(loaded.horizons)},
                   "model_version": loaded.version, "alias": alias}
            if weights is not None:
                for j, h in enumerate(loaded.horizons):
                    row["horizons"][f"{h}s"]["combined_by"] = "stacked" if np.isnan(weights[0, j]) else "realised"
            if missing:
                row["degraded"] = missing
            out.append(row)
        return out

    def _answered(self, loaded: registry.LoadedModel, t0: float) -> None:
        """Per version, so that champion and challenger compare: computed or remembered answers alike."""
        self.metrics.latency.observe((time.perf_counter() - t0) * 1e3,
                             tags={"model": loaded.name, "model_version": loaded.version})

    async def _read(self, loaded: registry.LoadedModel, symbols: list[str]) -> dict[str, Reading]:
        t0 = time.perf_counter()
        window = max(m.window for m in bases_of(loaded).values())
        try:
            readings = await LiveFeatures(self.redis, loaded.features, loaded.model.feature_set_version).read(
                symbols, window)
        except FeatureError as e:
            raise ApiError(e.status, str(e)) from None
        self.metrics.stage_ms.observe((time.perf_counter() - t0) * 1e3, tags={"stage": "features"})
        return readings

    async def _live_predictions(self, loaded: registry.LoadedModel, alias: str,
                                readings: list[Reading]) -> list[dict]:
        """A prediction per symbol's latest row: computed once per version and published row, since every
        caller asking before the next row gets the same answer."""
        def key(r: Reading) -> tuple:
            return loaded.version, r.symbol, r.ts_ns, r.latest["published_at"]  # a row published again: anew

        found = {key(r): self._recent[key(r)] for r in readings if key(r) in self._recent}
        todo = [r for r in readings if key(r) not in found]
        if found:
            self.metrics.cache.inc(len(found), tags={"result": "hit"})
        if todo:
            self.metrics.cache.inc(len(todo), tags={"result": "miss"})
            parts = [r.series() for r in todo]
            x = np.concatenate([v.x for v in parts])
            ts = np.concatenate([v.ts_ns for v in parts])
            sym = np.concatenate([np.full(v.ts_ns.size, v.symbol, object) for v in parts])
            ends = np.cumsum([v.ts_ns.size for v in parts]) - 1
            preds = await self._predict(loaded, alias, Inputs(x, ts, sym, ends), live=todo)
            for r, pred in zip(todo, preds):
                found[key(r)] = pred
                if not any(w.startswith(FAILED) for w in pred.get("degraded", {}).values()):  # not a passing fault
                    self._recent[key(r)] = pred
            while len(self._recent) > RECENT_PREDICTIONS:
                self._recent.popitem(last=False)
        # copies: the caller marks its own answer (staleness, alias)
        return [{**pred, "alias": alias, "horizons": {h: dict(v) for h, v in pred["horizons"].items()}}
                for pred in (found[key(r)] for r in readings)]

    async def from_symbols(self, symbols: list[str], announced_at: bool = False) -> dict:
        """Predictions from the newest live row of each symbol; ``announced_at``: with the stream actor's
        times of each row (``published_at``, ``tick_received_at``), as the WebSocket pushes them."""
        symbols = list(dict.fromkeys(s.upper() for s in symbols))
        if len(symbols) > self.cfg.max_symbols:
            raise ApiError(422, f"symbols: {len(symbols)} symbols, at most {self.cfg.max_symbols} per request")
        alias, loaded = self.served.pick()
        t0 = time.perf_counter()
        readings = await self._read(loaded, symbols)
        stale = {s: r.age_s for s, r in readings.items() if r.age_s > self.cfg.stale_after_s}
        unsynced = [s for s, r in readings.items() if not book_synced(r)]
        if (stale or unsynced) and self.cfg.stale_policy == "reject":
            said = []
            if stale:
                said.append("stale features: " + ", ".join(f"{s} {a:.1f}s old" for s, a in stale.items())
                            + f" (limit {self.cfg.stale_after_s:g}s); is its stream actor running?")
            if unsynced:
                said.append(f"{BOOK_UNSYNCED}: {', '.join(unsynced)}: {UNSYNCED_WHY}")
            raise ApiError(503, "; ".join(said))
        parts = [readings[s] for s in symbols]
        preds = await self._live_predictions(loaded, alias, parts)
        for r, pred in zip(parts, preds):
            pred.update(symbol=r.symbol, ts_ns=r.ts_ns, feature_age_s=round(r.age_s, 3), stale=r.symbol in stale)
            if announced_at:
                pred.update(published_at=r.latest["published_at"], tick_received_at=r.latest.get("tick_received_at"))
            if r.symbol in unsynced:
                pred["degraded"] = {**pred.get("degraded", {}), "book": f"{BOOK_UNSYNCED}: {UNSYNCED_WHY}"}
            if r.symbol in stale or r.symbol in unsynced:
                for h in pred["horizons"].values():
                    h["confidence"] = 0.0
        self._answered(loaded, t0)
        return {"model": loaded.name, "model_version": loaded.version, "predictions": preds}

    async def from_rows(self, rows: list[FeatureRow]) -> dict:
        alias, loaded = self.served.pick()
        t0 = time.perf_counter()
        names = loaded.features
        for i, row in enumerate(rows):
            missing, extra = set(names) - row.features.keys(), row.features.keys() - set(names)
            if missing or extra:
                raise ApiError(422, f"rows.{i}.features: missing {sorted(missing)[:5]}, unknown {sorted(extra)[:5]} "
                                    f"(model {loaded.name} v{loaded.version}, feature set "
                                    f"{loaded.model.feature_set_version})")
        # Without ts_ns a row stands alone: seconds 2 apart never form a window.
        ts = np.array([r.ts_ns if r.ts_ns is not None else i * 2 * NS for i, r in enumerate(rows)], np.int64)
        sym = np.array([r.symbol.upper() for r in rows], object)
        order = np.lexsort((ts, sym))
        x = np.array([[rows[k].features[n] for n in names] for k in order], np.float32)
        preds = await self._predict(loaded, alias, Inputs(x, ts[order], sym[order], np.arange(len(rows))))
        out = [None] * len(rows)
        for pos, k in enumerate(order):
            out[k] = {**preds[pos], "row": int(k), "symbol": str(sym[k]), "ts_ns": int(ts[k])}
        self._answered(loaded, t0)
        return {"model": loaded.name, "model_version": loaded.version, "predictions": out}
