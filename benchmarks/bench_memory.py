"""Memory: ingest a dataset several times larger than Ray's object store, on a cluster whose object
store is deliberately small, and report the peak memory of the whole process tree (driver, Ray's
daemons, workers) against the dataset's in-memory size. Peak memory should follow the size of one input
file (what one task holds), not the size of the dataset.
    python benchmarks/bench_memory.py [--files 12] [--trades-per-file 1000000] [--object-store-mb 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import psutil
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from tickray.ingest.job import ingest
from tickray.sources.binance import read_agg_trades

sys.path.insert(0, str(Path(__file__).parent))
from bench_ingest import make_files  # the same synthetic aggTrades zips

MIB = 2**20


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants (Ray's daemons and workers)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=18)
    ap.add_argument("--trades-per-file", type=int, default=1_000_000)
    ap.add_argument("--object-store-mb", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = make_files(out / "in", symbols=1, days=args.files, trades_per_day=args.trades_per_file)
        one_file = read_agg_trades(files[0]).nbytes
        store = args.object_store_mb * MIB
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=store)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ingest(files[:2], out / "warm")  # start and warm both workers, so the rest is data, not imports
        with PeakRSS() as idle:
            time.sleep(1.0)
        print(f"one file: {one_file / MIB:,.0f} MiB in memory; object store {args.object_store_mb} MiB; "
              f"warm idle cluster (driver + Ray + 2 workers): {idle.peak / MIB:,.0f} MiB")
        for n in (args.files // 3, args.files):
            with PeakRSS() as peak:
                report = ingest(files[:n], out / f"lake{n}")
            above = peak.peak - idle.peak
            print(f"{n:3d} files, {report.rows['trades']:,} trades, {n * one_file / MIB:,.0f} MiB "
                  f"({n * one_file / store:.1f}x the object store): peak {peak.peak / MIB:,.0f} MiB, "
                  f"{above / MIB:,.0f} MiB above idle = {above / one_file:.1f} files' worth")
        ray.shutdown()


if __name__ == "__main__":
    main()
