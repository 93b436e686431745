"""Session-wide real components: one local Ray cluster, one real redis-server, the real market data."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray is imported)
from tickray.ops.stack import free_port  # the tests take ports from here too

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TICKRAY_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real Binance, LOBSTER and CME captures the tests read."""
    if not (SHARED_DATA / "binance").is_dir():
        pytest.fail(f"real market data not found at {SHARED_DATA} (expected ../shared/data beside the repo, "
                    "or set TICKRAY_TEST_DATA)", pytrace=False)
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from tickray.ops.stack import ensure_ray_token

    if not ray.is_initialized():
        ensure_ray_token()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_settings(tmp_path_factory):
    """Settings whose Redis is a real redis-server on a free port, started for this session."""
    from tickray.config import Settings
    from tickray.ops import stack

    state = tmp_path_factory.mktemp("redis-state")
    settings = Settings(state_dir=state, redis_port=free_port())
    stack.start_redis(settings)
    yield settings
    stack.stop_redis(settings)


@pytest.fixture
def settings(redis_settings, tmp_path):
    """Per-test state folder, sharing the session's redis-server."""
    return redis_settings.model_copy(update={"state_dir": tmp_path / "state", "serve_port": free_port()})


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)`` run once for the whole run: under pytest-xdist the first worker to ask builds it
    while the others wait, then all read it (what is built here is never written to afterwards). Returns
    the folder and what ``build`` returned."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, result = root / name, root / f"{name}.pickle"
    with FileLock(root / f"{name}.lock"):
        if not result.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            result.write_bytes(pickle.dumps(build(folder)))
    return folder, pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def market(tmp_path_factory):
    """A small synthetic market (2 symbols, 1 day), generated once per run where the demo writes its own
    (…/demo/market), so the shipped synthetic configs' `data.sources` select it."""
    from tickray.sim.synth import generate

    def build(folder: Path):
        return generate(folder / "demo" / "market", ["BTCUSDT", "ETHUSDT"], days=1, seed=7, trades_per_day=40_000,
                        capture_minutes=3)

    folder, files = built_once(tmp_path_factory, "market", build)
    return folder / "demo" / "market", files


@pytest.fixture(scope="session")
def market_lake(ray_cluster, market, tmp_path_factory):
    """The market ingested and featurised once per run (on the cluster of the worker that asks first):
    what the training and tuning tests read."""
    from tickray.features.job import build_features
    from tickray.ingest.job import ingest

    out, _ = market

    def build(folder: Path) -> None:
        ingest([out / "aggtrades", out / "depth", out / "klines"], folder / "lake")
        build_features(folder / "lake")

    folder, _ = built_once(tmp_path_factory, "market-lake", build)
    return folder / "lake"


# The session's trained models (test_training reads them; test_cluster serves one on a multi-node cluster).
SMALL_TRAINING = {
    "data": {"horizons_s": [10, 60], "train_every_s": 4},
    "split": {"folds": 3},
    "models": {"xgboost": {"num_boost_round": 200},
               "lstm": {"window": 10, "hidden": 16, "epochs": 2},
               "transformer": {"window": 10, "hidden": 16, "heads": 2, "epochs": 2}},
}


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{d}/mlflow.db", str(d / "artifacts"), d / "ray_results"


@pytest.fixture(scope="session")
def trained(market_lake, mlflow_store):
    from tickray.training.config import parse_config
    from tickray.training.pipeline import run_training

    uri, artifacts, storage = mlflow_store
    report = run_training(parse_config(SMALL_TRAINING), market_lake, uri, artifacts, storage)
    print("\n".join(report.lines()))
    return report


# Under `make test` the suite runs on pytest-xdist workers, each with its own Ray cluster and Redis. The
# tests that read the session's trained models go to one worker, which trains them once; those that read
# only the ingested market to another; the other tests stay together by module, with their module
# fixtures.
def _group(fixtures: set[str], nodeid: str) -> str:
    if "trained" in fixtures:
        return "trained"
    if fixtures & {"market", "market_lake"}:
        return "market"
    return nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(set(item.fixturenames), item.nodeid)))


