"""Collect 1m klines from a venue's REST endpoint into the lake, asking only for what is missing.

For each symbol and range, the collector asks the venue only for closed minutes that are neither in the
lake nor already asked for (a ledger of asked ranges per venue, kept beside the lake, so a minute the
venue does not have is reported once as a gap and never asked for again). Missing ranges are cut into
requests of at most the venue's row limit and sent concurrently within its rate limit:

- a weight budget per window (:mod:`tickray.market.budget`: shared through Redis with every client of
  the venue, the stream connectors included, when given one), kept in step with what the venue says it
  counted (``X-MBX-USED-WEIGHT-1M`` on Binance, ``Remaining-Req`` on Upbit);
- ``429``: every request pauses for ``Retry-After``, then the refused one is sent again;
- ``418`` (banned): nothing more is sent; what was fetched is kept and :class:`VenueBanned` says for how long;
- ``5xx`` or a broken connection: retried with exponential backoff and jitter, then reported.

Fetched bars are validated (bad rows quarantined with the reason, as ingest does), merged into the lake's
``bars_1m`` partitions (swapped in atomically) and the ranges recorded in the ledger. A file lock on the
ledger serialises collectors of one venue, so two processes never ask for the same range either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis.asyncio as aioredis

from tickray import lake
from tickray.bars.build import MINUTE_NS, clean_minutes
from tickray.errors import TickrayError
from tickray.lake.schema import BAR
from tickray.lake.validate import check_bars
from tickray.market.budget import LocalBudget, RestBudget
from tickray.market.venues import KLINE_ENDPOINTS, UPBIT_CANDLE_WEIGHT, binance_kline_weight

log = logging.getLogger(__name__)
DAY_MINUTES = 1440


class CollectError(TickrayError):
    """The venue refused or failed some requests; what was fetched is kept."""


class VenueBanned(CollectError):
    """The venue answered 418: stop asking until the ban ends."""


@dataclass(frozen=True)
class Venue:
    """A kline endpoint (its rules: :data:`tickray.market.venues.KLINE_ENDPOINTS`) and how this client asks it."""
    name: str
    base_url: str
    dialect: str  # "binance" or "upbit"
    path: str
    limit: int  # rows per request
    weight_limit: int  # request weight per window
    window_s: float = 60.0
    max_concurrency: int = 8
    max_retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 10.0


VENUES = {name: Venue(name, **asdict(ep)) for name, ep in KLINE_ENDPOINTS.items()}


def venue(name: str, base_url: str = "", **overrides) -> Venue:
    """A known venue by name, optionally at another base URL (a local emulator) or with other limits."""
    if name not in VENUES:
        raise CollectError(f"unknown venue {name!r}; known: {', '.join(VENUES)}")
    v = VENUES[name]
    fields = {**v.__dict__, **({"base_url": base_url} if base_url else {}), **overrides}
    return Venue(**fields)


# --- dialects: one request of n minutes from minute `lo`, and its rows as BAR --------------------------
def _request(v: Venue, symbol: str, lo: int, n: int) -> tuple[dict, int]:
    if v.dialect == "binance":
        return ({"symbol": symbol, "interval": "1m", "startTime": lo * 60_000,
                 "endTime": (lo + n - 1) * 60_000, "limit": n}, binance_kline_weight(n))
    to = dt.datetime.fromtimestamp((lo + n) * 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"market": symbol, "to": to, "count": n}, UPBIT_CANDLE_WEIGHT


def _parse(v: Venue, symbol: str, rows: list) -> pa.Table:
    if v.dialect == "binance":
        cols = list(zip(*rows)) if rows else [()] * 11
        ts, o, h, lo, c, vol, _, qv, trades, buy = cols[:10]
        qv_ = np.asarray(qv, float)
    else:
        rows = sorted(rows, key=lambda r: r["candle_date_time_utc"])
        ts = [int(dt.datetime.fromisoformat(r["candle_date_time_utc"] + "+00:00").timestamp() * 1000) for r in rows]
        o, h, lo, c = ([r[k] for r in rows] for k in ("opening_price", "high_price", "low_price", "trade_price"))
        vol = [r["candle_acc_trade_volume"] for r in rows]
        qv_ = np.asarray([r["candle_acc_trade_price"] for r in rows], float)
        trades = buy = None  # Upbit does not give them: null, never invented
    vol_ = np.asarray(vol, float)
    close = np.asarray(c, float)
    n = len(rows)
    return pa.table({
        "ts": pa.array(np.asarray(ts, np.int64) * 1_000_000, pa.int64()).cast(BAR.field("ts").type),
        "symbol": pa.array([symbol] * n, pa.string()),
        "open": np.asarray(o, float), "high": np.asarray(h, float), "low": np.asarray(lo, float), "close": close,
        "volume": vol_, "quote_volume": qv_,
        "trades": pa.nulls(n, pa.int64()) if trades is None else pa.array(np.asarray(trades, np.int64)),
        "vwap": np.where(vol_ > 0, qv_ / np.where(vol_ > 0, vol_, 1.0), close),
        "buy_volume": pa.nulls(n, pa.float64()) if buy is None else pa.array(np.asarray(buy, float)),
    }, schema=BAR)


def _used_weight(v: Venue, headers: httpx.Headers) -> int | None:
    if v.dialect == "binance":
        used = headers.get("x-mbx-used-weight-1m")
        return int(used) if used else None
    fields = dict(p.strip().split("=", 1) for p in headers.get("remaining-req", "").split(";") if "=" in p)
    return v.weight_limit - int(fields["sec"]) if "sec" in fields else None


# --- minute ranges (half-open, epoch minutes) ------------------------------------------------------------
Ranges = list[tuple[int, int]]


def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(want: Ranges, have: Ranges) -> Ranges:
    out, have = [], _merge(have)
    for lo, hi in _merge(want):
        for h_lo, h_hi in have:
            if h_hi <= lo or h_lo >= hi:
                continue
            if h_lo > lo:
                out.append((lo, h_lo))
            lo = max(lo, h_hi)
        if lo < hi:
            out.append((lo, hi))
    return out


def _runs(minutes: np.ndarray) -> Ranges:
    if minutes.size == 0:
        return []
    m = np.unique(minutes)
    cut = np.flatnonzero(np.diff(m) > 1)
    starts, ends = np.r_[m[0], m[cut + 1]], np.r_[m[cut], m[-1]] + 1
    return list(zip(starts.tolist(), ends.tolist()))


@dataclass
class CollectReport:
    requests: int = 0
    weight: int = 0
    rows: int = 0
    duplicates: int = 0
    quarantined: Counter = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0  # 429s
    gaps: list[tuple[str, int, int]] = field(default_factory=list)  # (symbol, first ns, last ns) not at the venue
    errors: list[str] = field(default_factory=list)
    banned_for_s: float | None = None
    seconds: float = 0.0

    def line(self) -> str:
        q = sum(self.quarantined.values())
        return (f"collector: {self.requests} requests (weight {self.weight}), {self.rows:,} bars, "
                f"{self.duplicates} duplicates dropped, {q} quarantined, {self.retries} retries, "
                f"{self.rate_limited} rate-limited, {len(self.gaps)} gaps at the venue, {self.seconds:.2f}s")


async def _shared_redis(url: str) -> aioredis.Redis | None:
    """The Redis the venue's shared budget lives in; None (this process budgets alone, said) when it is down."""
    r = aioredis.from_url(url, socket_timeout=10, socket_connect_timeout=2)
    try:
        await r.ping()
        return r
    except (OSError, aioredis.RedisError) as e:
        log.warning("collector: Redis at %s unreachable (%s); this process keeps its own weight budget",
                    url.split("@")[-1], e)
        await r.aclose()
        return None


