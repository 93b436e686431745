"""Capture days rebuilt a Ray task per day against one sequential rebuild of the same session, on 2 CPUs.

A generated 8-day capture of one symbol (hftbacktest's daily files: @depth every 4 s, @bookTicker,
@aggTrade), its book unbroken across midnight:
- with a REST snapshot opening every day's file (a collector that snapshots as it rotates), each day is
  independent: ``tickray ingest`` runs all eight at once;
- without (the real captures' shape: only the first day has one), each day waits for the book the day
  before ended with, so the days run one after another: printed so that nobody expects more there.
The baseline, measured in this run on the same files, is one task that reads the whole session in one
pass and validates and writes the same rows (the same reader, validator and writer). Both on a warm
cluster; the fastest of two runs counts. Goal: >= 1.6x on the independent days.
    python benchmarks/bench_book_days.py [--days 8] [--step-s 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from tickray.ingest.job import Input, _ingest_item, ingest
from tickray.lake import staging_dir
from tickray.sim.synth import capture_days
from tickray.sources.formats import BY_KIND


@ray.remote
def sequential(paths: list[str], stage: str) -> int:
    """The whole session in one task: one read, the books carried in memory from day to day."""
    item = Input("ws_capture", tuple(paths), BY_KIND["ws_capture"].datasets)
    rows = _ingest_item(item, 10, Path(stage))
    assert not any(r[4] for r in rows), rows
    return sum(int(r[3]) for r in rows if r[1] == "book" and not r[2])


def fastest(fn, runs: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def compare(files: list[Path], tmp: Path, label: str) -> float:
    seq_s, seq_rows = fastest(lambda: ray.get(sequential.remote([str(f) for f in files], str(staging_dir(tmp)))))
    par_s, report = fastest(lambda: ingest(files, tmp / "lake"))
    assert report.rows["book"] == seq_rows and not report.failed, (report.rows, seq_rows)
    print(f"{label}: {seq_rows:,} book rows, {report.rows['trades']:,} trades, {report.waves} wave(s)")
    print(f"  one sequential rebuild:  {seq_s:6.2f} s")
    print(f"  a task per day:          {par_s:6.2f} s  {seq_s / par_s:.2f}x")
    return seq_s / par_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--step-s", type=int, default=4, help="seconds between depth diffs")
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        independent = capture_days(tmp / "daily", "BTCUSDT", args.days, seed=3, step_s=args.step_s, daily_snapshot=True)
        chained = capture_days(tmp / "chained", "BTCUSDT", args.days, seed=3, step_s=args.step_s)
        mb = sum(f.stat().st_size for f in independent) / 2**20
        print(f"{args.days} capture days of BTCUSDT, {mb:,.0f} MiB gzip; 2 CPUs, warm workers")
        ray.get(sequential.remote([str(independent[0])], str(staging_dir(tmp))))  # start a worker
        ratio = compare(independent, tmp / "i", "every day opens with its own snapshot")
        compare(chained, tmp / "c", "only the first day has a snapshot (each day waits for the one before)")
    ray.shutdown()
    print(f"goal >= 1.6x on independent days: {'met' if ratio >= 1.6 else 'not met'}")


if __name__ == "__main__":
    main()
