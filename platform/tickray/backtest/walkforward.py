"""`tickray backtest`: walk-forward backtests of the training job's models, judged by money.

1. Rows from the rows stage (:mod:`tickray.research.rows`): the feature lake's one-second tick grid, or
   the lake's 1m bars resampled to a timeframe with the bar indicators as features.
2. Walk-forward: the rows after the first ``min_train_fraction`` are cut into ``windows`` test windows;
   for each, every model of the training config (base models, class-prior and logistic baselines, the
   stacked ensemble) is fitted on the rows before it, less an embargo, with the training code, and
   predicts the window. One Ray task per window (or per (symbol, window)), run wherever the cluster
   has room.
3. The out-of-sample probabilities become positions and returns in the vectorised core (threshold,
   sizing, holding, shock filter, fees, slippage, decision latency), per model and horizon, beside
   buy-and-hold; metrics, validation, and a report with pictures, logged to MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import ray
from mlflow.tracking import MlflowClient

from tickray.backtest.config import BacktestConfig
from tickray.backtest.core import Rules, buy_and_hold, fitted_threshold
from tickray.backtest.frame import simulate_frame
from tickray.backtest.metrics import performance
from tickray.backtest.validation import importance, reliability, safe_auc, stability
from tickray.errors import ConfigError
from tickray.research.rows import (
    NS,
    Rows,
    check_windows,
    embargo_s,
    load_bar_rows,
    load_rows,
    observable,
    split_history,
    thin,
    usable,
    walk_forward,
)
from tickray.training import registry
from tickray.training.metrics import classification_metrics
from tickray.training.pipeline import fit_in_process

BUY_AND_HOLD = "buy_and_hold"
COST_AWARE = ":cost"  # the suffix of a model's cost-aware variant


def backtest_rows(cfg: BacktestConfig, lake_root: Path) -> Rows:
    """The rows of ``cfg``'s source from ``train.data.lake``, else ``lake_root`` (the settings' lake)."""
    lake_root = Path(cfg.train.data.lake or lake_root)
    if cfg.data.source == "bars":
        return load_bar_rows(cfg.train, lake_root, cfg.data.timeframe)
    return load_rows(cfg.train, lake_root)


@dataclass
class Shard:
    """One walk-forward task: fit on ``train`` rows (labelled), predict ``test`` rows (every observable
    row of the window, labelled or not: whether a row is traded never depends on what followed it)."""
    window: int
    symbols: str  # "all", or the one symbol when models are per symbol
    train: np.ndarray
    test: np.ndarray


def shards(rows: Rows, cfg: BacktestConfig) -> list[Shard]:
    idx = np.flatnonzero(observable(rows))
    if idx.size == 0:
        raise ConfigError("data: no observable rows (every row lacks a feature or a complete window)")
    labelled_rows = usable(rows)
    wf = cfg.walk_forward
    groups = ([(s, idx[rows.symbol[idx] == s]) for s in sorted(set(rows.symbol[idx]))] if wf.per_symbol
              else [("all", idx)])
    out = []
    for name, g in groups:
        for w, (train, test) in enumerate(walk_forward(rows.ts, g, wf.windows, embargo_s(rows, cfg.train) * NS,
                                                       wf.min_train_fraction)):
            if test.size == 0:
                raise ConfigError(f"walk_forward: window {w} of {name} has no rows (zero-length window); "
                                  f"use fewer windows than {wf.windows}")
            out.append(Shard(w, name, train[labelled_rows[train]], test))
    return out


@ray.remote
def _run_shard(rows: Rows, shard: Shard, cfg_json: str) -> dict:
    """Fit every model on the shard's history and predict its test window (a Ray task)."""
    cfg = BacktestConfig.model_validate_json(cfg_json)
    tc = cfg.train
    dev, cal, folds, _ = split_history(rows, shard.train, tc, tc.split.calibration_fraction)
    check_windows(rows, {"development": dev, "calibration": cal}, folds, tc,
                  f"in walk-forward window {shard.window} ({shard.symbols}): train on more history "
                  "(walk_forward.min_train_fraction) or use fewer folds")
    t0 = time.perf_counter()
    models = fit_in_process(rows, dev, cal, folds, tc)
    fitted_s = time.perf_counter() - t0
    test, train_rows = shard.test, thin(rows, dev, tc.data.train_every_s)
    out = {"window": shard.window, "symbols": shard.symbols, "test": test, "fit_seconds": fitted_s,
           "predictions": {}, "confidence": None, "train_auc": {}, "test_auc": {}, "stability": {},
           "importance": {}}
    for name, model in models.items():
        p = model.predict(rows.x, test)
        out["predictions"][name] = p
        p_train = model.predict(rows.x, train_rows)
        for j, h in enumerate(rows.horizons):
            out["train_auc"][f"{name}_{h}s"] = safe_auc(rows.y[train_rows, j], p_train[:, j])
            out["test_auc"][f"{name}_{h}s"] = safe_auc(rows.y[test, j], p[:, j])
        if name != "prior":
            out["stability"][name] = stability(model, rows.x, test, dev, cfg.validation.noise_std,
                                               cfg.strategy.threshold, tc.seed)
        imp = importance(model, rows.features)
        if imp is not None:
            out["importance"][name] = imp
    ens = models["ensemble"]
    out["confidence"] = ens.confidence(rows.x, test, out["predictions"]["ensemble"])
    if cfg.strategy.cost_aware:
        out["thresholds"] = _fitted_thresholds(rows, cal, models, cfg)
    return out


