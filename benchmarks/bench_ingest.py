"""Ingest throughput: Binance aggTrades zips → validated, partitioned lake Parquet, with tickray's Ray Data
ingest on 2 CPUs against a single-process pyarrow read → validate → write of the same files (the
baseline, measured in this run with the same reader and validator).

Goal: >= 1.5x (2x is the ceiling on 2 cores).
    python benchmarks/bench_ingest.py [--symbols 2] [--days 10] [--trades-per-day 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from tickray import lake
from tickray.ingest.job import ingest
from tickray.lake.validate import check_trades
from tickray.sim.synth import simulate_day, spec_for, write_agg_trades
from tickray.sources.binance import read_agg_trades

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]
DAY0_MS = 1_704_067_200_000


def make_files(out: Path, symbols: int, days: int, trades_per_day: int) -> list[Path]:
    import numpy as np

    files = []
    for si, sym in enumerate(SYMBOLS[:symbols]):
        rng = np.random.default_rng([5, si])
        for d in range(days):
            m = simulate_day(spec_for(sym), DAY0_MS + d * 86_400_000, trades_per_day, rng, id_base=d * 10**8)
            p = out / f"{sym}-aggTrades-2024-01-{d + 1:02d}.zip"
            write_agg_trades(m, p)
            files.append(p)
    return files


def pyarrow_baseline(files: list[Path], root: Path) -> int:
    rows = 0
    for f in files:
        t = read_agg_trades(f)
        t = t.append_column("reason", check_trades(t))
        good = t.filter(pc.is_null(t["reason"])).drop_columns(["reason"])
        good = good.append_column("date", lake.date_column(good["ts"]))
        pq.write_to_dataset(good, root, partition_cols=["date", "symbol"],
                            basename_template=f"{f.stem}-{{i}}.parquet")
        rows += good.num_rows
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=2)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--trades-per-day", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = make_files(out / "in", args.symbols, args.days, args.trades_per_day)
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"{len(files)} aggTrades zips, {mb:,.0f} MiB, {args.symbols * args.days * args.trades_per_day:,} trades")
        t0 = time.perf_counter()
        base_rows = pyarrow_baseline(files, out / "baseline")
        base = base_rows / (time.perf_counter() - t0)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        report = ingest(files, out / "lake")  # a fresh cluster: its workers start and import here
        cold = report.rows["trades"] / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        again = ingest(files, out / "lake")  # idempotent re-ingest, workers warm
        warm = again.rows["trades"] / (time.perf_counter() - t0)
        ray.shutdown()
    assert report.rows["trades"] == again.rows["trades"] == base_rows, (report.rows, base_rows)
    print(f"pyarrow, 1 process:           {base:12,.0f} rows/s  (baseline)")
    print(f"tickray on Ray Data, cold:    {cold:12,.0f} rows/s  {cold / base:5.2f}x  (worker start-up included)")
    print(f"tickray on Ray Data (2 CPUs): {warm:12,.0f} rows/s  {warm / base:5.2f}x  (goal >= 1.5x)")


if __name__ == "__main__":
    main()
