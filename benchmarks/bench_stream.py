"""The streaming-ingest pipeline against bare parsing, on the real BTCUSDT futures captures.

- Throughput: both captures of one session (2024-07-18 then -19) replayed by the local venue over a real
  WebSocket into one stream actor (validate, book, grid, features, bars, market state, Redis): paced until
  the actor's book is synced, then unpaced; messages per second from then to the last one processed,
  against ``orjson.loads`` of the same messages in a loop here (the ceiling), and the actor's CPU per
  message (its own process time). Goal >= 50,000 msg/s.
- Latency: the first capture at its recorded pace (``--paced-s`` seconds of it), tick received →
  features in Redis, p50 and p99 over every message that closed a feature row. Goal p99 < 5 ms.

    python benchmarks/bench_stream.py [--data ../shared/data] [--paced-s 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from tickray.config import Settings
from tickray.ops import stack
from tickray.sim.exchange import ReplayExchange
from tickray.stream.actor import StreamIngestActor
from tickray.stream.keys import forget

STREAMS = ("depth@0ms", "trade", "bookTicker")


def run_actor(exchange: ReplayExchange, redis_url: str, until, unpace_when=None) -> tuple[dict, float, float]:
    """Stream into a new actor until ``until(stats, elapsed)``; returns its stats, the messages per second
    received from the first message (or, with ``unpace_when``, from when that turned the replay unpaced) and
    the actor's CPU seconds per message over the same span."""
    actor = StreamIngestActor.remote(["BTCUSDT"], exchange.ws_url, exchange.rest_url, redis_url, streams=STREAMS)
    try:
        ray.get(actor.start.remote())
        t0, first = time.time(), None
        while True:
            stats = ray.get(actor.stats.remote())
            n = stats["messages"].get("received", 0)
            if first is None and n and (unpace_when is None or unpace_when(stats)):
                if unpace_when is not None:
                    exchange.speed = 0.0
                first = (time.time(), n, stats["cpu_s"])
            if until(stats, time.time() - t0):
                break
            time.sleep(0.1)  # not faster: each stats call takes the actor's time
        t_first, n_first, cpu_first = first
        n = stats["messages"]["received"] - n_first
        # to the last message the actor took (its own clock, this machine's), not to this poll
        return stats, n / (stats["last_message_at"] - t_first), (stats["cpu_s"] - cpu_first) / n
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--paced-s", type=float, default=60.0)
    args = ap.parse_args()
    ws = Path(args.data) / "binance" / "ws"
    captures = [ws / "usdm_btcusdt_20240718.gz", ws / "usdm_btcusdt_20240719.gz"]

    exchange = ReplayExchange(captures)
    bodies = [body for _, _, body in exchange.messages]
    t = time.perf_counter()
    for body in bodies:
        orjson.loads(body)
    ceiling = len(bodies) / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp), redis_port=stack.free_port())
        stack.start_redis(settings)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            # Paced until the book is synced, then as fast as the actor takes it: unpaced from the start,
            # the venue's snapshot would be fetched late and most diffs dropped as older than it (cheap).
            exchange.speed = 1.0
            exchange.start()
            total = len(exchange.messages)
            stats, rate, cpu = run_actor(exchange, settings.redis_url,
                                         lambda s, _: s["messages"].get("received", 0) >= total,
                                         unpace_when=lambda s: s["book"]["BTCUSDT"]["applied"] > 0)
            exchange.stop()
            print(f"throughput: {total:,} messages ({', '.join(c.name for c in captures)}) through one stream actor")
            print(f"  pipeline {rate:,.0f} msg/s vs bare orjson.loads {ceiling:,.0f} msg/s: {rate / ceiling:.1%} of "
                  f"the ceiling (goal >= 50,000 msg/s); book {stats['book']['BTCUSDT']}, "
                  f"quarantined {sum(stats['quarantined'].values())}")
            # one actor is one Python thread: 50k msg/s needs at most 20 us of its CPU per message
            print(f"  the actor's CPU: {cpu * 1e6:.1f} us per message, busy {cpu * rate:.0%} of the time "
                  f"(50,000 msg/s needs <= 20 us)")

            forget(stack.redis_client(settings), ["BTCUSDT"])  # a new session, not a resumed one
            paced = ReplayExchange(captures[:1], speed=1.0).start()
            stats, rate, _ = run_actor(paced, settings.redis_url, lambda s, elapsed: elapsed >= args.paced_s)
            paced.stop()
            lat = stats["pipeline_ms"]
            print(f"latency at the recorded pace ({args.paced_s:g} s, {rate:,.0f} msg/s): tick -> features in Redis "
                  f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms (goal p99 < 5 ms), "
                  f"{sum(stats['features_published'].values())} feature rows")
        finally:
            ray.shutdown()
            stack.stop_redis(settings)


if __name__ == "__main__":
    main()
