"""One feature library for batch (Ray Data) and streaming (actors): see definitions.py. The batch grid and
window sums run compiled (numba); ``compile_kernels`` fills their on-disk cache (``make setup`` runs it)."""

from tickray.features.definitions import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    FEATURE_SETS,
    FEATURES,
    LOOKBACK,
    OnlineFeatures,
    compute_features,
)
from tickray.features.grid import BOOK_LEVELS, GRID_FIELDS, GridBuilder, grid_from_events

__all__ = [
    "BOOK_LEVELS", "FEATURES", "FEATURE_NAMES", "FEATURE_SETS", "FEATURE_SET_VERSION", "GRID_FIELDS", "LOOKBACK",
    "GridBuilder", "OnlineFeatures", "compile_kernels", "compute_features", "grid_from_events",
]


def compile_kernels() -> None:
    """Compute the features of a two-second market, which compiles (or loads) the kernels for the array
    types real partitions give them."""
    import pyarrow as pa

    from tickray.features.grid import NS

    t0 = 1_704_067_200 * NS
    book = pa.table({"ts": pa.array([t0, t0 + NS], pa.int64()), "bid_px_1": [100.0, 100.0],
                     "ask_px_1": [101.0, 101.0]})
    trades = pa.table({"ts": pa.array([t0 + 1], pa.int64()), "price": [100.5], "qty": [1.0],
                       "side": pa.array([1], pa.int8())})
    compute_features(grid_from_events(trades, book))
