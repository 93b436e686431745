"""The local stack: a redis-server and a Ray head that `tickray up` starts and `tickray down` stops.

Each process we start is recorded in a pid file under <state>/run; `down` stops only those, never a
process someone else started. An occupied port is an error, not something to kill.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tickray.config import Settings
from tickray.errors import StackError, TickrayError

if TYPE_CHECKING:  # redis is imported where it is used: Ray Data workers import this module, not redis
    import redis


@dataclass
class ServiceState:
    name: str
    running: bool
    pid: int | None
    detail: str


def _run_dir(settings: Settings) -> Path:
    d = settings.state_path / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _read_pid(path: Path) -> int | None:
    """The live process a pid file names, if it is still what we started (the file's stem, e.g. `redis`,
    appears in its command line): a recycled pid is never taken for ours."""
    try:
        pid = int(path.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) and path.stem.encode() in cmdline else None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def redis_client(settings: Settings) -> redis.Redis:
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def check_redis(settings: Settings) -> None:
    """Raise a one-line StackError when Redis cannot be reached at the configured address."""
    import redis

    try:
        redis_client(settings).ping()
    except redis.RedisError as e:
        raise StackError(
            f"Redis unreachable at {settings.redis_host}:{settings.redis_port} ({e}); "
            "start it with `tickray up` or set TICKRAY_REDIS_HOST/TICKRAY_REDIS_PORT"
        ) from None


# ---------------------------------------------------------------- redis-server


def redis_status(settings: Settings) -> ServiceState:
    pid = _read_pid(_run_dir(settings) / "redis.pid")
    where = f"{settings.redis_host}:{settings.redis_port}"
    import redis

    try:
        redis_client(settings).ping()
        owner = f"pid {pid}, started by tickray" if pid else "not started by tickray"
        return ServiceState("redis", True, pid, f"{where} answering ({owner})")
    except redis.RedisError:
        return ServiceState("redis", False, pid, f"{where} not answering")


def start_redis(settings: Settings, timeout_s: float = 10.0) -> ServiceState:
    run = _run_dir(settings)
    pidfile = run / "redis.pid"
    state = redis_status(settings)
    if state.running and state.pid:
        return state
    if port_in_use(settings.redis_host, settings.redis_port):
        raise StackError(
            f"port {settings.redis_port} on {settings.redis_host} is held by another process "
            "(not a redis-server tickray started); choose another with TICKRAY_REDIS_PORT"
        )
    exe = shutil.which("redis-server")
    if exe is None:
        raise StackError("redis-server not found on PATH; install it with `apt-get install -y redis-server`")
    data_dir = settings.state_path / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    pidfile.unlink(missing_ok=True)
    cmd = [
        exe, "--port", str(settings.redis_port), "--bind", settings.redis_host,
        "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(data_dir),
        "--logfile", str(data_dir / "redis.log"), "--save", "", "--appendonly", "no",
    ]
    if settings.redis_password:
        cmd += ["--requirepass", settings.redis_password]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"redis-server failed to start on port {settings.redis_port}: {proc.stderr.strip()}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = redis_status(settings)
        if state.running:
            return redis_status(settings)
        time.sleep(0.05)
    _stop_pidfile(pidfile)  # leave nothing half-started
    raise StackError(f"redis-server did not answer on port {settings.redis_port} within {timeout_s:.0f}s; "
                     f"see {data_dir / 'redis.log'}")


def _stop_pidfile(pidfile: Path, timeout_s: float = 30.0, group: bool = False) -> bool:
    """Stop the process a pidfile names: SIGTERM, then SIGKILL after ``timeout_s``. With ``group`` the
    process leads a group (`ray start --block`): the leader alone gets SIGTERM, since it stops its
    children in order (raylet before GCS; a raylet that loses its GCS first hangs on), and whatever of
    the group is left when it is gone is killed."""
    pid = _read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        elif _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return True


def stop_redis(settings: Settings) -> bool:
    return _stop_pidfile(_run_dir(settings) / "redis.pid")


# ---------------------------------------------------------------- Ray head

# Where Ray 2.60 looks for its token, first to last: the token itself, a file named by RAY_AUTH_TOKEN_PATH,
# then ~/.ray/auth_token. `ray start --head` refuses to start without one; only ray.init() makes one.
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


@dataclass(frozen=True)
class RayToken:
    """Where this process's Ray token comes from: the file Ray reads (which may not exist yet), or none
    and why (the environment variable holds it, or token authentication is off)."""
    file: Path | None
    why: str = ""

    def __str__(self) -> str:
        return str(self.file) if self.file else self.why


def ray_token_source() -> RayToken:
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        return RayToken(None, f"none needed (RAY_AUTH_MODE={mode})")
    if os.environ.get(TOKEN_ENV):
        return RayToken(None, f"${TOKEN_ENV}")
    return RayToken(Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token").expanduser())


def ensure_ray_token() -> RayToken:
    """The Ray token's source (ray_token_source), its file created when token authentication is on and
    it does not exist yet: 256 random bits, readable by this user only. An existing token is never
    replaced: heads and clients already started with it would no longer agree."""
    source = ray_token_source()
    if source.file is None:
        return source
    source.file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(source.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return source
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return source


def free_port() -> int:
    """A TCP port free on this machine now (for services, tests and benchmarks to listen on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_head_address(settings: Settings) -> str | None:
    """The address of the Ray head `tickray up` started, if it is still running."""
    run = _run_dir(settings)
    if _read_pid(run / "ray.pid") is None:
        return None
    try:
        return (run / "ray.address").read_text().strip()
    except OSError:
        return None


def ray_status(settings: Settings) -> ServiceState:
    run = _run_dir(settings)
    pid = _read_pid(run / "ray.pid")
    addr = ray_head_address(settings)
    if addr:
        dash = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        return ServiceState("ray", True, pid, f"head at {addr}, dashboard {dash}, "
                                              f"metrics http://127.0.0.1:{settings.metrics_port}/metrics, "
                                              f"token {ray_token_source()}")
    return ServiceState("ray", False, None, "no Ray head started by tickray (jobs start a local Ray)")


def _autoscaling_twin(settings: Settings, config_path: Path) -> tuple[Path, float, dict[str, str]]:
    """The fake-multinode config pointed at this head's GCS port, the head's CPUs, and the environment the
    fake provider needs (it refuses to start without RAY_FAKE_CLUSTER)."""
    import yaml

    from tickray.ops.cluster import FAKE_PROVIDER, head_resources, validate_cluster_config

    config = validate_cluster_config(config_path)
    if config["provider"]["type"] != FAKE_PROVIDER:
        raise StackError(f"{config_path}: provider {config['provider']['type']!r} starts cloud machines: use "
                         f"`ray up {config_path}`; `tickray up --autoscaling-config` takes {FAKE_PROVIDER} configs")
    config["provider"]["gcs_address"] = f"127.0.0.1:{settings.ray_port}"  # the provider assumes 6379
    prepared = _run_dir(settings) / "autoscaling.yaml"
    prepared.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": os.environ.get("AUTOSCALER_UPDATE_INTERVAL_S", "1")}
    return prepared, head_resources(config).get("CPU", 1), env


def serve_ingress_env(settings: Settings) -> dict[str, str]:
    """The environment a cluster's processes need for ``settings.serve_ingress`` (Ray reads it once, when
    Serve's controller and replicas start): for "haproxy", Ray's HAProxy ingress and Serve's
    throughput-optimised settings (HAProxy's files go to a folder per node under /tmp/haproxy-serve)."""
    if settings.serve_ingress != "haproxy":
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            # A replica leaving keeps answering this long so that HAProxy stops sending to it first; Ray's
            # 30 s is for load balancers on other machines, HAProxy on the node reloads in well under one.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def start_ray_head(settings: Settings, timeout_s: float = 90.0, autoscaling_config: Path | None = None) -> ServiceState:
    """A Ray head with its dashboard; with ``autoscaling_config`` (a fake_multinode cluster config such as
    infra/local-cluster.yaml) its autoscaler adds and removes worker nodes on this machine as demand asks."""
    run = _run_dir(settings)
    state = ray_status(settings)
    if state.running:
        return state
    host = settings.dashboard_host
    for port, what in ((settings.ray_port, "Ray head"), (settings.dashboard_port, "Ray dashboard"),
                      (settings.metrics_port, "Ray metrics export")):
        if port_in_use("127.0.0.1", port):
            raise StackError(f"port {port} ({what}) is held by another process; stop it or change the port")
    ensure_ray_token()
    num_cpus = settings.ray_num_cpus or os.cpu_count() or 2
    extra_args, extra_env = [], {}
    if autoscaling_config is not None:
        prepared, num_cpus, extra_env = _autoscaling_twin(settings, Path(autoscaling_config))
        extra_args = [f"--autoscaling-config={prepared}"]
    else:
        # A temp dir of this head's own: a job's driver finds its cluster as "the latest one started in the
        # head's temp dir", so with Ray's shared /tmp/ray a job could join another Ray started on this
        # machine after this head (seen with parallel test workers). Short: Ray's sockets live under it.
        # (The autoscaling twin's fake nodes look for their head in Ray's default one.)
        extra_args = [f"--temp-dir={Path(tempfile.gettempdir()) / f'tickray-ray-{settings.ray_port}'}"]
    ray_exe = Path(sys.executable).with_name("ray")
    log_path = settings.state_path / "ray-head.log"
    # --block keeps `ray start` in the foreground as the head's parent: stopping its process group
    # stops exactly this head and nothing else on the machine (unlike `ray stop`).
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(ray_exe), "start", "--head", "--block", f"--port={settings.ray_port}", f"--num-cpus={num_cpus}",
             "--include-dashboard=true", f"--dashboard-host={host}",
             f"--dashboard-port={settings.dashboard_port}", "--disable-usage-stats",
             f"--metrics-export-port={settings.metrics_port}",
             # Ray's fixed default (52365) is taken when another Ray runs here: jobs then find no agent.
             f"--dashboard-agent-listen-port={free_port()}", *extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
                 # A job's bare `python` is found on the head's PATH: make it this environment's.
                 "PATH": f"{ray_exe.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                 # On SIGTERM Ray drains the node for up to 30 s so that Serve can move replicas to other
                 # nodes; `tickray down` stops the whole local cluster, where there is nowhere to move to.
                 "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": os.environ.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0"),
                 **serve_ingress_env(settings), **extra_env},
        )
    (run / "ray.pid").write_text(str(proc.pid))
    address = f"127.0.0.1:{settings.ray_port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (run / "ray.pid").unlink(missing_ok=True)
            raise StackError(f"Ray head exited with code {proc.returncode}; see {log_path}")
        if port_in_use("127.0.0.1", settings.dashboard_port) and port_in_use("127.0.0.1", settings.ray_port):
            (run / "ray.address").write_text(address)
            return ray_status(settings)
        time.sleep(0.5)
    _stop_pidfile(run / "ray.pid", group=True)
    raise StackError(f"Ray head did not come up within {timeout_s:.0f}s; see {log_path}")


def stop_ray_head(settings: Settings) -> bool:
    run = _run_dir(settings)
    (run / "ray.address").unlink(missing_ok=True)
    stopped = _stop_pidfile(run / "ray.pid", group=True)
    if stopped:
        # `ray start` leaves a pointer that a later bare ray.init() would follow to the dead head.
        pointer = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        try:
            if pointer.read_text().strip().endswith(f":{settings.ray_port}"):
                pointer.unlink()
        except OSError:
            pass
    return stopped


# ---------------------------------------------------------------- the whole stack


def up(settings: Settings, with_ray: bool = True, autoscaling_config: Path | None = None) -> list[ServiceState]:
    started: list[ServiceState] = [start_redis(settings)]
    if with_ray:
        try:
            started.append(start_ray_head(settings, autoscaling_config=autoscaling_config))
        except TickrayError:  # a refused twin config too
            stop_redis(settings)  # nothing half-started is left running
            raise
    return started


def down(settings: Settings) -> list[str]:
    stopped = []
    if stop_ray_head(settings):
        stopped.append("ray")
    if stop_redis(settings):
        stopped.append("redis")
    return stopped


def status(settings: Settings) -> list[ServiceState]:
    return [redis_status(settings), ray_status(settings)]
