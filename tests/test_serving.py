"""The prediction API on Ray Serve, over real HTTP and WebSocket: the session's trained ensemble from the
MLflow registry, split into a deployment per base family, fed by a stream actor that replays the real
BTCUSDT session (8 minutes in two captures: the models read up to 5 minutes back) into the session's
redis-server."""

import asyncio
import functools
import itertools
import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import ray
import websockets
from conftest import free_port, start_synced
from mlflow.tracking import MlflowClient
from ray import serve
from tickray.ops.stack import redis_client
from tickray.serving.app import build, deploy
from tickray.serving.config import Replicas, ServeConfig, parse_serve_config
from tickray.serving.features import LiveFeatures
from tickray.serving.realised import RealisedAccuracy, pool
from tickray.serving.security import hash_key, sign_jwt
from tickray.sim.exchange import ReplayExchange
from tickray.stream.actor import StreamIngestActor, wait_for_messages
from tickray.stream.context import ConnectorOptions
from tickray.stream.keys import forget
from tickray.training import registry

KEY = "tk_test_key"
JWT_SECRET = "test-secret-of-the-session"
STREAMS = ("depth@0ms", "trade", "bookTicker")
NS = 1_000_000_000


@pytest.fixture(scope="module")
def capture(shared_data):
    return [shared_data / "binance" / "ws" / f"usdm_btcusdt_2024071{d}.gz" for d in (8, 9)]


def _replay(capture, redis_url, hold_s: float | None = None, options: ConnectorOptions | None = None,
            restartable: bool = False):
    """A stream actor fed the captures at 30x by a local exchange, from its book synced on the recorded
    snapshot on (Ray restarts it once if ``restartable``); returns both (the caller stops them).
    ``hold_s``: the market then holds that far past the snapshot (the caller moves the hold on), so that
    it cannot outrun a slow actor; else it plays on."""
    exchange = ReplayExchange(capture, speed=30.0)
    restarts = {"max_restarts": 1, "max_task_retries": -1} if restartable else {}
    actor = start_synced(exchange, lambda: StreamIngestActor.options(**restarts).remote(
        ["BTCUSDT"], exchange.ws_url, exchange.rest_url, redis_url, streams=STREAMS, options=options),
        ["BTCUSDT"], STREAMS)
    exchange.hold_after(None if hold_s is None else
                        exchange.snapshots["BTCUSDT"][0] + exchange.recorder_behind_ns + int(hold_s * NS))
    return exchange, actor


def _stop(exchange, actor):
    ray.get(actor.stop.remote())
    ray.kill(actor)
    exchange.stop()


def _ask_until(post, done, answers: list, timeout_s: float = 90) -> dict:
    """Ask for BTCUSDT's prediction (``post(json=...)``) every 50 ms until ``done(status, body)``, each answer
    kept in ``answers`` as (monotonic time, status, body); return the body that was done."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = post(json={"symbols": ["BTCUSDT"]})
        answers.append((time.monotonic(), r.status_code, r.json()))
        if done(r.status_code, r.json()):
            return r.json()
        assert time.monotonic() < deadline, answers[-3:]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def live(ray_cluster, redis_settings, capture):
    """BTCUSDT's live features in Redis, from the whole capture."""
    forget(redis_client(redis_settings), ["BTCUSDT"])
    exchange, actor = _replay(capture, redis_settings.redis_url)
    try:
        wait_for_messages(actor, len(exchange.messages), timeout_s=120)
    finally:
        _stop(exchange, actor)
    return redis_settings


@pytest.fixture(scope="module")
def api_config(live, mlflow_store, monkeypatch_module) -> ServeConfig:
    """As `tickray serve` reads it: keys, JWT (its secret from the environment), rate limit, families split out."""
    monkeypatch_module.setenv("TICKRAY_TEST_JWT", JWT_SECRET)
    return parse_serve_config({"tracking_uri": mlflow_store[0], "redis_url": live.redis_url,
                               "api_keys_sha256": [hash_key(KEY)], "jwt_secret_env": "TICKRAY_TEST_JWT",
                               "rate_limit": {"requests": 1000, "window_s": 60}, "stale_after_s": 3600,
                               "reload_poll_s": 0.5, "max_body_bytes": 32768})


@pytest.fixture(scope="module")
def api(api_config, trained):
    """The app as `tickray serve` deploys it."""
    port = free_port()
    serve.shutdown()  # the demo's test leaves Serve running on the session's Ray, on its own port
    url = deploy(api_config, "127.0.0.1", port)
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        yield client
    serve.delete("tickray")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _champion(mlflow_store) -> registry.LoadedModel:
    return registry.load(mlflow_store[0], "tickray-ensemble")


