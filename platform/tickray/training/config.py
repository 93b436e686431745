"""The training job's YAML config (`jobs/configs/*.yaml`): what to train, on which data, how to judge it.

Every key is known: an unknown model or key, a bad value or a missing file is a one-line
:class:`ConfigError` before any cluster time is spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from tickray.config import StrictModel, read_yaml_mapping
from tickray.errors import ConfigError
from tickray.features import FEATURES
from tickray.research.config import RowsConfig

M = TypeVar("M", bound=BaseModel)
SEQUENCE_FAMILIES = ("lstm", "transformer")
FAMILIES = ("xgboost", *SEQUENCE_FAMILIES)




class Resources(StrictModel):
    """Per worker (Ray Train) or per trial (Ray Tune); ``gpu`` may be a fraction for trials."""
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @property
    def threads(self) -> int:
        """Threads for a fit in these resources (at least one, for a fractional CPU)."""
        return max(1, int(self.cpu))


class XGBoostConfig(StrictModel):
    num_workers: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    # The final fit: in one Ray task with plain xgboost.train ("never"), on Ray Train's XGBoostTrainer with
    # num_workers workers ("always"), or the first when the training set fits one worker's memory ("auto").
    distributed: Literal["auto", "always", "never"] = "auto"
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    params: dict[str, Any] = Field(default_factory=lambda: {
        "max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 20})


class SequenceConfig(StrictModel):
    num_workers: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    # The final fit: in one Ray task ("never"), on Ray Train's TorchTrainer with num_workers workers
    # ("always"), or the first when one worker is asked for, since DDP then has nothing to share ("auto").
    distributed: Literal["auto", "always", "never"] = "auto"
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


class ModelsConfig(StrictModel):
    """The base models of the ensemble; the class-prior and logistic baselines are always trained."""
    xgboost: XGBoostConfig | None = None
    lstm: SequenceConfig | None = None
    transformer: SequenceConfig | None = None

    def enabled(self) -> dict[str, XGBoostConfig | SequenceConfig]:
        return {f: getattr(self, f) for f in FAMILIES if getattr(self, f) is not None}


class ShockConfig(StrictModel):
    enabled: bool = True
    # Share of development rows the isolation forest calls abnormal; confidence falls to 0 there.
    contamination: float = Field(0.01, gt=0, lt=0.5)


class EnsembleConfig(StrictModel):
    calibration: Literal["isotonic", "platt"] = "platt"  # Platt keeps the ranking (AUC)
    shock: ShockConfig = Field(default_factory=ShockConfig)


class PromotionConfig(StrictModel):
    metric: Literal["auc", "logloss", "brier", "balanced_accuracy", "f1", "accuracy"] = "auc"
    # The challenger must beat the champion by this much on the same out-of-time window.
    margin: float = Field(0.0, ge=0)


class RegistryConfig(StrictModel):
    prefix: str = "tickray"  # registered models: <prefix>-<family>, <prefix>-ensemble
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)


class TuneConfig(StrictModel):
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


class TrainConfig(RowsConfig):
    name: str = "tickray"  # the MLflow experiment
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig(xgboost=XGBoostConfig()))
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
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