def _fitted_thresholds(rows: Rows, cal: np.ndarray, models: dict, cfg: BacktestConfig) -> dict[str, list[float]]:
    """Model → per horizon, the cost-aware threshold, chosen over every observable row of the calibration
    span (labelled or not, as the test windows are traded) of the shard's symbols."""
    t = rows.ts
    span = np.flatnonzero(observable(rows) & (t >= t[cal].min()) & (t <= t[cal].max())
                          & np.isin(rows.symbol, np.unique(rows.symbol[cal])))
    codes = pd.factorize(rows.symbol[span])[0]
    out = {}
    for name, model in models.items():
        p = model.predict(rows.x, span)
        conf = models["ensemble"].confidence(rows.x, span, p) if name == "ensemble" else None
        out[name] = []
        for j, h in enumerate(rows.horizons):
            rules = cfg.rules(h) if conf is not None else replace(cfg.rules(h), sizing="fixed")
            out[name].append(fitted_threshold(t[span], codes, rows.price[span], p[:, j],
                                              None if conf is None else conf[:, j], rules,
                                              None if rows.session is None else rows.session[span]))
    return out


@dataclass
class BacktestReport:
    name: str
    horizons: list[int]
    models: list[str]
    performance: dict[str, dict[int, dict[str, float]]]  # model (and buy_and_hold) → horizon → metrics
    scores: dict[str, dict[int, dict[str, float]]]  # model → horizon → out-of-sample classification metrics
    windows: list[dict]  # per shard: window, symbols, rows, period, fit seconds, train/test AUC
    stability: dict[str, dict[str, float]]  # model → averaged over windows
    importance: dict[str, dict[str, float]]  # model → feature → share, averaged over windows
    calibration: dict[int, dict[str, list[float]]]  # horizon → the ensemble's reliability curve
    curves: dict[int, pd.DataFrame] = field(repr=False, default_factory=dict)  # horizon → time-indexed series
    rules: dict[int, dict] = field(default_factory=dict)
    clock_s: float = 60.0  # the period the returns are measured on
    rows: int = 0
    seconds: float = 0.0
    run_id: str = ""
    report_path: Path | None = None

    def lines(self) -> list[str]:
        labelled = sum(w["labelled"] for w in self.windows)
        out = [(f"{self.rows:,} out-of-sample rows in {len(self.windows)} walk-forward shards, every one traded; "
                f"{labelled:,} with a label scored (the others: a flat move, or the data ends first)")]
        for h in self.horizons:
            out.append(f"horizon {h}s: {Rules(**self.rules[h]).describe()}; returns per {self.clock_s:g} s, "
                       f"{self.performance[BUY_AND_HOLD][h]['periods_per_year']:,.0f} periods a year:")
            out.append(f"  {'model':<14}{'AUC':>7}{'return':>10}{'Sharpe':>9}{'max DD':>9}{'trades':>8}"
                       f"{'hit':>7}{'turnover':>10}{'costs/gross':>13}{'exposure':>10}")
            for m in [*self.models, BUY_AND_HOLD]:
                p = self.performance[m][h]
                auc = self.scores[m][h]["auc"] if m in self.scores else float("nan")
                share = f"{p['cost_share']:.0%}" if np.isfinite(p["cost_share"]) else "no gain"
                hit = f"{p['hit_rate']:.1%}" if p["trades"] else "-"
                out.append(f"  {m:<14}{auc:>7.3f}{p['total_return']:>+10.2%}{p['sharpe']:>9.2f}"
                           f"{p['max_drawdown']:>9.2%}{p['trades']:>8,}{hit:>7}{p['turnover']:>10,.0f}"
                           f"{share:>13}{p['exposure']:>10.1%}")
        if "thresholds" in self.windows[0]:
            out.append(f"cost-aware thresholds chosen on each window's history ({', '.join(f'{h}s' for h in self.horizons)}"
                       "; 0.5: never trade): " + "; ".join(
                           f"{m} " + " ".join("/".join(f"{t:g}" for t in w["thresholds"][m]) for w in self.windows)
                           for m in self.windows[0]["thresholds"]))
        if self.report_path:
            out.append(f"report: {self.report_path}")
        if self.run_id:
            out.append(f"MLflow run {self.run_id} in experiment {self.name!r} ({self.seconds:.0f}s)")
        return out


