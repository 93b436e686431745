"""One feature library for batch (Ray Data) and streaming (actors): see definitions.py."""

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
    "GridBuilder", "OnlineFeatures", "compute_features", "grid_from_events",
]
