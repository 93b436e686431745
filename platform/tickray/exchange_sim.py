"""A local stand-in for Binance USD-M futures that replays recorded captures over real protocols.

One port serves both: WebSocket combined streams at ``/stream?streams=a/b/c`` (each message wrapped as
``{"stream": ..., "data": ...}``, in capture order, paced by the recorded receive times divided by
``speed``) and the REST depth snapshot at ``/fapi/v1/depth?symbol=SYM``. Like the venue, the snapshot is
the book as of what has been streamed so far: the exchange keeps its own book (the same book module),
seeded by the capture's recorded snapshot, so a client that resyncs after a gap gets a usable one.

For failure tests: ``drop`` lists message indices (into ``messages``) lost on the wire (the exchange's
book still moves), ``inject`` adds raw messages ``(recv_ns, stream, text)`` to the stream.
Tests and the demo point the stream actors here; only the outside world is replaced.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tickray.book import BookSync, DepthUpdate
from tickray.sources.binance import iter_capture, symbol_from_filename


@dataclass
class ReplayExchange:
    captures: list[Path]
    # Pace as a multiple of real time (10: ten times faster); 0 sends as fast as the socket takes it,
    # which leaves a client that asks for a snapshot afterwards nothing to sync onto, as on the venue.
    speed: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    drop: set[int] = field(default_factory=set)
    inject: list[tuple[int, str, str]] = field(default_factory=list)
    messages: list[tuple[int, str, bytes]] = field(default_factory=list, init=False)
    snapshots: dict[str, tuple[int, dict]] = field(default_factory=dict, init=False)  # recorded: (recv_ns, body)
    books: dict[str, BookSync] = field(default_factory=dict, init=False)
    _server: Server | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for path in self.captures:
            symbol = symbol_from_filename(Path(path))
            for recv_ns, msg in iter_capture(Path(path)):
                if "lastUpdateId" in msg:
                    self.snapshots[symbol] = (recv_ns, msg)
                elif "stream" in msg:
                    self.messages.append((recv_ns, msg["stream"], orjson.dumps(msg)))
        self.messages.sort(key=lambda m: m[0])
        self.books = {sym: BookSync(sym) for sym in self.snapshots}

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        if url.path == "/stream":
            return None  # go on with the WebSocket handshake
        if url.path == "/fapi/v1/depth":
            symbol = (parse_qs(url.query).get("symbol") or [""])[0].upper()
            if symbol not in self.snapshots:
                resp = connection.respond(400, '{"code":-1121,"msg":"Invalid symbol."}')
            else:
                resp = connection.respond(200, orjson.dumps(self._snapshot(symbol)).decode())
            del resp.headers["Content-Type"]
            resp.headers["Content-Type"] = "application/json"
            return resp
        return connection.respond(404, "not found\n")

    def _snapshot(self, symbol: str) -> dict:
        """The book as of the stream so far; the recorded snapshot until the stream has reached it."""
        sync = self.books[symbol]
        if not sync.synced:
            return self.snapshots[symbol][1]
        bids, asks = sync.book.top(1000)
        t = sync.last_seen_ms
        return {"lastUpdateId": sync.book.last_update_id, "E": t, "T": t,
                "bids": [[repr(p), repr(q)] for p, q in bids], "asks": [[repr(p), repr(q)] for p, q in asks]}

    def _advance_book(self, recv_ns: int, body: bytes) -> None:
        data = orjson.loads(body)["data"]
        sync = self.books.get(data.get("s", ""))
        if sync is None:
            return
        snap_ns, snap = self.snapshots[sync.symbol]
        if not sync.synced and recv_ns >= snap_ns and sync.book.last_update_id is None:
            sync.on_rest_snapshot(snap)
        sync.on_update(DepthUpdate.from_message(data))

    async def _handler(self, ws: ServerConnection) -> None:
        wanted = set((parse_qs(urlparse(ws.request.path).query).get("streams") or [""])[0].split("/"))
        t_first = None
        start = asyncio.get_running_loop().time()
        stream = sorted([(t, s, b, i) for i, (t, s, b) in enumerate(self.messages)]
                        + [(t, s, raw.encode(), -1) for t, s, raw in self.inject], key=lambda m: m[0])
        for recv_ns, name, body, index in stream:
            if name not in wanted:
                continue
            if index >= 0 and "@depth" in name:
                self._advance_book(recv_ns, body)
            if index in self.drop:
                continue
            if self.speed > 0:
                t_first = t_first if t_first is not None else recv_ns
                delay = (recv_ns - t_first) / 1e9 / self.speed - (asyncio.get_running_loop().time() - start)
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(body.decode())
        await ws.wait_closed()  # the replay is over; stay connected like a quiet market

    async def _start(self) -> None:
        self._server = await serve(self._handler, self.host, self.port, process_request=self._process_request,
                                   compression=None, max_queue=None)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> ReplayExchange:
        """Serve from a background thread; returns once the port is listening."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="replay-exchange", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            async def _close() -> None:
                self._server.close()
                await self._server.wait_closed()

            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
