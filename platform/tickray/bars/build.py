"""Bars. The lake's stored bars are the one source of truth, 1m wherever the data has minutes (trades,
klines, most candles) and the vendor's own length where its candles are longer (``bars_1h``: see
``lake.schema``); every higher timeframe is computed from the shortest stored bars that divide it, and
none is ever presented at a length shorter than what it was built from.

The rule for a minute without trades is the same everywhere: a **flat bar** (open = high = low = close =
the previous close, volume 0, trades 0, VWAP = close), as Binance's own klines do. So a minute with no
row is a gap in the source: it is reported (:func:`find_gaps`), never filled in silently.

Higher timeframes are any whole number of minutes, aligned to UTC (a bar of N minutes starts where
epoch-minutes is a multiple of N, so 1h bars start on the hour and 1d bars at 00:00 UTC). A bar
holds first open, max high, min low, last close, summed volumes and trade counts, and the VWAP of its
minutes weighted by volume; ``minutes`` counts the minutes of stored bars it was built from, and
``complete`` is false for a bar whose interval is not fully covered (the trailing bar of a range, or one
with a gap).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickray import lake
from tickray.errors import TickrayError
from tickray.lake.schema import BAR, bars_dataset_name

MINUTE_NS = 60 * 1_000_000_000
_TIMEFRAME = re.compile(r"^(\d+)(m|h|d)$")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440}


class TimeframeError(TickrayError):
    """A timeframe that is not a whole, positive number of minutes."""


def timeframe_minutes(timeframe: str) -> int:
    """``"15m"`` → 15, ``"4h"`` → 240, ``"1d"`` → 1440; anything not a whole number of minutes is an error."""
    m = _TIMEFRAME.match(timeframe.strip().lower())
    if m is None or int(m[1]) == 0:
        raise TimeframeError(f"timeframe {timeframe!r} is not a whole, positive number of minutes "
                             "(write it as <n>m, <n>h or <n>d, e.g. 5m, 7m, 1h, 4h, 1d)")
    return int(m[1]) * _UNIT_MINUTES[m[2]]


def _ns(col: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def _f(t: pa.Table, name: str) -> np.ndarray:
    return t[name].to_numpy(zero_copy_only=False).astype(np.float64)


def bars_from_trades(trades: pa.Table) -> pa.Table:
    """1m bars of one symbol's trades (sorted by time), every minute from the first trade's to the
    last's, minutes without trades as flat bars."""
    if trades.num_rows == 0:
        return BAR.empty_table()
    ts = _ns(trades["ts"])
    minute = ts // MINUTE_NS
    first, last = int(minute[0]), int(minute[-1])
    n = last - first + 1
    idx = minute - first
    price, qty = _f(trades, "price"), _f(trades, "qty")
    buy = trades["side"].to_numpy(zero_copy_only=False) > 0
    has = np.bincount(idx, minlength=n) > 0
    starts = np.flatnonzero(np.r_[True, np.diff(idx) > 0])  # first trade of each traded minute
    traded = idx[starts]
    close = np.full(n, np.nan)
    close[traded] = price[np.r_[starts[1:], ts.size] - 1]
    close = _ffill(close)
    out = {
        "open": np.where(has, 0.0, close), "high": np.where(has, 0.0, close), "low": np.where(has, 0.0, close),
        "close": close,
    }
    out["open"][traded] = price[starts]
    out["high"][traded] = np.maximum.reduceat(price, starts)
    out["low"][traded] = np.minimum.reduceat(price, starts)
    volume = np.bincount(idx, weights=qty, minlength=n)
    quote = np.bincount(idx, weights=price * qty, minlength=n)
    symbol = trades["symbol"][0].as_py()
    return pa.table({
        "ts": pa.array((first + np.arange(n)) * MINUTE_NS, pa.int64()).cast(BAR.field("ts").type),
        "symbol": pa.array([symbol] * n, pa.string()),
        "open": out["open"], "high": out["high"], "low": out["low"], "close": close,
        "volume": volume, "quote_volume": quote, "trades": np.bincount(idx, minlength=n).astype(np.int64),
        "vwap": np.where(volume > 0, quote / np.where(volume > 0, volume, 1.0), close),
        "buy_volume": np.bincount(idx, weights=qty * buy, minlength=n),
    }, schema=BAR)


