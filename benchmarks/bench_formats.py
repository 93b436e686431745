"""Vendor book formats into lake rows, each against a bare read of the same bytes measured in this run:

- Databento DBN MBO (the shared GLBX.MDP3 file, read ``--repeat`` times): our reader (decode, the L3 book
  by order id, top-10 rows after every event that ends a packet, trades) against a bare ``databento-dbn``
  decode of the same file to Python records. Goal: >= 1M events/s per core (one process is one core).
- Tardis.dev ``incremental_book_L2`` (a generated file of ``--rows`` rows in the documented columns, two
  symbols, a snapshot each and then updates of one to five levels): our rebuild (the CSV read, one book
  state per update, top-10 rows) against a plain ``pyarrow.csv`` read of the file. Goal: >= 0.3x.

Each is timed three times; the fastest counts.
    python benchmarks/bench_formats.py [--repeat 20] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tickray.sources import databento, tardis

DATA = Path(os.environ.get("TICKRAY_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MBO = DATA / "cme" / "databento" / "orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst"


def fastest(fn, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bare_decode(path: Path) -> int:
    dec = dbn.DBNDecoder(has_metadata=True, compression=dbn.Compression.ZSTD)
    dec.write(path.read_bytes())
    return sum(1 for r in dec.decode() if hasattr(r, "order_id"))


def dbn_mbo(repeat: int) -> None:
    events = bare_decode(MBO)
    bare = fastest(lambda: [bare_decode(MBO) for _ in range(repeat)])
    ours = fastest(lambda: [databento.read_dbn(MBO, levels=10) for _ in range(repeat)])
    rows = {ds: t for ds, (t, _) in databento.read_dbn(MBO, levels=10).items()}
    n = events * repeat
    print(f"DBN MBO: {events:,} events x {repeat} ({rows['book'].num_rows:,} book rows, "
          f"{rows['trades'].num_rows:,} trades each)")
    print(f"  bare databento-dbn decode:        {n / bare:12,.0f} events/s")
    print(f"  tickray (decode, L3 book, rows):  {n / ours:12,.0f} events/s  {bare / ours:.2f}x the bare decode "
          f"(goal >= 1,000,000 events/s per core: {'met' if n / ours >= 1e6 else 'not met'})")


def write_incremental_l2(path: Path, rows: int, seed: int = 5) -> None:
    """``rows`` rows of two symbols' books: a 200-level snapshot each, then updates that move levels near
    the touch (one to five rows per update; a size of 0 removes the level), microseconds apart."""
    rng = np.random.default_rng(seed)
    symbols, ticks = ["BTCUSDT", "ETHUSDT"], [0.1, 0.01]
    mids = [60_000.0, 3_000.0]
    out = []
    ts = 1_700_000_000_000_000
    for s, tick, mid in zip(symbols, ticks, mids):
        for side, sign in (("bid", -1), ("ask", 1)):
            for i in range(1, 201):
                out.append((s, ts, True, side, round(mid + sign * i * tick, 2), float(rng.integers(1, 50))))
    n_updates = (rows - len(out)) // 3
    size = rng.integers(1, 6, n_updates)
    which = rng.integers(0, 2, n_updates)
    for k in range(n_updates):
        ts += int(rng.integers(50, 500))
        tick, mid = ticks[which[k]], mids[which[k]]
        for _ in range(size[k]):
            side = "bid" if rng.random() < 0.5 else "ask"
            level = int(rng.integers(1, 40))
            price = round(mid + (level if side == "ask" else -level) * tick, 2)
            amount = 0.0 if rng.random() < 0.2 else float(rng.integers(1, 50))
            out.append((symbols[which[k]], ts, False, side, price, amount))
    t = pa.table({"exchange": ["binance-futures"] * len(out), "symbol": [r[0] for r in out],
                  "timestamp": [r[1] for r in out], "local_timestamp": [r[1] + 1_000 for r in out],
                  "is_snapshot": [r[2] for r in out], "side": [r[3] for r in out],
                  "price": [r[4] for r in out], "amount": [r[5] for r in out]})
    with open(path, "wb") as f:  # pyarrow quotes a header it writes; Tardis's is bare
        f.write((",".join(t.column_names) + "\n").encode())
        pacsv.write_csv(t, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def tardis_l2(rows: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "binance-futures_incremental_book_L2_2023-11-14_MIX.csv"
        write_incremental_l2(path, rows)
        n, size = pacsv.read_csv(path).num_rows, path.stat().st_size
        plain = fastest(lambda: pacsv.read_csv(path))
        ours = fastest(lambda: tardis.rebuild_incremental_book(path, levels=10))
        book, dropped, days = tardis.rebuild_incremental_book(path, levels=10)
        updates = sum(d.report["applied"] for d in days)
        assert not dropped and not any(d.report["resyncs"] for d in days), dropped[:3]
    print(f"Tardis incremental_book_L2: {n:,} rows, {size / 2**20:.0f} MiB "
          f"({updates:,} updates → {book.num_rows:,} book rows)")
    print(f"  plain pyarrow.csv read:           {n / plain:12,.0f} rows/s")
    print(f"  tickray (read, book, rows):       {n / ours:12,.0f} rows/s  {plain / ours:.2f}x the plain read "
          f"(goal >= 0.3x: {'met' if plain / ours >= 0.3 else 'not met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    dbn_mbo(args.repeat)
    tardis_l2(args.rows)


if __name__ == "__main__":
    main()
