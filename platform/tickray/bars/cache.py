"""The layered bar cache: one call, ``get_bars(symbols, timeframe, start, end)``.

Bars are cached in chunks of whole bars (about a day of them: 1,440 1m bars, 24 1h bars, 6 4h bars, one
1d bar) keyed by (symbol, timeframe, chunk). A chunk is looked up in

- L1, this process's memory: an LRU bounded in bytes;
- L2, Redis, shared by every node of the cluster: Arrow IPC (zstd from 64 KB), with a TTL per timeframe;
- L3, the Parquet lake: a 1m chunk is read from the lake's 1m bars; any other timeframe is resampled
  from the 1m bars it covers, taken from the cache where they are and from the lake otherwise (a symbol
  whose lake holds only longer bars, bars_1h say, from the shortest of them that divide the timeframe);
- and, given a :class:`~tickray.bars.collector.Collector`, the venue: before L3 is read, the closed minutes of
  the missing chunks that the lake lacks are fetched into it (only those, and each range once).

What a lower layer finds is written back up. A chunk that reaches past the newest minute it holds may
still grow, so it is cached briefly (``open_ttl_s``) instead of for its timeframe's TTL. If Redis fails
the call still answers from L1 and L3; the failure is counted (``l2_errors``) and logged, and L2 is
skipped for ``l2_retry_s`` before it is tried again (so a dead Redis costs one timeout, not one per chunk).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import redis

from tickray import lake
from tickray.bars.build import MINUTE_NS, RESAMPLED, bar_sources, resample, timeframe_minutes
from tickray.bars.collector import Collector
from tickray.lake.schema import BAR, bars_dataset_name

log = logging.getLogger(__name__)
CHUNK_MINUTES = 1440  # about a day of bars per chunk, in whole bars
CHUNK_NS = CHUNK_MINUTES * MINUTE_NS  # a 1m chunk: one UTC day, one lake partition
BATCH = 256  # chunks built, or moved to and from Redis, at a time
READ_THREADS = 4
_STORED = [n for n in BAR.names if n != "symbol"]  # the partition's folder holds the symbol
KEY = "tickray:bars:{symbol}:{minutes}m:{chunk}"


_ZSTD, _PLAIN = pa.ipc.IpcWriteOptions(compression="zstd"), pa.ipc.IpcWriteOptions()
COMPRESS_FROM_BYTES = 64 * 1024  # a day of 1h bars (3.6 KB) gains nothing from zstd and pays 10x to encode


def _to_ipc(t: pa.Table, still_open: bool) -> bytes:
    t = t.replace_schema_metadata({b"open": b"1" if still_open else b"0"})  # for the L1 copy's lifetime
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=_ZSTD if t.nbytes >= COMPRESS_FROM_BYTES else _PLAIN) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> tuple[pa.Table, bool]:
    t = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    return t.replace_schema_metadata(None), (t.schema.metadata or {}).get(b"open") == b"1"


@dataclass
class CacheStats:
    # chunks asked for, answered by: l1, l2, "resampled" (a higher timeframe built from 1m bars) or
    # "lake" (a 1m chunk read from the lake)
    found: Counter = field(default_factory=Counter)
    # 1m chunks read to build higher timeframes, by where they came from: l1, l2, lake
    inputs: Counter = field(default_factory=Counter)
    l1_evictions: int = 0
    l2_errors: int = 0

    def as_dict(self, l1_bytes: int) -> dict:
        total = sum(self.found.values())
        return {
            "lookups": total, **{k: self.found[k] for k in ("l1", "l2", "resampled", "lake")},
            **{f"{k}_hit_ratio": (self.found[k] / total if total else 0.0) for k in ("l1", "l2")},
            "fetches_saved": self.found["l1"] + self.found["l2"],  # lookups that read neither lake nor venue
            **{f"inputs_{k}": self.inputs[k] for k in ("l1", "l2", "lake")},
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
        self._l1: OrderedDict[str, tuple[pa.Table, float, int]] = OrderedDict()  # key -> (bars, expires at, bytes)
        self._l1_bytes = 0
        self.stats = CacheStats()

    # --- the one call ----------------------------------------------------------------------------
    def get_bars(self, symbols: list[str], timeframe: str, start_ns: int, end_ns: int) -> pa.Table:
        """Bars of ``timeframe`` whose start lies in [start, end), for each symbol, in time order."""
        return self._get(symbols, timeframe_minutes(timeframe), start_ns, end_ns)

    def metrics(self) -> dict:
        m = self.stats.as_dict(self._l1_bytes)
        m["l2_available"] = self._l2_up()
        if self.collector is not None:
            m["venue_requests"], m["venue_bars"] = self.collector.total.requests, self.collector.total.rows
        return m

    # --- layers ------------------------------------------------------------------------------------
    def _get(self, symbols: list[str], minutes: int, start_ns: int, end_ns: int) -> pa.Table:
        step, per_chunk = minutes * MINUTE_NS, self._bars_per_chunk(minutes)
        first, last = start_ns // step // per_chunk, (end_ns - 1) // step // per_chunk
        keys = [(s.upper(), c) for s in symbols for c in range(first, last + 1)]
        before = self.stats.found.copy()
        chunks = self._chunks(keys, minutes)
        _export_lookups(self.stats.found - before)
        parts = [_between(chunks[k], start_ns, end_ns) if k[1] in (first, last) else chunks[k] for k in keys]
        # one contiguous table: kernels over thousands of small chunks pay per chunk
        return pa.concat_tables(parts).combine_chunks() if parts else RESAMPLED.empty_table()

    @staticmethod
    def _bars_per_chunk(minutes: int) -> int:
        return max(1, CHUNK_MINUTES // minutes)

    def _key(self, symbol: str, minutes: int, chunk: int) -> str:
        return KEY.format(symbol=symbol, minutes=minutes, chunk=chunk)

    def _span(self, minutes: int, chunk: int) -> tuple[int, int]:
        width = self._bars_per_chunk(minutes) * minutes * MINUTE_NS
        return chunk * width, (chunk + 1) * width

    def _chunks(self, keys: list[tuple[str, int]], minutes: int) -> dict[tuple[str, int], pa.Table]:
        out = self._cached(keys, minutes, self.stats.found)
        missing = [k for k in keys if k not in out]
        if not missing:
            return out
        if self.collector is not None:  # the venue fills what the lake lacks, in one go
            self.collector.fill([(k[0], *self._span(minutes, k[1])) for k in missing])
        ttl = self.ttl_s.get(minutes, self.default_ttl_s)
        # what each symbol's bars are built from, read from the lake's listing once, not once a batch
        sources = bar_sources(self.lake_root, list(dict.fromkeys(s for s, _ in missing)), minutes) if minutes > 1 else {}
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for i in range(0, len(missing), BATCH):  # L3, in batches: memory follows a batch, not the request
                group = missing[i:i + BATCH]
                if minutes == 1:
                    days = self._collect(self._start_reads(group, pool, 1), 1)
                    built = {k: self._minute_chunk(k, t) for k, t in days.items()}
                else:
                    built = self._resampled_chunks(group, minutes, sources, pool)
                names = {k: self._key(k[0], minutes, k[1]) for k in built}
                for k, (t, still_open, size) in built.items():
                    out[k] = t
                    self._l1_put(names[k], t, still_open, size)
                self.stats.found["lake" if minutes == 1 else "resampled"] += len(built)
                self._l2_put([(names[k], t, still_open, self.open_ttl_s if still_open else ttl)
                              for k, (t, still_open, _) in built.items()])
        return out

    def _cached(self, keys: list[tuple[str, int]], minutes: int, tally: Counter) -> dict[tuple[str, int], pa.Table]:
        """The chunks found in L1, then in L2 (copied into L1), counted by layer in ``tally``."""
        out: dict[tuple[str, int], pa.Table] = {}
        names = {k: self._key(k[0], minutes, k[1]) for k in keys}
        for k in keys:
            t = self._l1_get(names[k])
            if t is not None:
                out[k] = t
                tally["l1"] += 1
        missing = [k for k in keys if k not in out]
        for k, got in zip(missing, self._l2_get([names[k] for k in missing])):
            if got is not None:
                out[k] = got[0]
                tally["l2"] += 1
                self._l1_put(names[k], *got, got[0].get_total_buffer_size())
        return out

    def _start_reads(self, keys: list[tuple[str, int]], pool: ThreadPoolExecutor, source_minutes: int) -> dict:
        """(symbol, day) → the future of its stored bars (1m unless said) from the lake, read on ``pool``
        (Parquet reads release the GIL): a 1m chunk is one day, so one ``date=/symbol=`` partition."""
        dataset = bars_dataset_name(source_minutes)
        return {k: pool.submit(self._lake_day, k, dataset) for k in keys}

    def _collect(self, reads: dict, source_minutes: int) -> dict[tuple[str, int], pa.Table]:
        """The days of :meth:`_start_reads`, once read; a symbol the lake holds none of is an error."""
        days = {k: f.result() for k, f in reads.items()}
        empty = {s for s, _ in days} - {s for (s, _), t in days.items() if t.num_rows}
        dataset = bars_dataset_name(source_minutes)
        unknown = empty - {s for _, s in lake.partitions(self.lake_root, dataset)} if empty else set()
        if unknown:  # says why: no bars at all, or only longer ones
            bar_sources(self.lake_root, sorted(unknown), source_minutes)
            raise FileNotFoundError(f"no {source_minutes}m bars in the lake at {self.lake_root} for {sorted(unknown)}")
        return days

    def _lake_day(self, key: tuple[str, int], dataset: str) -> pa.Table:
        symbol, day = key
        folder = self.lake_root / dataset / f"date={lake.day_partition(day)}" / f"symbol={symbol}"
        try:
            files = sorted(e.path for e in os.scandir(folder) if e.name.endswith(".parquet"))
        except FileNotFoundError:
            files = []
        if not files:
            return BAR.empty_table()
        # ParquetFile.read: a third of read_table's cost on a day's 1,440 rows; one thread per file, as the
        # files are read READ_THREADS at a time (Arrow's own threads on top: 515 us a file instead of 305)
        t = pa.concat_tables([pq.ParquetFile(f).read(columns=_STORED, use_threads=False) for f in files],
                             promote_options="default")
        t = t.add_column(1, "symbol", pa.array([symbol] * t.num_rows, pa.string()))
        if len(files) > 1:  # each file is written sorted; several need merging
            t = t.sort_by("ts")
        return t if t.schema.equals(BAR) else t.cast(BAR)

    def _minute_chunk(self, key: tuple[str, int], day: pa.Table) -> tuple[pa.Table, bool, int]:
        """A day of stored minutes as a 1m chunk: (bars, still open, bytes)."""
        chunk = _as_resampled(day)
        return chunk, _still_open(_ns(day), *self._span(1, key[1])), chunk.get_total_buffer_size()

    def _resampled_chunks(self, keys: list[tuple[str, int]], minutes: int, sources: dict[str, int],
                          pool: ThreadPoolExecutor) -> dict:
        """Chunks of a higher timeframe from the stored bars they cover (each symbol's shortest that divide
        the timeframe: 1m where the lake has minutes), one resample per symbol (chunks hold whole bars, so
        no bar crosses a chunk's edge). 1m chunks in the cache are used; the others are read from the lake
        and not sent to Redis (encoding a day of minutes costs more than reading it again): they stay in
        memory as spares where there is room, for the next timeframe."""
        spans = {k: self._span(minutes, k[1]) for k in keys}
        day_keys: dict[int, list[tuple[str, int]]] = {}
        for (s, _), (lo, hi) in spans.items():
            day_keys.setdefault(sources[s], []).extend((s, d) for d in range(lo // CHUNK_NS, (hi - 1) // CHUNK_NS + 1))
        day_keys = {m: sorted(set(ks)) for m, ks in day_keys.items()}
        stored = self._cached(day_keys.get(1, []), 1, self.stats.inputs)
        # longer stored bars always from the lake, with no spares (a day of them is a few rows)
        reads = {m: self._start_reads([k for k in ks if k not in stored], pool, m) for m, ks in day_keys.items()}
        from_lake = {}
        for m, r in reads.items():
            from_lake |= self._collect(r, m)
        self.stats.inputs["lake"] += len(from_lake)
        stored.update(from_lake)
        for k, t in from_lake.items():  # kept in memory only where there is room: never evicts for them
            if sources[k[0]] > 1:
                continue
            chunk, still_open, size = self._minute_chunk(k, t)
            if self._l1_bytes + size > self.l1_max_bytes:
                break
            self._l1_put(self._key(k[0], 1, k[1]), chunk, still_open, size, spare=True)
        out = {}
        for symbol in dict.fromkeys(s for s, _ in keys):
            m = sources[symbol]
            mine = sorted(k for k in keys if k[0] == symbol)
            base = pa.concat_tables([stored[k].select(BAR.names) for k in day_keys[m] if k[0] == symbol])
            lo, hi = spans[mine[0]][0], spans[mine[-1]][1]
            bars = resample(_between(base, lo, hi), minutes, m)
            base_ts, bar_ts = _ns(base), _ns(bars)
            row_bytes = bars.get_total_buffer_size() / max(bars.num_rows, 1)  # each chunk is a slice of bars
            for k in mine:
                a, b = spans[k]
                i, j = np.searchsorted(bar_ts, [a, b])
                out[k] = (bars.slice(i, j - i),
                          _still_open(base_ts[slice(*np.searchsorted(base_ts, [a, b]))], a, b, m),
                          round(row_bytes * (j - i)))
        return out

    def _l1_get(self, key: str) -> pa.Table | None:
        entry = self._l1.get(key)
        if entry is None:
            return None
        if time.monotonic() >= entry[1]:  # an open chunk's brief life is over: it may have grown
            self._l1_bytes -= self._l1.pop(key)[2]
            return None
        self._l1.move_to_end(key)
        return entry[0]

    def _l1_put(self, key: str, t: pa.Table, still_open: bool, size: int, spare: bool = False) -> None:
        """Hold a chunk of ``size`` bytes in memory (its callers know it: a table's ``nbytes`` walks its
        buffers, 40 us a chunk); a ``spare`` one (read only to build another) goes to the evicting end of
        the LRU: it is the first to go when chunks that were asked for need the room."""
        if key in self._l1:
            self._l1_bytes -= self._l1.pop(key)[2]
        self._l1[key] = (t, time.monotonic() + self.open_ttl_s if still_open else float("inf"), size)
        if spare:
            self._l1.move_to_end(key, last=False)
        self._l1_bytes += size
        while self._l1_bytes > self.l1_max_bytes and len(self._l1) > 1:
            self._l1_bytes -= self._l1.popitem(last=False)[1][2]
            self.stats.l1_evictions += 1

    def _l2_up(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._l2_down_until

    def _l2_get(self, keys: list[str]) -> list[tuple[pa.Table, bool] | None]:
        if not keys or not self._l2_up():
            return [None] * len(keys)
        raw = []
        try:
            for i in range(0, len(keys), BATCH):  # bounded replies
                raw += self.redis.mget(keys[i:i + BATCH])
        except redis.RedisError as e:
            self._l2_failed("read", e)
            return [None] * len(keys)
        return [None if r is None else _from_ipc(r) for r in raw]

    def _l2_put(self, items: list[tuple[str, pa.Table, bool, int]]) -> None:
        """Write (key, bars, still open, TTL) items in one round trip."""
        if not items or not self._l2_up():
            return
        try:
            with self.redis.pipeline(transaction=False) as p:
                for key, t, still_open, ttl_s in items:
                    p.set(key, _to_ipc(t, still_open), ex=ttl_s)
                p.execute()
        except redis.RedisError as e:
            self._l2_failed("write", e)

    def _l2_failed(self, what: str, e: Exception) -> None:
        self.stats.l2_errors += 1
        self._l2_down_until = time.monotonic() + self.l2_retry_s
        if self.stats.l2_errors == 1 or self.stats.l2_errors % 100 == 0:
            log.warning("bar cache: Redis %s failed (%s: %s); answering from memory and the lake "
                        "(%d failures so far)", what, type(e).__name__, e, self.stats.l2_errors)


_LOOKUPS = None


def _export_lookups(found: Counter) -> None:
    """Lookups by the layer that answered, to Ray's metrics (the hit ratio on the Grafana dashboard)."""
    global _LOOKUPS
    if not ray.is_initialized():
        return
    if _LOOKUPS is None:
        from ray.util.metrics import Counter as RayCounter

        _LOOKUPS = RayCounter("tickray_bar_cache_lookups", "bar chunks asked of the cache, by the layer that answered",
                              tag_keys=("layer",))
    for layer, n in found.items():
        _LOOKUPS.inc(n, tags={"layer": layer})


def _ns(t: pa.Table) -> np.ndarray:
    return pc.cast(t["ts"], pa.int64()).to_numpy()


def _still_open(starts_ns: np.ndarray, lo: int, hi: int, source_minutes: int = 1) -> bool:
    """A chunk whose last stored bar (of the sorted starts it was built from, ``source_minutes`` long) is
    not in yet: the range is still being written, or ends here."""
    return starts_ns.size == 0 or int(starts_ns[-1]) < hi - source_minutes * MINUTE_NS


def _between(t: pa.Table, lo: int, hi: int) -> pa.Table:
    i, j = np.searchsorted(_ns(t), [lo, hi])
    return t.slice(i, j - i)


def _as_resampled(one: pa.Table) -> pa.Table:
    """1m bars as 1m "resampled" bars: as they are when each minute is there once, in order (the lake
    writes them so); through :func:`resample` otherwise, which sorts and drops repeats."""
    ts = _ns(one)
    if ts.size and (np.any(np.diff(ts) <= 0) or np.any(ts % MINUTE_NS)):
        return resample(one, 1)
    n = one.num_rows
    one = one if one.schema.equals(BAR) else one.cast(BAR)
    return pa.Table.from_arrays([*one.columns, pa.array(np.ones(n, np.int32)), pa.array(np.ones(n, bool))],
                                schema=RESAMPLED)
