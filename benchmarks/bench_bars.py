"""Bars: the three workloads of the bar layer, each against a baseline measured in the same run.

- Screener: N symbols x D days of 1h bars computed from the lake's 1m bars, plus a screen (movers).
  Cold (empty memory and Redis, from the lake) and warm (a second run in the same process), each
  against a naive pandas path that re-reads the 1m Parquet and re-resamples every time. Then a
  realistic session (several rules and timeframes, then the same session in a new process that shares
  Redis) for the cache hit ratio, and the peak memory of the process.
  Goals: warm < 100 ms, cold >= 2x faster than naive, peak < 2 GB, >= 80% hits over the session.
- Backtest prep: a year of 15m, 1h and 4h bars for 5 symbols from 1m in the lake. Goal: < 5 s.
- Collector: a research day (the 15m/1h/4h screen of a watch list refreshed every 15 minutes) against a
  local venue serving the same 1m bars: requests made versus a naive client that fetches each
  timeframe's window of 1m bars at every refresh. Goal: >= 90% fewer.

    python benchmarks/bench_bars.py [--symbols 200] [--days 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import tickray  # noqa: F401
from tickray import lake
from tickray.bars.build import MINUTE_NS, resample
from tickray.bars.cache import BarCache
from tickray.bars.collector import Collector, venue
from tickray.bars.screener import screen
from tickray.config import Settings
from tickray.lake.schema import BAR
from tickray.market.venues import binance_kline_weight
from tickray.ops import stack
from tickray.sim.klines import KlineVenue

sys.path.insert(0, str(Path(__file__).parent))
from bench_memory import PeakRSS

DAY = 1440 * MINUTE_NS
T0 = 1_735_689_600 * 10**9  # 2025-01-01 UTC


def make_minutes(symbol: str, days: int, seed: int, start: int = T0) -> pa.Table:
    """A random walk of 1m bars (every minute present, as Binance's klines)."""
    rng = np.random.default_rng(seed)
    n = days * 1440
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[close[0], close[:-1]]
    spread = np.abs(rng.normal(0, 5e-4, n)) * close
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    volume = rng.gamma(2.0, 50.0, n)
    vwap = (high + low + close) / 3
    return pa.table({
        "ts": pa.array(start + np.arange(n) * MINUTE_NS, pa.int64()).cast(BAR.field("ts").type),
        "symbol": pa.array([symbol] * n), "open": open_, "high": high, "low": low, "close": close,
        "volume": volume, "quote_volume": volume * vwap, "trades": rng.integers(1, 500, n),
        "vwap": vwap, "buy_volume": volume * rng.uniform(0.3, 0.7, n)}, schema=BAR)


def write_lake(root: Path, symbols: list[str], days: int) -> None:
    for i, s in enumerate(symbols):
        t = make_minutes(s, days, i)
        lake.write_partitions(t.append_column("date", lake.date_column(t["ts"])), root / "bars_1m", "bench")


def naive_screen(root: Path, symbols: list[str], minutes: int, start: int, end: int) -> pd.DataFrame:
    """The baseline: read the window's 1m Parquet with pandas (one read for all symbols), resample to full
    OHLCV bars with pandas, rank by |return|."""
    days = pd.date_range(pd.Timestamp(start, tz="UTC").normalize(), pd.Timestamp(end - 1, tz="UTC"), freq="D")
    df = pd.read_parquet(root / "bars_1m", filters=[("symbol", "in", symbols),
                                                    ("date", "in", [d.strftime("%Y-%m-%d") for d in days])])
    df = df[(df["ts"] >= pd.Timestamp(start, tz="UTC")) & (df["ts"] < pd.Timestamp(end, tz="UTC"))]
    df["symbol"] = df["symbol"].astype(str)
    bars = (df.set_index("ts").groupby("symbol").resample(f"{minutes}min", origin="epoch")
            .agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum",
                  "quote_volume": "sum", "trades": "sum", "buy_volume": "sum"}).dropna())
    bars["vwap"] = bars["quote_volume"] / bars["volume"]  # the same bars as ours, then the same rule
    first, last = bars.groupby(level=0)["open"].first(), bars.groupby(level=0)["close"].last()
    ret = last / first - 1
    return pd.DataFrame({"symbol": ret.index, "score": ret.abs().to_numpy()}).sort_values(
        "score", ascending=False, kind="stable").reset_index(drop=True)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def bench_screener(work: Path, settings: Settings, n_symbols: int, days: int) -> dict:
    root = work / "screen-lake"
    symbols = [f"S{i:03d}USDT" for i in range(n_symbols)]
    _, gen_s = timed(write_lake, root, symbols, days)
    print(f"screener data: {n_symbols} symbols x {days} days of 1m bars, {n_symbols * days} partitions "
          f"({gen_s:.1f}s to write)")
    r = stack.redis_client(settings)
    r.flushdb()
    end = T0 + days * DAY
    start = end - days * DAY
    with PeakRSS() as peak:  # ours first, so the peak is ours and not what pandas left behind
        cache = BarCache(root, r)
        cold, cold_s = timed(screen, cache, symbols, "1h", days, "movers", end_ns=end)
        warm, warm_s = timed(screen, cache, symbols, "1h", days, "movers", end_ns=end)
        session = [("1h", days, "movers"), ("1h", days, "rsi"), ("1h", days, "volume_spike"),
                   ("4h", days, "movers"), ("15m", 7, "rsi"), ("1h", 7, "volume_spike")]
        hits = lookups = 0
        for _process in range(2):  # the same session again the next day, in a new process (shared Redis)
            c = BarCache(root, r)
            for tf, d, rule in session:
                screen(c, symbols, tf, d, rule, end_ns=end)
            m = c.metrics()
            hits, lookups = hits + m["l1"] + m["l2"], lookups + m["lookups"]
    naive, naive_s = timed(naive_screen, root, symbols, 60, start, end)
    _, naive2_s = timed(naive_screen, root, symbols, 60, start, end)
    assert cold["symbol"].tolist() == warm["symbol"].tolist() == naive["symbol"].tolist()
    assert np.allclose(cold["score"], naive["score"], rtol=1e-12)
    out = {"naive_s": min(naive_s, naive2_s), "cold_s": cold_s, "warm_s": warm_s,
           "peak_mb": peak.peak / 2**20, "hit": hits / lookups}
    print(f"screener ({n_symbols} symbols x {days} days, 1h from 1m, movers):")
    print(f"  naive pandas (re-read 1m, re-resample): {out['naive_s']:.2f}s")
    print(f"  cold (lake → cache): {cold_s:.2f}s  = {out['naive_s'] / cold_s:.1f}x faster than naive "
          f"(goal >= 2x)")
    print(f"  warm (cache): {warm_s * 1000:.0f} ms = {out['naive_s'] / warm_s:.0f}x faster than naive "
          f"(goal < 100 ms)")
    print(f"  session hit ratio ({len(session)} screens, then again in a new process sharing Redis): "
          f"{out['hit']:.0%} of {lookups:,} chunks asked for came from L1 or L2 (goal >= 80%)")
    print(f"  peak memory of this process (cold, warm and the session): {out['peak_mb']:.0f} MiB (goal < 2 GB)")
    return out


