"""XGBoost: one booster per horizon, fitted in one process (a fold task, a Tune trial, a final fit whose
rows fit one worker) or by the workers of an ``XGBoostTrainer`` together (xgboost's collective sums their
histograms).

Nothing here imports torch. A Ray Train worker imports this module to unpickle its training function,
and torch made that step 3.1 s of a 13 s start on 2 cores.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
import ray.train
import xgboost
from ray.train import LoggingConfig, RunConfig, ScalingConfig
from ray.train.xgboost import XGBoostTrainer

from tickray.ops.runtime import local_device
from tickray.research.rows import labelled
from tickray.training.config import Resources, XGBoostConfig

if TYPE_CHECKING:
    from tickray.research.rows import Rows

XGB_REPORT_EVERY = 25  # boosting rounds between progress reports (each costs a round trip on Ray Train)


def run_config(name: str, storage_path: Path, **kwargs) -> RunConfig:
    """Ray Train's run config for tickray's fits. Its INFO lines (resources requested, worker group
    started, every checkpoint and report: dozens per fit) are left to its log files; tickray prints one
    line per fit, and warnings and errors still reach the console."""
    return RunConfig(name=name, storage_path=str(storage_path), logging_config=LoggingConfig(log_level="WARNING"),
                     **kwargs)


def scaling(num_workers: int, resources: Resources) -> ScalingConfig:
    per = {"CPU": resources.cpu, **({"GPU": resources.gpu} if resources.gpu else {})}
    return ScalingConfig(num_workers=num_workers, use_gpu=resources.gpu > 0, resources_per_worker=per)


@dataclass
class XGBModel:
    boosters: list[xgboost.Booster]
    family: str = "xgboost"
    window: int = 1
    reads_missing = True  # a NaN feature goes down the branch each split learned for missing values

    def predict(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        d = xgboost.DMatrix(x[idx])
        return np.column_stack([b.predict(d) for b in self.boosters])


def xgb_params(cfg: XGBoostConfig, seed: int, nthread: int, device: str) -> dict:
    return {"tree_method": "hist", **cfg.params, "objective": "binary:logistic", "eval_metric": ["logloss", "auc"],
            "nthread": nthread, "device": device, "seed": seed}


class _Every(xgboost.callback.TrainingCallback):
    """Calls ``report(round, {metric: value})`` every ``every`` rounds; a True return stops training."""

    def __init__(self, every: int, report: Callable[[int, dict], bool | None]):
        self.every, self.report = every, report

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        if (epoch + 1) % self.every:
            return False
        valid = evals_log.get("valid", {})
        return bool(self.report(epoch + 1, {f"valid_{k}": v[-1] for k, v in valid.items()}))


def fit_xgboost_horizon(dtrain: xgboost.DMatrix, dvalid: xgboost.DMatrix, cfg: XGBoostConfig, params: dict,
                        report: Callable[[int, dict], bool | None] | None = None) -> tuple[xgboost.Booster, dict]:
    """One horizon's booster with early stopping on the validation rows; the history of valid metrics."""
    history: dict = {}
    callbacks = [_Every(XGB_REPORT_EVERY, report)] if report else []
    booster = xgboost.train(params, dtrain, num_boost_round=cfg.num_boost_round,
                            evals=[(dvalid, "valid")],  # scoring the training rows every round costs, tells nothing
                            early_stopping_rounds=cfg.early_stopping_rounds, evals_result=history,
                            verbose_eval=False, callbacks=callbacks)
    if booster.best_iteration is not None and booster.best_iteration + 1 < booster.num_boosted_rounds():
        booster = booster[: booster.best_iteration + 1]
    return booster, history.get("valid", {})


def fit_xgboost(x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray, cfg: XGBoostConfig,
                seed: int = 7, nthread: int = 1, device: str = "cpu") -> tuple[XGBModel, list[dict]]:
    params = xgb_params(cfg, seed, nthread, device)
    boosters, histories = [], []
    for j in range(y.shape[1]):
        tr, va = labelled(y, train, j), labelled(y, valid, j)
        b, h = fit_xgboost_horizon(xgboost.DMatrix(x[tr], label=y[tr, j]),
                                   xgboost.DMatrix(x[va], label=y[va, j]), cfg, params)
        boosters.append(b)
        histories.append(h)
    return XGBModel(boosters), histories


