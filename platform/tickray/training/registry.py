"""MLflow: every model as one pyfunc (all horizons), registered per family with the ``champion`` and
``challenger`` aliases, and the promotion rule that moves ``champion``.

A logged model carries what is needed to use it honestly: the feature names and feature-set version,
the horizons, the sequence window, the data range it saw and the git commit, as version tags.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import sklearn
import torch
import xgboost
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from tickray.features.windows import complete_windows
from tickray.training.metrics import better

CHAMPION, CHALLENGER = "champion", "challenger"
# Explicit requirements: letting MLflow infer them costs seconds per model.
PIP_REQUIREMENTS = [f"xgboost=={xgboost.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                    f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]


class TickrayModel(mlflow.pyfunc.PythonModel):
    """A fitted model of any family behind MLflow's pyfunc interface. Input: feature rows with ``symbol``
    and ``ts`` (ns); output, in the input's order: ``prob_up_<h>s`` and ``confidence_<h>s`` for every
    horizon, NaN where a row lacks a feature or (for sequence models) its window of earlier seconds."""

    def __init__(self, model, features: list[str], horizons: list[int], feature_set_version: str):
        self.model, self.features, self.horizons = model, list(features), list(horizons)
        self.feature_set_version = feature_set_version

    def predict_matrix(self, x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.model.predict(x, idx)
        conf = self.model.confidence(x, idx, p) if hasattr(self.model, "confidence") else np.abs(2 * p - 1)
        return p, conf

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        missing = [c for c in ("symbol", "ts", *self.features) if c not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks column(s) {', '.join(missing)}")
        order = np.lexsort((model_input["ts"].to_numpy(np.int64), model_input["symbol"].astype(str).to_numpy()))
        frame = model_input.iloc[order]
        x = frame[self.features].to_numpy(np.float32)
        ts, symbol = frame["ts"].to_numpy(np.int64), frame["symbol"].astype(str).to_numpy(object)
        ok = complete_windows(x, ts, symbol, self.model.window)
        idx = np.flatnonzero(ok)
        cols = {}
        p, conf = self.predict_matrix(x, idx) if idx.size else (np.zeros((0, len(self.horizons))),) * 2
        for j, h in enumerate(self.horizons):
            for name, values in ((f"prob_up_{h}s", p), (f"confidence_{h}s", conf)):
                col = np.full(len(frame), np.nan)
                col[idx] = values[:, j]
                cols[name] = col
        out = pd.DataFrame({"symbol": symbol, "ts": ts, **cols})
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        return out.iloc[back].reset_index(drop=True)


def git_commit() -> str:
    """The commit the code came from (``TICKRAY_GIT_COMMIT`` wins: a job's working dir has no .git)."""
    if os.environ.get("TICKRAY_GIT_COMMIT"):
        return os.environ["TICKRAY_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def experiment_id(client: MlflowClient, name: str, artifact_root: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=f"{artifact_root}/{name}")


def log_model(wrapper: TickrayModel, registered_name: str, sample: pd.DataFrame, tags: dict[str, str]) -> str:
    """Log ``wrapper`` in the active run, register it, tag the version and give it the ``challenger``
    alias; returns the version."""
    with warnings.catch_warnings():
        # ts is int64 by design (ns); MLflow warns that ints cannot hold NaN, and that a Python object
        # is pickled: both known and intended here.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(sample, wrapper.predict(None, sample))
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        info = mlflow.pyfunc.log_model(name="model", python_model=wrapper, signature=signature,
                                       registered_model_name=registered_name, pip_requirements=PIP_REQUIREMENTS)
    version = str(info.registered_model_version)
    client = MlflowClient()
    all_tags = {"feature_names": json.dumps(wrapper.features), "feature_set_version": wrapper.feature_set_version,
                "horizons_s": json.dumps(wrapper.horizons), "window": str(wrapper.model.window),
                "family": wrapper.model.family, **tags}
    for k, v in all_tags.items():
        client.set_model_version_tag(registered_name, version, k, v)
    client.set_registered_model_alias(registered_name, CHALLENGER, version)
    return version


@dataclass
class LoadedModel:
    name: str
    version: str
    model: TickrayModel
    tags: dict[str, str]

    @property
    def features(self) -> list[str]:
        return json.loads(self.tags["feature_names"])

    @property
    def horizons(self) -> list[int]:
        return json.loads(self.tags["horizons_s"])


def load(tracking_uri: str, name: str, alias: str = CHAMPION) -> LoadedModel:
    return load_version(tracking_uri, name, str(MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version))


def load_version(tracking_uri: str, name: str, version: str) -> LoadedModel:
    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(name, version)
    mlflow.set_tracking_uri(tracking_uri)
    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}").unwrap_python_model()
    return LoadedModel(name, str(mv.version), wrapper, dict(mv.tags))


def alias_version(client: MlflowClient, name: str, alias: str = CHAMPION) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


@dataclass
class Decision:
    model: str
    challenger: str
    champion: str | None  # the version that was champion before
    metric: str
    challenger_score: float
    champion_score: float | None
    promoted: bool
    reason: str

    def line(self) -> str:
        if self.promoted:
            return f"{self.model}: v{self.challenger} promoted to champion ({self.reason})"
        return f"{self.model}: v{self.champion} stays champion, v{self.challenger} is challenger ({self.reason})"


def decide(client: MlflowClient, name: str, version: str, metric: str, margin: float, challenger_score: float,
           champion_score: float | None, champion: str | None, incomparable: str = "") -> Decision:
    """The promotion rule: the challenger becomes champion when there is none, when the champion cannot
    be scored on today's features (``incomparable`` says why), or when it beats the champion by
    ``margin`` on the same out-of-time window. Moves the aliases accordingly."""
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif incomparable:
        promoted, reason = True, f"champion v{champion} cannot be scored: {incomparable}"
    else:
        promoted = better(metric, challenger_score, champion_score, margin)
        reason = (f"{metric} {challenger_score:.4f} vs champion v{champion} {champion_score:.4f}, "
                  f"margin {margin:g}")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.delete_registered_model_alias(name, CHALLENGER)
    return Decision(name, version, champion, metric, challenger_score, champion_score, promoted, reason)
