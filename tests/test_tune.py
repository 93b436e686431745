"""Ray Tune: Optuna + ASHA over XGBoost with the best config handed to the final training, failed trials
retried and recorded, resume after interruption, GPU trials failing fast without GPUs and placed on
the GPU node when there is one."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tickray.errors import ConfigError
from tickray.training.config import parse_config
from tickray.training.tune import run_tune, search_space

TUNE = {
    "data": {"horizons_s": [10], "train_every_s": 4},
    "split": {"folds": 2},
    "models": {"xgboost": {"num_boost_round": 100}},
    "tune": {"family": "xgboost", "num_samples": 4, "max_concurrent_trials": 2, "max_failures": 1,
             "grace_period": 1, "metric": "valid_logloss",
             "space": {"max_depth": {"type": "choice", "values": [3, -1]},  # -1: xgboost refuses it
                       "eta": {"type": "loguniform", "low": 0.03, "high": 0.3}}},
}


@pytest.mark.parametrize("tune, message", [
    ({"family": "lstm", "space": {"max_depth": {"type": "int", "low": 1, "high": 3}}},
     "tune.space.max_depth: lstm tunes only"),
    ({"space": {"eta": {"type": "normal", "low": 0, "high": 1}}}, "tune.space.eta: type 'normal' is not one of"),
    ({"space": {"eta": {"type": "uniform", "low": 0}}}, "tune.space.eta: uniform needs 'high'"),
    ({"space": {}}, "tune.space: empty"),
])
def test_bad_search_spaces_are_named(tune, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        search_space(parse_config({"tune": tune}))


@pytest.mark.parametrize("module", ["tickray.training.trial", "tickray.training.boosting"])
def test_trial_and_xgboost_worker_code_leave_heavy_imports_out(module):
    """A Tune trial and an XGBoostTrainer worker import these modules to unpickle their function: torch,
    MLflow and Optuna there cost seconds in every trial and worker process."""
    check = f"import sys, {module}; print(sorted({{'torch', 'mlflow', 'optuna'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_gpu_trial_on_a_cluster_without_gpus_fails_fast(market_lake, tmp_path):
    cfg = parse_config({**TUNE, "tune": {**TUNE["tune"], "resources": {"cpu": 1, "gpu": 1}}})
    with pytest.raises(ConfigError, match=r"tune.resources: one asks for \{'CPU': 1.0, 'GPU': 1.0\}; no node"):
        run_tune(cfg, market_lake, f"sqlite:///{tmp_path}/m.db", str(tmp_path / "a"), tmp_path / "r")


@pytest.mark.slow
def test_search_then_train_with_the_best(market_lake, tmp_path):
    uri, artifacts, storage = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"), tmp_path / "ray"
    report, trained = run_tune(parse_config(TUNE), market_lake, uri, artifacts, storage)
    assert report.trials == 4 and 1 <= report.failed < 4, report.lines()
    assert report.best_config["max_depth"] == 3
    assert 0 < report.busy_fraction <= 1 and report.trials_per_minute > 0
    # the final training used the best parameters
    client = MlflowClient(uri)
    xgb_run = next(r for r in client.search_runs([client.get_experiment_by_name("tickray").experiment_id],
                                                 f"tags.`mlflow.parentRunId` = '{trained.run_id}'")
                   if r.info.run_name == "xgboost")
    parent = client.get_run(trained.run_id)
    assert float(parent.data.params["models.xgboost.params.eta"]) == pytest.approx(report.best_config["eta"])
    assert xgb_run.data.metrics["test_auc_10s"] > 0.6
    # every trial is a nested run of the search's run, the failed ones marked FAILED with their error
    trials = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{report.run_id}'")
    assert len(trials) == 4
    failed = [t for t in trials if t.info.status == "FAILED"]
    assert len(failed) == report.failed and all("max_depth" in t.data.tags["error"] for t in failed)
    assert all(t.data.params["max_depth"] == "-1" for t in failed)

    # an interrupted (here: finished) search resumes from its experiment folder instead of starting over
    again, _ = run_tune(parse_config({**TUNE, "tune": {**TUNE["tune"], "train_after": False}}), market_lake,
                        uri, artifacts, storage, resume=True)
    assert again.trials == 4 and again.best_config == report.best_config


def test_gpu_trials_land_on_the_gpu_node(tmp_path):
    script = Path(__file__).with_name("gpu_placement_script.py")
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "ray")], capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["trials"] == 4 and not out["errors"]
    assert out["nodes"] == [out["gpu_node"]]


# One trial at a time: the trials' order, and so Optuna's proposals and ASHA's stops, do not depend on timing.
RESUMABLE = {**TUNE, "name": "resumable", "tune": {
    "family": "xgboost", "num_samples": 6, "max_concurrent_trials": 1, "max_failures": 0, "grace_period": 1,
    "metric": "valid_logloss", "train_after": False,
    "space": {"max_depth": {"type": "choice", "values": [2, 3, 4]},
              "eta": {"type": "loguniform", "low": 0.03, "high": 0.3}}}}
SEARCH = """import json, sys
from pathlib import Path
from tickray.training.config import parse_config
from tickray.training.tune import run_tune
cfg, lake, uri, artifacts, storage = sys.argv[1:]
run_tune(parse_config(json.loads(cfg)), Path(lake), uri, artifacts, Path(storage))
"""


def _saved_trials(experiment: Path) -> dict[str, str]:
    """trial id → status, as the search's saved state (what a resume reads) has them."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        saved = json.loads(states[-1].read_text())
    except ValueError:  # caught while being written
        return {}
    return {s["trial_id"]: s["status"] for s in (json.loads(t) for t, _ in saved["trial_data"])}