def test_a_prediction_from_live_features_equals_the_registered_models(api, live, mlflow_store):
    """Through the gateway and the family deployments, the answer is the registered pyfunc's own
    prediction on the same feature rows, at every horizon."""
    r = api.post("/v1/predict", json={"symbols": ["btcusdt"]})
    assert r.status_code == 200, r.text
    body = r.json()
    model = _champion(mlflow_store)
    (pred,) = body["predictions"]
    assert body["model"] == "tickray-ensemble" and pred["model_version"] == model.version
    assert pred["symbol"] == "BTCUSDT" and "degraded" not in pred and pred["stale"] is False
    assert set(pred["horizons"]) == {"10s", "60s"} and pred["feature_age_s"] > 0

    window = model.model.model.window
    series = asyncio.run(_series(live.redis_url, model, window))
    assert series.ts_ns[-1] == pred["ts_ns"]
    frame = pd.DataFrame(series.x, columns=model.features).assign(symbol="BTCUSDT", ts=series.ts_ns)
    expect = model.model.predict(None, frame).iloc[-1]
    for h in (10, 60):
        assert pred["horizons"][f"{h}s"]["prob_up"] == pytest.approx(expect[f"prob_up_{h}s"], abs=1e-5)
        assert pred["horizons"][f"{h}s"]["confidence"] == pytest.approx(expect[f"confidence_{h}s"], abs=1e-5)

    latest = api.get("/v1/predictions/BTCUSDT/latest").json()
    assert latest["horizons"] == pred["horizons"] and latest["ts_ns"] == pred["ts_ns"]


async def _series(redis_url, model, window):
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        readings = await LiveFeatures(r, model.features, model.model.feature_set_version).read(["BTCUSDT"], window)
        return readings["BTCUSDT"].series()
    finally:
        await r.aclose()


def test_explicit_rows_models_health_and_docs(api, mlflow_store):
    model = _champion(mlflow_store)
    rng = np.random.default_rng(0)
    start = 1_721_347_000 * 10**9
    rows = [{"features": {n: float(v) for n, v in zip(model.features, rng.normal(size=len(model.features)))},
             "ts_ns": start + i * 10**9, "symbol": "X"} for i in range(12)]
    r = api.post("/v1/predict", json={"rows": rows[::-1]})  # any order: answered in the request's
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["row"] for p in preds] == list(range(12)) and preds[0]["ts_ns"] == rows[-1]["ts_ns"]
    # the sequence models read 10 consecutive seconds: only the newest 3 rows have them
    full = [p for p in preds if "degraded" not in p]
    assert len(full) == 3 and all(p["ts_ns"] >= start + 9 * 10**9 for p in full)
    assert set(preds[-1]["degraded"]) == {"lstm", "transformer"}
    alone = api.post("/v1/predict", json={"rows": [{"features": rows[0]["features"]}]}).json()["predictions"][0]
    assert "needs 10 consecutive seconds" in alone["degraded"]["lstm"]

    models = api.get("/v1/models").json()
    champ = models["versions"]["champion"]
    assert champ["version"] == model.version and set(champ["families"]) == {"xgboost", "lstm", "transformer"}
    assert champ["families"]["lstm"]["window_s"] == 10 and set(champ["weights"]) == {"10s", "60s"}
    health = httpx.get(f"{api.base_url}/v1/health").json()  # no key needed for readiness
    assert health["status"] == "ready" and health["auth"] == "on" and "BTCUSDT" in health["features"]
    spec = httpx.get(f"{api.base_url}/openapi.json").json()
    assert {"/v1/predict", "/v1/predictions/{symbol}/latest", "/v1/models", "/v1/health"} <= set(spec["paths"])
    assert httpx.get(f"{api.base_url}/docs").status_code == 200


def test_deploying_where_serve_already_runs_gives_the_url_it_serves_at(api, api_config):
    """Ray applies a port only when Serve first starts on a cluster: a second deploy asking for another
    port is served where the proxy already listens, and says so instead of printing a dead URL."""
    url = deploy(api_config, "127.0.0.1", free_port())
    assert url == str(api.base_url).rstrip("/")
    assert httpx.get(f"{url}/v1/health", timeout=30).json()["status"] == "ready"


@pytest.mark.parametrize("headers, says", [
    ({"X-API-Key": ""}, "missing credentials"),
    ({"X-API-Key": "tk_wrong"}, "invalid API key"),
    ({"X-API-Key": "", "Authorization": "Bearer " + sign_jwt({"sub": "a", "exp": 1}, JWT_SECRET)}, "expired"),
    ({"X-API-Key": "", "Authorization": "Bearer " + sign_jwt({"sub": "a"}, "another secret")}, "bad signature"),
])
def test_bad_credentials_get_401_saying_why(api, headers, says):
    """(Bad input of every other kind: test_hostile.py.)"""
    r = api.post("/v1/predict", json={"symbols": ["BTCUSDT"]}, headers=headers)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", r.text
    assert says in r.json()["detail"]


