"""The layered bar cache: one call, ``get_bars(symbols, timeframe, start, end)``.

Bars are cached in chunks of whole bars (about a day of them: 1,440 1m bars, 24 1h bars, 6 4h bars, one
1d bar) keyed by (symbol, timeframe, chunk). A chunk is looked up in

- L1, this process's memory: an LRU bounded in bytes;
- L2, Redis, shared by every node of the cluster: Arrow IPC, zstd-compressed, with a TTL per timeframe;
- L3, the Parquet lake: a 1m chunk is read from the lake's 1m bars; any other timeframe is resampled
  from the 1m chunks it covers, which come through the cache themselves;
- and, given a :class:`~tickray.collector.Collector`, the venue: before L3 is read, the closed minutes of
  the missing chunks that the lake lacks are fetched into it (only those, and each range once).

What a lower layer finds is written back up. A chunk that reaches past the newest minute it holds may
still grow, so it is cached briefly (``open_ttl_s``) instead of for its timeframe's TTL. If Redis fails
the call still answers from L1 and L3; the failure is counted (``l2_errors``) and logged, and L2 is
skipped for ``l2_retry_s`` before it is tried again (so a dead Redis costs one timeout, not one per chunk).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import redis

from tickray.bars import MINUTE_NS, RESAMPLED, lake_minutes, resample, timeframe_minutes
from tickray.collector import Collector
from tickray.schema import BAR

log = logging.getLogger(__name__)
CHUNK_MINUTES = 1440  # about a day of bars per chunk, in whole bars
KEY = "tickray:bars:{symbol}:{minutes}m:{chunk}"


def _to_ipc(t: pa.Table, still_open: bool) -> bytes:
    t = t.replace_schema_metadata({b"open": b"1" if still_open else b"0"})  # for the L1 copy's lifetime
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> tuple[pa.Table, bool]:
    t = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    return t.replace_schema_metadata(None), (t.schema.metadata or {}).get(b"open") == b"1"


@dataclass
class CacheStats:
    # chunk lookups answered by: l1, l2, "resampled" (a higher timeframe built from 1m chunks) or
    # "lake" (a 1m chunk read from the lake)
    found: Counter = field(default_factory=Counter)
    l1_evictions: int = 0
    l2_errors: int = 0

    def as_dict(self, l1_bytes: int) -> dict:
        total = sum(self.found.values())
        return {
            "lookups": total, **{k: self.found[k] for k in ("l1", "l2", "resampled", "lake")},
            **{f"{k}_hit_ratio": (self.found[k] / total if total else 0.0) for k in ("l1", "l2")},
            "fetches_saved": self.found["l1"] + self.found["l2"],  # lookups that read neither lake nor venue
            "l1_bytes": l1_bytes, "l1_evictions": self.l1_evictions, "l2_errors": self.l2_errors,
        }


class BarCache:
    def __init__(self, lake_root: Path, redis_client: redis.Redis | None = None, l1_max_bytes: int = 256 * 2**20,
                 ttl_s: dict[int, int] | None = None, default_ttl_s: int = 86_400, open_ttl_s: int = 30,
                 l2_retry_s: float = 30.0, collector: Collector | None = None):
        self.lake_root = Path(lake_root)
        self.collector = collector
        self.redis = redis_client
        self.l1_max_bytes = l1_max_bytes
        self.ttl_s = ttl_s or {1: 6 * 3600}  # 1m chunks are the bulk: a shorter life in Redis
        self.default_ttl_s, self.open_ttl_s = default_ttl_s, open_ttl_s
        self.l2_retry_s = l2_retry_s
        self._l2_down_until = 0.0
        self._l1: OrderedDict[str, tuple[pa.Table, float]] = OrderedDict()  # key -> (bars, expires at)
        self._l1_bytes = 0
        self.stats = CacheStats()

    # --- the one call ----------------------------------------------------------------------------
    def get_bars(self, symbols: list[str], timeframe: str, start_ns: int, end_ns: int) -> pa.Table:
        """Bars of ``timeframe`` whose start lies in [start, end), for each symbol, in time order."""
        return self._get(symbols, timeframe_minutes(timeframe), start_ns, end_ns, collect=True)

    def metrics(self) -> dict:
        m = self.stats.as_dict(self._l1_bytes)
        m["l2_available"] = self._l2_up()
        if self.collector is not None:
            m["venue_requests"], m["venue_bars"] = self.collector.total.requests, self.collector.total.rows
        return m

    # --- layers ------------------------------------------------------------------------------------
    def _get(self, symbols: list[str], minutes: int, start_ns: int, end_ns: int, collect: bool) -> pa.Table:
        step, per_chunk = minutes * MINUTE_NS, self._bars_per_chunk(minutes)
        first, last = start_ns // step // per_chunk, (end_ns - 1) // step // per_chunk
        keys = [(s.upper(), c) for s in symbols for c in range(first, last + 1)]
        chunks = self._chunks(keys, minutes, collect)
        t = pa.concat_tables([chunks[k] for k in keys]) if keys else RESAMPLED.empty_table()
        ts = pc.cast(t["ts"], pa.int64())
        return t.filter(pc.and_(pc.greater_equal(ts, start_ns), pc.less(ts, end_ns)))

    @staticmethod
    def _bars_per_chunk(minutes: int) -> int:
        return max(1, CHUNK_MINUTES // minutes)

    def _key(self, symbol: str, minutes: int, chunk: int) -> str:
        return KEY.format(symbol=symbol, minutes=minutes, chunk=chunk)

    def _span(self, minutes: int, chunk: int) -> tuple[int, int]:
        width = self._bars_per_chunk(minutes) * minutes * MINUTE_NS
        return chunk * width, (chunk + 1) * width

    def _chunks(self, keys: list[tuple[str, int]], minutes: int, collect: bool) -> dict[tuple[str, int], pa.Table]:
        out: dict[tuple[str, int], pa.Table] = {}
        names = {k: self._key(k[0], minutes, k[1]) for k in keys}
        for k in keys:  # L1
            t = self._l1_get(names[k])
            if t is not None:
                out[k] = t
                self.stats.found["l1"] += 1
        missing = [k for k in keys if k not in out]
        for k, got in zip(missing, self._l2_get([names[k] for k in missing])):  # L2
            if got is not None:
                out[k] = got[0]
                self.stats.found["l2"] += 1
                self._l1_put(names[k], *got)
        missing = [k for k in keys if k not in out]
        if missing and collect and self.collector is not None:  # the venue fills what the lake lacks, in one go
            self.collector.fill([(k[0], *self._span(minutes, k[1])) for k in missing])
        for k in missing:  # L3: the lake, or the 1m chunks a higher timeframe is made of
            t, still_open = self._build(k[0], minutes, k[1])
            out[k] = t
            self.stats.found["lake" if minutes == 1 else "resampled"] += 1
            self._l1_put(names[k], t, still_open)
            ttl = self.open_ttl_s if still_open else self.ttl_s.get(minutes, self.default_ttl_s)
            self._l2_put(names[k], t, still_open, ttl)
        return out

    def _build(self, symbol: str, minutes: int, chunk: int) -> tuple[pa.Table, bool]:
        lo, hi = self._span(minutes, chunk)
        if minutes == 1:
            one = lake_minutes(self.lake_root, [symbol], lo, hi)
        else:
            one = self._get([symbol], 1, lo, hi, collect=False).select(BAR.names)
        bars = resample(one, minutes)
        # open: the chunk's last minute is not in yet (the range is still being written, or ends here)
        still_open = one.num_rows == 0 or pc.max(pc.cast(one["ts"], pa.int64())).as_py() < hi - MINUTE_NS
        return bars, still_open

    def _l1_get(self, key: str) -> pa.Table | None:
        entry = self._l1.get(key)
        if entry is None:
            return None
        if time.monotonic() >= entry[1]:  # an open chunk's brief life is over: it may have grown
            self._l1_bytes -= self._l1.pop(key)[0].nbytes
            return None
        self._l1.move_to_end(key)
        return entry[0]

    def _l1_put(self, key: str, t: pa.Table, still_open: bool) -> None:
        if key in self._l1:
            self._l1_bytes -= self._l1.pop(key)[0].nbytes
        self._l1[key] = (t, time.monotonic() + self.open_ttl_s if still_open else float("inf"))
        self._l1_bytes += t.nbytes
        while self._l1_bytes > self.l1_max_bytes and len(self._l1) > 1:
            _, (old, _) = self._l1.popitem(last=False)
            self._l1_bytes -= old.nbytes
            self.stats.l1_evictions += 1

    def _l2_up(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._l2_down_until

    def _l2_get(self, keys: list[str]) -> list[tuple[pa.Table, bool] | None]:
        if not keys or not self._l2_up():
            return [None] * len(keys)
        try:
            raw = self.redis.mget(keys)
        except redis.RedisError as e:
            self._l2_failed("read", e)
            return [None] * len(keys)
        return [None if r is None else _from_ipc(r) for r in raw]

    def _l2_put(self, key: str, t: pa.Table, still_open: bool, ttl_s: int) -> None:
        if not self._l2_up():
            return
        try:
            self.redis.set(key, _to_ipc(t, still_open), ex=ttl_s)
        except redis.RedisError as e:
            self._l2_failed("write", e)

    def _l2_failed(self, what: str, e: Exception) -> None:
        self.stats.l2_errors += 1
        self._l2_down_until = time.monotonic() + self.l2_retry_s
        if self.stats.l2_errors == 1 or self.stats.l2_errors % 100 == 0:
            log.warning("bar cache: Redis %s failed (%s: %s); answering from memory and the lake "
                        "(%d failures so far)", what, type(e).__name__, e, self.stats.l2_errors)
