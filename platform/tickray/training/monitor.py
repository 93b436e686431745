"""`tickray monitor`: is the champion still looking at the market it was trained on, and still right?

Each check compares the model's reference rows (the feature lake over the range it was trained on, from
its registry tags) with the current rows (the lake's latest ``current.window_s`` seconds, or the live
features the stream actors keep in Redis, sampled at each check and kept for ``current.window_s``):

- feature drift: PSI (10 reference-quantile bins) and the two-sample Kolmogorov-Smirnov test per feature;
- prediction shift: PSI of the model's P(up) on reference against current rows;
- accuracy decay: the model's realised AUC on current rows whose labels have arrived (lake only);
- a schedule: retrain every ``schedule_s`` whatever the data says.

A rule that fires raises an alert: a JSON log line, a ``tickray_monitor_alerts`` metric (Ray dashboard),
and a POST to ``webhook`` when configured. Alerts can submit the retraining job to the cluster (Ray Job
Submission API), at most once per ``retrain.cooldown_s``. `tickray monitor` runs the checks in a Ray actor
every ``interval_s``; ``--once`` runs one check here and prints it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import orjson
import ray
from pydantic import Field
from scipy.stats import ks_2samp

from tickray.config import Settings, StrictModel
from tickray.errors import ConfigError
from tickray.research.rows import NS, load_rows
from tickray.training import registry
from tickray.training.config import load_job_config, parse_config
from tickray.training.metrics import classification_metrics

log = logging.getLogger("tickray.monitor")




class CurrentConfig(StrictModel):
    source: Literal["lake", "redis"] = "lake"
    window_s: int = Field(3600, gt=0)  # the latest seconds of the feature lake, or of the Redis samples
    min_rows: int = Field(200, ge=10)  # fewer current rows than this: no verdict yet


class DriftRule(StrictModel):
    ks_pvalue: float = Field(0.05, gt=0, lt=1)  # a feature drifts when KS p < this ...
    psi: float = Field(0.25, gt=0)  # ... and its PSI is above this (large samples make tiny shifts significant)
    min_features: int = Field(1, ge=1)  # how many drifting features make an alert


class AccuracyRule(StrictModel):
    min_auc: float = Field(0.52, gt=0, lt=1)
    horizon_s: int | None = None  # default: the model's first horizon


class RetrainConfig(StrictModel):
    enabled: bool = True
    address: str | None = None  # the Ray dashboard (job server); default: the settings' local head
    entrypoint: str = "python jobs/train.py --config jobs/configs/train-synthetic.yaml"
    working_dir: str = "."
    env_vars: dict[str, str] = Field(default_factory=dict)
    cooldown_s: float = Field(3600, ge=0)


class MonitorConfig(StrictModel):
    model: str = "tickray-ensemble"
    alias: str = registry.CHAMPION
    symbols: list[str] = Field(default_factory=list)  # empty: the model's training symbols
    reference_rows: int = Field(20_000, ge=100)
    current: CurrentConfig = Field(default_factory=CurrentConfig)
    drift: DriftRule = Field(default_factory=DriftRule)
    prediction_psi: float = Field(0.25, gt=0)
    accuracy: AccuracyRule = Field(default_factory=AccuracyRule)
    schedule_s: float | None = Field(None, gt=0)
    webhook: str | None = None
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    interval_s: float = Field(300, gt=0)


def load_monitor_config(path: str | Path | None, overrides: dict | None = None) -> MonitorConfig:
    return load_job_config(MonitorConfig, path, overrides, "monitor config")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index over the reference's quantile bins: Σ (c − r) · ln(c / r)."""
    ref, cur = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if ref.size == 0 or cur.size == 0:
        return math.nan
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    r, c = np.maximum(r, eps), np.maximum(c, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def feature_drift(ref: np.ndarray, cur: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for j, name in enumerate(names):
        a, b = ref[:, j][~np.isnan(ref[:, j])], cur[:, j][~np.isnan(cur[:, j])]
        ks = ks_2samp(a, b) if a.size and b.size else None
        out[name] = {"psi": psi(ref[:, j], cur[:, j]), "ks": float(ks.statistic) if ks else math.nan,
                     "p_value": float(ks.pvalue) if ks else math.nan}
    return out


@dataclass
class Alert:
    rule: str
    detail: str


@dataclass
class CheckResult:
    at: str
    model: str
    version: str
    reference_rows: int
    current_rows: int
    drift: dict[str, dict[str, float]] = field(default_factory=dict)
    drifting: list[str] = field(default_factory=list)
    prediction_psi: float = math.nan
    realised_auc: float = math.nan
    alerts: list[Alert] = field(default_factory=list)
    retrain_job: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [(f"{self.at}: {self.model} v{self.version}, {self.reference_rows:,} reference rows, "
               f"{self.current_rows:,} current rows"),
               (f"drifting features ({len(self.drifting)}): {', '.join(self.drifting) or 'none'}; prediction PSI "
               f"{self.prediction_psi:.3f}; realised AUC {self.realised_auc:.3f}")]
        out += [f"ALERT {a.rule}: {a.detail}" for a in self.alerts] + self.notes
        if self.retrain_job:
            out.append(f"retraining job submitted: {self.retrain_job}")
        return out


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _date(iso: str) -> str:
    return dt.datetime.fromisoformat(iso).date().isoformat()


class Monitor:
    """One check at a time; the state between checks is the Redis sample buffer and the last retrain."""

    def __init__(self, cfg: MonitorConfig, settings: Settings):
        self.cfg, self.settings = cfg, settings
        self.last_retrain = -math.inf
        self.started = time.time()
        self.live: dict[tuple[str, int], list[float]] = {}  # (symbol, ts_ns) → feature row (Redis source)
        self._counter = None
        self._reference: tuple = ()  # (version, rows, sampled indices, predictions): fixed per model version

    def _rows(self, loaded: registry.LoadedModel, start: str, end: str, symbols: list[str]):
        cfg = parse_config({"data": {"lake": str(self.settings.lake_path), "symbols": symbols, "start": start,
                                     "end": end, "horizons_s": loaded.horizons, "features": loaded.features}},
                           f"monitor of {loaded.name}")
        return load_rows(cfg, self.settings.lake_path)

    def _sample_redis(self, symbols: list[str], features: list[str], window_s: float) -> None:
        """Each symbol's newest published row, kept with the earlier samples of the current window: those
        older than ``window_s`` before the newest (on the market clock) are dropped, so the store stays
        bounded however long the monitor runs."""
        import redis

        from tickray.stream.keys import FEATURES_KEY

        r = redis.Redis.from_url(self.settings.redis_url)
        for sym, body in zip(symbols, r.mget([FEATURES_KEY.format(symbol=s) for s in symbols])):
            if body:
                doc = orjson.loads(body)
                self.live[(sym, int(doc["ts_ns"]))] = [float(doc["features"].get(f, math.nan)) for f in features]
        if self.live:
            since = max(ts for _, ts in self.live) - window_s * NS
            self.live = {k: row for k, row in self.live.items() if k[1] >= since}

    def check(self) -> CheckResult:
        cfg = self.cfg
        loaded = registry.load(self.settings.tracking_uri, cfg.model, cfg.alias)
        rng = json.loads(loaded.tags.get("data_range", "{}"))
        if not rng:
            raise ConfigError(f"monitor: {cfg.model} v{loaded.version} has no data_range tag (not trained by tickray)")
        test_start = json.loads(loaded.tags.get("test_window", "{}")).get("test_start")
        symbols = [s.upper() for s in cfg.symbols] or rng["symbols"].split(",")
        if not self._reference or self._reference[0] != loaded.version:
            ref = self._rows(loaded, _date(rng["start"]), _date(rng["end"]), symbols)
            keep = ref.ts < int(test_start) if test_start else np.ones(ref.n, bool)  # what it learned from
            ref_idx = np.flatnonzero(keep & ~np.isnan(ref.x).any(axis=1))
            ref_idx = np.sort(np.random.default_rng(0).choice(ref_idx, min(ref_idx.size, cfg.reference_rows),
                                                              replace=False))
            self._reference = (loaded.version, ref, ref_idx, loaded.model.predict_matrix(ref.x, ref_idx)[0])
        _, ref, ref_idx, p_ref = self._reference
        result = CheckResult(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), cfg.model, loaded.version,
                             int(ref_idx.size), 0)

        if cfg.current.source == "lake":
            from tickray import lake

            dates = sorted(d for d, s in lake.partitions(self.settings.lake_path, "features") if s in symbols)
            cur = self._rows(loaded, dates[-2] if len(dates) > 1 else dates[-1], dates[-1], symbols)
            since = cur.ts.max() - cfg.current.window_s * NS
            cur_idx = np.flatnonzero((cur.ts >= since) & ~np.isnan(cur.x).any(axis=1))
            cur_x = cur.x
            where = (f"the lake's newest {cfg.current.window_s:g} s of {', '.join(symbols)}, "
                     f"{_iso(since)} to {_iso(cur.ts.max())}, with every feature defined")
        else:
            self._sample_redis(symbols, loaded.features, cfg.current.window_s)
            cur, cur_x = None, np.array(list(self.live.values()), np.float32).reshape(-1, len(loaded.features))
            cur_idx = np.flatnonzero(~np.isnan(cur_x).any(axis=1))
            where = (f"live rows of {', '.join(symbols)} sampled from Redis over {cfg.current.window_s:g} s, with "
                     "every feature defined")
        result.current_rows = int(cur_idx.size)

        if cur_idx.size < cfg.current.min_rows:
            result.notes.append(f"{cur_idx.size} current rows ({where}) < {cfg.current.min_rows}: no drift "
                                "verdict yet")
        else:
            result.drift = feature_drift(ref.x[ref_idx], cur_x[cur_idx], loaded.features)
            result.drifting = [f for f, d in result.drift.items()
                               if d["p_value"] < cfg.drift.ks_pvalue and d["psi"] > cfg.drift.psi]
            if len(result.drifting) >= cfg.drift.min_features:
                worst = max(result.drifting, key=lambda f: result.drift[f]["psi"])
                result.alerts.append(Alert("feature_drift", f"{len(result.drifting)} feature(s) drifted; worst "
                                           f"{worst}: PSI {result.drift[worst]['psi']:.2f}, KS p "
                                           f"{result.drift[worst]['p_value']:.1e}"))
            p_cur, _ = loaded.model.predict_matrix(cur_x, cur_idx)
            result.prediction_psi = psi(p_ref[:, 0], p_cur[:, 0])
            if result.prediction_psi > cfg.prediction_psi:
                result.alerts.append(Alert("prediction_shift", f"PSI of P(up in {loaded.horizons[0]}s) "
                                           f"{result.prediction_psi:.2f} > {cfg.prediction_psi}"))
            if cur is not None:
                h = cfg.accuracy.horizon_s or loaded.horizons[0]
                j = loaded.horizons.index(h)
                try:
                    result.realised_auc = classification_metrics(cur.y[cur_idx, j], p_cur[:, j])["auc"]
                except ValueError:
                    result.notes.append(f"no labelled current rows at {h}s yet: accuracy not judged")
                if result.realised_auc < cfg.accuracy.min_auc:
                    result.alerts.append(Alert("accuracy_decay", f"realised AUC at {h}s {result.realised_auc:.3f} "
                                               f"< {cfg.accuracy.min_auc}"))
        if cfg.schedule_s and time.time() - max(self.last_retrain, self.started) >= cfg.schedule_s:
            result.alerts.append(Alert("schedule", f"{cfg.schedule_s:g}s since the last retraining"))
        for alert in result.alerts:
            self._raise(alert, result)
        if result.alerts and cfg.retrain.enabled:
            self._retrain(result)
        return result

    def _raise(self, alert: Alert, result: CheckResult) -> None:
        log.warning(json.dumps({"event": "monitor_alert", "model": result.model, "version": result.version,
                                **asdict(alert)}))
        if ray.is_initialized():
            from ray.util.metrics import Counter

            if self._counter is None:
                self._counter = Counter("tickray_monitor_alerts", "alerts raised by tickray monitor",
                                        tag_keys=("rule", "model"))
            self._counter.inc(1, tags={"rule": alert.rule, "model": result.model})
        if self.cfg.webhook:
            try:
                httpx.post(self.cfg.webhook, json={"model": result.model, "version": result.version,
                                                   **asdict(alert)}, timeout=10).raise_for_status()
            except httpx.HTTPError as e:
                result.notes.append(f"webhook {self.cfg.webhook} failed: {e}")

    def _retrain(self, result: CheckResult) -> None:
        rt = self.cfg.retrain
        wait = self.last_retrain + rt.cooldown_s - time.time()
        if wait > 0:
            result.notes.append(f"retraining held back: cooldown ({wait:.0f}s left)")
            return
        from ray.job_submission import JobSubmissionClient

        address = rt.address or f"http://{self.settings.dashboard_host}:{self.settings.dashboard_port}"
        client = JobSubmissionClient(address)
        env = {"working_dir": rt.working_dir, "env_vars": rt.env_vars} if rt.env_vars else {"working_dir": rt.working_dir}
        result.retrain_job = client.submit_job(entrypoint=rt.entrypoint, runtime_env=env,
                                               metadata={"submitted_by": "tickray-monitor",
                                                         "reasons": ",".join(a.rule for a in result.alerts)})
        self.last_retrain = time.time()
        log.warning(json.dumps({"event": "monitor_retrain", "job": result.retrain_job, "address": address}))


@ray.remote(num_cpus=0.5)
class MonitorActor:
    """`tickray monitor`: a check every ``interval_s`` in a thread; the results are kept for `status`."""

    def __init__(self, cfg_json: str, settings_json: str):
        self.monitor = Monitor(MonitorConfig.model_validate_json(cfg_json), Settings.model_validate_json(settings_json))
        self.results: list[dict] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.results = [*self.results[-99:], asdict(self.monitor.check())]
            except Exception as e:  # noqa: BLE001 - reported, retried next interval; never ends the actor
                self.errors = [*self.errors[-99:], f"{type(e).__name__}: {e}"]
                log.error(json.dumps({"event": "monitor_error", "error": str(e)}))
            self._stop.wait(self.monitor.cfg.interval_s)

    def last(self) -> dict:
        return {"checks": len(self.results), "last": self.results[-1] if self.results else None,
                "errors": self.errors[-5:]}

    def stop(self) -> None:
        self._stop.set()
