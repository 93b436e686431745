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

from tickray.stream.keys import FEATURES_HISTORY, FEATURES_KEY


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


DOC_KEYS = ("ts_ns", "features", "feature_set_version", "published_at")  # what a stream actor publishes


def doc_problem(doc) -> str | None:
    """Why a feature document cannot be used (None when it can)."""
    if not isinstance(doc, dict):
        return f"a {type(doc).__name__}, not an object"
    missing = [k for k in DOC_KEYS if k not in doc]
    return f"it lacks {', '.join(missing)} (not written by a tickray stream actor?)" if missing else None


def _checked_latest(symbol: str, doc, names: list[str], feature_set_version: str) -> dict:
    """The latest doc of a symbol, or FeatureError when it is not the model's features."""
    bad = doc_problem(doc)
    if bad:
        raise FeatureError(409, f"{symbol}: live features unusable: {bad}")
    if doc.get("feature_set_version") != feature_set_version:
        raise FeatureError(409, f"{symbol}: live features are set {doc.get('feature_set_version')!r}, the "
                                f"model was trained on {feature_set_version!r}")
    missing = [n for n in names if n not in doc["features"]]
    if missing:
        raise FeatureError(409, f"{symbol}: live features lack {', '.join(missing[:5])} the model reads")
    return doc


def _num(v) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class Reading:
    """One symbol's latest row (checked) and the raw rows before it, parsed only when a model needs them."""
    symbol: str
    latest: dict
    earlier: list[bytes]
    names: list[str]

    @property
    def ts_ns(self) -> int:
        return int(self.latest["ts_ns"])

    @property
    def age_s(self) -> float:
        return time.time() - float(self.latest["published_at"])

    def series(self) -> Series:
        version = self.latest["feature_set_version"]
        by_ts = {self.ts_ns: self.latest}
        for raw in self.earlier:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # not a row of this series: its second counts as missing
            if doc_problem(doc) is None and doc["feature_set_version"] == version:  # others are not this series
                by_ts.setdefault(int(doc["ts_ns"]), doc)
        ts = np.array(sorted(t for t in by_ts if t <= self.ts_ns), np.int64)
        x = np.array([[_num(by_ts[t]["features"].get(n)) for n in self.names] for t in ts], np.float32)
        return Series(self.symbol, ts, x)


class LiveFeatures:
    def __init__(self, redis_async, names: list[str], feature_set_version: str):
        self.redis, self.names, self.version = redis_async, names, feature_set_version

    async def read(self, symbols: list[str], window: int) -> dict[str, Reading]:
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
            try:
                doc = orjson.loads(latest)
            except orjson.JSONDecodeError:
                raise FeatureError(409, f"{s}: live features unusable: not JSON") from None
            earlier = [fields[b"doc"] for _, fields in replies[i * step + 1]] if window > 1 else []
            out[s] = Reading(s, _checked_latest(s, doc, self.names, self.version), earlier, self.names)
        return out


async def freshness(redis_async, stale_after_s: float) -> dict[str, dict]:
    """Every published symbol's feature age and stale flag, or why its row is unusable (for health)."""
    fresh = {}
    async for key in redis_async.scan_iter(match=FEATURES_KEY.format(symbol="*"), count=1000):
        symbol = key.decode().rsplit(":", 1)[1]
        if key.decode() != FEATURES_KEY.format(symbol=symbol):
            continue  # the history streams share the prefix
        raw = await redis_async.get(key)
        if raw is None:
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        problem = doc_problem(doc) if doc is not None else "not JSON"
        if problem:
            fresh[symbol] = {"unusable": problem}
            continue
        age = time.time() - doc["published_at"]
        fresh[symbol] = {"age_s": round(age, 3), "stale": age > stale_after_s}
    return fresh