def _ffill(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    last = np.maximum.accumulate(np.where(ok, np.arange(x.size), 0))
    return x[last]


def clean_minutes(bars: pa.Table) -> tuple[pa.Table, int]:
    """Bars sorted by (symbol, ts) with each minute kept once (overlapping or repeated klines: the first
    one read wins); returns them and how many duplicates were dropped."""
    if bars.num_rows == 0:
        return bars, 0
    mm = pc.min_max(bars["symbol"])
    if mm["min"] == mm["max"] and np.all(np.diff(_ns(bars["ts"])) > 0):  # one symbol, in order, each once
        return bars, 0
    t = bars.append_column("_row", pa.array(np.arange(bars.num_rows))).sort_by(
        [("symbol", "ascending"), ("ts", "ascending"), ("_row", "ascending")])
    ts, sym = _ns(t["ts"]), t["symbol"].to_numpy(zero_copy_only=False)
    dup = np.r_[False, (ts[1:] == ts[:-1]) & (sym[1:] == sym[:-1])]
    return t.filter(pa.array(~dup)).drop_columns(["_row"]), int(dup.sum())


def find_gaps(bars: pa.Table) -> list[tuple[str, int, int]]:
    """Runs of missing minutes inside each symbol's bars: (symbol, first missing ts, last missing ts), ns."""
    t, _ = clean_minutes(bars)
    ts, sym = _ns(t["ts"]), t["symbol"].to_numpy(zero_copy_only=False)
    jump = np.flatnonzero((np.diff(ts) > MINUTE_NS) & (sym[1:] == sym[:-1]))
    return [(str(sym[i]), int(ts[i] + MINUTE_NS), int(ts[i + 1] - MINUTE_NS)) for i in jump]


RESAMPLED = pa.schema([*BAR, ("minutes", pa.int32()), ("complete", pa.bool_())])


def resample(bars: pa.Table, minutes: int, source_minutes: int = 1) -> pa.Table:
    """Bars of ``minutes`` from bars of ``source_minutes`` (1m unless said; any symbols, any order;
    duplicates are dropped first): only up, to a multiple of the source's length."""
    if minutes < 1:
        raise TimeframeError(f"a timeframe is a positive number of minutes, got {minutes}")
    if minutes % source_minutes:
        raise TimeframeError(f"{minutes}-minute bars cannot be built from {source_minutes}-minute bars: only "
                             "from shorter bars whose length divides theirs")
    t, _ = clean_minutes(bars)
    if t.num_rows == 0:
        return RESAMPLED.empty_table()
    ts = _ns(t["ts"])
    # symbols as dictionary codes: a NumPy array of strings costs a Python object per bar
    sym = pc.dictionary_encode(t["symbol"].combine_chunks()).indices.to_numpy(zero_copy_only=False)
    if np.any(ts % (source_minutes * MINUTE_NS)):
        raise TimeframeError(f"{source_minutes}-minute bars must start on a multiple of their length (UTC); "
                             "found a bar that does not")
    bucket = ts // (minutes * MINUTE_NS)
    starts = np.flatnonzero(np.r_[True, (np.diff(bucket) != 0) | (sym[1:] != sym[:-1])])
    ends = np.r_[starts[1:], ts.size] - 1
    add = lambda name: np.add.reduceat(_f(t, name), starts)
    volume, quote = add("volume"), add("quote_volume")
    close = _f(t, "close")[ends]
    count = (np.diff(np.r_[starts, ts.size]) * source_minutes).astype(np.int32)
    out = {
        "ts": pa.array(bucket[starts] * minutes * MINUTE_NS, pa.int64()).cast(BAR.field("ts").type),
        "symbol": t["symbol"].take(pa.array(starts)),
        "open": _f(t, "open")[starts],
        "high": np.maximum.reduceat(_f(t, "high"), starts),
        "low": np.minimum.reduceat(_f(t, "low"), starts),
        "close": close, "volume": volume, "quote_volume": quote,
        "trades": pa.array(np.add.reduceat(t["trades"].fill_null(0).to_numpy(), starts),
                           pa.int64()) if t["trades"].null_count < t.num_rows else pa.nulls(starts.size, pa.int64()),
        "vwap": np.where(volume > 0, quote / np.where(volume > 0, volume, 1.0), close),
        "buy_volume": pa.array(add("buy_volume"), mask=_all_null(t["buy_volume"], starts)),
        "minutes": count,
        "complete": count == minutes,
    }
    if t["quote_volume"].null_count:  # a vendor without quote volume: no VWAP either, not an invented one
        out["quote_volume"] = pa.nulls(starts.size, pa.float64())
        out["vwap"] = pa.nulls(starts.size, pa.float64())
    return pa.table(out, schema=RESAMPLED)


def _all_null(col: pa.ChunkedArray, starts: np.ndarray) -> np.ndarray:
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.add.reduceat(valid, starts) == 0


def stored_bars(root) -> dict[str, list[int]]:
    """Each symbol the lake holds bars of → the lengths (minutes) of its stored bars, shortest first."""
    held: dict[str, list[int]] = {}
    for m, dataset in lake.bar_datasets(Path(root)).items():
        for s in sorted({s for _, s in lake.partitions(Path(root), dataset)}):
            held.setdefault(s, []).append(m)
    return held


def source_minutes(held: list[int], minutes: int) -> int | None:
    """The stored length (of ``held``, shortest first) that bars of ``minutes`` are built from: the
    shortest that divides them; None when none does."""
    return next((m for m in held if minutes % m == 0), None)


def why_not_built(held: list[int], minutes: int) -> str | None:
    """Why bars of ``minutes`` cannot be built from stored bars of lengths ``held`` (None: they can)."""
    if not held:
        return "no bars in the lake"
    if source_minutes(held, minutes):
        return None
    return (f"the lake holds {', '.join(bars_dataset_name(m) for m in held)} only: {minutes}-minute bars are "
            "built from stored bars whose length divides theirs, never from longer ones")


def bar_sources(root, symbols: list[str], minutes: int) -> dict[str, int]:
    """Each symbol's stored bar length that its ``minutes``-long bars are built from: the shortest the lake
    holds for it that divides ``minutes``. A symbol the lake has no bars of, or only bars that cannot build
    these, is an error naming what it has."""
    held = stored_bars(root)
    wanted = [s.upper() for s in symbols]
    missing = sorted(s for s in wanted if s not in held)
    if missing:
        raise FileNotFoundError(f"no bars in the lake at {root} for {missing}")
    for s in wanted:
        if why := why_not_built(held[s], minutes):
            raise TimeframeError(f"{s}: {why}")
    return {s: source_minutes(held[s], minutes) for s in wanted}


def lake_bars(root, symbols: list[str], start_ns: int, end_ns: int, source_minutes: int = 1) -> pa.Table:
    """The lake's stored ``source_minutes`` bars (bars_1m unless said) of ``symbols`` in [start, end)."""
    day = 86_400 * 10**9
    days = {lake.day_partition(d) for d in range(start_ns // day, (end_ns - 1) // day + 1)}
    dataset = bars_dataset_name(source_minutes)
    present = lake.partitions(Path(root), dataset)
    wanted = {s.upper() for s in symbols}
    missing = wanted - {s for _, s in present}
    if missing:
        raise FileNotFoundError(f"no {source_minutes}m bars in the lake at {root} for {sorted(missing)}")
    ts_type = BAR.field("ts").type
    window = [("ts", ">=", pa.scalar(start_ns, pa.int64()).cast(ts_type)),
              ("ts", "<", pa.scalar(end_ns, pa.int64()).cast(ts_type))]
    tables = [lake.read_partition(Path(root), dataset, d, s, filters=window)
              for d, s in present if s in wanted and d in days]
    if not tables:
        return BAR.empty_table()
    return pa.concat_tables(tables, promote_options="default").select(BAR.names).cast(BAR)


def read_lake_bars(root, symbols: list[str], timeframe: str, start_ns: int, end_ns: int) -> pa.Table:
    """Bars of ``timeframe`` for ``symbols`` that start in [start, end), straight from the lake's stored
    bars (each symbol's shortest that divide the timeframe; each bar from all of them, so the last one may
    reach past ``end``)."""
    minutes = timeframe_minutes(timeframe)
    step = minutes * MINUTE_NS
    lo, hi = -(-start_ns // step) * step, -(-end_ns // step) * step
    by_source: dict[int, list[str]] = {}
    for s, m in bar_sources(root, symbols, minutes).items():
        by_source.setdefault(m, []).append(s)
    parts = [resample(lake_bars(root, syms, lo, hi, m), minutes, m) for m, syms in sorted(by_source.items())]
    out = pa.concat_tables(parts) if parts else RESAMPLED.empty_table()
    return out.sort_by([("symbol", "ascending"), ("ts", "ascending")]) if len(parts) > 1 else out


SPAN_MINUTES = 30 * 1440  # about a month of minutes per Ray Data task


def bars_dataset(root, symbols: list[str], timeframe: str, start_ns: int, end_ns: int):
    """Bars of ``timeframe`` for many symbols over a big range, as a Ray Data dataset (write it with
    ``.write_parquet(dir)``): one task per symbol and about a month, each reading its stored bars from the
    lake and resampling them. Spans are whole bars, so no bar is cut between tasks; equal to
    :func:`read_lake_bars` over the same range."""
    import ray

    from tickray.ops.runtime import one_stage_execution

    minutes = timeframe_minutes(timeframe)
    step = minutes * MINUTE_NS
    span = max(1, SPAN_MINUTES // minutes) * step
    first, last = -(-start_ns // step) * step, -(-end_ns // step) * step
    sources = bar_sources(root, symbols, minutes)
    items = [{"symbol": s, "source": m, "lo": lo, "hi": min(lo + span, last)}
             for s, m in sources.items() for lo in range(first, last, span)]

    def task(batch: dict) -> pa.Table:
        m = int(batch["source"][0])
        return resample(lake_bars(root, [str(batch["symbol"][0])], int(batch["lo"][0]), int(batch["hi"][0]), m),
                        minutes, m)

    with one_stage_execution():
        return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
            task, batch_size=1, batch_format="numpy").materialize()