def _mean_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    keys = ds[0].keys() if ds else []
    return {k: float(np.nanmean([d[k] for d in ds])) for k in keys}


def run_backtest(cfg: BacktestConfig, lake_root: Path, tracking_uri: str | None = None, artifact_root: str = "",
                 report_path: Path | None = None, say: Callable[[str], None] = print) -> BacktestReport:
    from tickray.backtest.report import write_report  # matplotlib: loaded only where a report is drawn

    t0 = time.perf_counter()
    rows = backtest_rows(cfg, Path(lake_root))
    plan = shards(rows, cfg)
    say(f"{rows.n:,} rows of {len(rows.features)} features ({rows.feature_set_version}), horizons "
        f"{rows.horizons}s; {len(plan)} walk-forward shard(s) of {cfg.walk_forward.windows} window(s); "
        f"{rows.validity()}")
    rows_ref = ray.put(rows)
    cpus = max(1.0, *(m.resources.cpu for m in cfg.train.models.enabled().values()))
    gpus = max(m.resources.gpu for m in cfg.train.models.enabled().values())
    pending = [_run_shard.options(num_cpus=cpus, num_gpus=gpus).remote(rows_ref, s, cfg.model_dump_json())
               for s in plan]
    results = sorted(ray.get(pending), key=lambda r: (r["symbols"], r["window"]))

    test = np.concatenate([r["test"] for r in results])
    order = np.argsort(test, kind="stable")  # rows are (symbol, ts) sorted: index order is that order
    test = test[order]
    models = list(results[0]["predictions"])
    frame = pd.DataFrame({"ts": rows.ts[test], "symbol": rows.symbol[test].astype(str), "price": rows.price[test]})
    if rows.session is not None:  # a session start is a forced flat
        frame["session"] = rows.session[test]
    for j, h in enumerate(rows.horizons):
        frame[f"up_{h}s"] = rows.y[test, j]
        for m in models:
            frame[f"{m}_{h}s"] = np.concatenate([r["predictions"][m][:, j] for r in results])[order]
            if cfg.strategy.cost_aware:  # the window's own threshold: a signal inside it is no signal
                chosen = np.concatenate([np.full(r["test"].size, r["thresholds"][m][j]) for r in results])[order]
                p = frame[f"{m}_{h}s"].to_numpy()
                frame[f"{m}{COST_AWARE}_{h}s"] = np.where(np.abs(p - 0.5) > chosen, p, 0.5)
        frame[f"confidence_{h}s"] = np.concatenate([r["confidence"][:, j] for r in results])[order]
    scored = models
    if cfg.strategy.cost_aware:
        models = [*models, *(f"{m}{COST_AWARE}" for m in models)]

    perf, scores, curves, rule_of = {m: {} for m in [*models, BUY_AND_HOLD]}, {m: {} for m in scored}, {}, {}
    clock_ns = round(cfg.clock_s * NS)
    for h in rows.horizons:
        rules = cfg.rules(h)
        rule_of[h] = asdict(rules)
        series = {}
        for m in models:
            # The ensemble's confidence (shock detector included) sizes and filters its own positions only.
            conf = f"confidence_{h}s" if m.removesuffix(COST_AWARE) == "ensemble" else None
            ruled = rules if conf else replace(rules, sizing="fixed")
            sim = simulate_frame(frame, f"{m}_{h}s", replace(ruled, threshold=0.0) if m.endswith(COST_AWARE) else ruled,
                                 confidence=conf, where=f"backtest of {m} at {h}s")
            perf[m][h] = performance(sim, cfg.annual_periods, clock_ns)
            if m in scores:
                scores[m][h] = classification_metrics(frame[f"up_{h}s"].to_numpy(), frame[f"{m}_{h}s"].to_numpy())
            times, ret, exposure = sim.portfolio(clock_ns)
            series[m], series[f"{m}__exposure"] = ret, exposure
        codes = pd.factorize(frame["symbol"])[0]
        bh = buy_and_hold(frame["ts"].to_numpy(), codes, frame["price"].to_numpy(), rules, int(codes.max()) + 1,
                          frame["session"].to_numpy() if "session" in frame.columns else None)
        perf[BUY_AND_HOLD][h] = performance(bh, cfg.annual_periods, clock_ns)
        series[BUY_AND_HOLD] = bh.portfolio(clock_ns)[1]
        curves[h] = pd.DataFrame(series, index=pd.to_datetime(times, utc=True))

    windows = [{"window": r["window"], "symbols": r["symbols"], "rows": int(r["test"].size),
                "labelled": int((~np.isnan(rows.y[r["test"]]).all(axis=1)).sum()),
                "start": str(pd.Timestamp(int(rows.ts[r["test"]].min()), tz="UTC")),
                "end": str(pd.Timestamp(int(rows.ts[r["test"]].max()), tz="UTC")),
                "fit_seconds": r["fit_seconds"], "train_auc": r["train_auc"], "test_auc": r["test_auc"],
                **({"thresholds": r["thresholds"]} if "thresholds" in r else {})}
               for r in results]
    report = BacktestReport(
        cfg.name, rows.horizons, models, perf, scores, windows,
        {m: _mean_dicts([r["stability"][m] for r in results]) for m in results[0]["stability"]},
        {m: _mean_dicts([r["importance"][m] for r in results]) for m in results[0]["importance"]},
        {h: reliability(frame[f"up_{h}s"].to_numpy(), frame[f"ensemble_{h}s"].to_numpy(),
                        cfg.validation.calibration_bins) for h in rows.horizons},
        curves, rule_of, cfg.clock_s, int(test.size))
    figures = {}
    if report_path is not None:
        report.report_path, figures = write_report(report, cfg, Path(report_path))
    if tracking_uri:
        _log_to_mlflow(report, cfg, rows, figures, tracking_uri, artifact_root)
    report.seconds = time.perf_counter() - t0
    return report


