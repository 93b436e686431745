"""Live features for serving, as the stream actors publish them in Redis: each symbol's latest row, and
the run of earlier seconds a sequence model reads (from the capped history stream), with their age.

The names and the feature-set version are checked against the model's: a mismatch is an error, never a
silent wrong prediction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import orjson

from tickray.stream.actor import FEATURES_HISTORY, FEATURES_KEY


class FeatureError(Exception):
    """Live features that cannot feed the model; ``status`` is the HTTP answer (404 unknown symbol, 409
    another feature set)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Series:
    """One symbol's rows, oldest first, ending with the latest: what a window of any length needs."""
    symbol: str
    ts_ns: np.ndarray  # (n,) int64
    x: np.ndarray  # (n, F) float32, in the model's feature order
    published_at: float  # wall-clock time the latest row was published

    @property
    def age_s(self) -> float:
        return time.time() - self.published_at


DOC_KEYS = ("ts_ns", "features", "feature_set_version", "published_at")  # what a stream actor publishes


def doc_problem(doc) -> str | None:
    """Why a feature document cannot be used (None when it can)."""
    if not isinstance(doc, dict):
        return f"a {type(doc).__name__}, not an object"
    missing = [k for k in DOC_KEYS if k not in doc]
    return f"it lacks {', '.join(missing)} (not written by a tickray stream actor?)" if missing else None


def rows_from_docs(symbol: str, docs: list[dict], names: list[str], feature_set_version: str) -> Series:
    """Docs of one symbol (any order) → a Series; FeatureError when they are not the model's features."""
    bad = next((p for p in map(doc_problem, docs) if p), None)
    if bad:
        raise FeatureError(409, f"{symbol}: live features unusable: {bad}")
    latest = max(docs, key=lambda d: d["ts_ns"])
    if latest.get("feature_set_version") != feature_set_version:
        raise FeatureError(409, f"{symbol}: live features are set {latest.get('feature_set_version')!r}, the "
                                f"model was trained on {feature_set_version!r}")
    missing = [n for n in names if n not in latest["features"]]
    if missing:
        raise FeatureError(409, f"{symbol}: live features lack {', '.join(missing[:5])} the model reads")
    by_ts = {d["ts_ns"]: d for d in docs if d.get("feature_set_version") == feature_set_version}
    ts = np.array(sorted(by_ts), np.int64)
    x = np.array([[_num(by_ts[t]["features"].get(n)) for n in names] for t in ts], np.float32)
    return Series(symbol, ts, x, float(latest["published_at"]))


def _num(v) -> float:
    return float("nan") if v is None else float(v)


class LiveFeatures:
    def __init__(self, redis_async, names: list[str], feature_set_version: str):
        self.redis, self.names, self.version = redis_async, names, feature_set_version

    async def series(self, symbols: list[str], window: int) -> dict[str, Series]:
        """Each symbol's latest row and, when ``window`` > 1, the window - 1 rows before it: one round trip."""
        async with self.redis.pipeline(transaction=False) as p:
            for s in symbols:
                p.get(FEATURES_KEY.format(symbol=s))
                if window > 1:
                    p.xrevrange(FEATURES_HISTORY.format(symbol=s), count=window)
            replies = await p.execute()
        out, step = {}, 2 if window > 1 else 1
        for i, s in enumerate(symbols):
            latest = replies[i * step]
            if latest is None:
                raise FeatureError(404, f"no live features for symbol {s!r}: no stream actor publishes it")
            docs = [orjson.loads(latest)]
            if window > 1:
                docs += [orjson.loads(fields[b"doc"]) for _, fields in replies[i * step + 1]]
            out[s] = rows_from_docs(s, docs, self.names, self.version)
        return out