def _jwt_headers(subject: str) -> dict:
    return {"X-API-Key": "", "Authorization": "Bearer " + sign_jwt({"sub": subject, "exp": time.time() + 600}, JWT_SECRET)}


def test_a_jwt_caller_over_its_rate_limit_gets_429_with_retry_after(api):
    """1,000 requests a minute per caller: the 1,001st within the minute is refused, however fast they come."""
    headers = _jwt_headers("burst")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: api.get("/v1/models", headers=headers), range(1040)))
    limited = [r for r in codes if r.status_code == 429]
    assert sum(r.status_code == 200 for r in codes) == 1000 and len(limited) == 40
    assert 1 <= int(limited[0].headers["Retry-After"]) <= 60
    assert "rate limit of 1000 requests per 60s exceeded" in limited[0].json()["detail"]
    assert api.get("/v1/models").status_code == 200  # another caller is not limited


def _copy_version(tracking_uri: str, name: str, version: str) -> str:
    """A new registry version of the same artefact (what a retraining that changed nothing registers)."""
    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(name, version)
    new = client.create_model_version(name, mv.source, run_id=mv.run_id, tags=mv.tags)
    return str(new.version)


def test_moving_the_champion_alias_under_load_fails_no_request(api, mlflow_store):
    uri = mlflow_store[0]
    client = MlflowClient(uri)
    old = _champion(mlflow_store).version
    new = _copy_version(uri, "tickray-ensemble", old)
    seen, failed = [], []

    def caller(stop_at: float, subject: str) -> None:
        headers = _jwt_headers(subject)  # a caller each: four within the rate limit, not one over it
        while time.monotonic() < stop_at:
            r = api.post("/v1/predict", json={"symbols": ["BTCUSDT"]}, headers=headers)
            (seen if r.status_code == 200 else failed).append(r.json().get("model_version", r.text))

    stop_at = time.monotonic() + 12
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(caller, stop_at, f"load-{i}") for i in range(4)]
        time.sleep(3)
        client.set_registered_model_alias("tickray-ensemble", registry.CHAMPION, new)
        time.sleep(5)
        client.set_registered_model_alias("tickray-ensemble", registry.CHAMPION, old)  # the rollback
        for f in running:
            f.result()
    assert not failed and len(seen) > 50
    switched = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    assert seen[0] == old and new in seen and seen[-1] == old and len(switched) >= 2


def _consecutive_rows(model, n: int = 10) -> list[dict]:
    return [{"features": {k: 0.1 for k in model.features}, "ts_ns": (1_721_347_000 + i) * 10**9} for i in range(n)]


