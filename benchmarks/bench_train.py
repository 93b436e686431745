"""Training on Ray, each against a baseline measured in the same run.

- XGBoost: the platform's final fit (tickray.training.boosting.train_xgboost) on R rows × F features, by
  both of its paths: in one Ray task with N threads (``distributed: auto`` takes it when the rows fit a
  worker, as these do) and on ``XGBoostTrainer`` with N workers (``always``); each against plain
  ``xgboost.train`` in this process with N threads, same params, same rounds, same validation rows
  scored every round; time ratios (goal <= 1.5x) and the test AUC of each (equal quality). Also Ray
  Train's fixed cost, measured with an empty training function on the same workers, and the ratio
  without it.
- Tune: a small Optuna + ASHA search over XGBoost (tickray.training.tune): trials per minute and the
  share of the wall time the trial slots were busy.

    python benchmarks/bench_train.py [--rows 1000000] [--features 50] [--workers 2] [--trials 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
import xgboost
from ray.train import RunConfig
from ray.train.xgboost import XGBoostTrainer
from sklearn.metrics import roc_auc_score
from tickray.research.rows import NS, Rows
from tickray.training.boosting import scaling, train_xgboost, xgb_params
from tickray.training.config import XGBoostConfig, parse_config
from tickray.training.tune import tune_family


def synthetic(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with a planted non-linear signal in a few columns and noise labels around it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    logit = 0.6 * x[:, 0] - 0.4 * x[:, 1] * x[:, 2] + 0.3 * np.tanh(x[:, 3])
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]
    return x, y


def _empty(config: dict) -> None:
    ray.train.report({})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()

    x, y = synthetic(args.rows, args.features)
    n_test = args.rows // 10
    train, test = np.arange(args.rows - 2 * n_test), np.arange(args.rows - n_test, args.rows)
    valid = np.arange(args.rows - 2 * n_test, args.rows - n_test)
    # early stopping off: both sides boost the same number of rounds
    cfg = XGBoostConfig(num_workers=args.workers, num_boost_round=args.rounds, early_stopping_rounds=args.rounds,
                        params={"max_depth": 6, "eta": 0.1, "subsample": 0.8})

    t = time.perf_counter()
    plain = xgboost.train(xgb_params(cfg, 7, args.workers, "cpu"), xgboost.DMatrix(x[train], label=y[train, 0]),
                          num_boost_round=args.rounds, verbose_eval=False,
                          evals=[(xgboost.DMatrix(x[valid], label=y[valid, 0]), "valid")])
    t_plain = time.perf_counter() - t
    auc_plain = roc_auc_score(y[test, 0], plain.predict(xgboost.DMatrix(x[test])))

    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ts = np.arange(args.rows, dtype=np.int64) * NS
    rows = Rows(x, y, np.zeros_like(y, dtype=float), ts, np.array(["X"] * args.rows, dtype=object),
                np.ones(args.rows, bool), [f"f{i}" for i in range(args.features)], [10], 1)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        model, _, where = train_xgboost(rows, train, valid, cfg.model_copy(update={"distributed": "auto"}), 7,
                                        Path(d), "bench-task")
        t_task = time.perf_counter() - t
        auc_task = roc_auc_score(y[test, 0], model.predict(x, test)[:, 0])
        t = time.perf_counter()
        model, _, _ = train_xgboost(rows, train, valid, cfg.model_copy(update={"distributed": "always"}), 7,
                                    Path(d), "bench")
        t_ray = time.perf_counter() - t
        auc_ray = roc_auc_score(y[test, 0], model.predict(x, test)[:, 0])
        t = time.perf_counter()
        XGBoostTrainer(_empty, scaling_config=scaling(cfg.num_workers, cfg.resources),
                       run_config=RunConfig(name="empty", storage_path=d)).fit()
        t_fixed = time.perf_counter() - t
        print(f"XGBoost {args.rows:,} rows x {args.features} features, {args.rounds} rounds:")
        print(f"  plain xgboost.train, {args.workers} threads: {t_plain:.1f}s, test AUC {auc_plain:.4f}")
        print(f"  tickray, distributed auto (fitted {where}): {t_task:.1f}s, test AUC {auc_task:.4f}; "
              f"ratio {t_task / t_plain:.2f}x (goal <= 1.5x); AUC difference {auc_task - auc_plain:+.4f}")
        print(f"  tickray, distributed always (Ray Train XGBoostTrainer, {args.workers} workers): {t_ray:.1f}s, "
              f"test AUC {auc_ray:.4f}; ratio {t_ray / t_plain:.2f}x; AUC difference {auc_ray - auc_plain:+.4f}")
        print(f"  Ray Train's start and stop with an empty training function: {t_fixed:.1f}s; without it, "
              f"{(t_ray - t_fixed) / t_plain:.2f}x")

        small = min(args.rows, 200_000)
        tune_cfg = parse_config({
            "models": {"xgboost": {"num_boost_round": 100}},
            "tune": {"family": "xgboost", "num_samples": args.trials, "max_concurrent_trials": args.workers,
                     "grace_period": 1, "space": {"max_depth": {"type": "int", "low": 3, "high": 8},
                                                  "eta": {"type": "loguniform", "low": 0.02, "high": 0.3}}}})
        fit, stop = np.arange(int(small * 0.8)), np.arange(int(small * 0.8), small)
        t = time.perf_counter()
        grid = tune_family(tune_cfg, x[:small], y[:small], fit, stop, Path(d) / "tune")
        wall = time.perf_counter() - t
        busy = sum(float(r.metrics.get("time_total_s", 0.0)) for r in grid if r.metrics)
        print(f"Tune: {len(grid)} trials on {small:,} rows in {wall:.1f}s: {len(grid) / wall * 60:.1f} trials/min, "
              f"trial slots busy {busy / (wall * args.workers):.0%} of the wall time")
    ray.shutdown()


if __name__ == "__main__":
    main()
