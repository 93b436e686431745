"""One Ray Tune trial: a family's fit code with the trial's parameters, reporting after every rung.

Its own module, so that a trial process imports only what its family needs. From the search's module
it imported MLflow, Optuna and torch, 5.5 s in every trial actor on this machine (2.6 s now for XGBoost).
"""

from __future__ import annotations

import numpy as np
import ray
import xgboost
from ray import tune

from tickray.ops.runtime import local_device
from tickray.research.rows import labelled
from tickray.training.boosting import fit_xgboost_horizon, xgb_params
from tickray.training.config import SequenceConfig, XGBoostConfig


def run_trial(config: dict, family: str, base: dict, x: np.ndarray, y: np.ndarray, fit: np.ndarray,
              stop: np.ndarray, seed: int) -> None:
    where = {"node": ray.get_runtime_context().get_node_id(), "device": local_device()}
    if family == "xgboost":
        cfg = XGBoostConfig.model_validate({**base, "params": {**base["params"], **config}})
        params = xgb_params(cfg, seed, cfg.resources.threads, where["device"])
        tr, va = labelled(y, fit, 0), labelled(y, stop, 0)
        fit_xgboost_horizon(xgboost.DMatrix(x[tr], label=y[tr, 0]), xgboost.DMatrix(x[va], label=y[va, 0]),
                            cfg, params, report=lambda r, m: tune.report({**m, "rounds": r, **where}))
        return
    from tickray.training.models import fit_sequence  # torch: sequence trials only

    cfg = SequenceConfig.model_validate({**base, **config})
    fit_sequence(family, x, y, fit, stop, cfg, seed, where["device"],
                 on_epoch=lambda e, m, net: tune.report({**m, **where}))