def _log_to_mlflow(report: BacktestReport, cfg: BacktestConfig, rows: Rows, figures: dict[str, Path],
                   tracking_uri: str, artifact_root: str) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    exp = registry.experiment_id(MlflowClient(tracking_uri), cfg.name, artifact_root)
    with mlflow.start_run(experiment_id=exp, run_name=f"backtest-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        report.run_id = run.info.run_id
        mlflow.set_tags({"git_commit": registry.git_commit(), "feature_set_version": rows.feature_set_version,
                         "source": cfg.data.source})
        mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")
        mlflow.log_dict(rows.data_range(), "data_range.json")
        mlflow.log_dict(rows.sources(), "data_provenance.json")
        mlflow.log_dict({"windows": report.windows, "stability": report.stability, "importance": report.importance,
                         "calibration": {str(h): c for h, c in report.calibration.items()}}, "validation.json")
        mlflow.log_metrics({f"{m}_{k}_{h}s": float(v) for m, by_h in report.performance.items()
                            for h, p in by_h.items() for k, v in p.items() if np.isfinite(v)})
        mlflow.log_metrics({f"{m}_auc_{h}s": s[h]["auc"] for m, s in report.scores.items() for h in s})
        if report.report_path:
            mlflow.log_artifact(str(report.report_path), "report")
        for path in figures.values():
            mlflow.log_artifact(str(path), "report/figures")
        mlflow.log_text(json.dumps(report.lines(), indent=1), "summary.json")
