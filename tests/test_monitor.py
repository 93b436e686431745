"""Monitoring: PSI by hand, no alert on an unchanged market, and a shifted feature that fires the drift
alert, posts the webhook and submits the retraining job to a real Ray head's job server."""

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis
from conftest import REPO
from tickray.config import Settings
from tickray.research.rows import NS, load_rows
from tickray.stream.keys import FEATURES_KEY
from tickray.training import registry
from tickray.training.config import parse_config
from tickray.training.models import fit_logistic
from tickray.training.monitor import CheckResult, Monitor, MonitorConfig, psi

FEATURES = ["ret_1s", "ret_5s", "imb_l1", "ofi_5s", "spread_ticks"]


def test_psi_by_hand():
    ref = np.arange(100, dtype=float)  # deciles: 10 rows per bin
    assert psi(ref, ref) == pytest.approx(0.0)
    # all current rows in the top bin: (1 - 0.1)·ln(1/0.1) + 9 · (1e-4 - 0.1)·ln(1e-4/0.1)
    expected = 0.9 * np.log(10) + 9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert psi(ref, np.full(50, 95.0)) == pytest.approx(expected)
    assert np.isnan(psi(ref, np.array([np.nan])))


@pytest.fixture(scope="module")
def champion(market_lake, tmp_path_factory):
    """A logistic model of five tick features registered as champion the way `tickray train` tags it."""
    state = tmp_path_factory.mktemp("monitor-state")
    settings = Settings(state_dir=state, lake_root=market_lake)
    cfg = parse_config({"data": {"horizons_s": [10], "features": FEATURES}})
    rows = load_rows(cfg, market_lake)
    cut = int(np.quantile(rows.ts, 0.8))
    train = np.flatnonzero((rows.ts < cut) & ~np.isnan(rows.x).any(axis=1) & ~np.isnan(rows.y[:, 0]))
    wrapper = registry.TickrayModel(fit_logistic(rows.x, rows.y, train), rows.features, rows.horizons,
                                    rows.feature_set_version)
    mlflow.set_tracking_uri(settings.tracking_uri)
    exp = registry.experiment_id(mlflow.MlflowClient(settings.tracking_uri), "monitor-test", settings.artifact_root)
    with mlflow.start_run(experiment_id=exp):
        sample = pd.DataFrame(rows.x[:5], columns=rows.features).assign(ts=rows.ts[:5], symbol=rows.symbol[:5])
        version = registry.log_model(wrapper, "mon-ensemble", sample, {
            "data_range": json.dumps(rows.data_range()), "test_window": json.dumps({"test_start": str(cut)})})
    mlflow.MlflowClient(settings.tracking_uri).set_registered_model_alias("mon-ensemble", "champion", version)
    return settings, rows


def _edited_lake(src, dst, last_s: int, **edits):
    """A copy of the lake whose columns named in ``edits`` are changed (column → new values) in its last
    ``last_s`` seconds: the market changed under the model."""
    shutil.copytree(src, dst)
    for part in (dst / "features").glob("date=*/symbol=*/*.parquet"):
        t = pq.read_table(part)
        ts = pc.cast(t["ts"], pa.int64()).to_numpy()
        for name, edit in edits.items():
            col = t[name].to_numpy(zero_copy_only=False).astype(float)
            late = ts >= ts.max() - last_s * NS
            col[late] = edit(col[late], col)
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(col))
        pq.write_table(t, part)


def _shifted_lake(src, dst, feature: str, last_s: int):
    """``feature`` moved by 3 standard deviations in the last ``last_s`` seconds."""
    _edited_lake(src, dst, last_s, **{feature: lambda late, col: late + 3 * np.nanstd(col)})


def _rules(settings, lake=None, **cfg) -> tuple[list[str], CheckResult]:
    cfg = MonitorConfig(model="mon-ensemble", retrain={"enabled": False}, **cfg)
    result = Monitor(cfg, settings if lake is None else settings.model_copy(update={"lake_root": lake})).check()
    return [a.rule for a in result.alerts], result


def test_outcomes_turned_against_the_model_fire_accuracy_decay_alone(champion, market_lake, tmp_path, ray_cluster):
    """The last hour's 10-s moves reversed: the features (and so the predictions) are as before, the model
    is now wrong. Unchanged, the same check fires nothing (test_unchanged_market_raises_no_alert)."""
    _edited_lake(market_lake, tmp_path / "lake", 3600, fwd_ret_10s=lambda late, _: -late)
    rules, result = _rules(champion[0], tmp_path / "lake")
    assert rules == ["accuracy_decay"] and result.realised_auc < 0.45, result.lines()


def test_inputs_moved_under_the_model_fire_prediction_shift_above_its_threshold(champion, market_lake, tmp_path,
                                                                                 ray_cluster):
    """Every feature moved by 3 standard deviations in the last hour: the answers move with them; a
    threshold above the PSI they reach keeps the same check quiet on that rule."""
    _edited_lake(market_lake, tmp_path / "lake", 3600,
                 **{f: (lambda late, col: late + 3 * np.nanstd(col)) for f in FEATURES})
    rules, result = _rules(champion[0], tmp_path / "lake")
    assert "prediction_shift" in rules and result.prediction_psi > 0.25, result.lines()
    quiet, _ = _rules(champion[0], tmp_path / "lake", prediction_psi=result.prediction_psi + 0.01)
    assert "prediction_shift" not in quiet and "feature_drift" in quiet


