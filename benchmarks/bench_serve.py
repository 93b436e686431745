"""The prediction API on Ray Serve against the same FastAPI routes run by plain uvicorn in one process.

One registered ensemble (XGBoost, LSTM and Transformer stacked, ``jobs/configs/train-synthetic.yaml``,
trained here on a generated market unless ``--tracking-uri`` names a registry with one) serves BTCUSDT's
live features, kept in Redis by a stream actor that replays the real BTCUSDT futures session. Every
request authenticates with an API key, passes the Redis rate limiter, reads the features (latest row and
the sequence window) and runs all three models and the meta-learner: the same work in every app.

- HTTP: ``POST /v1/predict {"symbols": ["BTCUSDT"]}`` from a load generator in its own process
  (``http_load.py``, closed loop) at 1, 8 and 32 clients: p50/p99 latency and throughput for
  the plain app, Serve with the families in the gateway's replica (``split_families: false``) and
  Serve with a deployment per family. ``--ingress haproxy`` runs the cluster with Ray's HAProxy ingress
  (``serve_ingress: haproxy``) instead of Serve's proxy actor. Goals for Serve: >= 40% of the plain app's
  throughput at 8 clients, p99 < 30 ms at 8 clients, p50 < 10 ms at 1 client.
- Tick -> prediction: the session replayed at its recorded pace (after a fast-forwarded warm-up, the
  models read 5 minutes back); for every feature row, the time from the stream actor receiving the
  message that closed it to a ``/v1/stream`` WebSocket client receiving the prediction. Goal p99 < 50 ms.

    python benchmarks/bench_serve.py [--data ../shared/data] [--duration-s 10] [--paced-s 60] [--access-log]
                                     [--ingress proxy|haproxy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
import websockets
import yaml
from ray import serve
from tickray.config import Settings
from tickray.ops import stack
from tickray.serving.app import deploy
from tickray.serving.config import ServeConfig
from tickray.serving.security import hash_key
from tickray.sim.exchange import ReplayExchange
from tickray.stream.actor import StreamIngestActor, wait_for_messages
from tickray.stream.keys import forget

HERE = Path(__file__).resolve().parent
KEY = "tk_bench_key"
STREAMS = ("depth@0ms", "trade", "bookTicker")
WARM_UP_S = 330  # of market time: the longest feature window (5 min) and a sequence window


def train(tmp: Path) -> str:
    from tickray.features.job import build_features
    from tickray.ingest.job import ingest
    from tickray.sim.synth import generate
    from tickray.training.config import parse_config
    from tickray.training.pipeline import run_training

    # where the demo writes its market: train-synthetic.yaml's data.sources select it
    market = tmp / "demo" / "market"
    generate(market, ["BTCUSDT", "ETHUSDT"], days=1, seed=7, trades_per_day=40_000, capture_minutes=3)
    ingest([market / sub for sub in ("aggtrades", "depth", "klines")], tmp / "lake")
    build_features(tmp / "lake")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = parse_config(yaml.safe_load((HERE.parent / "jobs/configs/train-synthetic.yaml").read_text()))
    run_training(cfg, tmp / "lake", uri, str(tmp / "artifacts"), tmp / "ray_results", say=lambda _: None)
    return uri


def load(url: str, clients: int, duration_s: float) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "http_load.py"), f"{url}/v1/predict",
                          "--body", '{"symbols": ["BTCUSDT"]}', "--header", f"X-API-Key={KEY}",
                          "--clients", str(clients), "--duration-s", str(duration_s)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def sweep(name: str, url: str, clients: list[int], duration_s: float) -> dict[int, dict]:
    runs = {}
    for c in clients:
        r = runs[c] = load(url, c, duration_s)
        non_2xx = sum(r["non_2xx"].values())
        print(f"  {name:<22} {c:>3} clients: {r['rps']:7.1f} 2xx/s  p50 {r['p50_ms']:6.1f} ms  "
              f"p99 {r['p99_ms']:6.1f} ms  non-2xx {non_2xx} of {r['requests']} {r['non_2xx'] or ''}", flush=True)
    return runs


def plain_app(cfg: ServeConfig, tmp: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    (tmp / "serve.json").write_text(cfg.model_dump_json())
    port = stack.free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "plain_serve_app.py"), "--config", str(tmp / "serve.json"),
                             "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the plain app did not come up in 120 s")


async def pushed_lags(url: str, seconds: float) -> list[float]:
    """Tick received by the stream actor -> prediction received here, ms, for every push in ``seconds``."""
    lags = []
    async with websockets.connect(f"{url.replace('http', 'ws')}/v1/stream?symbols=BTCUSDT",
                                  additional_headers={"X-API-Key": KEY}) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                break
            if "horizons" in msg and msg.get("tick_received_at"):
                lags.append((time.time() - msg["tick_received_at"]) * 1e3)
    return lags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--tracking-uri", help="a registry whose tickray-ensemble has a champion (default: train one)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--paced-s", type=float, default=60.0)
    ap.add_argument("--access-log", action="store_true", help="Serve's line per request on (to see its cost)")
    ap.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                    help="what answers HTTP on the cluster (tickray's serve_ingress setting)")
    args = ap.parse_args()
    ws = Path(args.data) / "binance" / "ws"
    captures = [ws / "usdm_btcusdt_20240718.gz", ws / "usdm_btcusdt_20240719.gz"]
    clients = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        settings = Settings(state_dir=tmp / "state", redis_port=stack.free_port(), serve_ingress=args.ingress)
        stack.start_redis(settings)
        os.environ.update(stack.serve_ingress_env(settings))  # the cluster inherits it
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            t = time.perf_counter()
            uri = args.tracking_uri or train(tmp)
            print(f"ensemble registered at {uri} ({time.perf_counter() - t:.0f} s)", flush=True)
            cfg = ServeConfig(tracking_uri=uri, redis_url=settings.redis_url, api_keys_sha256=[hash_key(KEY)],
                              rate_limit={"requests": 10**9, "window_s": 60}, stale_after_s=3600,
                              split_families=False, access_log=args.access_log)

            # The session fast-forwarded through the warm-up, then at its recorded pace.
            forget(stack.redis_client(settings), ["BTCUSDT"])
            exchange = ReplayExchange(captures, speed=30.0).start()
            actor = StreamIngestActor.remote(["BTCUSDT"], exchange.ws_url, exchange.rest_url, settings.redis_url,
                                             streams=STREAMS)
            ray.get(actor.start.remote())
            t_first = exchange.messages[0][0]
            warm = sum(1 for m in exchange.messages if m[0] - t_first < WARM_UP_S * 1e9)
            wait_for_messages(actor, warm, timeout_s=120)
            exchange.speed = 1.0
            url = deploy(cfg, "127.0.0.1", stack.free_port())
            lags = np.array(asyncio.run(pushed_lags(url, args.paced_s)))
            exchange.speed = 0.0  # the rest as fast as the actor takes it: the features stay in Redis
            wait_for_messages(actor, len(exchange.messages), timeout_s=120)
            ray.get(actor.stop.remote())
            exchange.stop()
            print(f"tick -> prediction on /v1/stream at the recorded pace ({args.paced_s:g} s, {lags.size} "
                  f"predictions): p50 {np.percentile(lags, 50):.1f} ms, p99 {np.percentile(lags, 99):.1f} ms, "
                  f"max {lags.max():.1f} ms (goal p99 < 50 ms)", flush=True)

            print(f"POST /v1/predict, {args.duration_s:g} s per point, load from its own process:", flush=True)
            results = {"Serve, families in gateway": sweep("Serve, families in gateway", url, clients,
                                                           args.duration_s)}
            serve.shutdown()
            split = cfg.model_copy(update={"split_families": True})
            url = deploy(split, "127.0.0.1", stack.free_port())
            results["Serve, family deployments"] = sweep("Serve, family deployments", url, clients, args.duration_s)
            serve.shutdown()
            proc, url = plain_app(cfg, tmp)
            try:
                plain = sweep("plain uvicorn", url, clients, args.duration_s)
            finally:
                proc.kill()
        finally:
            ray.shutdown()
            stack.stop_redis(settings)

    for name, runs in results.items():
        ratios = ", ".join(f"{c}: {runs[c]['rps'] / plain[c]['rps']:.0%}" for c in clients if c in plain)
        print(f"{name}: throughput vs plain ({ratios})")
    if 8 in clients and 1 in clients:
        best = max(results, key=lambda n: results[n][8]["rps"])
        r8, r1 = results[best][8], results[best][1]
        print(f"goals ({best}, ingress {args.ingress}): 8 clients {r8['rps'] / plain[8]['rps']:.0%} of plain "
              f"(>= 40%), p99 {r8['p99_ms']:.1f} ms (< 30); 1 client p50 {r1['p50_ms']:.1f} ms (< 10)")


if __name__ == "__main__":
    main()