def test_stale_features_are_refused_the_canary_gets_its_share_and_cors_lets_only_listed_origins(
        api, live, mlflow_store):
    """A second app: stale features rejected, half the requests to `challenger`, one origin allowed."""
    uri = mlflow_store[0]
    champion = _champion(mlflow_store).version
    challenger = _copy_version(uri, "tickray-ensemble", champion)
    MlflowClient(uri).set_registered_model_alias("tickray-ensemble", registry.CHALLENGER, challenger)
    cfg = ServeConfig(tracking_uri=uri, redis_url=live.redis_url, canary_share=0.5, stale_after_s=0.5,
                      stale_policy="reject", rate_limit=None, cors_origins=["https://dash.example"],
                      split_families=False)
    serve.run(build(cfg), name="strict", route_prefix="/strict")
    base = f"{api.base_url}/strict"
    try:
        stale = httpx.post(f"{base}/v1/predict", json={"symbols": ["BTCUSDT"]}, timeout=30)
        assert stale.status_code == 503 and "stale features: BTCUSDT" in stale.json()["detail"]

        rows = _consecutive_rows(_champion(mlflow_store))
        versions = [httpx.post(f"{base}/v1/predict", json={"rows": rows}, timeout=30).json()["model_version"]
                    for _ in range(40)]
        assert 8 <= versions.count(challenger) <= 32 and champion in versions

        def preflight(url: str, origin: str) -> httpx.Response:
            return httpx.options(f"{url}/v1/predict", timeout=30, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key,content-type"})

        ok = preflight(base, "https://dash.example")
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://dash.example"
        assert "access-control-allow-origin" not in preflight(base, "https://evil.example").headers
        assert "access-control-allow-origin" not in preflight(api.base_url, "https://dash.example").headers
    finally:
        serve.delete("strict")
        MlflowClient(uri).delete_registered_model_alias("tickray-ensemble", registry.CHALLENGER)


@pytest.mark.slow
def test_load_with_a_family_replica_killed_fails_no_request(api, live, mlflow_store):
    """4 clients at up to 10 requests a second each (live symbols and explicit rows, which every family
    computes): the LSTM family's replica is killed at 20 s. Answers go on without it, saying so, until
    Serve's replacement (a new replica actor, watched for here) answers. The load runs at least 90 s, until
    more than 1,000 requests are judged and the replacement has answered 10 of them, at most 240 s: how
    soon Serve starts a replica depends on the machine's load (over 60 s on a busy one), so it is printed
    and given room, not timed. Every degraded answer names a family that failed (a busy machine may also
    make any family miss its 3-s timeout: said the same way). The app's replicas reserve no CPU, so a
    replacement never waits on the CPU the session's other apps hold. Paced, not flat out: the load
    leaves the CPU to the rest of the suite."""
    uri = mlflow_store[0]
    cfg = ServeConfig(tracking_uri=uri, redis_url=live.redis_url, stale_after_s=3600, rate_limit=None,
                      family_timeout_s=3.0, gateway=Replicas(num_cpus=0), families=Replicas(num_cpus=0))
    serve.run(build(cfg), name="load", route_prefix="/load")
    base = f"{api.base_url}/load"
    rows = _consecutive_rows(_champion(mlflow_store))
    answers: list[tuple[float, str, int, dict]] = []  # (sent at, kind, status, the last prediction's degradation)
    refused: list[str] = []  # what the failed answers said
    stop = threading.Event()

    def caller(kind: str, start: float) -> None:
        body = {"rows": rows} if kind == "rows" else {"symbols": ["BTCUSDT"]}
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                r = client.post(f"{base}/v1/predict", json=body)
                last = r.json()["predictions"][-1].get("degraded", {}) if r.status_code == 200 else {}
                if r.status_code != 200:
                    refused.append(f"{sent - start:.1f} s {kind}: {r.status_code} {r.text[:300]}")
                answers.append((sent - start, kind, r.status_code, last))
                time.sleep(max(0.0, sent + 0.1 - time.monotonic()))

    def lstm_replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "load#Family-lstm" in a["name"]}

    def answered_with_lstm_since(t0: float) -> list[float]:
        return [t for t, _, status, d in list(answers) if t > t0 and status == 200 and "lstm" not in d]

    replaced_at = math.inf  # when a replica other than the killed one was first seen
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(caller, kind, start) for kind in ("rows", "symbols") * 2]
            time.sleep(20)
            (killed,) = lstm_replicas()
            killed_at = time.monotonic() - start
            ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
            while (now := time.monotonic() - start) < 240 and not (now >= 90 and len(answers) > 1000
                                                                   and len(answered_with_lstm_since(replaced_at)) >= 10):
                if replaced_at == math.inf and lstm_replicas() - {killed}:
                    replaced_at = now
                time.sleep(1)
            stop.set()
            for f in running:
                f.result()
    finally:
        serve.delete("load")
    failed = [a for a in answers if a[2] != 200]
    without = [t for t, _, _, d in answers if killed_at < t < replaced_at and "lstm" in d]
    back = answered_with_lstm_since(replaced_at)
    print(f"{len(answers)} requests in {answers[-1][0]:.0f} s, {len(failed)} failed; LSTM replica killed at "
          f"{killed_at:.1f} s, {len(without)} answers without it from {without[0] if without else math.nan:.1f} s "
          f"to {without[-1] if without else math.nan:.1f} s, a new replica seen at {replaced_at:.1f} s, answering "
          f"from {back[0] if back else math.nan:.1f} s; other degradations: "
          f"{Counter(f for *_, d in answers for f in d if f != 'lstm')}")
    assert len(answers) > 1000 and len(failed) <= len(answers) // 1000, refused
    assert all(w.startswith("failed:") for *_, d in answers for w in d.values()), \
        [d for *_, d in answers if d and not all(w.startswith("failed:") for w in d.values())][:3]
    assert without, "no answer said the LSTM family was missing after its replica was killed"
    assert len(back) >= 10, "Serve's replacement of the LSTM replica never answered"


