"""Feature definitions, written once over a one-second grid and used by batch and streaming alike.

Every feature at row t depends on rows t-LOOKBACK+1 .. t only (no look-ahead). Windowed sums are taken
window by window (not by a running cumsum), so a feature computed on the last LOOKBACK rows is the same
number, bit for bit, as on the whole day: that is what lets a stream actor call this very function.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURE_SET_VERSION = "v1"
WINDOWS = (5, 30)
LOOKBACK = max(WINDOWS) + 1  # rows needed for one complete feature row (+1 for one-step differences)

FEATURE_NAMES = (
    "ret_1s", "ret_5s", "ret_30s",
    "ofi_5s", "ofi_30s",  # order-flow imbalance (Cont, Kukanov, Stoikov 2014), per unit of top depth
    "tflow_5s", "tflow_30s",  # signed trade volume / total trade volume
    "depth_imb", "spread_bps", "rv_30s", "logvol_30s", "trades_30s",
)


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan, dtype=np.float64)
    if k < x.size:
        out[k:] = x[: x.size - k]
    return out


def _rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    out = np.full(x.size, np.nan)
    if x.size >= w:
        out[w - 1:] = sliding_window_view(x, w).sum(axis=1)
    return out


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_sum(x, w) / w


def compute_features(grid: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feature columns for every grid row (NaN where the lookback is not yet full)."""
    bid, ask = np.asarray(grid["bid_px"], float), np.asarray(grid["ask_px"], float)
    qb, qa = np.asarray(grid["bid_sz"], float), np.asarray(grid["ask_sz"], float)
    buy, sell = np.asarray(grid["buy_qty"], float), np.asarray(grid["sell_qty"], float)
    mid = (bid + ask) / 2
    logmid = np.log(mid)
    out: dict[str, np.ndarray] = {}
    ret1 = logmid - _shift(logmid, 1)
    out["ret_1s"] = ret1 * 1e4
    for w in WINDOWS:
        out[f"ret_{w}s"] = (logmid - _shift(logmid, w)) * 1e4
    # CKS order-flow imbalance of the best quotes between consecutive seconds.
    pb, pa_, pqb, pqa = _shift(bid, 1), _shift(ask, 1), _shift(qb, 1), _shift(qa, 1)
    e = (np.where(bid >= pb, qb, 0.0) - np.where(bid <= pb, pqb, 0.0)
         - np.where(ask <= pa_, qa, 0.0) + np.where(ask >= pa_, pqa, 0.0))
    e[np.isnan(pb)] = np.nan
    depth = (qb + qa) / 2
    signed, total = buy - sell, buy + sell
    for w in WINDOWS:
        out[f"ofi_{w}s"] = _rolling_sum(e, w) / _rolling_mean(depth, w)
        t = _rolling_sum(total, w)
        out[f"tflow_{w}s"] = np.where(t > 0, _rolling_sum(signed, w) / np.where(t > 0, t, 1.0), 0.0)
        out[f"tflow_{w}s"][np.isnan(t)] = np.nan
    out["depth_imb"] = (qb - qa) / (qb + qa)
    out["spread_bps"] = (ask - bid) / mid * 1e4
    out["rv_30s"] = np.sqrt(_rolling_sum(np.square(ret1 * 1e4), 30))
    out["logvol_30s"] = np.log1p(_rolling_sum(total, 30))
    out["trades_30s"] = _rolling_sum(np.asarray(grid["n_trades"], float), 30)
    # The lookback is not full in the first rows: all features NaN there, never partial.
    incomplete = np.arange(mid.size) < LOOKBACK - 1
    for name in FEATURE_NAMES:
        out[name][incomplete] = np.nan
    return {name: out[name] for name in FEATURE_NAMES}


def latest_features(rows: list[dict]) -> dict[str, float] | None:
    """Features of the last row, from the last LOOKBACK grid rows (the streaming call)."""
    if len(rows) < LOOKBACK:
        return None
    window = rows[-LOOKBACK:]
    grid = {k: np.array([r[k] for r in window], dtype=np.float64) for k in window[0] if k != "ts"}
    feats = compute_features(grid)
    return {name: float(v[-1]) for name, v in feats.items()}
