"""Synthetic trade generation: the vectorised core against a per-trade Python loop of the same model.

Prints trades/s for both and their ratio (target: >= 1M trades/s for the vectorised core).
    python benchmarks/bench_generate.py [--trades 2000000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from tickray.synth import SECONDS_PER_DAY, simulate_day, spec_for


def loop_baseline(spec, day_start_ms: int, n_trades: int, rng: np.random.Generator) -> int:
    """The same trade model, one trade at a time (what the vectorised code replaces)."""
    ofi, price, made = 0.0, spec.price0, 0
    per_second = n_trades / SECONDS_PER_DAY
    for sec in range(SECONDS_PER_DAY):
        ofi = 0.9 * ofi + math.sqrt(1 - 0.81) * rng.standard_normal()
        price *= math.exp(spec.daily_vol / math.sqrt(SECONDS_PER_DAY) * rng.standard_normal())
        bid = math.floor(price / spec.tick)
        for _ in range(rng.poisson(per_second)):
            buy = rng.random() < 1 / (1 + math.exp(-1.2 * ofi))
            qty = max(round(spec.median_qty * math.exp(rng.standard_normal() * 0.9), spec.qty_decimals), 0.001)
            _ = (day_start_ms + sec * 1000 + int(rng.integers(0, 1000)), (bid + 1 if buy else bid) * spec.tick, qty)
            made += 1
    return made


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trades", type=int, default=2_000_000, help="trades per simulated day")
    args = ap.parse_args()
    spec = spec_for("BTCUSDT")
    t = time.perf_counter()
    m = simulate_day(spec, 1_704_067_200_000, args.trades, np.random.default_rng(1))
    fast = m.t_ms.size / (time.perf_counter() - t)
    base_n = args.trades // 20  # the loop is slow: time it on a twentieth of the trades
    t = time.perf_counter()
    made = loop_baseline(spec, 1_704_067_200_000, base_n, np.random.default_rng(1))
    slow = made / (time.perf_counter() - t)
    print(f"vectorised core: {fast:,.0f} trades/s ({m.t_ms.size:,} trades)")
    print(f"per-trade loop baseline: {slow:,.0f} trades/s ({made:,} trades)")
    print(f"ratio: {fast / slow:.1f}x; target >= 1,000,000 trades/s: {'met' if fast >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