def test_the_websocket_pushes_a_prediction_for_each_new_feature_row(api, capture, live):
    """Subscribed to BTCUSDT while the capture replays again (at 30x): a prediction for each new row, each
    row once; the rows announced while a prediction was being made are conflated into the next push, which
    counts them (never more than the rows the stream actor stored between the two)."""
    ws_url = str(api.base_url).replace("http://", "ws://") + f"/v1/stream?api_key={KEY}"

    async def listen(n: int) -> list[dict]:
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"subscribe": ["btcusdt"]}))
            assert json.loads(await ws.recv()) == {"subscribed": ["BTCUSDT"]}
            got = []
            while sum("horizons" in g for g in got) < n:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return got

    async def refused() -> str:
        try:
            async with websockets.connect(ws_url.replace(KEY, "wrong")) as ws:
                await ws.recv()
        except websockets.exceptions.InvalidStatus as e:
            return str(e.response.status_code)
        except websockets.exceptions.ConnectionClosed as e:
            return str(e.rcvd.code if e.rcvd else "closed")
        return "accepted"

    assert asyncio.run(refused()) in {"403", "1008"}
    forget(redis_client(live), ["BTCUSDT"])
    with ThreadPoolExecutor(1) as pool:
        pushed = pool.submit(asyncio.run, listen(20))
        time.sleep(2)
        exchange, actor = _replay(capture, live.redis_url)
        try:
            got = pushed.result(timeout=120)
        finally:
            _stop(exchange, actor)
    # the first 5 minutes of the replay lack the longest look-backs: those rows are answered with the reason
    early = [g for g in got if "horizons" not in g]
    assert all(g["error"] == 503 and "features undefined" in g["detail"] for g in early)
    got = [g for g in got if "horizons" in g]
    assert all(g["symbol"] == "BTCUSDT" and set(g["horizons"]) == {"10s", "60s"} for g in got)
    ts = [g["ts_ns"] for g in got]
    assert ts == sorted(set(ts)) and len(ts) == 20, ts
    stored = [orjson.loads(f[b"doc"])["ts_ns"] for _, f in redis_client(live).xrange("tickray:features:history:BTCUSDT")]
    for before, g in zip(ts, got[1:]):
        assert 0 <= g["conflated"] <= sum(1 for t in stored if before < t < g["ts_ns"]), (before, g)
    lag_ms = sorted((g["pushed_at"] - g["published_at"]) * 1e3 for g in got)
    print(f"feature published → prediction pushed: p50 {lag_ms[len(lag_ms) // 2]:.1f} ms, max {lag_ms[-1]:.1f} ms")


def test_a_killed_stream_actor_makes_predictions_stale_then_fresh_again(api, capture, live, mlflow_store):
    """The stream actor is killed mid-session and Ray restarts it: answers are flagged stale (confidence 0)
    while it is away, then fresh again, with every feature defined, as soon as it publishes: its feature
    look-backs resume from the grid rows it had published instead of filling again for 5 minutes."""
    cfg = ServeConfig(tracking_uri=mlflow_store[0], redis_url=live.redis_url, stale_after_s=0.75,
                      stale_policy="flag", rate_limit=None, split_families=False)
    serve.run(build(cfg), name="watch", route_prefix="/watch")
    forget(redis_client(live), ["BTCUSDT"])
    # fast through the first 5 minutes, held past them until the actor has caught up
    exchange, actor = _replay(capture, live.redis_url, hold_s=320, restartable=True,
                              options=ConnectorOptions(autostart=True, flush_s=0.5))
    answers: list[tuple[float, int, dict]] = []

    def ask_until(done) -> None:
        _ask_until(functools.partial(httpx.post, f"{api.base_url}/watch/v1/predict", timeout=30), done, answers)

    def fresh(status: int, body: dict) -> bool:
        return status == 200 and not body["predictions"][0]["stale"] and "features" not in body["predictions"][0].get(
            "degraded", {})  # every feature defined

    try:
        ask_until(fresh)  # past the warm-up
        exchange.speed = 4.0  # then a row every quarter of a second: Ray restarts the actor in about one
        exchange.hold_after(None)
        ask_until(lambda status, body: fresh(status, body) and answers[-2][1] == 200)
        killed, before = time.monotonic(), answers[-1][2]["predictions"][0]["ts_ns"]
        exchange.hold_after(exchange.market_now_ns())  # the market waits for the actor, however long Ray takes
        ray.kill(actor, no_restart=False)
        ask_until(lambda status, body: status == 200 and body["predictions"][0]["stale"])
        ray.get(actor.stats.remote())  # restarted
        exchange.hold_after(None)
        ask_until(lambda status, body: fresh(status, body) and body["predictions"][0]["ts_ns"] > before)
        back = time.monotonic()
        ask_until(lambda *_: time.monotonic() > back + 3)
        stats = ray.get(actor.stats.remote())
    finally:
        serve.delete("watch")
        _stop(exchange, actor)
    after = [(t - killed, status, body) for t, status, body in answers if t > killed]
    stale = [t for t, status, body in after if status == 200 and body["predictions"][0]["stale"]]
    print(f"stream actor killed: answers stale from {stale[0]:.1f} s to {stale[-1]:.1f} s, fresh from "
          f"{back - killed:.1f} s; {stats['messages']['grid rows resumed']} grid rows resumed")
    assert stats["messages"]["resumed from checkpoint"] == 1 and stats["messages"]["grid rows resumed"] > 300
    assert all(status == 200 for _, status, _ in after), [b for _, s, b in after if s != 200][:3]
    assert all(h["confidence"] == 0 for t, _, body in after if t in stale
               for h in body["predictions"][0]["horizons"].values())
    since_back = [body["predictions"][0]["stale"] for t, _, body in after if t > back - killed]
    assert since_back.count(False) > len(since_back) / 2  # fresh again (a busy machine may delay a row)