def stack_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """TICKRAY_* settings for a stack of its own: its state folder and a free port for every service."""
    return {"TICKRAY_STATE_DIR": str(state_dir), "TICKRAY_REDIS_PORT": str(free_port()),
            "TICKRAY_RAY_PORT": str(free_port()), "TICKRAY_DASHBOARD_PORT": str(free_port()),
            "TICKRAY_METRICS_PORT": str(free_port()), "RAY_AUTH_MODE": "token", **extra}


def tickray_cli(*args: str, env: dict[str, str], timeout: float = 180, cwd: Path | None = None):
    """`tickray ARGS…` in a process of its own, as a user runs it, with ``env`` over this environment."""
    return subprocess.run([sys.executable, "-m", "tickray.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout, check=False, cwd=cwd)


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started like `tickray up` (its own ports, Redis and state under tmp_path/"state"), for
    what needs a job server; yields the environment that reaches it, and stops it with `tickray down`."""
    for _ in range(3):
        env = {**os.environ, **stack_env(tmp_path / "state", TICKRAY_RAY_NUM_CPUS="2")}
        # started outside the repo, as on a cluster: a job sees the project only through --working-dir
        up = tickray_cli("up", env=env, cwd=tmp_path)
        log = tmp_path / "state" / "ray-head.log"
        # A port found free may be taken before the head binds it (the other worker's Ray picks ports too):
        # then the head is started again on other free ports, as a user would pick other ones.
        if up.returncode == 0 or "Address already in use" not in (log.read_text() if log.exists() else ""):
            break
        tickray_cli("down", env=env, timeout=120, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        yield env
    finally:
        tickray_cli("down", env=env, timeout=120, cwd=tmp_path)


def ray_job(env: dict[str, str], verb: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray job VERB …` against the head of ``ray_head`` (``env``), as a user runs it; retried while the
    head's job agent is still registering or starting to listen (a few seconds after the head's ports open;
    longer on a loaded machine): the head answers that it has no agent, or that the agent hung up."""
    cmd = [str(Path(sys.executable).with_name("ray")), "job", verb,
           "--address", f"http://127.0.0.1:{env['TICKRAY_DASHBOARD_PORT']}", *args]
    for _ in range(30):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if not any(m in r.stderr for m in ("No available agent to submit job", "ServerDisconnectedError")):
            return r
        time.sleep(2)
    return r


@pytest.fixture(autouse=True)
def _no_tickray_env(monkeypatch):
    """Tests build their own settings; a developer's TICKRAY_* variables must not leak in."""
    for var in [v for v in os.environ if v.startswith("TICKRAY_") and v != "TICKRAY_TEST_DATA"]:
        monkeypatch.delenv(var)




def start_synced(exchange, new_actor, symbols: list[str], streams: tuple[str, ...]):
    """Start the replay venue and the stream actor ``new_actor()`` creates on it; return the actor, started.
    The market is held at its first message until the actor has started, then just past the recorded
    snapshots until the actor's books are synced on them, so that a busy machine's slow start does not
    decide how much of a paced replay it misses. The market is left held there: the caller lets it go
    (``exchange.hold_after(None)``) or moves the hold."""
    import ray

    exchange.hold_after(exchange.messages[0][0] + exchange.recorder_behind_ns - 1)
    exchange.start()
    actor = new_actor()
    try:
        ray.get(actor.start.remote())
        books = [s for s in symbols if s in exchange.snapshots] if any("depth" in s for s in streams) else []
        if books:
            exchange.hold_after(max(exchange.snapshots[s][0] for s in books) + exchange.recorder_behind_ns)
            deadline = time.monotonic() + 60
            while not all(ray.get(actor.book.remote(s, 1))["synced"] for s in books):
                assert time.monotonic() < deadline, f"the books of {books} were not synced"
                time.sleep(0.2)
    except BaseException:
        ray.kill(actor)
        exchange.stop()
        raise
    return actor