def _trial_dirs(experiment: Path) -> dict[str, Path]:
    return {tid: next(experiment.glob(f"*{tid}*")) for tid in _saved_trials(experiment)}


def _numbered(experiment: Path) -> dict[int, list[Path]]:
    """Trial folders by the number of the proposal they ran (after the random id), in the search's order."""
    found: dict[int, list[Path]] = {}
    for d in experiment.glob("run_trial_*"):
        found.setdefault(int(re.search(r"_[0-9a-f]{8}_(\d+)_", d.name)[1]), []).append(d)
    return found


def _configs_in_order(experiment: Path) -> list[dict]:
    """The parameters of the trials the search's state holds, in the order they were proposed."""
    saved = set(_trial_dirs(experiment).values())
    return [json.loads((d / "params.json").read_text())
            for _, dirs in sorted(_numbered(experiment).items()) for d in dirs if d in saved]


@pytest.mark.slow
def test_a_search_killed_half_way_resumes_without_repeating_a_trial(market_lake, tmp_path):
    """The driver of a search is killed (SIGKILL) once some trials have ended; `resume` ends it without
    running an ended trial again, and it finds what the same search run uninterrupted finds."""
    import os
    import signal
    import time

    import ray

    cfg = parse_config(RESUMABLE)
    uri, artifacts = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    experiment = killed / "tune-resumable-xgboost"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", SEARCH, json.dumps(RESUMABLE), str(market_lake), uri, artifacts,
                               str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while max(_numbered(experiment), default=0) < 3:  # one trial at a time: 1 and 2 have ended
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        assert time.monotonic() < deadline, sorted(experiment.glob("*"))
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    trials = _numbered(experiment)
    ended = [n for n in trials if n < max(trials)]
    assert 2 <= len(ended) < 6, trials  # killed half-way, not after the search's end
    before = {n: (trials[n][0] / "result.json").read_bytes() for n in ended}

    resumed, _ = run_tune(cfg, market_lake, uri, artifacts, killed, resume=True)
    assert resumed.trials == 6 and resumed.failed == 0, resumed.lines()
    after = _numbered(experiment)  # no ended trial ran again, nor was proposed again
    assert {n: [(d / "result.json").read_bytes() for d in after[n]] for n in ended} == {n: [b] for n, b in before.items()}

    uninterrupted, _ = run_tune(cfg, market_lake, uri, artifacts, whole)
    assert _configs_in_order(experiment) == _configs_in_order(whole / "tune-resumable-xgboost")
    assert resumed.best_config == uninterrupted.best_config
    assert resumed.best_score == pytest.approx(uninterrupted.best_score, rel=1e-9)
