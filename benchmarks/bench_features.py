"""Tick features (the full tick-v2 set) from the lake: the library, in one process and on Ray Data,
against a straightforward pandas implementation of the same features (resample + rolling; the baseline,
measured in this run on the same partitions). Also checks that both give the same numbers.

Rows are input ticks (trades + book states) per second of wall time, from the lake's Parquet to
features written as Parquet. Goal: library on Ray >= 5x pandas.
    python benchmarks/bench_features.py [--symbols 2] [--days 3] [--trades-per-day 4000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from tickray import lake
from tickray.features import FEATURE_NAMES, compute_features, grid_from_events
from tickray.features.job import build_features, features_for_partition
from tickray.ingest.job import ingest
from tickray.sim.synth import generate

sys.path.insert(0, str(Path(__file__).parent))
from pandas_features import pandas_features, pandas_grid

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]


def _pandas(t: pa.Table):
    df = t.to_pandas()
    df["ts"] = df["ts"].dt.tz_localize(None)
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=2)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--trades-per-day", type=int, default=4_000_000)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out / "market", SYMBOLS[: args.symbols], args.days, seed=11, trades_per_day=args.trades_per_day,
                 capture_minutes=1)
        root = out / "lake"
        ingest([out / "market" / "aggtrades", out / "market" / "depth"], root)
        parts = sorted(lake.partitions(root, "trades"))
        events = {p: (lake.read_partition(root, "trades", *p), lake.read_partition(root, "book", *p)) for p in parts}
        ticks = sum(t.num_rows + b.num_rows for t, b in events.values())
        print(f"{len(parts)} partitions, {ticks:,} ticks ({args.symbols} symbols x {args.days} days, "
              f"{args.trades_per_day:,} trades/day), {len(FEATURE_NAMES)} features")

        # Same numbers first: the pandas writing against the library on one whole partition.
        trades, book = events[parts[0]]
        ref = pandas_features(pandas_grid(_pandas(trades), _pandas(book)))
        ours = compute_features(grid_from_events(trades, book))
        bad = [f for f in FEATURE_NAMES if not np.allclose(ours[f], ref[f].to_numpy(), rtol=1e-6, atol=1e-9,
                                                               equal_nan=True)]
        print(f"agreement with pandas (rtol 1e-6): {len(FEATURE_NAMES) - len(bad)}/{len(FEATURE_NAMES)} features"
              + (f"; differ: {bad}" if bad else ""))

        # Each path reads the partitions from the lake and writes its features as Parquet.
        t0 = time.perf_counter()
        for d, s in parts:
            pandas_features(pandas_grid(_pandas(lake.read_partition(root, "trades", d, s)),
                                        _pandas(lake.read_partition(root, "book", d, s)))
                            ).to_parquet(out / f"pandas-{d}-{s}.parquet")
        base = ticks / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for d, s in parts:
            lake.write_partitions(features_for_partition(root, d, s), out / "lib", f"{d}-{s}")  # as the job writes
        single = ticks / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_features(root)  # the first run on a fresh cluster also starts and warms its workers
        cold = ticks / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_features(root)
        on_ray = ticks / (time.perf_counter() - t0)
    print(f"pandas (1 process):           {base:12,.0f} ticks/s  (baseline)")
    print(f"library (1 process):          {single:12,.0f} ticks/s  {single / base:5.2f}x")
    print(f"library on Ray Data, cold:    {cold:12,.0f} ticks/s  {cold / base:5.2f}x  (worker start-up included)")
    print(f"library on Ray Data (2 CPUs): {on_ray:12,.0f} ticks/s  {on_ray / base:5.2f}x  (goal >= 5x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