def test_a_connector_back_past_the_resume_gap_answers_degraded_through_its_warm_up(api, capture, live, mlflow_store):
    """A stream actor restarted after a gap longer than ``resume_features_max_gap_s`` starts its look-backs
    afresh: the 300-s features are undefined for five minutes of data. Answers through that warm-up are
    200s that say so (degraded, the undefined features named, confidence cut by their share), never 503s:
    XGBoost reads them as missing, the sequence families leave those rows out."""
    cfg = ServeConfig(tracking_uri=mlflow_store[0], redis_url=live.redis_url, stale_after_s=3600,
                      rate_limit=None, split_families=False)
    serve.run(build(cfg), name="warmup", route_prefix="/warmup")
    forget(redis_client(live), ["BTCUSDT"])
    exchange, actor = _replay(capture, live.redis_url, hold_s=60, restartable=True,
                              options=ConnectorOptions(autostart=True, flush_s=0.5, resume_features_max_gap_s=0))
    answers: list[tuple[float, int, dict]] = []

    def ask_until(done) -> None:
        _ask_until(functools.partial(httpx.post, f"{api.base_url}/warmup/v1/predict", timeout=30), done, answers)

    try:
        ask_until(lambda status, _: status == 200)
        before = answers[-1][2]["predictions"][0]["ts_ns"]
        ray.kill(actor, no_restart=False)
        restarted = len(answers)
        ray.get(actor.stats.remote())  # restarted: the market (held a minute in) goes on, 5 minutes in 30 s
        exchange.speed = 10.0
        exchange.hold_after(None)
        ask_until(lambda status, body: status == 200 and body["predictions"][0]["ts_ns"] > before)
        ask_until(lambda *_: len(answers) > restarted + 40)
        stats = ray.get(actor.stats.remote())
    finally:
        serve.delete("warmup")
        _stop(exchange, actor)
    # past the gap the look-backs start afresh (whether the book and trades resume from the checkpoint
    # depends on where the replay stands when the connector is back: either is right)
    assert stats["messages"].get("grid rows resumed", 0) == 0
    after = [body["predictions"][0] for _, status, body in answers[restarted:]
             if status == 200 and body["predictions"][0]["ts_ns"] > before]
    assert all(status in (200, 404) for _, status, _ in answers[restarted:]), \
        [b for _, s, b in answers[restarted:] if s not in (200, 404)][:3]  # 404: no row yet since the restart
    assert len(after) > 10
    for pred in after:
        assert "ret_300s" in pred.get("degraded", {}).get("features", ""), pred
        assert "xgboost" not in pred["degraded"], pred  # it answered, reading the undefined ones as missing
        assert all(0 <= h["confidence"] < 1 for h in pred["horizons"].values())
        assert all(0 < h["prob_up"] < 1 for h in pred["horizons"].values())
    print(f"warm-up after a restart past the resume gap: {len(after)} answers, all 200 and degraded; "
          f"reasons of the last: {after[-1]['degraded']}")


