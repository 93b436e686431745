"""Synthetic trade generation, end to end: simulate the trades, format the USD-M aggTrades CSV and write
its zip, against a straightforward per-trade loop doing the same (the baseline, measured in this run).

Prints trades/s for each stage and the ratio. Target: >= 1M trades/s for the whole path.
    python benchmarks/bench_generate.py [--trades 2000000]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from tickray.sim.synth import SECONDS_PER_DAY, _zip_csv, simulate_day, spec_for, write_agg_trades

DAY_MS = 1_704_067_200_000


def loop_baseline(spec, n_trades: int, rng: np.random.Generator, out: Path) -> int:
    """The same trade model one trade at a time, rows written with the csv module, then zipped."""
    ofi, price, made = 0.0, spec.price0, 0
    per_second = n_trades / SECONDS_PER_DAY
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
                "is_buyer_maker"])
    for sec in range(SECONDS_PER_DAY):
        ofi = 0.9 * ofi + math.sqrt(1 - 0.81) * rng.standard_normal()
        price *= math.exp(spec.daily_vol / math.sqrt(SECONDS_PER_DAY) * rng.standard_normal())
        bid = math.floor(price / spec.tick)
        for _ in range(rng.poisson(per_second)):
            buy = rng.random() < 1 / (1 + math.exp(-1.2 * ofi))
            qty = max(round(spec.median_qty * math.exp(rng.standard_normal() * 0.9), spec.qty_decimals), 0.001)
            t = DAY_MS + sec * 1000 + int(rng.integers(0, 1000))
            px = (bid + 1 if buy else bid) * spec.tick
            w.writerow([made, f"{px:.{spec.price_decimals}f}", f"{qty:.{spec.qty_decimals}f}", made, made, t,
                        "false" if buy else "true"])
            made += 1
    _zip_csv(out, "baseline.csv", buf.getvalue())
    return made


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trades", type=int, default=2_000_000, help="trades in the simulated day")
    args = ap.parse_args()
    spec = spec_for("BTCUSDT")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = simulate_day(spec, DAY_MS, args.trades, np.random.default_rng(1))
        t1 = time.perf_counter()
        write_agg_trades(m, Path(tmp) / "fast.zip")
        t2 = time.perf_counter()
        n = m.t_ms.size
        base_n = args.trades // 20  # the loop is slow: time it on a twentieth of the trades
        t = time.perf_counter()
        made = loop_baseline(spec, base_n, np.random.default_rng(1), Path(tmp) / "base.zip")
        slow = made / (time.perf_counter() - t)
    fast = n / (t2 - t0)
    print(f"simulate: {n / (t1 - t0):,.0f} trades/s | format CSV and write the zip: {n / (t2 - t1):,.0f} "
          f"trades/s  ({n:,} trades)")
    print(f"end to end (simulate + CSV + zip): {fast:,.0f} trades/s")
    print(f"baseline, per-trade loop + csv module + zip: {slow:,.0f} trades/s ({made:,} trades)")
    print(f"ratio: {fast / slow:.1f}x; target >= 1,000,000 trades/s end to end: {'met' if fast >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
