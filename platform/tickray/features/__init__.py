"""One feature definition for batch (Ray Data) and streaming (actors): see definitions.py."""

from tickray.features.definitions import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    LOOKBACK,
    compute_features,
    latest_features,
)
from tickray.features.grid import GRID_FIELDS, GridBuilder, grid_from_events

__all__ = [
    "FEATURE_NAMES", "FEATURE_SET_VERSION", "GRID_FIELDS", "LOOKBACK", "GridBuilder", "compute_features",
    "grid_from_events", "latest_features",
]
