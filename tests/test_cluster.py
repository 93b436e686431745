"""The cluster side: launcher configs checked with Ray's own schema, and the local autoscaling twin of
cluster.yaml adding and removing worker nodes on this machine."""

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, free_port
from tickray.cluster import validate_cluster_config
from tickray.errors import ConfigError


def _cli(*args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "tickray.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout, check=False)


@pytest.mark.parametrize("path", ["cluster.yaml", "infra/local-cluster.yaml"])
def test_cluster_configs_pass_rays_own_validation(path):
    config = validate_cluster_config(REPO / path)
    head = config["available_node_types"][config["head_node_type"]]
    gpu = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert head["resources"].get("CPU", 0) <= 1 and gpu  # a light head, and a GPU worker type
    r = _cli("check-cluster", str(REPO / path), env={})
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
    r = _cli("check-cluster", str(path), env={})
    assert r.returncode == 2 and message in r.stderr


def _stack_env(tmp_path) -> dict[str, str]:
    return {"TICKRAY_STATE_DIR": str(tmp_path / "state"), "TICKRAY_REDIS_PORT": str(free_port()),
            "TICKRAY_RAY_PORT": str(free_port()), "TICKRAY_DASHBOARD_PORT": str(free_port()),
            "TICKRAY_METRICS_PORT": str(free_port()), "RAY_AUTH_MODE": "token"}


def test_up_refuses_a_cloud_config_for_the_twin(tmp_path):
    env = _stack_env(tmp_path)
    r = _cli("up", "--autoscaling-config", str(REPO / "cluster.yaml"), env=env)
    assert r.returncode == 2 and "provider 'aws' starts cloud machines: use `ray up" in r.stderr
    assert "redis  down" in _cli("status", env=env).stdout  # nothing is left half-started


def test_the_autoscaling_twin_adds_nodes_under_demand_and_removes_them_when_idle(tmp_path):
    env = _stack_env(tmp_path)
    up = _cli("up", "--autoscaling-config", str(REPO / "infra" / "local-cluster.yaml"), env=env)
    try:
        assert up.returncode == 0, up.stderr
        before = _cli("status", env=env).stdout
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
        after = _cli("status", env=env).stdout
        assert "nodes  1 alive" in after and "jobs   0 running" in after and "serve  no applications" in after
    finally:
        down = _cli("down", env=env)
    assert "ray" in down.stdout
    left = subprocess.run(["pgrep", "-f", f"gcs-address=[0-9.]*:{env['TICKRAY_RAY_PORT']}"], capture_output=True,
                          text=True, check=False)
    assert left.stdout == "", left.stdout  # no fake worker node outlives the head
