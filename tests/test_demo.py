"""`tickray demo` end to end, as a user runs it, against the session's Ray and a real redis-server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray


@pytest.mark.slow
def test_demo_end_to_end(ray_cluster, settings):
    env = {
        **os.environ,
        "TICKRAY_STATE_DIR": str(settings.state_dir),
        "TICKRAY_REDIS_PORT": str(settings.redis_port),
        "TICKRAY_SERVE_PORT": str(settings.serve_port),
        "TICKRAY_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    r = subprocess.run([sys.executable, "-m", "tickray.cli", "demo", "--trades-per-day", "60000"],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
    out = r.stdout
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "rows ingested:" in out and "quarantined 0" in out
    assert "tickray-ensemble: v1 promoted to champion (no champion yet)" in out
    assert out.count("POST /v1/predict → ") == 2
    assert "gaps': 0" in out
    assert "9/9 walk-forward backtest" in out and "buy_and_hold" in out
    summary = json.loads(next((settings.state_dir / "reports").glob("demo-*.json")).read_text())
    models = {"xgboost", "prior", "logistic", "ensemble"}
    assert set(summary["backtest"]) == {*models, *(f"{m}:cost" for m in models), "buy_and_hold"}
    assert "data:image/png" in Path(summary["backtest_report"]).read_text()