@pytest.mark.slow
def test_a_book_being_rebuilt_answers_degraded_until_it_is_synced_again(api, capture, live):
    """A diff lost on the wire while the venue's REST depth is overloaded (503): the stream's book stays
    unsynced, its rows say so in Redis and every answer built on one is degraded with the reason and
    confidence 0; once snapshots are served again the book is rebuilt and the answers are whole again."""
    forget(redis_client(live), ["BTCUSDT"])
    exchange = ReplayExchange(capture, speed=5.0).start()
    actor = StreamIngestActor.remote(["BTCUSDT"], exchange.ws_url, exchange.rest_url, live.redis_url,
                                     streams=STREAMS)
    ray.get(actor.start.remote())
    answers: list[tuple[float, int, dict]] = []

    def ask_until(done) -> dict:
        """The first prediction of which done(prediction) holds."""
        body = _ask_until(functools.partial(api.post, "/v1/predict"),
                          lambda status, body: status == 200 and done(body["predictions"][0]), answers, 60)
        return body["predictions"][0]

    try:
        synced = ask_until(lambda p: "book" not in p.get("degraded", {}))
        exchange.depth_unavailable = True
        soon = exchange.market_now_ns() + 10 * NS
        exchange.drop.add(next(i for i, (t, stream, _) in enumerate(exchange.messages)
                               if "@depth" in stream and t + exchange.recorder_behind_ns > soon))
        unsynced = ask_until(lambda p: "book" in p.get("degraded", {}))
        exchange.depth_unavailable = False
        again = ask_until(lambda p: "book" not in p.get("degraded", {}) and p["ts_ns"] > unsynced["ts_ns"])
        stats = ray.get(actor.stats.remote())
    finally:
        _stop(exchange, actor)
    assert unsynced["degraded"]["book"].startswith("book_unsynced: the stream's order book is being rebuilt")
    assert all(h["confidence"] == 0 for h in unsynced["horizons"].values())
    assert synced["ts_ns"] < unsynced["ts_ns"] < again["ts_ns"]
    assert stats["book"]["BTCUSDT"]["gaps"] == 1 and stats["book"]["BTCUSDT"]["resyncs"] == 1, stats["book"]
    assert any(k.startswith("snapshot failed") for k in stats["messages"]), stats["messages"]
    docs = [orjson.loads(f[b"doc"]) for _, f in redis_client(live).xrange("tickray:features:history:BTCUSDT")]
    flags = {d["ts_ns"]: d["book_synced"] for d in docs}
    assert flags[synced["ts_ns"]] and not flags[unsynced["ts_ns"]] and flags[again["ts_ns"]]
    # the rows between the two synced answers: synced, then unsynced from the gap until the rebuild, then synced
    between = [flags[t] for t in sorted(flags) if synced["ts_ns"] <= t <= again["ts_ns"]]
    assert sum(1 for a, b in itertools.pairwise(between) if a != b) == 2, between


@pytest.mark.slow
def test_ensemble_weights_follow_the_realised_accuracy_of_live_predictions(api, capture, live, mlflow_store):
    """With realised_weights, each live prediction the replica computed is scored once its horizons have
    passed, against the mids the stream actor published: the record /v1/models shows counts exactly the
    predicted rows whose horizons ended on a move, and once every family has min_scored scores the
    answers say the realised weights combined them."""
    cfg = ServeConfig(tracking_uri=mlflow_store[0], redis_url=live.redis_url, stale_after_s=3600, rate_limit=None,
                      split_families=False, realised_weights={"window": 1000, "min_scored": 20, "score_every_s": 0.5})
    serve.run(build(cfg), name="realised", route_prefix="/realised")
    base = f"{api.base_url}/realised"
    forget(redis_client(live), ["BTCUSDT"])
    # the market holds past the models' 5-minute warm-up until the actor has caught up: however slow a busy
    # machine's actor, the test sees the rows the market moves on from there
    exchange, actor = _replay(capture, live.redis_url, hold_s=320)
    predicted, combined_by = {}, []  # row → the families that answered for it
    why = Counter()  # what kept families from answering (printed when the test fails)
    held, unmoved = 0, 0  # past the warm-up the market holds after this time; answers since it moved
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and (not combined_by or "stacked" in combined_by[-1]):
            r = httpx.post(f"{base}/v1/predict", json={"symbols": ["BTCUSDT"]}, timeout=30)
            if r.status_code == 200:
                pred = r.json()["predictions"][0]
                answered = {"xgboost", "lstm", "transformer"} - set(pred.get("degraded", {}))
                why.update(f"{k}: {v[:60]}" for k, v in pred.get("degraded", {}).items())
                if "features" not in pred.get("degraded", {}):
                    # past the warm-up the market moves on a second per row that every family answered
                    # (or after 10 answers without one): each family is asked about every row, however
                    # slow a busy machine's answers are
                    first_full = len(answered) == 3 and predicted.get(pred["ts_ns"]) != answered
                    unmoved = 0 if first_full else unmoved + 1
                    if unmoved == 0:
                        held = max(held, pred["ts_ns"] + 2 * NS)
                    elif unmoved >= 10:
                        held, unmoved = max(held, pred["ts_ns"]) + NS, 0
                    exchange.hold_after(held)
                predicted[pred["ts_ns"]] = answered
                combined_by.append([h["combined_by"] for h in pred["horizons"].values()])
            time.sleep(0.05)
        stats = ray.get(actor.stats.remote())
        _stop(exchange, actor)
        time.sleep(1.5)  # the last scoring passes
        record = httpx.get(f"{base}/v1/models", timeout=30).json()["versions"]["champion"]["realised"]
    finally:
        serve.delete("realised")
    assert combined_by[0] == ["stacked", "stacked"] and combined_by[-1] == ["realised", "realised"], (
        combined_by[-1], len(predicted), why, stats["book"], stats["messages"], record)
    docs = [orjson.loads(f[b"doc"]) for _, f in redis_client(live).xrange("tickray:features:history:BTCUSDT")]
    mid = {d["ts_ns"]: d["mid"] for d in docs}
    synced = {d["ts_ns"]: d["book_synced"] for d in docs}  # a row built on a book being rebuilt is not scored
    last = max(mid)
    for h in (10, 60):
        got = record["horizons"][f"{h}s"]["families"]
        for family, scores in got.items():
            expected = sum(1 for t, answered in predicted.items() if family in answered and synced[t]
                           and t + 60 * NS <= last and mid[t + h * NS] != mid[t])
            assert scores["scored"] == expected, (h, family, expected, got)
        assert abs(sum(f["weight"] for f in got.values()) - 1) < 1e-3  # each rounded to 4 places
    assert record["pending"] == sum(1 for t in predicted if t + 60 * NS > last and synced[t]) and record["expired"] == 0
    print("realised record:", json.dumps(record["horizons"]))


