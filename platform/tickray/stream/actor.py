"""The stream-ingest actor: a Binance connector (its combined-stream WebSockets) → online features in Redis.

A thin actor over its parts, each with one job: the connection and its subscriptions
(:mod:`~tickray.stream.connection`), the venue's REST side for book sync, missed trades and the time
(:mod:`~tickray.stream.venue_rest`), publishing to Redis (:mod:`~tickray.stream.publish`), checkpoints
and the cold path to the lake (:mod:`~tickray.stream.durable`), and metrics
(:mod:`~tickray.stream.telemetry`). What it keeps in Redis is named in :mod:`~tickray.stream.keys`.

Per message (:mod:`~tickray.stream.dispatch`): decode once into a typed event and check it
(:mod:`~tickray.stream.messages`) → order book / grid / live bars / market state (:class:`SymbolPipeline`) →
features published. Nothing valid is lost: a gap in the depth
sequence resyncs the book from a REST snapshot, and a gap in trade ids (a reconnect, a corrupt or
reordered message) is filled from the venue's REST trades before the trade that revealed it. Invalid
messages go to the Redis stream ``tickray:quarantine`` with a reason and are counted; they never stop
the actor.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import asdict

import httpx
import numpy as np
import ray
import redis.asyncio as aioredis

from tickray.errors import ConfigError
from tickray.market.budget import RestBudget
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.stream.cold import ColdBuffer
from tickray.stream.connection import Connection
from tickray.stream.context import ConnectorContext, ConnectorOptions
from tickray.stream.dispatch import Dispatcher
from tickray.stream.durable import Durability
from tickray.stream.messages import DEFAULT_STREAMS, stream_names
from tickray.stream.pipeline import SymbolPipeline
from tickray.stream.publish import Publisher
from tickray.stream.telemetry import StreamMetrics, log_event
from tickray.stream.venue_rest import VenueRest


@ray.remote(num_cpus=0)
class StreamIngestActor:
    def __init__(self, symbols: list[str], ws_url: str, rest_url: str, redis_url: str,
                 streams: tuple[str, ...] = DEFAULT_STREAMS, options: ConnectorOptions | None = None):
        opt = options or ConnectorOptions()
        market = BINANCE_STREAM_MARKETS.get(opt.venue)
        if market is None:
            raise ConfigError(f"stream venue {opt.venue!r} is not one of {', '.join(BINANCE_STREAM_MARKETS)}")
        self.max_streams, self.redis_url = market.max_streams, redis_url
        self.ctx = ConnectorContext(opt, ws_url.rstrip("/"), rest_url.rstrip("/"), market)
        self._add_streams([n for s in symbols for n in stream_names(s, tuple(streams))])
        self.connection = Connection(self.ctx)
        self.publisher = Publisher(self.ctx)
        self.rest = VenueRest(self.ctx, self.publisher)
        self.durability = Durability(self.ctx, self.publisher, self.rest)
        self.dispatcher = Dispatcher(self.ctx, self.connection, self.publisher, self.rest, self.durability)
        self._tasks: list[asyncio.Task] = []
        if opt.autostart:  # Ray runs an async actor's __init__ on its event loop
            asyncio.get_running_loop().create_task(self.start())

    # ---- control -------------------------------------------------------------------------------

    def _add_streams(self, names: list[str]) -> None:
        ctx = self.ctx
        new = [n for n in names if n not in ctx.streams]
        per_route = Counter(ctx.market.route(n) for n in [*ctx.streams, *new])
        route, most = max(per_route.items(), key=lambda kv: kv[1], default=("", 0))
        if most > self.max_streams:
            raise ConfigError(f"{most} streams on one {ctx.opt.venue} connection{f' ({route})' if route else ''}: "
                              f"the venue allows {self.max_streams}; start another connector")
        for n in new:
            sym = n.split("@", 1)[0].upper()
            if sym not in ctx.pipes:
                ctx.pipes[sym] = SymbolPipeline(sym, spot=ctx.opt.venue == "spot",
                                                bar_timeframes=tuple(ctx.opt.bar_timeframes),
                                                cold=ColdBuffer(sym) if ctx.opt.lake_root else None)
        ctx.streams.extend(new)

    async def start(self) -> None:
        if not self._tasks:
            ctx = self.ctx
            # bounded: a Redis that stops answering is an error here, never a connector (or its stop) hung
            ctx.redis = aioredis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)
            ctx.http = httpx.AsyncClient(base_url=ctx.rest_url, timeout=10)
            opt, market = ctx.opt, ctx.market
            ctx.budget = RestBudget(ctx.redis, f"binance-{opt.venue}", opt.rest_weight_limit or market.rest_weight_limit,
                                    opt.rest_window_s or market.rest_window_s, opt.rest_budget_scope)
            ctx.metrics = StreamMetrics()
            await self.durability.find_checkpoints()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(c) for c in (
                self.connection.read(), self.dispatcher.run(), self._flush_metrics(), self.durability.flush_loop(),
                self.rest.clock_loop())]

    async def stop(self) -> None:
        """Stop reading, then flush to the lake and checkpoint: a stopped connector loses nothing."""
        self.ctx.stopping = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10)
            if stuck:
                log_event("stop: tasks still running after 10 s", tasks=[t.get_coro().__qualname__ for t in stuck])
            await self.publisher.send()
            await self.durability.flush()
            await self.ctx.http.aclose()
            await self.ctx.redis.aclose()
        self._tasks = []

    async def subscribe(self, streams: list[str]) -> dict:
        """Add streams (``btcusdt@aggTrade``) on the live connection; kept across reconnects."""
        self._add_streams(list(streams))
        return await self.connection.request("SUBSCRIBE", list(streams))

    async def unsubscribe(self, streams: list[str]) -> dict:
        self.ctx.streams[:] = [s for s in self.ctx.streams if s not in streams]
        return await self.connection.request("UNSUBSCRIBE", list(streams))

    async def list_subscriptions(self) -> dict:
        return await self.connection.request("LIST_SUBSCRIPTIONS", [])

    # ---- what it tells -------------------------------------------------------------------------

    def stats(self) -> dict:
        ctx, pub = self.ctx, self.publisher
        lat = np.array(pub.latency) if pub.latency else np.array([np.nan])
        return {
            "messages": dict(ctx.counts), "quarantined": dict(self.dispatcher.quarantined),
            "features_published": {s: pub.last_features.get(s, {}).get("n", 0) for s in ctx.pipes},
            "book": {s: asdict(p.sync.counters) for s, p in ctx.pipes.items()},
            "unsynced": sorted(s for s, p in ctx.pipes.items() if not p.sync.synced and ctx.symbol_depth(s)),
            "book_check": {s: asdict(p.sync.check.counters) for s, p in ctx.pipes.items()},
            "late": {s: p.grid.late for s, p in ctx.pipes.items()},
            "trades": {s: p.state.trades_total for s, p in ctx.pipes.items()},
            "pipeline_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "pipeline_ms_by_symbol": {s: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                                          "n": len(v)} for s, v in pub.latency_by_symbol.items() if v},
            "resume": dict(self.durability.resume), "resync_all_s": self.rest.resync_all_s,
            "lag_ms": dict(pub.lag), "clock": pub.clock.describe(),
            "queued": self.connection.queued(),
            "connected": self.connection.connected, "streams": list(ctx.streams),
            "durable": dict(self.durability.durable), "incarnation": self.durability.incarnation,
            "last_message_at": self.dispatcher.last_message_at,
            "cpu_s": time.process_time(),  # this actor's process: with last_message_at, how busy it is
            "node": ray.get_runtime_context().get_node_id(),
            "rss_bytes": _rss_bytes(), "pid": os.getpid(),
        }

    def state(self, symbol: str) -> dict[str, float]:
        p = self.ctx.pipes[symbol.upper()]
        return p.state.snapshot(p.sync.book if p.sync.synced else None)

    def book(self, symbol: str, levels: int = 20) -> dict:
        sync = self.ctx.pipes[symbol.upper()].sync
        bids, asks = sync.book.top(levels)
        return {"synced": sync.synced, "last_update_id": sync.book.last_update_id, "bids": bids, "asks": asks}

    def live_bars(self, symbol: str) -> dict[str, dict | None]:
        """The open bar of each timeframe (1m and the configured ones), up to the last trade."""
        return self.publisher.live_bars(symbol)

    async def _flush_metrics(self) -> None:
        pub = self.publisher
        while True:
            await asyncio.sleep(1.0)
            samples, pub.samples = pub.samples[-1000:], []
            self.ctx.metrics.flush(samples, pub.lag)


def _rss_bytes() -> int:
    """This process's resident memory (Linux), for the memory a connector takes per symbol."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def wait_for_messages(actor, count: int, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict:
    """Poll the actor until it has received ``count`` messages (or time runs out); return its stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = ray.get(actor.stats.remote())
        if stats["messages"].get("received", 0) >= count or time.monotonic() >= deadline:
            return stats
        time.sleep(poll_s)