def test_the_schedule_fires_once_its_time_since_the_last_retraining_has_passed(champion, ray_cluster):
    monitor = Monitor(MonitorConfig(model="mon-ensemble", schedule_s=3600, retrain={"enabled": False}), champion[0])
    assert monitor.check().alerts == []
    monitor.started -= 3600  # an hour on, with no retraining since
    assert [a.rule for a in monitor.check().alerts] == ["schedule"]


def test_unchanged_market_raises_no_alert(champion, ray_cluster):
    cfg = MonitorConfig(model="mon-ensemble", retrain={"enabled": False})
    result = Monitor(cfg, champion[0]).check()
    assert result.current_rows > 1000 and result.reference_rows > 1000
    assert result.drifting == [], result.lines()
    assert not result.alerts, result.lines()
    assert result.realised_auc > 0.55  # the synthetic market's signal is still there
    # too few rows for a verdict: the note says which rows were taken
    few = Monitor(MonitorConfig(model="mon-ensemble", current={"window_s": 60}, retrain={"enabled": False}),
                  champion[0]).check()
    assert few.current_rows < 200 and not few.drifting
    assert few.notes[0].startswith(f"{few.current_rows} current rows (the lake's newest 60 s of BTCUSDT, ETHUSDT, "
                                   "2024-01-01 23:5"), few.notes


def test_live_features_from_redis(champion, redis_settings, ray_cluster):
    """``current.source: redis``: the features the stream actors publish, sampled at each check; a market
    whose order-book imbalance has moved is seen drifting once enough samples are in."""
    settings, rows = champion
    settings = settings.model_copy(update={"redis_port": redis_settings.redis_port})
    r = redis.Redis.from_url(settings.redis_url)
    cfg = MonitorConfig(model="mon-ensemble", current={"source": "redis", "min_rows": 20},
                        retrain={"enabled": False})
    monitor = Monitor(cfg, settings)
    short = Monitor(cfg.model_copy(update={"current": cfg.current.model_copy(update={"window_s": 10})}), settings)
    live = np.flatnonzero(~np.isnan(rows.x).any(axis=1))[-40:]
    results, kept = [], []
    for k in range(0, 40, 2):  # what two symbols' stream actors would publish, check after check
        for i, sym in zip(live[k:k + 2], ("BTCUSDT", "ETHUSDT")):
            feats = dict(zip(rows.features, rows.x[i].tolist()))
            feats["imb_l1"] += 3.0
            r.set(FEATURES_KEY.format(symbol=sym), json.dumps({"symbol": sym, "ts_ns": int(rows.ts[i]),
                                                               "features": feats}))
        results.append(monitor.check())
        kept.append(short.check().current_rows)
    assert results[0].current_rows == 2 and "no drift verdict yet" in results[0].notes[0]
    assert "live rows of BTCUSDT, ETHUSDT sampled from Redis over 3600 s" in results[0].notes[0]
    assert results[-1].current_rows == 40
    # a 10 s window keeps only the samples of its last 10 s of market time: the store does not grow
    ts = rows.ts[live]
    assert kept[-1] == int((ts >= ts.max() - 10 * 10**9).sum()) < 40
    assert "imb_l1" in results[-1].drifting and "feature_drift" in [a.rule for a in results[-1].alerts]
    assert np.isnan(results[-1].realised_auc)  # live features carry no labels


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_POST(self):
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_shifted_feature_fires_the_alert_and_submits_retraining(champion, market_lake, ray_head, tmp_path,
                                                               ray_cluster):
    shifted = tmp_path / "lake"
    _shifted_lake(market_lake, shifted, "imb_l1", 3600)
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        # the job server of a head like `tickray up` starts is where retraining goes
        address = f"http://127.0.0.1:{ray_head['TICKRAY_DASHBOARD_PORT']}"
        cfg = MonitorConfig(model="mon-ensemble", webhook=f"http://127.0.0.1:{hook.server_port}/alerts",
                            retrain={"address": address, "working_dir": str(REPO),
                                     "entrypoint": "python jobs/train.py --config jobs/configs/train-synthetic.yaml",
                                     "env_vars": {"TICKRAY_STATE_DIR": str(tmp_path / "retrain")}})
        monitor = Monitor(cfg, champion[0].model_copy(update={"lake_root": shifted}))
        result = None
        for _ in range(30):  # the head's job agent registers a few seconds after its ports open
            try:
                result = monitor.check()
                break
            except RuntimeError as e:
                if "No available agent" not in str(e):
                    raise
                time.sleep(2)
        assert result is not None
        assert result.drifting == ["imb_l1"], result.lines()
        assert result.drift["imb_l1"]["psi"] > 0.25 and result.drift["imb_l1"]["p_value"] < 1e-6
        assert "feature_drift" in [a.rule for a in result.alerts]
        assert any(h["rule"] == "feature_drift" and h["model"] == "mon-ensemble" for h in _Hook.received)
        assert result.retrain_job

        from ray.job_submission import JobSubmissionClient

        jobs = JobSubmissionClient(address)
        info = jobs.get_job_info(result.retrain_job)
        assert info.entrypoint.startswith("python jobs/train.py")
        assert info.metadata["submitted_by"] == "tickray-monitor"
        assert str(info.status) in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED") and str(info.status) != "STOPPED"
        jobs.stop_job(result.retrain_job)  # the retraining itself is test_training's business

        again = monitor.check()  # the cooldown holds a second submission back
        assert again.retrain_job is None and any("cooldown" in n for n in again.notes)
    finally:
        hook.shutdown()
