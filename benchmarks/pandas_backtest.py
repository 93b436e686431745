"""The backtest rules of ``tickray.backtest.core`` written as a straightforward loop, row by row over each
symbol's rows (grouped by pandas): the baseline of ``bench_backtest.py`` and the independent reference the
core is tested against."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pandas_backtest(df: pd.DataFrame, threshold: float, max_position: float, hold_ns: int, latency_ns: int,
                    session_gap_ns: int, fee_bps: float, slippage_bps: float) -> pd.DataFrame:
    """``df``: ts (ns), symbol, price, prob (fixed sizing). Returns ts, symbol, position, net per row."""
    out = []
    for symbol, g in df.sort_values(["symbol", "ts"]).groupby("symbol", sort=True):
        ts, price, prob = g["ts"].tolist(), g["price"].tolist(), g["prob"].tolist()
        n = len(ts)
        session, decided = [], []
        sid, start, due, current = -1, 0, 0, 0.0
        for i in range(n):
            if i == 0 or ts[i] - ts[i - 1] > session_gap_ns:  # a new session: nothing decided yet
                sid, start, due, current = sid + 1, ts[i], ts[i], 0.0
            if ts[i] >= due:  # the first row at or after a decision's due time takes it
                p = prob[i]
                if pd.isna(p) or abs(p - 0.5) <= threshold:
                    current = 0.0
                else:
                    current = max_position if p > 0.5 else -max_position
                due = start + ((ts[i] - start) // hold_ns + 1) * hold_ns
            session.append(sid)
            decided.append(current)
        prev_pos = 0.0
        for i in range(n):
            j = i  # the last row of the session at or before ts - latency: its decision is the one filled
            while j >= 0 and ts[j] > ts[i] - latency_ns:
                j -= 1
            pos = decided[j] if j >= 0 and session[j] == session[i] else 0.0
            session_ends = i == n - 1 or session[i + 1] != session[i]
            if session_ends:
                pos = 0.0
            ret = 0.0 if session_ends else price[i + 1] / price[i] - 1
            cost = abs(pos - prev_pos) * (fee_bps + slippage_bps) / 1e4
            out.append((ts[i], symbol, pos, pos * ret - cost))
            prev_pos = pos
    return pd.DataFrame(out, columns=["ts", "symbol", "position", "net"])


def random_market(n_rows: int, n_symbols: int, seed: int = 0) -> pd.DataFrame:
    """Random-walk prices and noisy probabilities on one-minute bars with holes, ``n_rows`` in all: most
    steps a minute, some a few minutes (a missing bar or two), a few hours (a venue outage)."""
    rng = np.random.default_rng(seed)
    per = n_rows // n_symbols
    minute = 60_000_000_000
    frames = []
    for k in range(n_symbols):
        steps = rng.normal(0, 1e-3, per)
        gaps = rng.choice([1, 2, 5, 180], per, p=[0.95, 0.03, 0.015, 0.005])
        frames.append(pd.DataFrame({
            "ts": np.cumsum(gaps).astype(np.int64) * minute, "symbol": f"S{k:03d}",
            "price": 100 * np.exp(np.cumsum(steps)),
            "prob": np.clip(0.5 + 0.1 * rng.standard_normal(per), 0, 1)}))
    return pd.concat(frames, ignore_index=True)
