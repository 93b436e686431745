"""The connection: one combined-stream WebSocket, held.

A reader puts messages in a bounded queue: when processing falls behind, the queue fills and the reader
stops reading, so the back-pressure reaches the socket instead of messages being lost. A watchdog ends a
connection that has been silent for ``read_timeout_s`` or has lived ``max_connection_s`` (the venue cuts
at 24 h: reconnect before, on our terms); reconnects back off exponentially with jitter. Streams are
added and removed at run time with the venue's SUBSCRIBE / UNSUBSCRIBE requests, and kept across
reconnects (the next connection's URL carries them).
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import websockets

from tickray.stream.context import ConnectorContext
from tickray.stream.telemetry import log_event

RECONNECTED = "reconnected"  # queued in order with the messages: what was missed while away is fetched


class Connection:
    def __init__(self, ctx: ConnectorContext):
        self.ctx = ctx
        self.queue: asyncio.Queue | None = None  # (raw message, perf_counter_ns, receive time_ns)
        self.ws = None
        self._requests: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._last_recv_ns = 0  # perf_counter_ns of the last message read (the watchdog's clock)
        self._ended_by: str | None = None  # why the watchdog ended the connection: "silent" or "planned"

    async def request(self, method: str, params: list) -> dict:
        """A request on the connection and the venue's answer (connected or not, the stream list is kept)."""
        if self.ws is None:
            return {"result": None, "queued": True}  # the next connection's URL carries the streams
        rid, self._next_id = self._next_id, self._next_id + 1
        fut = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        await self.ws.send(orjson.dumps({"method": method, "params": params, "id": rid}).decode())
        log_event(method.lower(), streams=params, id=rid)
        try:
            return await asyncio.wait_for(fut, 10)
        finally:
            self._requests.pop(rid, None)

    def answered(self, msg: dict) -> bool:
        """True when ``msg`` is the venue's answer to one of our requests (handed to its caller)."""
        fut = self._requests.get(msg.get("id"))
        if fut is None:
            return False
        fut.set_result(msg)
        return True

    async def read(self) -> None:
        ctx = self.ctx
        opt = ctx.opt
        backoff, first = opt.backoff_s, True
        while not ctx.stopping:
            url = f"{ctx.ws_url}/stream?streams=" + "/".join(ctx.streams)
            watch = None
            try:
                async with websockets.connect(url, max_size=None, ping_interval=20, ping_timeout=20,
                                              open_timeout=10, compression=None) as ws:
                    self.ws = ws
                    ctx.counts["connections"] += 1
                    log_event("connected", url=url, streams=len(ctx.streams))
                    if not first:
                        await self.queue.put((RECONNECTED, 0, 0))  # in order with the messages before it
                    first, backoff = False, opt.backoff_s
                    self._last_recv_ns, self._ended_by = time.perf_counter_ns(), None
                    watch = asyncio.get_running_loop().create_task(self._watch(ws))
                    try:
                        while not ctx.stopping:
                            raw = await ws.recv()
                            self._last_recv_ns = t0 = time.perf_counter_ns()
                            await self.queue.put((raw, t0, time.time_ns()))  # waits while the buffer is full
                    except websockets.ConnectionClosed:
                        if self._ended_by == "silent":
                            raise TimeoutError(f"no message for {opt.read_timeout_s:g} s") from None
                        if self._ended_by == "planned":
                            continue  # straight back, no backoff
                        raise
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as e:
                reason = type(e).__name__
                ctx.counts[f"reconnect: {reason}"] += 1
                ctx.metrics.pending[("event", f"reconnect {reason}")] += 1
                log_event("disconnected", reason=reason, detail=str(e)[:200], retry_in_s=round(backoff, 3))
            finally:
                self.ws = None
                if watch:
                    watch.cancel()
            await asyncio.sleep(backoff * (0.5 + random.random()))  # jitter: clients do not come back in step
            backoff = min(backoff * 2, opt.backoff_max_s)

    async def _watch(self, ws) -> None:
        """Ends a connection that has been silent for ``read_timeout_s`` or has lived ``max_connection_s``,
        saying which in ``_ended_by``. A watchdog, not a timeout around every read: that cost a tenth of
        the actor's time at full rate."""
        opt = self.ctx.opt
        opened, tick = time.monotonic(), min(1.0, opt.read_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            if self.queue.full():  # reading is paused for a slow consumer: that is not the venue's silence
                self._last_recv_ns = time.perf_counter_ns()
            elif (time.perf_counter_ns() - self._last_recv_ns) / 1e9 >= opt.read_timeout_s:
                self._ended_by = "silent"
                ws.transport.abort()  # a stalled server would not answer a closing handshake either
                return
            if time.monotonic() - opened >= opt.max_connection_s:
                self.ctx.counts["planned reconnects"] += 1
                log_event("planned reconnect", after_s=round(time.monotonic() - opened, 1))
                self._ended_by = "planned"
                await ws.close(1000, "planned reconnect")
                return
