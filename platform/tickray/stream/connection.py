"""The connection: the connector's combined-stream WebSockets, held (picows: frames parsed in compiled code).

A market that routes streams by URL path (USDⓈ-M: ``/public`` for the book streams, ``/market`` for the
others) gets one WebSocket per route in use, each carrying its route's streams; the others get one.
Frames are copied out of the sockets' buffers into one bounded buffer, in the order they arrive; when
processing falls behind and the buffer fills, reading from the sockets pauses, so the back-pressure
reaches them instead of messages being lost, and resumes once half of it is taken. A watchdog ends a
connection that has been silent for ``read_timeout_s`` or has lived ``max_connection_s`` (the venue cuts
at 24 h: reconnect before, on our terms); reconnects back off exponentially with jitter. Streams are
added and removed at run time with the venue's SUBSCRIBE / UNSUBSCRIBE requests on their route's
WebSocket, and kept across reconnects (the next connection's URL carries them).

Why a connection ended is counted as ``reconnect: <reason>``: ``ConnectionClosedOK`` (the venue closed it
normally, 1000 or 1001), ``ConnectionClosedError`` (closed with another code, or dropped without a
close), ``TimeoutError`` (silence), or the error that stopped a connect (``ConnectionRefusedError``,
``WSInvalidStatusError``, ...).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

import orjson
import picows
from picows import WSCloseCode, WSMsgType

from tickray.stream.context import ConnectorContext
from tickray.stream.telemetry import log_event

RECONNECTED = object()  # put in order with the messages, with the route: what was missed while away is fetched
MAX_MESSAGE = 64 * 1024 * 1024  # a message this large is no market data: the connection is dropped
# Streams a connection's URL names (2-3 KB of URL); the rest are SUBSCRIBEd once it is up, this many a
# request, at the venue's request pace: URLs of hundreds of streams are refused by servers and proxies.
URL_STREAMS = 100


class _Listener(picows.WSListener):
    """Hands each whole message (fragments joined) to the connection, with its receive times."""

    def __init__(self, conn: Connection, link: _Link):
        self.conn, self.link = conn, link
        self._parts: list[bytes] | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        # before the first frame, which may come before ws_connect returns: a full buffer pauses this transport
        self.link.ws, self.link.close_code = transport, None
        if self.conn.paused:
            transport.underlying_transport.pause_reading()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if frame.fin:
                self.conn.put(frame.get_payload_as_bytes(), self.link)
            else:
                self._parts = [frame.get_payload_as_bytes()]
        elif kind is WSMsgType.CONTINUATION and self._parts is not None:
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                self.conn.put(b"".join(self._parts), self.link)
                self._parts = None
        elif kind is WSMsgType.CLOSE:
            self.link.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class _Link:
    """One WebSocket of the connector: the streams of one route."""

    def __init__(self, route: str):
        self.route = route
        self.ws: picows.WSTransport | None = None
        self.close_code: int | None = None  # the venue's close frame's code, on the current connection
        self.last_recv_ns = 0  # perf_counter_ns of the last message read (the watchdog's clock)
        self.ended_by: str | None = None  # why the watchdog ended the connection: "silent" or "planned"
        self.next_request_at = 0.0  # monotonic time this link's next request may go (the venue's rate)

    async def request_slot(self, per_s: float) -> None:
        """Wait for this link's next request slot: the venue disconnects a connection that sends more than
        its incoming messages a second (and may ban the IP of one that does it often)."""
        now = time.monotonic()
        at = max(now, self.next_request_at)
        self.next_request_at = at + 1.0 / per_s
        if at > now:
            await asyncio.sleep(at - now)


class Connection:
    def __init__(self, ctx: ConnectorContext):
        self.ctx = ctx
        self.links: dict[str, _Link] = {}  # route → its WebSocket
        self._buffer: deque = deque()  # (raw message, perf_counter_ns, receive time_ns) or RECONNECTED
        self._more = asyncio.Event()  # set when the buffer has something
        self._paused = False  # reading from the sockets paused: the buffer is full
        self._requests: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._holding: dict[str, asyncio.Task] = {}

    # ---- the buffer between the sockets and the pipeline ----------------------------------------

    def put(self, raw: bytes, link: _Link) -> None:
        link.last_recv_ns = t0 = time.perf_counter_ns()
        self._buffer.append((raw, t0, time.time_ns()))
        self._more.set()
        if len(self._buffer) >= self.ctx.opt.buffer and not self._paused:
            self._paused = True
            for other in self.links.values():
                if other.ws is not None:
                    other.ws.underlying_transport.pause_reading()

    async def take(self) -> tuple:
        """The next message in order (waits for one)."""
        while not self._buffer:
            self._more.clear()
            await self._more.wait()
        item = self._buffer.popleft()
        if self._paused and len(self._buffer) <= self.ctx.opt.buffer // 2:
            self._paused = False
            for link in self.links.values():
                if link.ws is not None:
                    link.ws.underlying_transport.resume_reading()
        return item

    def idle(self) -> bool:
        """Nothing read is waiting to be processed."""
        return not self._buffer

    def queued(self) -> int:
        return len(self._buffer)

    @property
    def paused(self) -> bool:
        """Reading from the sockets is paused: the buffer is full."""
        return self._paused

    @property
    def connected(self) -> bool:
        return bool(self.links) and all(link.ws is not None for link in self.links.values())

    def route_streams(self, route: str) -> list[str]:
        return [n for n in self.ctx.streams if self.ctx.market.route(n) == route]

    # ---- requests on the connection -------------------------------------------------------------

    async def request(self, method: str, params: list) -> dict:
        """A request on the WebSockets of the routes ``params`` belong to (LIST_SUBSCRIPTIONS: on every
        one) and the venue's answer; from several routes, their answers under ``routes`` and the lists
        they gave joined in ``result``. A route without a WebSocket yet gets one, whose URL carries its
        streams (connected or not, the stream list is kept)."""
        routes = sorted({self.ctx.market.route(n) for n in params}) if params else sorted(self.links)
        answers = {}
        for route in routes:
            link = self.links.get(route)
            if link is not None and link.ws is not None:
                await link.request_slot(self.ctx.market.requests_per_s)
            if link is None or link.ws is None:
                if link is None and not self.ctx.stopping and self._holding:
                    self._hold_route(route)
                answers[route] = {"result": None, "queued": True}
                continue
            rid, self._next_id = self._next_id, self._next_id + 1
            fut = asyncio.get_running_loop().create_future()
            self._requests[rid] = fut
            mine = [n for n in params if self.ctx.market.route(n) == route]
            link.ws.send(WSMsgType.TEXT, orjson.dumps({"method": method, "params": mine, "id": rid}))
            log_event(method.lower(), streams=mine, id=rid, route=route or "/")
            try:
                answers[route] = await asyncio.wait_for(fut, 10)
            finally:
                self._requests.pop(rid, None)
        if len(answers) == 1:
            return next(iter(answers.values()))
        lists = [a["result"] for a in answers.values() if isinstance(a.get("result"), list)]
        return {"result": [n for got in lists for n in got] if lists else None, "routes": answers}

    def answered(self, msg: dict) -> bool:
        """True when ``msg`` is the venue's answer to one of our requests (handed to its caller)."""
        fut = self._requests.get(msg.get("id"))
        if fut is None:
            return False
        fut.set_result(msg)
        return True

    # ---- holding the connections ----------------------------------------------------------------

    async def read(self) -> None:
        """Hold a WebSocket per route in use until cancelled."""
        routes = sorted({self.ctx.market.route(n) for n in self.ctx.streams}) or [""]
        for route in routes:
            self._hold_route(route)
        try:
            while self._holding:
                await asyncio.wait(list(self._holding.values()))
                self._holding = {r: t for r, t in self._holding.items() if not t.done()}
        finally:
            for t in self._holding.values():
                t.cancel()
            self._holding = {}

    def _hold_route(self, route: str) -> None:
        self.links[route] = link = _Link(route)
        self._holding[route] = asyncio.get_running_loop().create_task(self._hold(link))

    async def _hold(self, link: _Link) -> None:
        ctx = self.ctx
        opt = ctx.opt
        backoff, first = opt.backoff_s, True
        while not ctx.stopping:
            streams = self.route_streams(link.route)
            url = f"{ctx.ws_url}{link.route}/stream?streams=" + "/".join(streams[:URL_STREAMS])
            watch = transport = more = None
            try:
                transport, _ = await picows.ws_connect(
                    lambda: _Listener(self, link), url, websocket_handshake_timeout=10, enable_auto_ping=True,
                    auto_ping_idle_timeout=20, auto_ping_reply_timeout=20, max_frame_size=MAX_MESSAGE)
                ctx.counts["connections"] += 1
                log_event("connected", url=url[:200], streams=len(streams))
                if len(streams) > URL_STREAMS:
                    more = asyncio.get_running_loop().create_task(self._subscribe_rest(streams[URL_STREAMS:]))
                if not first:
                    self._buffer.append((RECONNECTED, 0, link.route))  # in order with the messages before it
                    self._more.set()
                first, backoff = False, opt.backoff_s
                link.last_recv_ns, link.ended_by = time.perf_counter_ns(), None
                watch = asyncio.get_running_loop().create_task(self._watch(link, transport))
                await transport.wait_disconnected()
                if link.ended_by == "planned":
                    continue  # straight back, no backoff
                reason = ("TimeoutError" if link.ended_by == "silent" else "ConnectionClosedOK"
                          if link.close_code in (WSCloseCode.OK, WSCloseCode.GOING_AWAY) else "ConnectionClosedError")
                detail = f"close code {link.close_code}" if link.close_code is not None else "no close frame"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (OSError, TimeoutError, picows.WSError: whatever ended it, come back)
                reason, detail = type(e).__name__, str(e)[:200]
            finally:
                link.ws = None
                for task in (watch, more):
                    if task:
                        task.cancel()
                if transport is not None:
                    transport.disconnect(graceful=False)
            ctx.counts[f"reconnect: {reason}"] += 1
            ctx.metrics.pending[("event", f"reconnect {reason}")] += 1
            log_event("disconnected", route=link.route or "/", reason=reason, detail=detail,
                      retry_in_s=round(backoff, 3))
            await asyncio.sleep(backoff * (0.5 + random.random()))  # jitter: clients do not come back in step
            backoff = min(backoff * 2, opt.backoff_max_s)

    async def _subscribe_rest(self, streams: list[str]) -> None:
        """The streams the URL left out, SUBSCRIBEd in batches (each waits for its request slot)."""
        for i in range(0, len(streams), URL_STREAMS):
            try:
                answer = await self.request("SUBSCRIBE", streams[i:i + URL_STREAMS])
            except TimeoutError:
                answer = {"error": "no answer within 10 s"}
            if answer.get("queued"):
                return  # the connection went: the next one subscribes them again
            if answer.get("error") or answer.get("code"):
                self.ctx.counts["subscribe refused"] += 1
                log_event("subscribe refused", answer=str(answer)[:200])

    async def _watch(self, link: _Link, transport: picows.WSTransport) -> None:
        """Ends a connection that has been silent for ``read_timeout_s`` or has lived ``max_connection_s``,
        saying which in ``ended_by``."""
        opt = self.ctx.opt
        opened, tick = time.monotonic(), min(1.0, opt.read_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            if self._paused:  # reading is paused for a slow consumer: that is not the venue's silence
                link.last_recv_ns = time.perf_counter_ns()
            elif (time.perf_counter_ns() - link.last_recv_ns) / 1e9 >= opt.read_timeout_s:
                link.ended_by = "silent"
                transport.disconnect(graceful=False)  # a stalled server would not answer a closing handshake
                return
            if time.monotonic() - opened >= opt.max_connection_s:
                self.ctx.counts["planned reconnects"] += 1
                log_event("planned reconnect", route=link.route or "/", after_s=round(time.monotonic() - opened, 1))
                link.ended_by = "planned"
                transport.send_close(WSCloseCode.OK, b"planned reconnect")
                transport.disconnect()
                return
