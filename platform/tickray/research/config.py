"""What the rows stage is asked for: which data, how time is cut, and the label canary. Training's
config extends it with the models; the backtest and monitoring read rows with the same settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from tickray.config import StrictModel
from tickray.features import FEATURE_NAMES, FEATURE_SET_VERSION, FEATURES


class DataConfig(StrictModel):
    lake: Path | None = None  # default: the settings' lake
    symbols: list[str] = Field(default_factory=list)  # empty: every symbol in the feature lake
    start: str | None = None  # ISO dates, inclusive
    end: str | None = None
    # Only partitions whose every input (as the lake records it behind their rows: a file's absolute path,
    # a stream's URL) matches one of these globs, e.g. ["*/binance/ws/*"]; empty: wherever they came from.
    sources: list[str] = Field(default_factory=list)
    horizons_s: list[int] = Field(default_factory=lambda: [10, 60], min_length=1)
    # The model's inputs: these features (empty: the whole feature set), less those looking back more
    # than max_lookback_s (a short capture has few rows where a 15-minute feature is defined).
    features: list[str] = Field(default_factory=list)
    max_lookback_s: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _known_features(self):
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(unknown)} (feature set {FEATURE_SET_VERSION})")
        if not self.selected_features():
            raise ValueError(f"no feature looks back at most {self.max_lookback_s}s")
        return self

    def selected_features(self) -> list[str]:
        names = self.features or list(FEATURE_NAMES)
        return [n for n in names if self.max_lookback_s is None or FEATURES[n].lookback <= self.max_lookback_s]
    # Adjacent seconds are near-duplicates: fit on every Nth row (evaluation uses every row).
    train_every_s: int = Field(1, ge=1)


class SplitConfig(StrictModel):
    """Out of time: [development | calibration | test], an embargo between each. Out-of-fold predictions
    for the stacking meta-learner come from purged k-fold over the development window."""
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    calibration_fraction: float = Field(0.1, gt=0, lt=0.5)
    folds: int = Field(4, ge=2, le=20)
    # Rows dropped after a validation block or cut; default and least: the longer of the longest label
    # horizon and the features' longest look-back, plus the longest sequence window (research.rows.embargo_s).
    embargo_s: int | None = Field(None, ge=0)


class LabelsConfig(StrictModel):
    # Moves within ±this many bps of zero are neither up nor down: left out of fitting and of the scores
    # (tickray.features.labels.up_labels), never out of a backtest's traded rows.
    dead_band_bps: float = Field(0.0, ge=0)
    # The leakage canary: labels shuffled within time blocks of this many seconds; every model must
    # then score at chance. A block keeps its own share of up-moves, which over a short block is a
    # trend that backward-looking features can read: blocks must be long against the look-back.
    shuffle_within_s: int | None = Field(None, ge=1)


class RowsConfig(StrictModel):
    seed: int = 7
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)

    @property
    def longest_window(self) -> int:
        """Seconds of consecutive rows the longest consumer reads at once (sequence models: their window)."""
        return 1

