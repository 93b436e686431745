"""Per message: decode (:class:`~tickray.stream.messages.Decoder`) → check → the symbol's pipeline, and what
that leaves for Redis or REST.

The connection hands raw messages over in order; each is decoded once into its typed event, judged (the
symbol subscribed, the values usable, not going back in time) and applied to its
:class:`~tickray.stream.pipeline.SymbolPipeline`. Most messages leave no I/O and cost no coroutine; a
trade that shows a gap in trade ids waits for the missed ones from REST, and invalid messages go to the
Redis stream ``tickray:quarantine`` with a reason and are counted. Nothing here stops the connector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine

from tickray.stream.connection import RECONNECTED, Connection
from tickray.stream.context import ConnectorContext
from tickray.stream.durable import Durability
from tickray.stream.keys import QUARANTINE_MAXLEN, QUARANTINE_STREAM
from tickray.stream.messages import (
    EVENT_NAME,
    AggTrade,
    AnyEvent,
    BookTicker,
    Decoder,
    Depth,
    Trade,
    event_ms,
    value_problem,
)
from tickray.stream.pipeline import SymbolPipeline
from tickray.stream.publish import Publisher
from tickray.stream.telemetry import log_event
from tickray.stream.venue_rest import VenueRest

log = logging.getLogger("tickray.stream")


class Dispatcher:
    def __init__(self, ctx: ConnectorContext, connection: Connection, publisher: Publisher, rest: VenueRest,
                 durability: Durability):
        self.ctx, self.connection, self.publisher = ctx, connection, publisher
        self.rest, self.durability = rest, durability
        self.decoder = Decoder()
        self.quarantined: Counter = Counter()
        self.last_message_at = 0.0  # wall time the last message was taken

    async def run(self) -> None:
        """Take the connection's messages in order until cancelled."""
        take = self.connection.take
        while True:
            raw, t0, recv_ns = await take()
            try:
                if raw is RECONNECTED:
                    await self._after_reconnect(recv_ns)  # which route's WebSocket came back
                else:
                    io = self.on_raw(raw, t0, recv_ns)
                    if io is not None:
                        await io
                if self.publisher.due(self.connection.idle()):
                    await self.publisher.send()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not take the connection down: quarantine and carry on
                log.exception("stream pipeline error")
                await self.quarantine(raw, f"internal error ({type(e).__name__}: {e})")

    async def _after_reconnect(self, route: str) -> None:
        """What the route's streams sent while away was missed: its trades are fetched from REST, then its
        books resync (in that order, so the trades land in the grid seconds they belong to before the book
        moves on). A route without trade or depth streams (USDⓈ-M's /market carries no depth) asks neither."""
        streams = self.connection.route_streams(route)
        pipes = self.ctx.pipes.values()
        trades = [p for p in pipes if p.last_trade_id >= 0
                  and any(n.startswith((f"{p.symbol.lower()}@aggTrade", f"{p.symbol.lower()}@trade")) for n in streams)]
        books = [p for p in pipes if any(n.startswith(f"{p.symbol.lower()}@depth") for n in streams)]
        for pipe in books:
            if pipe.sync.synced:
                pipe.sync.synced = False
                pipe.sync.counters.gaps += 1
        await asyncio.gather(*(self.rest.backfill(pipe, pipe.resume_from_trade(), None) for pipe in trades))
        for pipe in books:
            self.rest.request_snapshot(pipe.symbol)

    def on_raw(self, raw: str | bytes, t0: int, recv_ns: int) -> Coroutine | None:
        """Decode, check and apply one message; returns the Redis or REST work it leaves, if any (most
        leave none: no coroutine per message)."""
        self.ctx.counts["received"] += 1
        self.last_message_at = time.time()
        got = self.decoder.decode(raw)
        if type(got) is not tuple:
            if type(got) is dict:
                if self.connection.answered(got):  # the venue's answer to SUBSCRIBE and friends
                    return None
                got = "unknown message: neither stream data nor a request's answer"
            return self.quarantine(raw, got)
        stream, symbol, ev = got
        pipe = self.ctx.pipes.get(symbol)
        if pipe is None:
            return self.quarantine(raw, f"unknown symbol {symbol}: not subscribed")
        if pipe.cold:
            pipe.cold.on_raw(recv_ns, stream, raw if isinstance(raw, str) else raw.decode())
        reason = ev if type(ev) is str else value_problem(ev) or pipe.out_of_order(ev)
        if reason:
            return self.quarantine(raw, reason, symbol)
        if symbol in self.durability.pending and self.durability.judge(pipe, event_ms(ev)):
            return self.durability.resume_then(pipe, lambda: self._apply(raw, ev, pipe, t0))
        return self._apply(raw, ev, pipe, t0)

    def _apply(self, raw, ev: AnyEvent, pipe: SymbolPipeline, t0: int) -> Coroutine | None:
        """A valid event of a symbol's pipeline, applied."""
        ctx, symbol, pending, e = self.ctx, pipe.symbol, self.ctx.metrics.pending, EVENT_NAME[type(ev)]
        self.durability.saw(symbol, event_ms(ev))
        ctx.counts[e] += 1
        pending[("msg", symbol, e)] += 1
        if type(ev) is Depth:
            before = pipe.sync.counters.gaps
            updates = pipe.on_depth(ev)
            if pipe.sync.counters.gaps > before:
                pending[("event", "book gap")] += 1
                log_event("book gap", symbol=symbol, u=ev.u, pu=ev.pu)
            if pipe.sync.needs_snapshot:
                self.rest.request_snapshot(symbol)
            elif symbol in self.rest.unsynced_since and pipe.sync.synced:
                self.rest.synced(symbol)
            if updates:
                self.publisher.add(pipe, updates, t0, ev.E)
        elif type(ev) is BookTicker:
            if not pipe.on_book_ticker(ev):
                pending[("event", "book contradicted")] += 1
                log_event("book contradicted", symbol=symbol, **pipe.sync.check.last_mismatch)
                self.rest.request_snapshot(symbol)
        elif type(ev) is AggTrade or type(ev) is Trade:
            if ev.id <= pipe.last_trade_id:
                ctx.counts["duplicate trades"] += 1
                pending[("event", "duplicate trade")] += 1
                return self.quarantine(raw, "duplicate trade id", symbol, counted=False)
            missing = pipe.missing_trades(ev)
            if missing:
                return self.rest.backfill(pipe, missing.start, missing.stop, e, then=(ev, t0))
            self.publisher.apply_trade(pipe, ev, t0)
        return None

    async def quarantine(self, raw, reason: str, symbol: str = "", counted: bool = True) -> None:
        if counted:
            self.quarantined[reason] += 1
        self.ctx.metrics.pending[("err", reason.split(" (")[0][:60])] += 1
        raw_s = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        await self.ctx.redis.xadd(QUARANTINE_STREAM, {"reason": reason, "symbol": symbol, "raw": raw_s[:4096]},
                                  maxlen=QUARANTINE_MAXLEN, approximate=True)
