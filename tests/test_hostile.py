"""The prediction API against a hostile but careful caller, over real HTTP and WebSocket on loopback only:
every loop bounded, every case with the answer it must get. Authentication is off here, as it is by
default, so callers are told apart by address: each test's clients bind 127.0.0.x addresses of their own
(all of 127/8 is loopback on Linux), so that no test's rate-limit window touches another's."""

import asyncio
import json
import time

import httpx
import pytest
import websockets
from conftest import free_port
from ray import serve
from tickray.cli import main
from tickray.serving.app import deploy
from tickray.serving.config import parse_serve_config

LIMITS = {"websockets": 4, "websockets_per_client": 2, "websocket_idle_s": 6.0, "body_timeout_s": 2.0,
          "bodies_per_client": 2}
SLOTS = 4  # the gateway's max_ongoing_requests
RATE = 40  # requests per address per minute


@pytest.fixture(scope="module")
def open_api(trained, mlflow_store, redis_settings):
    """The app with the default security (no keys), small slots and connection limits."""
    cfg = parse_serve_config({"tracking_uri": mlflow_store[0], "redis_url": redis_settings.redis_url,
                              "split_families": False, "gateway": {"max_ongoing_requests": SLOTS},
                              "connections": LIMITS, "rate_limit": {"requests": RATE, "window_s": 60},
                              "max_body_bytes": 32768, "stale_after_s": 3600})
    serve.shutdown()  # another module's Serve may be running on the session's Ray, on its own port
    url = deploy(cfg, "127.0.0.1", free_port())
    features = httpx.get(f"{url}/v1/models", timeout=30).json()["versions"]["champion"]["features"]
    yield url, {"rows": [{"features": {n: 0.5 for n in features}}]}
    serve.delete("tickray")


def client(url: str, address: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


@pytest.mark.parametrize("body, status, says", [
    ({"symbols": ["DOGEUSDT"]}, 404, "no live features for symbol 'DOGEUSDT'"),
    (b"{not json", 422, "Invalid JSON"),
    ({"symbols": "BTCUSDT"}, 422, "symbols: Input should be a valid array"),
    ({"symbols": ["BTCUSDT"], "horizon": 5}, 422, "horizon: Extra inputs"),
    ({"rows": [{"features": {"spread_bps": 1.0}}]}, 422, "rows.0.features: missing"),
    ({"rows": [{"features": {"spread_bps": "wide"}}]}, 422, "rows.0.features.spread_bps"),
    ({"symbols": ["S" * 40000]}, 413, "over the limit of 32768"),
    # the models never see a number that is not one
    (b'{"rows": [{"features": {"spread_bps": Infinity}}]}', 422,
     "rows.0.features: Value error, spread_bps = inf is not a finite number within float32 range"),
    (b'{"rows": [{"features": {"spread_bps": -Infinity}}]}', 422, "spread_bps = -inf is not a finite number"),
    (b'{"rows": [{"features": {"spread_bps": 1e400}}]}', 422, "spread_bps = inf is not a finite number"),
    ({"rows": [{"features": {"spread_bps": 1e39}}]}, 422, "spread_bps = 1e+39 is not a finite number"),
    ({"rows": [{"features": {"spread_bps": "1.5"}}]}, 422, "rows.0.features.spread_bps: Input should be a valid number"),
    ({"rows": [{"features": {"spread_bps": True}}]}, 422, "rows.0.features.spread_bps: Input should be a valid number"),
    ({"rows": [{"features": {"spread_bps": 1.0}, "ts_ns": 2**63}]}, 422, "rows.0.ts_ns: Input should be less than"),
    ({"rows": [{"features": {"spread_bps": 1.0}, "ts_ns": 5}]}, 422, "rows.0.ts_ns: Input should be greater than"),
    ({"rows": [{"features": {"spread_bps": 1.0}, "ts_ns": 2**62}]}, 422, "more than a day ahead of now"),
    ({"symbols": ["BTC USDT"]}, 422, "symbols.0: Value error, 'BTC USDT' is not a symbol"),
])
def test_bad_requests_get_a_json_error_saying_what(open_api, body, status, says):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with client(open_api[0], "127.0.0.20") as c:
        r = c.post("/v1/predict", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json() == {"error": status, "detail": r.json()["detail"]} and says in r.json()["detail"]


def test_every_error_has_one_shape(open_api):
    """Starlette's own answers too: an unknown route, a method not allowed."""
    with client(open_api[0], "127.0.0.21") as c:
        for r, status in ((c.get("/v1/nowhere"), 404), (c.post("/v1/health"), 405), (c.get("/v1/predict"), 405)):
            assert r.status_code == status and r.json() == {"error": status, "detail": r.json()["detail"]}, r.text


async def _closed_with(ws, timeout_s: float = 30) -> int:
    """The close code the server sent (-1: closed without one), once everything before it is read."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout_s)
    except websockets.exceptions.ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else -1


def test_the_websocket_protocol_is_strict_and_says_why(open_api):
    """Error frames for messages that are not the protocol, a close (1008) at the third, and a close (1003)
    for a binary frame; a good message in between is answered as usual."""
    ws_url = open_api[0].replace("http://", "ws://") + "/v1/stream"

    async def session() -> tuple[list, int, int]:
        frames = []
        async with websockets.connect(ws_url, local_addr=("127.0.0.22", 0)) as ws:
            for msg in ({"subscribe": "BTCUSDT"}, {"subscribe": ["BTCUSDT"]}, {"subscribe": ["A" * 100]}):
                await ws.send(json.dumps(msg))
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            await ws.send(json.dumps({"subscribe": [f"S{i}" for i in range(101)]}))
            third = await _closed_with(ws)
        async with websockets.connect(ws_url, local_addr=("127.0.0.22", 0)) as ws:
            await ws.send(b"\x00\x01")
            binary = await _closed_with(ws)
        return frames, third, binary

    frames, third, binary = asyncio.run(session())
    assert frames[0] == {"error": 422, "detail": "subscribe: a list of symbols, not str"}
    assert frames[1] == {"subscribed": ["BTCUSDT"]}
    assert frames[2]["error"] == 422 and "is not a symbol" in frames[2]["detail"]
    assert (third, binary) == (1008, 1003)


async def _slow_body(host: str, port: int, address: str) -> tuple[float, int, dict]:
    """A POST that announces 1000 bytes and sends 10: (seconds to the answer, status, body)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port, local_addr=(address, 0))
    writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n" + b'{"rows": [')
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    body = await asyncio.wait_for(reader.readexactly(length), 30)
    writer.close()
    return time.monotonic() - t0, int(head.split()[1]), json.loads(body)


def test_idle_websockets_and_slow_bodies_never_take_the_api_away(open_api):
    """Twice the gateway's request slots in idle WebSockets (from four addresses) and as many slow request
    bodies (from one): the sessions over the replica's cap are closed at once (1013), the bodies over the
    client's cap answered 429 at once; health and predict answer meanwhile; the idle sessions are closed
    at their idle timeout (1000) and the slow bodies answered 408 at theirs."""
    url, rows = open_api
    host, port = url.removeprefix("http://").split(":")
    ws_url = url.replace("http://", "ws://") + "/v1/stream"

    async def hostile():
        t0 = time.monotonic()
        sockets = [await websockets.connect(ws_url, local_addr=(f"127.0.0.{30 + i // 2}", 0)) for i in range(2 * SLOTS)]
        closes = [asyncio.create_task(_closed_with(ws)) for ws in sockets]
        bodies = [asyncio.create_task(_slow_body(host, int(port), "127.0.0.40")) for _ in range(2 * SLOTS)]
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     transport=httpx.AsyncHTTPTransport(local_address="127.0.0.41")) as c:
            health, predict = await c.get("/v1/health"), await c.post("/v1/predict", json=rows)
        closed_idle_before = sum(c.done() and c.result() == 1000 for c in closes)
        codes = [await c for c in closes]
        closed_at = time.monotonic() - t0
        for ws in sockets:
            await ws.close()
        return closed_idle_before, health, predict, codes, closed_at, [await b for b in bodies]

    closed_idle_before, health, predict, codes, closed_at, bodies = asyncio.run(hostile())
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert predict.status_code == 200 and set(predict.json()["predictions"][0]["horizons"]) == {"10s", "60s"}
    assert closed_idle_before == 0  # answered while the sessions under the cap were still held
    assert sorted(codes) == [1000] * LIMITS["websockets"] + [1013] * (2 * SLOTS - LIMITS["websockets"])
    assert closed_at >= LIMITS["websocket_idle_s"]
    statuses = sorted(status for _, status, _ in bodies)
    assert statuses == [408] * LIMITS["bodies_per_client"] + [429] * (2 * SLOTS - LIMITS["bodies_per_client"])
    for seconds, status, body in bodies:
        assert set(body) == {"error", "detail"}
        if status == 408:
            assert seconds >= LIMITS["body_timeout_s"] and "not complete within 2s" in body["detail"]
        else:
            assert seconds < LIMITS["body_timeout_s"] and "at most 2 at once" in body["detail"]