def _train_worker(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x, y = ray.get(config["x"]), ray.get(config["y"])  # shared memory on this node, no copy
    # Each worker builds its DMatrix from its own share of the rows; xgboost's collective sums the
    # histograms (and the validation metrics) across workers. A share is drawn at random (see
    # _train_on_ray_train); sorted, it is read from x in order, 0.8 s sooner on 400k rows than gathered at random.
    train = np.sort(np.array_split(config["train"], world)[rank])
    valid = np.array_split(config["valid"], world)[rank]
    cfg = XGBoostConfig.model_validate(config["cfg"])
    model, histories = fit_xgboost(x, y, train, valid, cfg, config["seed"], cfg.resources.threads,
                                   local_device())
    metrics = {f"{label}_valid_logloss": min(h["logloss"]) for label, h in zip(config["labels"], histories)}
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            for i, b in enumerate(model.boosters):
                b.save_model(str(Path(d) / f"booster_{i}.json"))
            (Path(d) / "history.json").write_text(json.dumps(histories))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)


# What an xgboost fit holds in memory, in multiples of its training rows' bytes: the DMatrix's copy, its
# quantised index and the gradient buffers (generous: a fit that would not fit must not be tried).
XGB_MEMORY_FACTOR = 4


def _largest_node() -> tuple[float, float]:
    """(memory bytes, CPUs) of the cluster's largest node."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    return max(n.get("memory", 0.0) for n in nodes), max(n.get("CPU", 0.0) for n in nodes)


def fit_path(cfg: XGBoostConfig, x: np.ndarray, train: np.ndarray, node_memory: float | None = None) -> str:
    """Where the final fit runs: ``one task`` (plain xgboost.train in one Ray task) or ``ray train``
    (XGBoostTrainer's workers). ``auto`` takes one task when the training rows fit half the largest
    node's memory (``node_memory``, else asked of the cluster), as most training sets do: Ray Train's start
    and stop cost 9-10 s on 2 cores."""
    if cfg.distributed != "auto":
        return "ray train" if cfg.distributed == "always" else "one task"
    need = x.itemsize * x.shape[1] * train.size * XGB_MEMORY_FACTOR
    return "one task" if need <= (node_memory or _largest_node()[0]) / 2 else "ray train"


@ray.remote
def _fit_in_task(x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray, cfg: dict, seed: int,
                 threads: int) -> tuple[list[bytes], list[dict]]:
    """The final fit in this task: the same rows in the same order as one Ray Train worker reads them."""
    model, histories = fit_xgboost(x, y, np.sort(train), valid, XGBoostConfig.model_validate(cfg), seed, threads,
                                   local_device())
    return [bytes(b.save_raw("json")) for b in model.boosters], histories


def train_xgboost(rows: Rows, train: np.ndarray, valid: np.ndarray, cfg: XGBoostConfig, seed: int,
                  storage_path: Path, name: str) -> tuple[XGBModel, list[dict], str]:
    """The final fit where it is cheapest (``fit_path``), and the path it took, in words. Either way its
    boosters and history are checkpointed under ``storage_path/name``."""
    node_memory, node_cpus = _largest_node()
    if fit_path(cfg, rows.x, train, node_memory) == "ray train":
        model, histories = _train_on_ray_train(rows, train, valid, cfg, seed, storage_path, name)
        return model, histories, f"on Ray Train ({cfg.num_workers} worker(s))"
    # the threads the workers would have had, on one node; a GPU if they would have had one each
    threads = int(min(cfg.num_workers * cfg.resources.threads, node_cpus))
    raw, histories = ray.get(_fit_in_task.options(num_cpus=threads, num_gpus=min(cfg.resources.gpu, 1)).remote(
        rows.x, rows.y, train, valid, cfg.model_dump(), seed, threads))
    boosters = [xgboost.Booster(model_file=bytearray(b)) for b in raw]
    ckpt = Path(storage_path) / name / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(boosters):
        b.save_model(str(ckpt / f"booster_{i}.json"))
    (ckpt / "history.json").write_text(json.dumps(histories))
    return XGBModel(boosters), histories, f"in one Ray task ({threads} thread(s))"


def _train_on_ray_train(rows: Rows, train: np.ndarray, valid: np.ndarray, cfg: XGBoostConfig, seed: int,
                        storage_path: Path, name: str) -> tuple[XGBModel, list[dict]]:
    """The final fit on Ray Train: ``cfg.num_workers`` workers share the feature matrix through the object
    store (one copy per node) and each takes a share of the training rows: no DataFrame round trip, which
    cost 7 s of 42 on a million rows here."""
    labels = rows.labels()
    # rows in a random order, so that each worker's share spans the whole period
    order = np.random.default_rng(seed).permutation(train.size)
    trainer = XGBoostTrainer(
        _train_worker,
        train_loop_config={"x": ray.put(rows.x), "y": ray.put(rows.y), "train": train[order], "valid": valid,
                           "labels": labels, "cfg": cfg.model_dump(), "seed": seed},
        scaling_config=scaling(cfg.num_workers, cfg.resources),
        run_config=run_config(name, storage_path),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        boosters = [xgboost.Booster(model_file=str(Path(d) / f"booster_{i}.json")) for i in range(len(labels))]
        histories = json.loads((Path(d) / "history.json").read_text())
    return XGBModel(boosters), histories
