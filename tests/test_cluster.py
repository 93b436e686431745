"""The cluster side: launcher configs checked with Ray's own schema, and the local autoscaling twin of
cluster.yaml adding and removing worker nodes on this machine."""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, free_port, ray_job, stack_env, tickray_cli
from tickray.errors import ConfigError
from tickray.ops.cluster import validate_cluster_config


@pytest.mark.parametrize("path", ["cluster.yaml", "infra/local-cluster.yaml"])
def test_cluster_configs_pass_rays_own_validation(path):
    config = validate_cluster_config(REPO / path)
    head = config["available_node_types"][config["head_node_type"]]
    gpu = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert head["resources"].get("CPU", 0) <= 1 and gpu  # a light head, and a GPU worker type
    r = tickray_cli("check-cluster", str(REPO / path), env={})
    assert r.returncode == 0 and "valid for Ray" in r.stdout, r.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["available_node_types"]["cpu_worker"].update(min_wokers=1),
     "available_node_types.cpu_worker: Additional properties are not allowed ('min_wokers' was unexpected)"),
    (lambda c: c.update(idle_timeout_minutes="ten"), "idle_timeout_minutes: 'ten' is not of type 'number'"),
    (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
     "available_node_types.gpu_worker: 'node_config' is a required property"),
    (lambda c: c.update(head_node_type="boss"), "`head_node_type` must be one of `available_node_types`"),
    (lambda c: c["provider"].pop("type"), "provider.type is missing"),
])
def test_an_edited_cluster_yaml_is_refused_naming_the_key(tmp_path, edit, message):
    config = copy.deepcopy(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    edit(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as e:
        validate_cluster_config(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)
    r = tickray_cli("check-cluster", str(path), env={})
    assert r.returncode == 2 and message in r.stderr


def test_up_refuses_a_cloud_or_broken_config_for_the_twin(tmp_path):
    env = stack_env(tmp_path / "state")
    r = tickray_cli("up", "--autoscaling-config", str(REPO / "cluster.yaml"), env=env)
    assert r.returncode == 2 and "provider 'aws' starts cloud machines: use `ray up" in r.stderr
    assert "redis  down" in tickray_cli("status", env=env).stdout  # nothing is left half-started
    twin = yaml.safe_load((REPO / "infra" / "local-cluster.yaml").read_text())
    twin["available_node_types"]["cpu_worker"]["max_wrokers"] = 3
    (tmp_path / "twin.yaml").write_text(yaml.safe_dump(twin))
    r = tickray_cli("up", "--autoscaling-config", str(tmp_path / "twin.yaml"), env=env)
    assert r.returncode == 2 and "available_node_types.cpu_worker: Additional properties" in r.stderr, r.stderr
    assert "redis  down" in tickray_cli("status", env=env).stdout


@pytest.mark.slow
def test_the_autoscaling_twin_adds_nodes_under_demand_and_removes_them_when_idle(tmp_path):
    env = stack_env(tmp_path / "state")
    up = tickray_cli("up", "--autoscaling-config", str(REPO / "infra" / "local-cluster.yaml"), env=env)
    try:
        assert up.returncode == 0, up.stderr
        before = tickray_cli("status", env=env).stdout
        assert "nodes  1 alive (CPU 0/1 in use)" in before, before
        run = subprocess.run([sys.executable, str(REPO / "tests" / "twin_demand_script.py")], capture_output=True,
                             text=True, env={**os.environ, **env}, timeout=400, check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        # the driver also prints the autoscaler's events
        seen = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
        print(seen)
        # 5 one-CPU tasks on a 1-CPU head: the autoscaler adds 2-CPU workers and a GPU worker...
        assert seen["start"] == 1 and seen["head_cpus"] == 1 and seen["peak"] >= 3 and seen["cpu_task_nodes"] >= 2
        assert seen["gpu_task_on_gpu_node"]
        # ... and takes them all away once idle (idle_timeout_minutes 0.2)
        assert seen["back_to_start_after_s"] is not None and seen["end"] == 1
        after = tickray_cli("status", env=env).stdout
        assert "nodes  1 alive" in after and "jobs   0 running" in after and "serve  no applications" in after
    finally:
        down = tickray_cli("down", env=env)
    assert "ray" in down.stdout
    left = subprocess.run(["pgrep", "-f", f"gcs-address=[0-9.]*:{env['TICKRAY_RAY_PORT']}"], capture_output=True,
                          text=True, check=False)
    assert left.stdout == "", left.stdout  # no fake worker node outlives the head


_STATUS = {"succeeded": "SUCCEEDED", "was stopped": "STOPPED", "failed": "FAILED"}


def _job_status(env, job_id: str, until: set[str], timeout_s: float = 300) -> str:
    """The job's status once it is one of ``until``, polled through the job server's client in this process
    (each `ray job` command costs 3 s of CPU to start); an ended job's is what `ray job status`
    says (a running one may have moved on by the time the command answers)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(f"http://127.0.0.1:{env['TICKRAY_DASHBOARD_PORT']}")
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id).value) not in until and time.monotonic() < deadline:
        time.sleep(0.5)
    if status not in _STATUS.values():
        return status
    out = ray_job(env, "status", job_id, timeout=60).stdout
    ended = re.search(rf"Job '{job_id}' (succeeded|was stopped|failed)", out)
    return _STATUS[ended.group(1)] if ended else out


@pytest.mark.slow
def test_a_job_goes_submit_status_logs_stop_on_a_head(ray_head, shared_data, tmp_path):
    env = ray_head
    runtime_env = json.dumps({"env_vars": {"TICKRAY_STATE_DIR": env["TICKRAY_STATE_DIR"]}})

    def submit(*args: str, working_dir: bool = True) -> subprocess.CompletedProcess:
        where = ["--working-dir", str(REPO), "--runtime-env-json", runtime_env] if working_dir else []
        return ray_job(env, "submit", "--no-wait", *where, "--", *args)

    def job_id(r: subprocess.CompletedProcess) -> str:
        found = re.search(r"Job '(\S+)' submitted successfully", r.stdout + r.stderr)
        assert found, r.stdout[-2000:] + r.stderr[-2000:]
        return found.group(1)

    capture = shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz"
    ingest = job_id(submit("python", "jobs/ingest.py", str(capture), "--lake", str(tmp_path / "lake")))
    assert _job_status(env, ingest, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED", ray_job(env, "logs", ingest).stdout
    logs = ray_job(env, "logs", ingest).stdout
    assert "trades: 974 rows from 1 files" in logs, logs[-3000:]

    long = job_id(submit("python", "jobs/backtest.py", "--config", "jobs/configs/backtest-synthetic.yaml"))
    assert _job_status(env, long, {"RUNNING"}) == "RUNNING"
    assert ray_job(env, "stop", long).returncode == 0
    assert _job_status(env, long, {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"

    # failures end the job non-zero, with the reason in its logs
    bad = job_id(submit("python", "jobs/backtest.py", "--config", "jobs/configs/no-such.yaml"))
    assert _job_status(env, bad, {"SUCCEEDED", "FAILED"}) == "FAILED"
    assert "jobs/configs/no-such.yaml" in ray_job(env, "logs", bad).stdout
    nowhere = job_id(submit("python", "jobs/ingest.py", str(capture), working_dir=False))
    assert _job_status(env, nowhere, {"SUCCEEDED", "FAILED"}) == "FAILED"
    assert "jobs/ingest.py': [Errno 2] No such file or directory" in ray_job(env, "logs", nowhere).stdout


def test_a_job_under_a_python_without_the_project_says_what_to_do():
    """`ray job submit -- python jobs/X.py` runs the head's own Python: one without tickray's
    dependencies (here the system's) ends at once with the remedy, not a traceback."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    r = subprocess.run([system, "-E", "-s", str(REPO / "jobs" / "ingest.py"), "--help"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"jobs/ingest.py: {system} cannot import" in r.stderr and "the Python the Ray head was started with" in r.stderr


@pytest.mark.slow
def test_work_spreads_over_nodes_and_an_ingest_survives_losing_one(market, trained, mlflow_store, redis_settings,
                                                                   tmp_path):
    """Head + a CPU worker + a GPU worker (ray.cluster_utils.Cluster): Ray Data ingest and feature tasks run
    on more than one node, the serving deployment's 2 replicas land on 2 nodes, and an ingest whose worker
    is removed while a task runs still writes every row (Ray retries the lost tasks). GPU trials landing on
    the GPU node only: test_tune.py."""
    run = subprocess.run([sys.executable, str(REPO / "tests" / "multinode_script.py"), str(market[0]), mlflow_store[0],
                          redis_settings.redis_url, str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
    print(seen)
    assert len(seen["ingest_nodes"]) >= 2 and len(seen["feature_nodes"]) >= 2
    assert len(set(seen["replica_nodes"])) == 2 and seen["health"] == 200
    assert seen["removed_while_running"], "the worker was removed after its tasks had ended: nothing was tested"
    assert seen["rows_after_removal"] == seen["rows"] and seen["quarantined_equal"]
    assert seen["lake2_rows"] == seen["lake_rows"] and seen["lake_rows"]["trades"] > 0


# ---- infra/: the image, Redis, MLflow, Prometheus and Grafana -------------------------------------------


def test_the_image_runs_the_ray_python_and_torch_the_project_pins():
    import ray

    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=rayproject/ray:(\S+)-py(\d)(\d+)-cpu$", dockerfile, re.MULTILINE)
    assert base and base.group(1) == ray.__version__, "the image's Ray must be the drivers' Ray"
    assert (int(base.group(2)), int(base.group(3))) == sys.version_info[:2]
    torch_pin = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f'"torch=={torch_pin}"' in dockerfile and 'pip install --no-cache-dir -e ".[cluster]"' in dockerfile


def test_redis_conf_wants_a_password_and_evicts_only_what_expires(tmp_path):
    import redis
    from tickray.config import Settings
    from tickray.ops import stack

    port = free_port()
    server = subprocess.Popen(["redis-server", str(REPO / "infra" / "redis.conf"), "--port", str(port), "--dir",
                               str(tmp_path), "--requirepass", "s3cret"], stdout=subprocess.DEVNULL)
    try:
        settings = Settings(state_dir=tmp_path, redis_port=port, redis_password="s3cret")
        deadline = time.monotonic() + 10
        while not stack.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        stack.check_redis(settings)  # tickray's clients authenticate with TICKRAY_REDIS_PASSWORD
        r = stack.redis_client(settings)
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        with pytest.raises(redis.ResponseError, match="unknown command"):
            r.flushall()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_mlflow_server_script_serves_runs_and_artifacts(tmp_path):
    import httpx
    import mlflow

    port = free_port()
    env = {**os.environ, "MLFLOW_HOME": str(tmp_path), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(REPO / "infra" / "mlflow-server.sh")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        mlflow.set_tracking_uri(url)
        exp = mlflow.create_experiment("infra-check")
        (tmp_path / "note.txt").write_text("through the server")
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_metric("auc", 0.61)
            mlflow.log_artifact(str(tmp_path / "note.txt"))
        assert mlflow.get_run(run.info.run_id).data.metrics["auc"] == 0.61
        stored = list((tmp_path / "artifacts").rglob("note.txt"))  # proxied: the client never touched the store
        assert len(stored) == 1 and stored[0].read_text() == "through the server"
        assert (tmp_path / "mlflow.db").exists()
    finally:
        mlflow.set_tracking_uri(None)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # uvicorn waits for open connections without a limit of its own
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


_METRIC = re.compile(r'(Counter|Gauge|Histogram)\(\s*"(tickray_\w+)"')
_SUFFIX = {"Counter": ("_total",), "Histogram": ("_bucket", "_count", "_sum"), "Gauge": ("",)}


def test_prometheus_finds_rays_nodes_and_grafana_charts_every_tickray_metric():
    from ray._private import ray_constants

    prom = yaml.safe_load((REPO / "infra" / "prometheus.yml").read_text())
    files = [f for job in prom["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]

    defined = {}  # every metric the code registers with Ray, by kind
    for path in (REPO / "platform").rglob("*.py"):
        for kind, name in _METRIC.findall(path.read_text()):
            defined[name] = kind
    assert {"tickray_stream_messages", "tickray_bar_cache_lookups", "tickray_serve_predict_ms"} <= defined.keys()
    dashboard = json.loads((REPO / "infra" / "grafana" / "dashboards" / "tickray.json").read_text())
    charted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for exported in re.findall(r"\bray_(tickray_\w+)", target["expr"]):
                name = next((n for n in defined if any(exported == n + s for s in _SUFFIX[defined[n]])), None)
                assert name, f"panel {panel['title']!r} charts {exported}, which no code exports as such"
                charted.add(name)
    assert charted == defined.keys(), f"not on the dashboard: {sorted(defined.keys() - charted)}"


def test_status_names_the_registrys_champions(trained, mlflow_store, tmp_path):
    r = tickray_cli("status", env={"TICKRAY_STATE_DIR": str(tmp_path), "TICKRAY_MLFLOW_TRACKING_URI": mlflow_store[0],
                            "TICKRAY_REDIS_PORT": str(free_port())})
    assert r.returncode == 0, r.stderr
    for family in ("xgboost", "lstm", "transformer", "ensemble"):
        # aliases in name order: a challenger that another test registered comes first
        assert re.search(rf"^model  tickray-{family}: (challenger v\d+, )?champion v\d+$", r.stdout, re.MULTILINE), r.stdout
