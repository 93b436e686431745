"""Sequence windows (N × T × F) for the LSTM / Transformer models, gathered from the row matrix.

Window i ends at row t and holds rows t-T+1 .. t of one symbol; its label is the label of row t. A window
is used only if its T rows are consecutive seconds (no gap in the grid) and every value is defined;
nothing is padded or filled. Training gathers them batch by batch, so they are never materialised whole.
"""

from __future__ import annotations

import numpy as np

from tickray.features.grid import NS


def complete_windows(x: np.ndarray, ts: np.ndarray, symbol: np.ndarray, window: int) -> np.ndarray:
    """For rows sorted by (symbol, ts): True where rows i-window+1..i are one symbol, one second apart, and
    every feature is defined."""
    n = ts.size
    ok = np.zeros(n, bool)
    if n < window:
        return ok
    defined = ~np.isnan(x).any(axis=1)
    bad = np.concatenate([[0], np.cumsum(~defined)])
    ends = np.arange(window - 1, n)
    starts = ends - window + 1
    ok[ends] = ((ts[ends] - ts[starts] == (window - 1) * NS) & (symbol[ends] == symbol[starts])
                & (bad[ends + 1] - bad[starts] == 0))
    return ok


def gather_windows(x: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """(len(ends), window, F) windows ending at ``ends`` (each must be a complete window)."""
    return x[ends[:, None] + np.arange(-window + 1, 1)[None, :]]
