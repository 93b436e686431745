"""MLflow: log a run, register the model with its feature signature, move the ``champion`` alias."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd
import xgboost
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from tickray.features import FEATURE_NAMES, FEATURE_SET_VERSION

CHAMPION = "champion"


@dataclass
class Registered:
    name: str
    version: str
    run_id: str


def _experiment(client: MlflowClient, name: str, artifact_root: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=f"{artifact_root}/{name}")


def log_and_register(booster: xgboost.Booster, *, tracking_uri: str, artifact_root: str, experiment: str,
                     model_name: str, params: dict, metrics: dict, sample: pd.DataFrame,
                     horizon_s: int) -> Registered:
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp_id = _experiment(client, experiment, artifact_root)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        signature = infer_signature(sample, booster.predict(xgboost.DMatrix(sample)))
        # Explicit requirements: inferring them costs seconds per call.
        info = mlflow.xgboost.log_model(
            booster, name="model", signature=signature, registered_model_name=model_name,
            pip_requirements=[f"xgboost=={xgboost.__version__}"],
        )
    version = str(info.registered_model_version)
    for key, value in (("feature_names", ",".join(FEATURE_NAMES)), ("feature_set_version", FEATURE_SET_VERSION),
                       ("horizon_s", str(horizon_s))):
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return Registered(model_name, version, run.info.run_id)


@dataclass
class LoadedModel:
    name: str
    version: str
    booster: xgboost.Booster
    feature_names: list[str]
    feature_set_version: str
    horizon_s: int


def load_champion(tracking_uri: str, model_name: str, alias: str = CHAMPION) -> LoadedModel:
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    mv = client.get_model_version_by_alias(model_name, alias)
    booster = mlflow.xgboost.load_model(f"models:/{model_name}@{alias}")
    return LoadedModel(model_name, str(mv.version), booster, mv.tags["feature_names"].split(","),
                       mv.tags["feature_set_version"], int(mv.tags["horizon_s"]))
