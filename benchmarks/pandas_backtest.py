"""The backtest rules of ``tickray.backtest.core`` written as a straightforward pandas loop, row by row:
the baseline of ``bench_backtest.py`` and the independent reference the core is tested against."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pandas_backtest(df: pd.DataFrame, threshold: float, max_position: float, hold: int, latency: int,
                    fee_bps: float, slippage_bps: float) -> pd.DataFrame:
    """``df``: ts, symbol, price, prob (fixed sizing). Returns ts, symbol, position, net per row."""
    out = []
    for symbol, g in df.sort_values(["symbol", "ts"]).groupby("symbol", sort=True):
        g = g.reset_index(drop=True)
        decided = []
        current = 0.0
        for i in range(len(g)):
            if i % hold == 0:
                p = g.loc[i, "prob"]
                if pd.isna(p) or abs(p - 0.5) <= threshold:
                    current = 0.0
                else:
                    current = max_position if p > 0.5 else -max_position
            decided.append(current)
        prev_pos = 0.0
        for i in range(len(g)):
            pos = decided[i - latency] if i - latency >= 0 else 0.0
            if i == len(g) - 1:
                pos = 0.0
            ret = g.loc[i + 1, "price"] / g.loc[i, "price"] - 1 if i + 1 < len(g) else 0.0
            cost = abs(pos - prev_pos) * (fee_bps + slippage_bps) / 1e4
            out.append((g.loc[i, "ts"], symbol, pos, pos * ret - cost))
            prev_pos = pos
    return pd.DataFrame(out, columns=["ts", "symbol", "position", "net"])


def random_market(n_rows: int, n_symbols: int, seed: int = 0) -> pd.DataFrame:
    """Random-walk prices and noisy probabilities, ``n_rows`` in all."""
    rng = np.random.default_rng(seed)
    per = n_rows // n_symbols
    frames = []
    for k in range(n_symbols):
        steps = rng.normal(0, 1e-3, per)
        frames.append(pd.DataFrame({
            "ts": np.arange(per, dtype=np.int64) * 60_000_000_000, "symbol": f"S{k:03d}",
            "price": 100 * np.exp(np.cumsum(steps)),
            "prob": np.clip(0.5 + 0.1 * rng.standard_normal(per), 0, 1)}))
    return pd.concat(frames, ignore_index=True)
