"""Many symbols live: a synthetic USD-M market of N symbols with skewed activity (the k-th busiest trades
1/k as often as the busiest, as on the venue) replayed by the local venue, through the connectors the
planner makes of it, started by the stream supervisor.

- Start: every book synced (time and REST weight, all connectors drawing on one budget in Redis).
- Paced (the recorded pace, ``--paced-s``): tick → features in Redis p50/p99 per symbol class (the busiest
  tenth of the symbols, the rest), and the connectors' memory per symbol.
- Mass resync: every connection dropped at once; time until every book is synced again, REST weight spent.
- Unpaced (the rest of the market as fast as the connectors take it): aggregate msg/s and the connectors'
  CPU per message, against bare ``orjson.loads`` of the same messages in one loop here (the baseline).

``--nodes 2`` runs the same on a head and a worker node (``ray.cluster_utils.Cluster``, one CPU each) and
shows where the connectors ran.

    python benchmarks/bench_symbols.py [--symbols 200] [--minutes 10] [--nodes 1|2] [--connectors 2]
                                       [--snapshot-limit 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import orjson
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from tickray.config import Settings
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.ops import stack
from tickray.sim.exchange import ReplayExchange
from tickray.sim.synth import market_capture
from tickray.stream.plan import plan_connectors, venue_listing
from tickray.stream.supervisor import ConnectorSpec, StreamSupervisor

STREAMS = ["depth@0ms", "aggTrade", "bookTicker"]
USDM = BINANCE_STREAM_MARKETS["usdm"]


def stats_of(sup, names) -> dict[str, dict]:
    return {n: ray.get(sup.stats.remote(n)) for n in names}


def until(sup, names, done, timeout_s: float = 600.0) -> tuple[dict, float]:
    t0 = time.monotonic()
    while True:
        st = stats_of(sup, names)
        if done(st) or time.monotonic() - t0 > timeout_s:
            return st, time.monotonic() - t0
        time.sleep(0.5)


def total(st: dict, key: str) -> float:
    return sum(s["messages"].get(key, 0) for s in st.values())


def synced(st: dict) -> bool:
    return all(s["connected"] and not s["unsynced"] and s["messages"].get("snapshots") for s in st.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=200)
    ap.add_argument("--minutes", type=int, default=10, help="of market: the start, the paced phase, and 5 "
                    "minutes for the mass resync (about 3.5 minutes of REST budget for 200 books) must fit in it")
    ap.add_argument("--top", type=int, default=2_000_000, help="trades a day of the busiest symbol")
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 2))
    ap.add_argument("--connectors", type=int, default=2, help="at least this many connectors")
    ap.add_argument("--paced-s", type=float, default=40.0)
    ap.add_argument("--snapshot-limit", type=int, default=1000, help="levels of a book's REST snapshot")
    args = ap.parse_args()
    activity = {f"S{k:03d}USDT": max(args.top // (k + 1), 100) for k in range(args.symbols)}
    busy = set(list(activity)[: max(1, args.symbols // 10)])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        capture = market_capture(Path(tmp), activity, args.minutes, seed=11)
        exchange = ReplayExchange([capture], speed=1.0)
        bodies = [b for _, _, b in exchange.messages]
        print(f"market: {args.symbols} symbols × {STREAMS}, {args.minutes} min, {len(bodies):,} messages "
              f"(generated in {time.perf_counter() - t:.0f} s)")
        t = time.perf_counter()
        for b in bodies:
            orjson.loads(b)
        ceiling = len(bodies) / (time.perf_counter() - t)

        settings = Settings(state_dir=Path(tmp) / "state", redis_port=stack.free_port())
        stack.start_redis(settings)
        cluster = None
        if args.nodes == 2:
            from ray.cluster_utils import Cluster

            stack.ensure_ray_token()
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            cluster.add_node(num_cpus=1)
            ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        exchange.start()
        sup = StreamSupervisor.remote(settings.redis_url, check_s=1.0)
        try:
            listed = venue_listing(exchange.rest_url, USDM)
            plan = plan_connectors(listed, STREAMS, USDM, "bench", min_connectors=args.connectors)
            names = [c.name for c in plan]
            for c in plan:
                ray.get(sup.start_connector.remote(asdict(ConnectorSpec(
                    c.name, c.symbols, STREAMS, exchange.ws_url, exchange.rest_url, settings.redis_url,
                    {"snapshot_limit": args.snapshot_limit}))))
            print(f"plan: {len(plan)} connectors; expected msg/s {[round(c.rate) for c in plan]}; symbols "
                  f"{[len(c.symbols) for c in plan]}; streams per route {[c.streams_per_route for c in plan]}")

            st, took = until(sup, names, synced)
            print(f"start: every book synced {took:.1f} s after the connectors were asked for, "
                  f"REST weight {total(st, 'rest weight'):,.0f} (429s {total(st, 'rest 429'):.0f})")

            time.sleep(args.paced_s)
            st = stats_of(sup, names)
            by_sym = {s: v for x in st.values() for s, v in x["pipeline_ms_by_symbol"].items()}
            for label, group in (("busiest tenth", [s for s in by_sym if s in busy]),
                                 ("the others", [s for s in by_sym if s not in busy])):
                p50 = np.median([by_sym[s]["p50"] for s in group]) if group else float("nan")
                p99 = max((by_sym[s]["p99"] for s in group), default=float("nan"))
                print(f"paced {args.paced_s:g} s, {label} ({len(group)} symbols): tick -> features in Redis "
                      f"p50 {p50:.2f} ms (median of the symbols'), p99 {p99:.2f} ms (the worst symbol's)")
            rss = sum(x["rss_bytes"] for x in st.values())
            print(f"memory: {rss / 2**20:,.0f} MiB in {len(st)} connector processes, "
                  f"{rss / args.symbols / 2**20:.2f} MiB per symbol (a Ray worker's own ~100 MiB included)")

            # unpaced until 5 market minutes are left: the mass resync below needs a live market that long
            resync_from = exchange.messages[0][0] + (args.minutes * 60 - 300) * 10**9
            n0, cpu0, t0 = total(st, "received"), sum(x["cpu_s"] for x in st.values()), time.monotonic()
            exchange.speed = 0.0
            st, _ = until(sup, names, lambda s: exchange.market_now_ns() >= resync_from)
            exchange.speed = 1.0
            n1, cpu1, t1 = total(st, "received"), sum(x["cpu_s"] for x in st.values()), time.monotonic()
            rate = (n1 - n0) / (t1 - t0)
            print(f"unpaced: {n1 - n0:,.0f} messages at {rate:,.0f} msg/s over {len(st)} connectors "
                  f"({rate / ceiling:.1%} of bare orjson.loads at {ceiling:,.0f} msg/s); "
                  f"{(cpu1 - cpu0) / max(n1 - n0, 1) * 1e6:.1f} us of connector CPU per message")

            st, _ = until(sup, names, synced)  # caught up with the market again
            before_w, before_snaps = total(st, "rest weight"), total(st, "snapshots")
            before_parts = {k: total(st, f"rest weight: {k}") for k in ("depth", "aggTrades")}
            exchange.disconnect_all()
            st, took = until(sup, names, lambda s: total(s, "snapshots") >= before_snaps + args.symbols and synced(s))
            print(f"mass resync: every connection dropped; all {args.symbols} books synced again in {took:.1f} s, "
                  f"REST weight {total(st, 'rest weight') - before_w:,.0f} (snapshots of {args.snapshot_limit} "
                  f"levels, trades missed; budget {USDM.rest_weight_limit:,} a minute; 429s {total(st, 'rest 429'):.0f}, "
                  f"418s {total(st, 'rest 418'):.0f}); of it depth {total(st, 'rest weight: depth') - before_parts['depth']:,.0f}, "
                  f"aggTrades {total(st, 'rest weight: aggTrades') - before_parts['aggTrades']:,.0f}; "
                  f"connectors' own measure {[x['resync_all_s'] for x in st.values()]} s")
            nodes = {x["node"][:8] for x in st.values()}
            quarantined: dict = {}
            for x in st.values():
                for why, k in x["quarantined"].items():
                    quarantined[why] = quarantined.get(why, 0) + k
            print(f"nodes: the connectors ran on {len(nodes)} node(s) {sorted(nodes)}; quarantined {quarantined}")
        finally:
            for n in ray.get(sup.health.remote()):
                ray.get(sup.stop_connector.remote(n))
            ray.kill(sup)
            exchange.stop()
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            stack.stop_redis(settings)


if __name__ == "__main__":
    main()