def test_websockets_over_a_clients_cap_are_closed_saying_why(open_api):
    ws_url = open_api[0].replace("http://", "ws://") + "/v1/stream"

    async def sessions():
        held = [await websockets.connect(ws_url, local_addr=("127.0.0.50", 0))
                for _ in range(LIMITS["websockets_per_client"] + 1)]
        try:
            extra = held[-1]
            code = await _closed_with(extra, timeout_s=10)
            await held[0].send(json.dumps({"subscribe": ["BTCUSDT"]}))
            first = json.loads(await asyncio.wait_for(held[0].recv(), 10))
            return code, extra.close_reason, first
        finally:
            for ws in held:
                await ws.close()

    code, reason, first = asyncio.run(sessions())
    assert code == 1013 and reason == f"2 sessions from 127.0.0.50, at most {LIMITS['websockets_per_client']} per client"
    assert first == {"subscribed": ["BTCUSDT"]}


def test_without_keys_each_address_has_its_own_rate_limit(open_api):
    """One caller spending its window leaves every other caller's untouched."""
    url, _ = open_api
    with client(url, "127.0.0.60") as greedy, client(url, "127.0.0.61") as other:
        codes = [greedy.get("/v1/models").status_code for _ in range(RATE + 1)]
        after = other.get("/v1/models")
        refused = greedy.get("/v1/models")
    assert codes == [200] * RATE + [429]
    assert after.status_code == 200
    assert refused.json()["error"] == 429 and int(refused.headers["Retry-After"]) > 0


def test_an_open_api_is_refused_on_a_public_address_unless_insecure(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TICKRAY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TICKRAY_SERVE_HOST", "0.0.0.0")
    assert main(["serve"]) == 2
    assert "refusing to bind 0.0.0.0 without authentication" in capsys.readouterr().err
    # --insecure passes that check and goes on to look for the cluster (there is none here)
    assert main(["serve", "--insecure"]) == 2
    assert "no Ray cluster to deploy on" in capsys.readouterr().err
    monkeypatch.setenv("TICKRAY_API_KEYS", "tk_some_key")
    assert main(["serve"]) == 2
    assert "no Ray cluster to deploy on" in capsys.readouterr().err
