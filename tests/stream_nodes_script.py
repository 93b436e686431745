"""Run by test_stream.py in its own process (a second Ray cluster cannot join the session's): a head and two
workers from ray.cluster_utils.Cluster; a synthetic USD-M market of three symbols of very different
activity replayed by the local venue; the supervisor (on the head) starts the connectors the planner
makes of them, spread over the nodes. One connector's node is then lost: it must come back on another
node and resume from its checkpoint, its lake holding every trade once. Prints one JSON line.

argv: Redis URL, work folder."""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import ray
import redis
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tickray.lake import partitions, read_partition
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.ops.stack import ensure_ray_token
from tickray.sim.exchange import ReplayExchange
from tickray.sim.synth import market_capture
from tickray.stream.keys import CHECKPOINT_KEY, forget
from tickray.stream.plan import plan_connectors, venue_listing
from tickray.stream.supervisor import SPECS_KEY, ConnectorSpec, StreamSupervisor

redis_url, work = sys.argv[1], Path(sys.argv[2])
ACTIVITY = {"BIGUSDT": 400_000, "MIDUSDT": 100_000, "SMLUSDT": 20_000}  # trades a day
capture = market_capture(work / "market", ACTIVITY, minutes=2, seed=3)
STREAMS = ["depth@0ms", "aggTrade", "bookTicker"]
USDM = BINANCE_STREAM_MARKETS["usdm"]


def wait(sup, ok, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        health = ray.get(sup.health.remote())
        if ok(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.25)


ensure_ray_token()
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
r = redis.Redis.from_url(redis_url)
r.delete(SPECS_KEY)
forget(r, list(ACTIVITY))
exchange = ReplayExchange([capture], speed=4.0).start()
head = cluster.head_node.node_id
sup = StreamSupervisor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote(
    redis_url, check_s=0.5)
out: dict = {"head": head, "workers": [w.node_id for w in workers]}
try:
    listed = venue_listing(exchange.rest_url, USDM)
    plan = plan_connectors(listed, STREAMS, USDM, "nodes", min_connectors=2)
    out["plan"] = {c.name: c.symbols for c in plan}
    lake_root = work / "lake"
    for c in plan:
        ray.get(sup.start_connector.remote(asdict(ConnectorSpec(
            c.name, c.symbols, STREAMS, exchange.ws_url, exchange.rest_url, redis_url,
            {"lake_root": str(lake_root), "flush_s": 0.5}))))
    health = wait(sup, lambda h: all(x["status"] == "ok" and x["node"] for x in h.values()))
    out["nodes_before"] = {n: h["node"] for n, h in health.items()}
    moved = next(n for n, h in health.items() if h["node"] != head)  # a connector on a worker node
    symbols = out["plan"][moved]
    for sym in symbols:
        while r.get(CHECKPOINT_KEY.format(symbol=sym)) is None:
            time.sleep(0.1)
    time.sleep(2.0)
    lost = next(w for w in workers if w.node_id == health[moved]["node"])
    cluster.remove_node(lost, allow_graceful=False)  # the node crashes: its processes die with it
    time.sleep(1.0)  # the market goes on without the connector: what it missed must come back from REST
    exchange.hold_after(exchange.market_now_ns())  # then waits for it, however slow its return
    health = wait(sup, lambda h: h[moved]["restarts"] >= 1 and h[moved]["status"] == "ok"
                  and h[moved]["node"] not in ("", lost.node_id))
    out["moved"], out["lost_node"], out["node_after"] = moved, lost.node_id, health[moved]["node"]
    out["restarts"] = health[moved]["restarts"]
    exchange.hold_after(None)
    out["finished"] = exchange.finished.wait(120)
    last = None
    for _ in range(120):  # settled: nothing queued and the counts no longer move
        stats = ray.get(sup.stats.remote(moved))
        key = (stats["messages"], stats["trades"], stats["queued"])
        if stats["queued"] == 0 and key == last:
            break
        last = key
        time.sleep(0.5)
    out["messages"] = stats["messages"]
    for c in plan:
        ray.get(sup.stop_connector.remote(c.name))  # flushes the lake
    out["trades"] = {}
    for sym in symbols:
        lake_ids = sorted(pa.concat_tables(read_partition(lake_root, "trades", d, s) for d, s in
                                           partitions(lake_root, "trades") if s == sym)["trade_id"].to_pylist())
        venue_ids = [t["a"] for t in exchange.trades[(sym, "aggTrade")]]
        out["trades"][sym] = {"lake": len(lake_ids), "unique": len(set(lake_ids)),
                              "venue_since_first": [a for a in venue_ids if a >= lake_ids[0]] == lake_ids}
finally:
    ray.kill(sup)
    exchange.stop()
    ray.shutdown()
    cluster.shutdown()
print(json.dumps(out))