def test_realised_accuracy_weights_the_family_that_has_been_right():
    """Three families over a random walk of mids: one knows the future, one tosses a coin, one is wrong.
    After min_scored scores the first takes all the weight; before, the stacked meta-learner answers."""
    rng = np.random.default_rng(7)
    ts = (1_721_347_000 + np.arange(400)) * NS
    mid = 60_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, 400)))
    mid[200] = mid[190]  # 10 s that end where they began: not scored
    tracker = RealisedAccuracy(["oracle", "coin", "contrarian"], [10, 60], window=500, min_scored=100)
    for t in range(300):
        up = np.array([mid[t + 10] > mid[t], mid[t + 60] > mid[t]])
        tracker.record("BTCUSDT", int(ts[t]), float(mid[t]), np.stack([np.where(up, 0.9, 0.1), np.full(2, 0.5),
                                                                       np.where(up, 0.3, 0.7)]))
        if t == 150:
            assert np.isnan(tracker.weights()).all()  # nothing scored yet
    assert tracker.score("BTCUSDT", ts[:50], mid[:50]) == 0  # no horizon has passed yet
    assert tracker.score("BTCUSDT", ts[20:], mid[20:]) == 300 - 20 and tracker.expired == 20
    summary = tracker.summary()["horizons"]
    assert summary["10s"]["families"]["oracle"] == {"scored": 279, "log_loss": round(-np.log(0.9), 5),
                                                    "hit_rate": 1.0, "weight": 1.0}
    assert summary["60s"]["families"]["coin"]["weight"] == 0 and summary["60s"]["combined_by"] == "realised"
    assert tracker.flat == 1 and not any(tracker.pending.values())
    w = tracker.weights()
    p, cover = pool({"oracle": np.array([[0.8, 0.3]]), "coin": np.array([[0.5, 0.5]])},
                    ["oracle", "coin", "contrarian"], w)
    assert np.allclose(p, [[0.8, 0.3]]) and np.allclose(cover, 1.0)
    p, cover = pool({"coin": np.array([[0.5, 0.5]])}, ["oracle", "coin", "contrarian"], w)
    assert np.allclose(cover, 0.0)  # the weight that answered: none, so the confidence is zero


def test_tickray_serve_checks_its_config_before_touching_a_cluster(tmp_path, capsys):
    from tickray.cli import main
    from tickray.serving.security import hash_key as digest

    assert main(["serve", "--new-key"]) == 0
    out = capsys.readouterr().out
    key = out.split("not stored): ")[1].split()[0]
    assert digest(key) in out
    repo_config = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"
    bad = tmp_path / "serve.yaml"
    for edit, says in [(("max_symbols: 100", "max_symbol: 100"), "args: unknown key 'max_symbol'"),
                       (("stale_policy: flag", "stale_policy: maybe"), "args: stale_policy: Input should be 'reject'"),
                       (("min_replicas: 1, max_replicas: 2", "min_replicas: 3, max_replicas: 2"),
                        "args: gateway: Value error, max_replicas 2 < min_replicas 3")]:
        bad.write_text(repo_config.read_text().replace(*edit, 1))
        assert main(["serve", "--file", str(bad)]) == 2
        assert f"tickray serve: error: {bad}: applications.tickray.{says}" in capsys.readouterr().err


def test_a_feature_document_not_written_by_a_stream_actor_is_named_not_served(api, live):
    redis_client(live).set("tickray:features:FOREIGNUSDT", json.dumps({"symbol": "FOREIGNUSDT", "features": {}}))
    try:
        r = api.post("/v1/predict", json={"symbols": ["FOREIGNUSDT"]})
        assert r.status_code == 409 and "lacks ts_ns, feature_set_version, published_at" in r.json()["detail"]
        health = api.get("/v1/health").json()
        assert "lacks" in health["features"]["FOREIGNUSDT"]["unusable"] and "BTCUSDT" in health["features"]
    finally:
        redis_client(live).delete("tickray:features:FOREIGNUSDT")