class Collector:
    def __init__(self, lake_root: Path, v: Venue, clock: Callable[[], float] = time.time, redis_url: str | None = None):
        """``redis_url``: the weight budget is the one every client of the venue shares there (the stream
        connectors' too); without, this process keeps its own."""
        self.lake_root, self.venue, self.clock, self.redis_url = Path(lake_root), v, clock, redis_url
        self.ledger_path = self.lake_root / "_collector" / f"{v.name}.json"
        self.total = CollectReport()  # over the collector's life: the cache's metrics show it

    # --- the one call ----------------------------------------------------------------------------
    def fill(self, wants: list[tuple[str, int, int]]) -> CollectReport:
        """Make the lake hold every closed minute of each (symbol, start ns, end ns) that the venue has."""
        t0 = time.perf_counter()
        report = CollectReport()
        with self._locked():
            asked = self._read_ledger()
            plan = self._plan(wants, asked)
            if plan:
                fetched = _run(self._fetch_all(plan, report))
                self._store(fetched, asked, report)
        report.seconds = time.perf_counter() - t0
        for k in ("requests", "weight", "rows", "duplicates", "retries", "rate_limited"):
            setattr(self.total, k, getattr(self.total, k) + getattr(report, k))
        self.total.quarantined.update(report.quarantined)
        if report.requests:
            log.info("%s", report.line())
        if report.banned_for_s is not None:
            raise VenueBanned(f"{self.venue.name} banned this client (HTTP 418) for {report.banned_for_s:.0f}s; "
                              f"{report.rows:,} bars fetched before it are in the lake")
        if report.errors:
            raise CollectError(f"{self.venue.name}: {len(report.errors)} requests failed "
                               f"({report.rows:,} bars fetched are in the lake): " + "; ".join(report.errors[:3]))
        return report

    # --- planning ----------------------------------------------------------------------------------
    def _plan(self, wants: list[tuple[str, int, int]], asked: dict[str, Ranges]) -> list[tuple[str, int, int]]:
        closed = int(self.clock() // 60)  # the minute now running is not a bar yet
        by_symbol: dict[str, Ranges] = {}
        for symbol, start_ns, end_ns in wants:
            lo, hi = start_ns // MINUTE_NS, min(-(-end_ns // MINUTE_NS), closed)
            by_symbol.setdefault(symbol.upper(), []).append((lo, hi))
        plan = []
        for symbol, ranges in by_symbol.items():
            ranges = _merge(ranges)
            if not ranges:
                continue
            have = _runs(self._lake_minutes(symbol, ranges[0][0], ranges[-1][1]))
            for lo, hi in _subtract(ranges, have + asked.get(symbol, [])):
                plan += [(symbol, a, min(a + self.venue.limit, hi)) for a in range(lo, hi, self.venue.limit)]
        return plan

    def _lake_minutes(self, symbol: str, lo: int, hi: int) -> np.ndarray:
        first, last = lo // DAY_MINUTES, (hi - 1) // DAY_MINUTES
        days = {lake.day_partition(d) for d in range(first, last + 1)}
        parts = [d for d, s in lake.partitions(self.lake_root, "bars_1m") if s == symbol and d in days]
        if not parts:
            return np.empty(0, np.int64)
        ts = [pc.cast(lake.read_partition(self.lake_root, "bars_1m", d, symbol, columns=["ts"])["ts"], pa.int64())
              for d in parts]
        m = np.concatenate([t.to_numpy() for t in ts]) // MINUTE_NS
        return m[(m >= lo) & (m < hi)]

    # --- fetching ----------------------------------------------------------------------------------
    async def _fetch_all(self, plan: list[tuple[str, int, int]], report: CollectReport) -> list:
        v = self.venue
        gate, stop = asyncio.Semaphore(v.max_concurrency), asyncio.Event()
        shared = await _shared_redis(self.redis_url) if self.redis_url else None
        budget = (RestBudget(shared, v.name, v.weight_limit, v.window_s) if shared is not None
                  else LocalBudget(v.weight_limit, v.window_s))
        limits = httpx.Limits(max_connections=v.max_concurrency)
        async with httpx.AsyncClient(base_url=v.base_url, timeout=v.timeout_s, limits=limits) as client:

            async def one(symbol: str, lo: int, hi: int):
                params, weight = _request(v, symbol, lo, hi - lo)
                where = f"{symbol} {_iso(lo)}..{_iso(hi)}"
                attempt = 0
                while True:
                    async with gate:
                        await budget.take(weight)
                        if stop.is_set():
                            return None
                        report.requests += 1
                        report.weight += weight
                        try:
                            r = await client.get(v.path, params=params)
                        except httpx.TransportError as e:
                            r, failure = None, f"{type(e).__name__}: {e}"
                    if r is not None:
                        await budget.venue_counted(_used_weight(v, r.headers))
                        if r.status_code == 200:
                            return symbol, lo, hi, _parse(v, symbol, r.json())
                        failure = f"HTTP {r.status_code} {r.text[:200]}"
                        retry_after = float(r.headers.get("retry-after") or 1)
                        if r.status_code == 418:
                            report.banned_for_s = retry_after
                            stop.set()
                            return None
                        if r.status_code == 429:  # everyone pauses: that pause is the backoff
                            report.rate_limited += 1
                            await budget.pause(retry_after)
                            continue
                        if r.status_code < 500:
                            report.errors.append(f"{where}: {failure}")
                            return None
                    if attempt == v.max_retries:
                        report.errors.append(f"{where}: {failure} after {attempt} retries")
                        return None
                    attempt += 1
                    report.retries += 1
                    await asyncio.sleep(v.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))

            try:
                results = await asyncio.gather(*(one(*p) for p in plan))
            finally:
                if shared is not None:
                    await shared.aclose()
        return [r for r in results if r is not None]

    # --- storing -----------------------------------------------------------------------------------
    def _store(self, fetched: list, asked: dict[str, Ranges], report: CollectReport) -> None:
        tables = []
        for symbol, lo, hi, t in fetched:
            m = pc.divide(pc.cast(t["ts"], pa.int64()), MINUTE_NS)
            t = t.filter(pc.and_(pc.greater_equal(m, lo), pc.less(m, hi)))  # only what was asked
            got = _runs(pc.divide(pc.cast(t["ts"], pa.int64()), MINUTE_NS).to_numpy())
            report.gaps += [(symbol, a * MINUTE_NS, (b - 1) * MINUTE_NS) for a, b in _subtract([(lo, hi)], got)]
            asked.setdefault(symbol, []).append((lo, hi))
            tables.append(t)
        if tables:
            self._write(pa.concat_tables(tables), report)
        self._write_ledger({s: _merge(r) for s, r in asked.items()})

    def _write(self, new: pa.Table, report: CollectReport) -> None:
        reason = check_bars(new)
        good = pc.is_null(reason)
        bad = new.filter(pc.invert(good))
        new, report.duplicates = clean_minutes(new.filter(good))
        report.rows += new.num_rows
        new = new.append_column("date", lake.date_column(new["ts"]))
        source = f"{self.venue.name} REST {self.venue.base_url}"
        stage = lake.staging_dir(self.lake_root)
        try:
            present = set(lake.partitions(self.lake_root, "bars_1m"))
            for (date, symbol), part in _by_partition(new).items():
                sources = [source]
                if (date, symbol) in present:  # merge: the lake's rows first, so they win a duplicate
                    old = lake.read_partition(self.lake_root, "bars_1m", date, symbol).select(BAR.names)
                    part, dups = clean_minutes(pa.concat_tables([old.cast(BAR), part.select(BAR.names)]))
                    report.duplicates += dups
                    report.rows -= dups
                    part = part.append_column("date", pa.array([date] * part.num_rows))
                    sources += lake.partition_sources(self.lake_root, "bars_1m", date, symbol)
                lake.write_partitions(part, stage / "bars_1m", f"{self.venue.name}", sources)
            lake.commit(stage / "bars_1m", self.lake_root / "bars_1m")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if bad.num_rows:  # quarantine is appended to, never replaced: it may hold ingest's rows
            bad_reason = reason.filter(pc.invert(good))
            report.quarantined.update(bad_reason.to_pylist())
            bad = bad.append_column("reason", bad_reason).append_column(
                "source", pa.array([f"{self.venue.name} REST"] * bad.num_rows))
            bad = bad.append_column("date", lake.date_column(bad["ts"]))
            lake.write_partitions(bad, self.lake_root / lake.QUARANTINE / "bars_1m",
                                  f"{self.venue.name}-{time.time_ns()}", [source])

    # --- the ledger ----------------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.ledger_path.with_suffix(".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_ledger(self) -> dict[str, Ranges]:
        if not self.ledger_path.exists():
            return {}
        return {s: [tuple(r) for r in rs] for s, rs in json.loads(self.ledger_path.read_text()).items()}

    def _write_ledger(self, asked: dict[str, Ranges]) -> None:
        tmp = self.ledger_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asked))
        tmp.replace(self.ledger_path)


def _by_partition(t: pa.Table) -> dict[tuple[str, str], pa.Table]:
    keys = t.select(["date", "symbol"]).group_by(["date", "symbol"]).aggregate([])
    return {(d, s): t.filter(pc.and_(pc.equal(t["date"], d), pc.equal(t["symbol"], s)))
            for d, s in zip(keys["date"].to_pylist(), keys["symbol"].to_pylist())}


def _iso(minute: int) -> str:
    return dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _run(coro):
    """Run a coroutine to completion, also from code that is itself inside an event loop (an async actor)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
