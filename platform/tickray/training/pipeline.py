"""`jobs/train.py`: base models, baselines and the stacked ensemble, judged out of time, in MLflow.

1. rows from the feature lake (Ray Data); [development | calibration | test] cut by time, with embargoes;
2. out-of-fold predictions of every base model: purged k-fold over development, one Ray task per
   (model, fold), run wherever the cluster has room (GPUs when the config asks);
3. the final base models on all of development with Ray Train; the baselines (class prior, logistic);
4. the meta-learner on the out-of-fold predictions, calibrated on the calibration window, with the
   shock detector;
5. every model scored on the test window; models registered as ``challenger`` and promoted to
   ``champion`` only if they beat the champion on the same window.

MLflow: one parent run per job; nested runs per fold, per model and per baseline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import ray
from mlflow.tracking import MlflowClient

from tickray.features.windows import complete_windows
from tickray.ops.runtime import local_device, require_resources
from tickray.research.rows import (
    NS,
    Rows,
    Windows,
    embargo_s,
    inner_split,
    load_rows,
    split_windows,
    thin,
)
from tickray.training import boosting, registry, trainers
from tickray.training.config import SEQUENCE_FAMILIES, SequenceConfig, TrainConfig, XGBoostConfig
from tickray.training.ensemble import Ensemble, fit_calibrators, fit_meta, fit_shock
from tickray.training.metrics import classification_metrics
from tickray.training.models import fit_logistic, fit_prior, fit_sequence

BASELINES = ("prior", "logistic")


@ray.remote
def _fold_fit(family: str, cfg: dict, x: np.ndarray, y: np.ndarray, fit: np.ndarray, stop: np.ndarray,
              predict: np.ndarray, seed: int) -> np.ndarray:
    """One fold of one base model, fitted in this task; its predictions for the held-out block."""
    mcfg = (XGBoostConfig if family == "xgboost" else SequenceConfig).model_validate(cfg)
    model, _ = _fit_base(family, mcfg, x, y, fit, stop, seed)
    return model.predict(x, predict)


@dataclass
class TrainReport:
    experiment: str
    run_id: str
    horizons: list[int]
    rows: dict[str, int]
    scores: dict[str, dict[int, dict[str, float]]]  # model → horizon → test metrics
    versions: dict[str, str] = field(default_factory=dict)  # registered model → version
    decisions: list[registry.Decision] = field(default_factory=list)
    seconds: float = 0.0
    test: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # test rows with every model's probabilities

    def auc(self, model: str, horizon: int) -> float:
        return self.scores[model][horizon]["auc"]

    def lines(self) -> list[str]:
        out = [(f"rows: development {self.rows['development']:,}, calibration {self.rows['calibration']:,}, "
               f"test {self.rows['test']:,} (out of time, embargoed)")]
        models = list(self.scores)
        out.append("test AUC       " + "".join(f"{m:>13}" for m in models))
        for h in self.horizons:
            out.append(f"  up {h:>4}s     " + "".join(f"{self.auc(m, h):>13.4f}" for m in models))
        for name, version in self.versions.items():
            out.append(f"MLflow: {name} v{version}")
        out += [d.line() for d in self.decisions]
        out.append(f"run {self.run_id} in experiment {self.experiment!r} ({self.seconds:.0f}s)")
        return out


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _score(rows: Rows, idx: np.ndarray, p: np.ndarray) -> dict[int, dict[str, float]]:
    return {h: classification_metrics(rows.y[idx, j], p[:, j]) for j, h in enumerate(rows.horizons)}


def _log_scores(scores: dict[int, dict[str, float]], prefix: str = "test") -> None:
    mlflow.log_metrics({f"{prefix}_{k}_{h}s": v for h, m in scores.items() for k, v in m.items()})


def _sample_frame(rows: Rows, idx: np.ndarray, window: int) -> pd.DataFrame:
    """A few consecutive rows of one symbol (enough for a window): the signature's input example."""
    end = idx[window + 5] if idx.size > window + 5 else idx[-1]
    sl = slice(max(0, end - window - 4), end + 1)
    df = pd.DataFrame(rows.x[sl], columns=rows.features)
    df.insert(0, "ts", rows.ts[sl])
    df.insert(0, "symbol", rows.symbol[sl].astype(str))
    return df