def bench_backtest_prep(work: Path, settings: Settings) -> dict:
    root = work / "year-lake"
    symbols = [f"Y{i}USDT" for i in range(5)]
    write_lake(root, symbols, 365)
    stack.redis_client(settings).flushdb()
    cache = BarCache(root, stack.redis_client(settings))
    end = T0 + 365 * DAY

    def prep():
        return {tf: cache.get_bars(symbols, tf, T0, end) for tf in ("15m", "1h", "4h")}

    got, s = timed(prep)
    one = pa.concat_tables([make_minutes(sym, 365, i) for i, sym in enumerate(symbols)])
    assert got["4h"].equals(resample(one, 240))
    print(f"backtest prep (a year of 15m/1h/4h for 5 symbols from 1m in the lake, cold): {s:.2f}s (goal < 5 s)")
    return {"prep_s": s}


def bench_collector(work: Path) -> dict:
    symbols = [f"W{i}USDT" for i in range(5)]
    history = 7
    data = pa.concat_tables([make_minutes(s, history + 1, i, start=T0 - history * DAY) for i, s in enumerate(symbols)])
    refreshes = 96  # a day, every 15 minutes
    timeframes = (15, 60, 240)
    with KlineVenue(data, weight_limit=10**9) as v:
        now = [T0 / 1e9]
        collector = Collector(work / "collector-lake", venue("binance-usdm", v.url), clock=lambda: now[0])
        naive_requests = naive_weight = 0
        for i in range(refreshes):
            now[0] = (T0 + i * 15 * MINUTE_NS) / 1e9 + 1
            end = int(now[0] // 60) * MINUTE_NS
            cache = BarCache(collector.lake_root, None, collector=collector)  # a new screen process each time
            for minutes in timeframes:
                cache.get_bars(symbols, f"{minutes}m", end - history * DAY, end)
                # naive: every timeframe fetches its whole window of 1m bars, every time
                n = history * 1440
                pages = -(-n // 1500)
                naive_requests += pages * len(symbols)
                naive_weight += len(symbols) * ((pages - 1) * 10 + binance_kline_weight(n - (pages - 1) * 1500))
        ours = collector.total
    fewer = 1 - ours.requests / naive_requests
    print(f"collector ({len(symbols)} symbols, 15m/1h/4h over {history} days, refreshed {refreshes} times):")
    print(f"  naive per-timeframe fetch: {naive_requests:,} requests (weight {naive_weight:,})")
    print(f"  collector: {ours.requests:,} requests (weight {ours.weight:,}) = {fewer:.1%} fewer (goal >= 90%)")
    return {"fewer": fewer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = Settings(state_dir=work / "state", redis_port=stack.free_port())
        stack.start_redis(settings)
        try:
            bench_screener(work, settings, args.symbols, args.days)
            bench_backtest_prep(work, settings)
            bench_collector(work)
        finally:
            stack.stop_redis(settings)


if __name__ == "__main__":
    main()
