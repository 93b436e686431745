"""`tickray up` / `down` / `status` against real processes."""

import os
import socket
import subprocess
import sys

import pytest
from conftest import free_port
from tickray import stack
from tickray.config import Settings
from tickray.errors import StackError


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "tickray.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False)


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