def _final_fit(family: str, cfg, rows: Rows, fit: np.ndarray, stop: np.ndarray, seed: int, storage: Path):
    """The final fit of a base model, its history and where it ran, in words."""
    name = f"{family}-{int(time.time())}"
    if family == "xgboost":
        return boosting.train_xgboost(rows, fit, stop, cfg, seed, storage, name)
    return trainers.fit_sequence_where_cheapest(family, rows, fit, stop, cfg, seed, storage, name)


def _log_history(family: str, history) -> None:
    """Per-epoch (torch) or per-round (xgboost, one series per horizon) validation metrics."""
    if family in SEQUENCE_FAMILIES:
        for m in history:
            mlflow.log_metrics({k: float(v) for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        return
    for j, h in enumerate(history):
        for metric, values in h.items():
            for step in range(0, len(values), 10):  # every 10th round: the curve, not a flood of points
                mlflow.log_metric(f"valid_{metric}_h{j}", float(values[step]), step=step)


def _champion_score(client: MlflowClient, name: str, rows: Rows, test: np.ndarray, ours_window: int,
                    ours: registry.TickrayModel, metric: str, tracking_uri: str
                    ) -> tuple[str | None, float, float | None, str]:
    """(champion version, our score, its score, why it cannot be scored) on the same test rows: those
    both models can predict, over the horizons both have."""
    def ours_on_test() -> float:
        p, _ = ours.predict_matrix(rows.x, test)
        return float(np.mean([m[metric] for m in _score(rows, test, p).values()]))

    champ = registry.alias_version(client, name)
    if champ is None:
        return None, ours_on_test(), None, ""
    loaded = registry.load(tracking_uri, name, registry.CHAMPION)
    if loaded.features != rows.features or loaded.model.feature_set_version != rows.feature_set_version:
        return champ, ours_on_test(), None, (f"it uses feature set {loaded.model.feature_set_version}, the lake "
                                         f"{rows.feature_set_version}")
    common = [h for h in rows.horizons if h in loaded.horizons]
    if not common:
        return champ, ours_on_test(), None, f"it predicts horizons {loaded.horizons}, this job {rows.horizons}"
    window = max(ours_window, loaded.model.model.window)
    idx = test[complete_windows(rows.x, rows.ts, rows.symbol, window)[test]]
    p_champ, _ = loaded.model.predict_matrix(rows.x, idx)
    p_new, _ = ours.predict_matrix(rows.x, idx)
    cols_new = [rows.horizons.index(h) for h in common]
    cols_champ = [loaded.horizons.index(h) for h in common]
    ours_score = float(np.mean([classification_metrics(rows.y[idx, rows.horizons.index(h)], p_new[:, c])[metric]
                                for h, c in zip(common, cols_new)]))
    champ_score = float(np.mean([classification_metrics(rows.y[idx, rows.horizons.index(h)], p_champ[:, c])[metric]
                                 for h, c in zip(common, cols_champ)]))
    return champ, ours_score, champ_score, ""


def stack(bases: dict, oof: dict[str, np.ndarray], oof_idx: np.ndarray, rows: Rows, calibration: np.ndarray,
          dev: np.ndarray, cfg: TrainConfig) -> Ensemble:
    """The meta-learner on out-of-fold predictions, calibrated on the calibration window, with the shock
    detector fitted on development."""
    ens = Ensemble(bases, fit_meta(oof, rows.y[oof_idx]), [], None)
    raw_cal = ens.combine(ens.base_predictions(rows.x, calibration))
    ens.calibrators = fit_calibrators(raw_cal, rows.y[calibration], cfg.ensemble.calibration)
    if cfg.ensemble.shock.enabled:
        ens.shock = fit_shock(rows.x, dev, cfg.ensemble.shock.contamination, cfg.seed)
    return ens


def _fit_base(family: str, mcfg, x: np.ndarray, y: np.ndarray, fit: np.ndarray, stop: np.ndarray, seed: int):
    if family == "xgboost":
        return boosting.fit_xgboost(x, y, fit, stop, mcfg, seed, mcfg.resources.threads, local_device())
    return fit_sequence(family, x, y, fit, stop, mcfg, seed, local_device())


def fit_in_process(rows: Rows, dev: np.ndarray, calibration: np.ndarray, folds: list, cfg: TrainConfig) -> dict:
    """Every model of ``cfg`` (base models, baselines, the stacked ensemble) fitted in this process from
    development and calibration rows, as `run_training` fits them across the cluster: what a walk-forward
    window's task runs. Returns name → model."""
    every, gap, seed = cfg.data.train_every_s, embargo_s(rows, cfg) * NS, cfg.seed
    bases, oof = {}, {}
    oof_idx = np.concatenate([thin(rows, va, every) for _, va in folds])
    for fam, mcfg in cfg.models.enabled().items():
        parts = []
        for tr, va in folds:
            fit, stop = inner_split(rows.ts, thin(rows, tr, every), gap)
            parts.append(_fit_base(fam, mcfg, rows.x, rows.y, fit, stop, seed)[0].predict(rows.x, thin(rows, va, every)))
        oof[fam] = np.concatenate(parts)
        fit, stop = inner_split(rows.ts, thin(rows, dev, every), gap)
        bases[fam], _ = _fit_base(fam, mcfg, rows.x, rows.y, fit, stop, seed)
    dev_all = thin(rows, dev, every)
    return {**bases, "prior": fit_prior(rows.y, dev_all), "logistic": fit_logistic(rows.x, rows.y, dev_all),
            "ensemble": stack(bases, oof, oof_idx, rows, calibration, dev_all, cfg)}


def run_training(cfg: TrainConfig, lake_root: Path, tracking_uri: str, artifact_root: str, storage: Path,
                 say: Callable[[str], None] = print, register: bool = True) -> TrainReport:
    t0 = time.perf_counter()
    for fam, mcfg in cfg.models.enabled().items():
        require_resources({"CPU": mcfg.resources.cpu, "GPU": mcfg.resources.gpu}, mcfg.num_workers,
                          f"models.{fam}.resources")
    rows = load_rows(cfg, lake_root)
    win: Windows = split_windows(rows, cfg)
    every, gap, seed = cfg.data.train_every_s, embargo_s(rows, cfg) * NS, cfg.seed
    families = cfg.models.enabled()
    say(f"{rows.n:,} rows of {len(rows.features)} features ({rows.feature_set_version}), horizons "
        f"{rows.horizons} s; development {win.dev.size:,}, calibration {win.calibration.size:,}, "
        f"test {win.test.size:,}; {cfg.split.folds} purged folds, embargo {gap // NS}s; {rows.validity()}")

    # 2. out-of-fold predictions: a task per (model, fold), submitted at once
    x_ref, y_ref = ray.put(rows.x), ray.put(rows.y)
    oof_idx = np.concatenate([thin(rows, va, every) for _, va in win.folds])
    pending = {}
    for fam, mcfg in families.items():
        for i, (tr, va) in enumerate(win.folds):
            fit, stop = inner_split(rows.ts, thin(rows, tr, every), gap)
            pending[fam, i] = _fold_fit.options(num_cpus=mcfg.resources.cpu, num_gpus=mcfg.resources.gpu).remote(
                fam, mcfg.model_dump(), x_ref, y_ref, fit, stop, thin(rows, va, every), seed)

    # 3. final base models on Ray Train, baselines in this process
    dev_fit, dev_stop = inner_split(rows.ts, thin(rows, win.dev, every), gap)
    bases, histories, fitted = {}, {}, {}
    for fam, mcfg in families.items():
        t = time.perf_counter()
        bases[fam], histories[fam], fitted[fam] = _final_fit(fam, mcfg, rows, dev_fit, dev_stop, seed, storage)
        say(f"{fam}: fitted {fitted[fam]} in {time.perf_counter() - t:.0f}s")
    dev_all = thin(rows, win.dev, every)
    baselines = {"prior": fit_prior(rows.y, dev_all), "logistic": fit_logistic(rows.x, rows.y, dev_all)}

    fold_preds = {k: v for k, v in zip(pending, ray.get(list(pending.values())))}
    oof = {fam: np.concatenate([fold_preds[fam, i] for i in range(len(win.folds))]) for fam in families}
    say(f"out-of-fold predictions: {len(pending)} fold fits, {oof_idx.size:,} rows")

    # 4. stacking, calibration, shock detector
    ens = stack(bases, oof, oof_idx, rows, win.calibration, dev_all, cfg)

    # 5. the test window
    test = win.test
    preds = {**{f: m.predict(rows.x, test) for f, m in {**bases, **baselines}.items()},
             "ensemble": ens.predict(rows.x, test)}
    scores = {m: _score(rows, test, p) for m, p in preds.items()}
    frame = pd.DataFrame({"ts": rows.ts[test], "symbol": rows.symbol[test]})
    for j, h in enumerate(rows.horizons):
        frame[f"up_{h}s"] = rows.y[test, j]
        frame[f"fwd_ret_{h}s"] = rows.fwd[test, j]
        for m, p in preds.items():
            frame[f"{m}_{h}s"] = p[:, j]
    report = TrainReport(cfg.name, "", rows.horizons,
                         {"development": win.dev.size, "calibration": win.calibration.size, "test": test.size},
                         scores, test=frame)
    _log_to_mlflow(report, cfg, rows, win, fold_preds, oof_idx, bases, baselines, ens, histories, fitted,
                   tracking_uri, artifact_root, register)
    report.seconds = time.perf_counter() - t0
    return report


def _log_to_mlflow(report: TrainReport, cfg: TrainConfig, rows: Rows, win: Windows, fold_preds: dict,
                   oof_idx: np.ndarray, bases: dict, baselines: dict, ens: Ensemble, histories: dict,
                   fitted: dict[str, str], tracking_uri: str, artifact_root: str, register: bool) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = registry.experiment_id(client, cfg.name, artifact_root)
    commit = registry.git_commit()
    data_range = rows.data_range()
    windows = {k: str(v) for k, v in win.cuts_ns.items()}
    tags = {"git_commit": commit, "data_range": json.dumps(data_range), "test_window": json.dumps(windows)}
    every = cfg.data.train_every_s
    with mlflow.start_run(experiment_id=exp, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        report.run_id = parent.info.run_id
        mlflow.set_tags({"git_commit": commit, "feature_set_version": rows.feature_set_version})
        mlflow.log_params(_flatten(cfg.model_dump(mode="json")))
        mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")
        mlflow.log_dict({"features": rows.features, "feature_set_version": rows.feature_set_version}, "features.json")
        mlflow.log_dict({**data_range, **windows, "rows": report.rows}, "data_range.json")
        mlflow.log_dict(rows.sources(), "data_provenance.json")
        for i, (_, va) in enumerate(win.folds):
            block = thin(rows, va, every)
            for fam in bases:
                with mlflow.start_run(experiment_id=exp, run_name=f"{fam}-fold{i}", nested=True):
                    mlflow.log_params({"family": fam, "fold": i, "rows": block.size})
                    _log_scores(_score(rows, block, fold_preds[fam, i]), "oof")
        for name, model in {**bases, **baselines, "ensemble": ens}.items():
            with mlflow.start_run(experiment_id=exp, run_name=name, nested=True):
                mlflow.log_param("family", name)
                if name in fitted:
                    mlflow.log_param("fitted", fitted[name])  # in one Ray task, or on Ray Train
                _log_scores(report.scores[name])
                if name in histories:
                    _log_history(name, histories[name])
                if not register or name in BASELINES:
                    continue
                wrapper = registry.TickrayModel(model, rows.features, rows.horizons, rows.feature_set_version)
                reg_name = f"{cfg.registry.prefix}-{name}"
                version = registry.log_model(wrapper, reg_name, _sample_frame(rows, win.test, model.window), tags)
                report.versions[reg_name] = version
                rule = cfg.registry.promotion
                champ, ours, theirs, why = _champion_score(client, reg_name, rows, win.test, model.window, wrapper,
                                                           rule.metric, tracking_uri)
                decision = registry.decide(client, reg_name, version, rule.metric, rule.margin, ours, theirs,
                                           champ, why)
                report.decisions.append(decision)
                mlflow.log_dict(decision.__dict__, "promotion.json")
                mlflow.log_metric(f"promotion_{rule.metric}_challenger", ours)
                if theirs is not None:
                    mlflow.log_metric(f"promotion_{rule.metric}_champion", theirs)
                mlflow.set_tag("promotion", decision.line())
        mlflow.log_metrics({f"{m}_test_auc_{h}s": s[h]["auc"] for m, s in report.scores.items() for h in s})
