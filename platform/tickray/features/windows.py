"""Sequence windows (N × T × F) for the LSTM / Transformer models, built shard by shard with Ray Data.

Window i ends at row t and holds rows t-T+1 .. t of one (date, symbol) shard of the feature lake, its
label is the label of row t. A window is emitted only if its T rows are consecutive seconds (no gap
in the grid) and every value and the label are defined; nothing is padded or filled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from tickray import lake
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


def windows_from_table(t: pa.Table, features: list[str], label: str, length: int) -> dict[str, np.ndarray]:
    """``x`` (N, T, F) float32, ``y`` (N,), ``ts`` (N,) of the window ends, from one shard sorted by ts."""
    t = t.sort_by("ts")
    ts = pc.cast(t["ts"], pa.int64()).to_numpy(zero_copy_only=False)
    x = np.column_stack([t[f].to_numpy(zero_copy_only=False).astype(np.float32) for f in features]) \
        if t.num_rows else np.zeros((0, len(features)), np.float32)
    y = t[label].to_numpy(zero_copy_only=False).astype(np.float64)
    one_symbol = np.zeros(ts.size, np.int8)
    keep = np.flatnonzero(complete_windows(x, ts, one_symbol, length) & ~np.isnan(y))
    return {"x": gather_windows(x, keep, length), "y": y[keep], "ts": ts[keep]}


def window_dataset(lake_root: Path, features: list[str], label: str, length: int) -> ray.data.Dataset:
    """A Ray Data dataset of windows (columns ``x`` [T, F], ``y``, ``ts``, ``symbol``): one task per
    (date, symbol) partition of the feature lake, so a window never spans two shards and no process ever
    holds the whole tensor."""
    parts = lake.partitions(lake_root, "features")
    if not parts:
        raise FileNotFoundError(f"no feature partitions under {Path(lake_root) / 'features'}; run `tickray features`")

    def to_windows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for date, symbol in zip(batch["date"], batch["symbol"]):
            t = lake.read_partition(lake_root, "features", date, symbol, columns=["ts", *features, label])
            w = windows_from_table(t, features, label, length)
            parts.append({**w, "symbol": np.array([symbol] * w["y"].size, dtype=object)})
        return {k: np.concatenate([p[k] for p in parts]) for k in ("x", "y", "ts", "symbol")}

    items = [{"date": d, "symbol": s} for d, s in parts]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(to_windows, batch_size=1)
