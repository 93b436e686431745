"""XGBoost on Ray Train (V2 training-function API), evaluated against baselines, registered in MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import xgboost
from ray.train import RunConfig, ScalingConfig
from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tickray.features import FEATURE_NAMES
from tickray.training import registry
from tickray.training.splits import select, time_split

NS = 1_000_000_000


class _SparseReportCallback(RayTrainReportCallback):
    """Reports metrics every ``every`` rounds, not every round: each ray.train.report is a round trip
    to the Train controller (over a second each on a 2-core machine). The final checkpoint is kept."""

    def __init__(self, every: int, **kwargs):
        super().__init__(**kwargs)
        self._every = every

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        self._evals_log = evals_log
        if (epoch + 1) % self._every == 0:
            return super().after_iteration(model, epoch, evals_log)
        return False


def _train_fn(config: dict) -> None:
    """Runs on each Ray Train worker: its shard of train/valid → xgboost.train."""
    features, label = config["features"], config["label"]
    train = ray.train.get_dataset_shard("train").materialize().to_pandas()
    valid = ray.train.get_dataset_shard("valid").materialize().to_pandas()
    dtrain = xgboost.DMatrix(train[features], label=train[label])
    dvalid = xgboost.DMatrix(valid[features], label=valid[label])
    xgboost.train(
        config["params"], dtrain, num_boost_round=config["num_boost_round"],
        evals=[(dtrain, "train"), (dvalid, "valid")], early_stopping_rounds=config["early_stopping_rounds"],
        verbose_eval=False, callbacks=[_SparseReportCallback(config["report_every"], metrics=["valid-logloss", "valid-auc"])],
    )


@dataclass
class TrainResult:
    model_name: str
    model_version: str
    run_id: str
    metrics: dict[str, float]
    rows: dict[str, int]
    seconds: float
    booster: xgboost.Booster = field(repr=False)
    test: pd.DataFrame = field(repr=False)  # the held-out window with predictions, for backtests

    def lines(self) -> list[str]:
        m = self.metrics
        return [
            f"train/valid/test rows: {self.rows['train']:,} / {self.rows['valid']:,} / {self.rows['test']:,}",
            (f"test AUC: xgboost {m['test_auc']:.4f} | logistic {m['logistic_test_auc']:.4f} | "
             f"class prior {m['prior_test_auc']:.4f}"),
            (f"MLflow: registered model {self.model_name} version {self.model_version} "
             f"(alias champion), run {self.run_id} ({self.seconds:.1f}s)"),
        ]


def _load_features(lake_root: Path, label: str) -> pa.Table:
    path = Path(lake_root) / "features"
    if not any(path.glob("date=*/symbol=*/*.parquet")):
        raise FileNotFoundError(f"no feature rows under {path}; run `tickray features` first")
    ds = ray.data.read_parquet(str(path))  # hive partitions (date, symbol) come back as columns
    t = pa.concat_tables(ray.get(ds.to_arrow_refs()), promote_options="default")
    ok = pc.is_valid(t[label])
    for name in FEATURE_NAMES:
        ok = pc.and_(ok, pc.invert(pc.is_nan(t[name])))
    ok = pc.and_(ok, pc.invert(pc.is_nan(t[label])))
    return t.filter(ok).sort_by("ts")


def train_xgboost(lake_root: Path, tracking_uri: str, artifact_root: str, storage_path: Path,
                  horizon_s: int = 10, num_boost_round: int = 300, num_workers: int = 1,
                  experiment: str = "tickray") -> TrainResult:
    t0 = time.perf_counter()
    label = f"up_{horizon_s}s"
    table = _load_features(lake_root, label)
    ts = pc.cast(table["ts"], pa.int64()).to_numpy()
    split = time_split(int(ts.min()), int(ts.max()), embargo_ns=horizon_s * NS)
    parts = {w: select(table, split, w) for w in ("train", "valid", "test")}
    cols = [*FEATURE_NAMES, label]
    params = {"objective": "binary:logistic", "eval_metric": ["logloss", "auc"], "tree_method": "hist",
              "max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 20,
              "nthread": 1}
    trainer = XGBoostTrainer(
        _train_fn,
        train_loop_config={"features": list(FEATURE_NAMES), "label": label, "params": params,
                           "num_boost_round": num_boost_round, "early_stopping_rounds": 30, "report_every": 25},
        scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"xgb-{label}-{int(time.time())}", storage_path=str(storage_path)),
        datasets={w: ray.data.from_arrow(parts[w].select(cols)) for w in ("train", "valid")},
    )
    result = trainer.fit()
    booster = RayTrainReportCallback.get_model(result.checkpoint)

    test = parts["test"].select(["ts", "symbol", "mid", f"fwd_ret_{horizon_s}s", *cols]).to_pandas()
    train_df = parts["train"].select(cols).to_pandas()
    y_test = test[label].to_numpy()
    test["prob_up"] = booster.predict(xgboost.DMatrix(test[list(FEATURE_NAMES)]))
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    logistic.fit(train_df[list(FEATURE_NAMES)], train_df[label])
    p_log = logistic.predict_proba(test[list(FEATURE_NAMES)])[:, 1]
    p_prior = np.full(y_test.size, float(train_df[label].mean()))
    metrics = {
        "test_auc": roc_auc_score(y_test, test["prob_up"]), "test_logloss": log_loss(y_test, test["prob_up"]),
        "logistic_test_auc": roc_auc_score(y_test, p_log), "logistic_test_logloss": log_loss(y_test, p_log),
        "prior_test_auc": roc_auc_score(y_test, p_prior), "prior_test_logloss": log_loss(y_test, p_prior),
        "best_iteration": float(booster.best_iteration) if booster.best_iteration is not None else -1.0,
    }
    metrics.update({f"valid_{k.split('-', 1)[-1]}": float(v) for k, v in result.metrics.items()
                    if k.startswith("valid-")})
    rows = {w: parts[w].num_rows for w in parts}
    reg = registry.log_and_register(
        booster, tracking_uri=tracking_uri, artifact_root=artifact_root, experiment=experiment,
        model_name=f"tickray-xgb-{label}", params={**params, "horizon_s": horizon_s, **{f"rows_{k}": v for k, v in rows.items()}},
        metrics=metrics, sample=test[list(FEATURE_NAMES)].head(5), horizon_s=horizon_s,
    )
    return TrainResult(reg.name, reg.version, reg.run_id, metrics, rows, time.perf_counter() - t0, booster, test)
