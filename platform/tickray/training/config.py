"""The training job's YAML config (`jobs/configs/*.yaml`): what to train, on which data, how to judge it.

Every key is known: an unknown model or key, a bad value or a missing file is a one-line
:class:`ConfigError` before any cluster time is spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tickray.config import read_yaml_mapping
from tickray.errors import ConfigError
from tickray.features import FEATURE_NAMES, FEATURE_SET_VERSION, FEATURES

M = TypeVar("M", bound=BaseModel)
SEQUENCE_FAMILIES = ("lstm", "transformer")
FAMILIES = ("xgboost", *SEQUENCE_FAMILIES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """Per worker (Ray Train) or per trial (Ray Tune); ``gpu`` may be a fraction for trials."""
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @property
    def threads(self) -> int:
        """Threads for a fit in these resources (at least one, for a fractional CPU)."""
        return max(1, int(self.cpu))


class DataConfig(_Strict):
    lake: Path | None = None  # default: the settings' lake
    symbols: list[str] = Field(default_factory=list)  # empty: every symbol in the feature lake
    start: str | None = None  # ISO dates, inclusive
    end: str | None = None
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


class SplitConfig(_Strict):
    """Out of time: [development | calibration | test], an embargo between each. Out-of-fold predictions
    for the stacking meta-learner come from purged k-fold over the development window."""
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    calibration_fraction: float = Field(0.1, gt=0, lt=0.5)
    folds: int = Field(4, ge=2, le=20)
    # Rows dropped after a validation block or cut; default: the longest label horizon plus the longest
    # sequence window, so no kept row's features or label reach across.
    embargo_s: int | None = Field(None, ge=0)


class XGBoostConfig(_Strict):
    num_workers: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    params: dict[str, Any] = Field(default_factory=lambda: {
        "max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 20})


class SequenceConfig(_Strict):
    num_workers: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    window: int = Field(30, ge=2)  # seconds of feature rows per example
    hidden: int = Field(32, ge=4)  # LSTM hidden size / Transformer model width
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1)  # Transformer only
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=1)  # epochs without a better validation loss before stopping
    batch_size: int = Field(256, ge=8)
    lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class ModelsConfig(_Strict):
    """The base models of the ensemble; the class-prior and logistic baselines are always trained."""
    xgboost: XGBoostConfig | None = None
    lstm: SequenceConfig | None = None
    transformer: SequenceConfig | None = None

    def enabled(self) -> dict[str, XGBoostConfig | SequenceConfig]:
        return {f: getattr(self, f) for f in FAMILIES if getattr(self, f) is not None}


class ShockConfig(_Strict):
    enabled: bool = True
    # Share of development rows the isolation forest calls abnormal; confidence falls to 0 there.
    contamination: float = Field(0.01, gt=0, lt=0.5)


class EnsembleConfig(_Strict):
    calibration: Literal["isotonic", "platt"] = "platt"  # Platt keeps the ranking (AUC)
    shock: ShockConfig = Field(default_factory=ShockConfig)


class PromotionConfig(_Strict):
    metric: Literal["auc", "logloss", "brier", "balanced_accuracy", "f1", "accuracy"] = "auc"
    # The challenger must beat the champion by this much on the same out-of-time window.
    margin: float = Field(0.0, ge=0)


class RegistryConfig(_Strict):
    prefix: str = "tickray"  # registered models: <prefix>-<family>, <prefix>-ensemble
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)


class LabelsConfig(_Strict):
    # The leakage canary: labels shuffled within time blocks of this many seconds; every model must
    # then score at chance. A block keeps its own share of up-moves, which over a short block is a
    # trend that backward-looking features can read: blocks must be long against the look-back.
    shuffle_within_s: int | None = Field(None, ge=1)


class TuneConfig(_Strict):
    family: Literal["xgboost", "lstm", "transformer"] = "xgboost"
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    resources: Resources = Field(default_factory=Resources)
    metric: Literal["valid_auc", "valid_logloss"] = "valid_logloss"
    # ASHA: trials are stopped at these rungs (boosting rounds / epochs) when in the bottom part.
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    max_failures: int = Field(1, ge=0)  # retries of a failing trial
    # Search space: parameter → {type: uniform|loguniform|int|choice, low, high, values}
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train_after: bool = True  # hand the best config to a full training job


class TrainConfig(_Strict):
    name: str = "tickray"  # the MLflow experiment
    seed: int = 7
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig(xgboost=XGBoostConfig()))
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _some_model(self):
        if not self.models.enabled():
            raise ValueError(f"models: name at least one of {', '.join(FAMILIES)}")
        return self

    @model_validator(mode="after")
    def _canary_blocks_outlast_lookback(self):
        lookback = max(FEATURES[n].lookback for n in self.data.selected_features()) + 1
        shortest = 2 * (lookback + max(self.data.horizons_s))
        if self.labels.shuffle_within_s is not None and self.labels.shuffle_within_s < shortest:
            raise ValueError(f"labels.shuffle_within_s ({self.labels.shuffle_within_s}) must be at least {shortest}: "
                             "twice the features' look-back plus the longest horizon, or a block's share of "
                             "up-moves (its trend) is readable from the features")
        return self

    @property
    def longest_window(self) -> int:
        return max([1, *(m.window for f, m in self.models.enabled().items() if f in SEQUENCE_FAMILIES)])

    @property
    def embargo_s(self) -> int:
        if self.split.embargo_s is not None:
            return self.split.embargo_s
        return max(self.data.horizons_s) + self.longest_window


def one_line_error(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        if len(e["loc"]) == 2 and e["loc"][0] == "models":
            return f"{where}: unknown model {e['loc'][1]!r} (known: {', '.join(FAMILIES)})"
        return f"{where}: unknown key {loc!r}"
    return f"{where}: {loc + ': ' if loc else ''}{e['msg']}"


def parse_config(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(one_line_error(err, where)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config at ``path`` (None: the defaults) with dotted-key ``overrides`` applied."""
    return load_job_config(TrainConfig, path, overrides, "training config")


def load_job_config(schema: type[M], path: str | Path | None, overrides: dict[str, Any] | None, what: str) -> M:
    """A job's YAML config (training, backtest, monitor) at ``path`` (None: the defaults) with dotted-key
    ``overrides``, validated by ``schema``; a bad one is a one-line :class:`ConfigError`."""
    raw = read_yaml_mapping(Path(path), what) if path is not None else {}
    try:
        return schema.model_validate(apply_overrides(raw, overrides))
    except ValidationError as err:
        raise ConfigError(one_line_error(err, str(path or "config"))) from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``--set a.b.c=V`` overrides written into a config mapping."""
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw
