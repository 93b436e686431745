"""The served model outside of Serve: registry versions loaded once each, the base models of a version,
and how their predictions combine (the stacked meta-learner, calibration and confidence), with any base
model missing.

A registered ensemble is served as its base families plus its meta-learner; any other registered model
(one family) is served as itself.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from mlflow.tracking import MlflowClient

from tickray.errors import ConfigError
from tickray.features.windows import complete_windows
from tickray.serving.realised import pool
from tickray.training import registry
from tickray.training.ensemble import Ensemble


def bases_of(loaded: registry.LoadedModel) -> dict:
    """family → fitted model with ``predict(x, idx)`` and ``window``."""
    inner = loaded.model.model
    return dict(inner.bases) if isinstance(inner, Ensemble) else {inner.family: inner}


class ModelVersions:
    """Versions of one registered model, each loaded once (in a thread, so the replica keeps serving
    while a new version loads); the ``keep`` most recently used stay in memory."""

    def __init__(self, tracking_uri: str, name: str, keep: int = 3, device: str = "cpu"):
        self.tracking_uri, self.name, self.keep, self.device = tracking_uri, name, keep, device
        self._loaded: OrderedDict[str, registry.LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}

    def aliases(self) -> dict[str, str | None]:
        client = MlflowClient(self.tracking_uri)
        return {a: registry.alias_version(client, self.name, a) for a in (registry.CHAMPION, registry.CHALLENGER)}

    def _load(self, version: str) -> registry.LoadedModel:
        loaded = registry.load_version(self.tracking_uri, self.name, version)
        if self.device != "cpu":
            for model in bases_of(loaded).values():
                if hasattr(model, "to"):
                    model.to(self.device)
        return loaded

    def champion_now(self) -> registry.LoadedModel:
        """Blocking: the current champion, or a ConfigError when the model has none."""
        version = self.aliases()[registry.CHAMPION]
        if version is None:
            raise ConfigError(f"{self.name} has no '{registry.CHAMPION}' version in the registry at {self.tracking_uri}")
        return self.get_now(version)

    def get_now(self, version: str) -> registry.LoadedModel:
        """Blocking: for a replica's constructor."""
        if version not in self._loaded:
            self._remember(version, self._load(version))
        return self._loaded[version]

    async def get(self, version: str) -> registry.LoadedModel:
        if version in self._loaded:
            self._loaded.move_to_end(version)
            return self._loaded[version]
        fut = self._loading.get(version)
        if fut is None:  # the first caller loads; the others wait for the same load
            fut = self._loading[version] = asyncio.ensure_future(asyncio.to_thread(self._load, version))
            fut.add_done_callback(lambda _: self._loading.pop(version, None))
        loaded = await asyncio.shield(fut)
        self._remember(version, loaded)
        return loaded

    def _remember(self, version: str, loaded: registry.LoadedModel) -> None:
        self._loaded[version] = loaded
        self._loaded.move_to_end(version)
        while len(self._loaded) > self.keep:
            self._loaded.popitem(last=False)


@dataclass
class Inputs:
    """Feature rows sorted by (symbol, ts) and the rows to predict (``targets``)."""
    x: np.ndarray  # (n, F) float32
    ts: np.ndarray  # (n,) int64 ns
    symbol: np.ndarray  # (n,) object
    targets: np.ndarray  # (m,) row indices

    def ends_for(self, window: int) -> np.ndarray:
        """Targets whose window of ``window`` consecutive seconds is complete (the rest cannot be predicted
        by a model reading that window)."""
        ok = complete_windows(self.x, self.ts, self.symbol, window)
        return self.targets[ok[self.targets]]


def combine(loaded: registry.LoadedModel, x: np.ndarray, base: dict[str, np.ndarray],
            realised: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, confidence), each (m, H), from base predictions (m, H) per family, NaN where a
    family could not answer for a row; ``x`` is the (m, F) target rows (the shock detector reads them).
    ``realised``: (families, H) weights that follow realised accuracy (RealisedAccuracy.weights), which
    pool the horizons they cover instead of the meta-learner. The confidence of a row is scaled by the
    share of the combining weight that answered."""
    inner = loaded.model.model
    if not isinstance(inner, Ensemble):
        p = next(iter(base.values()))
        return p, np.nan_to_num(np.abs(2 * p - 1))
    raw = inner.combine(base)
    p = np.column_stack([c(raw[:, j]) for j, c in enumerate(inner.calibrators)])
    cover = inner.coverage(base)
    if realised is not None and not np.isnan(realised).all():
        ready = ~np.isnan(realised[0])
        pooled, pooled_cover = pool(base, list(inner.bases), np.nan_to_num(realised))
        p[:, ready], cover[:, ready] = pooled[:, ready], pooled_cover[:, ready]
    conf = np.abs(2 * p - 1) * cover
    if inner.shock is not None:
        conf = conf * inner.shock.normality(x)[:, None]
    return p, conf


def describe(loaded: registry.LoadedModel) -> dict:
    """What /v1/models shows of a version: its families and windows, the meta-learner's weights."""
    inner = loaded.model.model
    out = {"version": loaded.version, "feature_set_version": loaded.model.feature_set_version,
           "features": loaded.features, "horizons_s": loaded.horizons,
           "families": {f: {"window_s": m.window} for f, m in bases_of(loaded).items()},
           "git_commit": loaded.tags.get("git_commit", ""), "data_range": loaded.tags.get("data_range", "")}
    if isinstance(inner, Ensemble):
        out["weights"] = {f"{h}s": {f: round(float(w), 4) for f, w in zip(inner.bases, meta.coef_[0])}
                          for h, meta in zip(loaded.horizons, inner.meta)}
    return out
