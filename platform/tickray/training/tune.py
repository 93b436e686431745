"""`jobs/tune.py`: Ray Tune over one base model's hyper-parameters, then the full training with the best.

Optuna proposes (``ray.tune.search.optuna``), ASHA stops the trials that trail at each rung (boosting
rounds in steps of 25 for XGBoost, epochs for the sequence models), each trial asks for the resources
in the config (fractions of a GPU allowed), at most ``max_concurrent_trials`` run at once, and a failing
trial is retried ``max_failures`` times. Trials fit on the development window and are judged on its
latest part (embargoed); the primary horizon is the config's first. Each trial is a nested MLflow run,
failed ones included; an interrupted search resumes with ``--resume`` (``Tuner.restore``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import FailureConfig, RunConfig, Tuner
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tickray.errors import ConfigError
from tickray.ops.runtime import require_resources
from tickray.research.rows import NS, embargo_s, inner_split, load_rows, split_windows, thin
from tickray.training import registry
from tickray.training.boosting import XGB_REPORT_EVERY
from tickray.training.config import SequenceConfig, TrainConfig, XGBoostConfig
from tickray.training.trial import run_trial

SPACE_TYPES = {
    "uniform": lambda s: tune.uniform(s["low"], s["high"]),
    "loguniform": lambda s: tune.loguniform(s["low"], s["high"]),
    "int": lambda s: tune.randint(s["low"], s["high"] + 1),
    "choice": lambda s: tune.choice(s["values"]),
}
# What a trial may change: XGBoost's params, or a sequence model's config fields.
SEQUENCE_TUNABLE = {"hidden", "layers", "heads", "dropout", "lr", "batch_size", "window"}


def search_space(cfg: TrainConfig) -> dict:
    t = cfg.tune
    if not t.space:
        raise ConfigError(f"tune.space: empty; give at least one parameter of {t.family}")
    space = {}
    for name, spec in t.space.items():
        kind = spec.get("type")
        if kind not in SPACE_TYPES:
            raise ConfigError(f"tune.space.{name}: type {kind!r} is not one of {', '.join(SPACE_TYPES)}")
        if t.family != "xgboost" and name not in SEQUENCE_TUNABLE:
            raise ConfigError(f"tune.space.{name}: {t.family} tunes only {', '.join(sorted(SEQUENCE_TUNABLE))}")
        try:
            space[name] = SPACE_TYPES[kind](spec)
        except KeyError as missing:
            raise ConfigError(f"tune.space.{name}: {kind} needs {missing}") from None
    return space


def tune_family(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, fit: np.ndarray, stop: np.ndarray,
                storage: Path, resume: bool = False) -> tune.ResultGrid:
    """The search itself, on whatever cluster this process is connected to."""
    t = cfg.tune
    base = getattr(cfg.models, t.family)
    base = (base or (XGBoostConfig() if t.family == "xgboost" else SequenceConfig())).model_dump()
    res = {"CPU": t.resources.cpu, "GPU": t.resources.gpu}
    require_resources(res, 1, "tune.resources")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, family=t.family, base=base, x=x, y=y, fit=fit, stop=stop, seed=cfg.seed),
        {"cpu": t.resources.cpu, "gpu": t.resources.gpu})
    name = f"tune-{cfg.name}-{t.family}"
    path = Path(storage) / name
    if resume and Tuner.can_restore(str(path)):
        tuner = Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        mode = "max" if t.metric.endswith("auc") else "min"
        tuner = Tuner(
            trainable, param_space=search_space(cfg),
            tune_config=tune.TuneConfig(
                metric=t.metric, mode=mode, num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent_trials,
                search_alg=OptunaSearch(seed=cfg.seed),
                reuse_actors=True,  # Ray's default starts a process per trial: 3.5 s between trials here
                scheduler=ASHAScheduler(grace_period=t.grace_period, reduction_factor=t.reduction_factor,
                                        max_t=_max_rungs(cfg))),
            run_config=RunConfig(name=name, storage_path=str(storage), verbose=1,
                                 failure_config=FailureConfig(max_failures=t.max_failures)))
    return tuner.fit()


def _max_rungs(cfg: TrainConfig) -> int:
    t = cfg.tune
    if t.family == "xgboost":
        rounds = (cfg.models.xgboost or XGBoostConfig()).num_boost_round
        return max(1, rounds // XGB_REPORT_EVERY)
    return (getattr(cfg.models, t.family) or SequenceConfig()).epochs


@dataclass
class TuneReport:
    family: str
    metric: str
    trials: int
    failed: int
    best_config: dict
    best_score: float
    trials_per_minute: float
    busy_fraction: float  # trial time over (wall time × concurrent slots)
    nodes: set[str]
    run_id: str
    seconds: float

    def lines(self) -> list[str]:
        return [(f"tune {self.family}: {self.trials} trials ({self.failed} failed), best {self.metric} "
                f"{self.best_score:.4f} with {self.best_config}"),
                (f"{self.trials_per_minute:.1f} trials/min, slots busy {self.busy_fraction:.0%} of the wall time; "
                f"MLflow run {self.run_id}")]


def _error_line(error: BaseException) -> str:
    """The line that says what went wrong: the last one of a remote traceback, without colour codes."""
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _log_trials(grid: tune.ResultGrid, cfg: TrainConfig, tracking_uri: str, artifact_root: str) -> tuple[str, int]:
    """A parent run for the search, a nested run per trial (status FAILED for a trial that failed)."""
    mlflow.set_tracking_uri(tracking_uri)
    exp = registry.experiment_id(MlflowClient(tracking_uri), cfg.name, artifact_root)
    failed = 0
    with mlflow.start_run(experiment_id=exp, run_name=f"tune-{cfg.tune.family}-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.log_params({f"tune.{k}": str(v) for k, v in cfg.tune.model_dump().items()})
        mlflow.set_tag("git_commit", registry.git_commit())
        for i, result in enumerate(grid):
            status = "FAILED" if result.error else "FINISHED"
            failed += bool(result.error)
            with mlflow.start_run(experiment_id=exp, run_name=f"trial-{i}", nested=True) as run:
                mlflow.log_params({k: str(v) for k, v in (result.config or {}).items()})
                df = result.metrics_dataframe
                if df is not None:
                    for step, row in enumerate(df.to_dict("records"), start=1):
                        mlflow.log_metrics({k: float(row[k]) for k in ("valid_logloss", "valid_auc") if k in row},
                                           step=step)
                if result.error:
                    mlflow.set_tag("error", _error_line(result.error))
            MlflowClient(tracking_uri).set_terminated(run.info.run_id, status)
        best = grid.get_best_result()
        if best.metrics:
            mlflow.log_metric(f"best_{cfg.tune.metric}", float(best.metrics[cfg.tune.metric]))
            mlflow.log_dict(best.config, "best_config.json")
    return parent.info.run_id, failed


def run_tune(cfg: TrainConfig, lake_root: Path, tracking_uri: str, artifact_root: str, storage: Path,
             resume: bool = False, say: Callable[[str], None] = print):
    """Search, log, and (``tune.train_after``) run the full training with the best parameters; returns
    (TuneReport, TrainReport or None)."""
    if cfg.tune is None:
        raise ConfigError("tune: missing; say which family to tune and its search space")
    search_space(cfg)  # a bad space fails here, before any data is read
    t0 = time.perf_counter()
    rows = load_rows(cfg, lake_root)
    say(f"{rows.n:,} rows; {rows.validity()}")
    win = split_windows(rows, cfg)
    fit, stop = inner_split(rows.ts, thin(rows, win.dev, cfg.data.train_every_s), embargo_s(rows, cfg) * NS)
    t_search = time.perf_counter()
    grid = tune_family(cfg, rows.x, rows.y, fit, stop, storage, resume)
    wall = time.perf_counter() - t_search
    run_id, failed = _log_trials(grid, cfg, tracking_uri, artifact_root)
    best = grid.get_best_result()
    if best.config is None or best.metrics is None or cfg.tune.metric not in best.metrics:
        raise ConfigError(f"tune: no trial of {cfg.tune.family} finished ({failed} failed); see the MLflow run {run_id}")
    busy = sum(float(r.metrics.get("time_total_s", 0.0)) for r in grid if r.metrics)
    slots = min(cfg.tune.max_concurrent_trials, cfg.tune.num_samples)
    report = TuneReport(cfg.tune.family, cfg.tune.metric, len(grid), failed, best.config,
                        float(best.metrics[cfg.tune.metric]), len(grid) / (wall / 60), busy / (wall * slots),
                        {r.metrics.get("node") for r in grid if r.metrics and r.metrics.get("node")}, run_id,
                        time.perf_counter() - t0)
    for line in report.lines():
        say(line)
    if not cfg.tune.train_after:
        return report, None
    from tickray.training.pipeline import run_training

    return report, run_training(with_best(cfg, best.config), lake_root, tracking_uri, artifact_root, storage, say=say)


def with_best(cfg: TrainConfig, best: dict) -> TrainConfig:
    """The config with the best trial's parameters in its family's section."""
    raw = cfg.model_dump(mode="json")
    family = cfg.tune.family
    section = raw["models"].get(family) or {}
    if family == "xgboost":
        section["params"] = {**section.get("params", XGBoostConfig().params), **best}
    else:
        section.update(best)
    raw["models"][family] = section
    return TrainConfig.model_validate(raw)
