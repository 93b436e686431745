"""A local stand-in for Binance that replays recorded captures over the venue's real protocols.

One port serves both sides of the venue:

- WebSocket combined streams at ``/stream?streams=a/b/c``, each message wrapped as ``{"stream", "data"}``,
  with run-time ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` requests answered like the venue;
  also at USDⓈ-M's routes ``/public/stream`` and ``/market/stream``, which serve their own streams only
  (a stream asked on the other route is refused: the handshake with 400, a SUBSCRIBE with an error);
- REST: the depth snapshot (``/fapi/v1/depth``, ``/dapi/v1/depth``, ``/api/v3/depth``), the trades a
  client missed (``aggTrades`` and ``historicalTrades`` from ``fromId``) and the server time (``time``),
  which is the replayed market's clock: clients measure their lag on it. It is the recorder's receive clock,
  moved forward by as much as the venue's event times show it was behind (a recorder 1.5 s slow received
  events 1.5 s "before" the venue stamped them).

There is one market, opened half a second after the first client joins (a client's connections, one per
route, all see it from the start): a clock replays the captures in receive-time order, paced by ``speed``
(10: ten times faster than recorded; 0: as fast as the connected clients take them, waiting while none is),
which may be changed while it runs (fast-forward a warm-up, then the recorded pace). ``hold_after(t)``
stops the market before its first message past market time ``t`` until it is moved on: a client steps it
(a test that asks about every second, however slow its answers).
Every connection sees the market from the moment it subscribes, as on the venue: what is sent while a
client is away is gone from its stream, and it has the REST side to catch up. The snapshot is the book
as of the market so far (the exchange keeps its own book with the same book module, seeded by the
capture's recorded snapshot) and the trade endpoints answer only trades the market has reached.

REST has the venue's weight rules when ``rest_weight_limit`` is set: each answer carries the window's
weight used (``X-MBX-USED-WEIGHT-1M``); past the limit comes 429 with ``Retry-After``, and a client that
asks again before then is banned (418) for ``ban_s``; ``refuse_for(s)`` answers 429 for a while, as when
another client on the IP spent the weight.

Faults (counted over the messages sent on each connection) test the clients: disconnects, duplicates,
reordering, corrupt JSON, dropped depth updates (gaps) and stalls. ``drop`` lists message indices lost on
the wire for everyone; ``inject`` adds raw messages ``(recv_ns, stream, text)``.
``tickray replay FILES --port P --speed X`` runs it from the command line.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tickray.market.book import BookSync, DepthUpdate
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.sources.binance import iter_capture, iter_rest_snapshots, symbol_from_filename

REST_PATH = re.compile(r"^(?:" + "|".join(re.escape(m.rest_prefix) for m in BINANCE_STREAM_MARKETS.values())
                       + r")/(depth|aggTrades|historicalTrades|time|exchangeInfo|ticker/24hr)$")
REST_LIMIT_MAX = 1000
OPENING_S = 0.5  # from the first client's join to the market's first message
WS_PATHS = {"/stream": "", "/public/stream": "/public", "/market/stream": "/market"}  # path → route
ROUTED = BINANCE_STREAM_MARKETS["usdm"]


def _misrouted(route: str, streams) -> list[str]:
    return [n for n in streams if route and ROUTED.route(n) != route]


@dataclass
class Faults:
    """What goes wrong; N counts the messages sent on each connection (0: never)."""
    disconnect_every: int = 0  # close the connection after every N messages
    duplicate_every: int = 0  # send every Nth message twice
    reorder_every: int = 0  # hold every Nth message back and send it after the next one
    corrupt_every: int = 0  # cut every Nth message in half: invalid JSON, the message is lost
    drop_depth_every: int = 0  # leave out every Nth depth update: a gap in the book's sequence
    stall_every: int = 0  # the whole market goes silent for stall_s after every Nth message it replays
    stall_s: float = 0.0


def _every(n: int, k: int) -> bool:
    return n > 0 and k % n == 0


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    streams: set[str]
    route: str = ""  # USDⓈ-M's /public or /market; "" for the unrouted /stream
    sent: int = 0
    depth_sent: int = 0
    held: str | None = None  # a message held back by the reorder fault


@dataclass
class ReplayExchange:
    captures: list[Path]
    speed: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    faults: Faults = field(default_factory=Faults)
    drop: set[int] = field(default_factory=set)
    inject: list[tuple[int, str, str]] = field(default_factory=list)
    depth_unavailable: bool = False  # while set, REST depth answers 503, as the venue does when overloaded
    # The venue's REST weight limit per IP (0: none): past it 429 with Retry-After; a request after a 429
    # before its Retry-After (beyond those already in flight) gets the IP banned: 418 from then on
    rest_weight_limit: int = 0
    rest_window_s: float = 60.0
    ban_s: float = 120.0
    rest_weight: Counter = field(default_factory=Counter, init=False)  # window → weight answered
    rest_refused: Counter = field(default_factory=Counter, init=False)  # 429 and 418 → answers
    _refusing: tuple[float, float | None] | None = field(default=None, init=False)  # (until, first 429 at)
    _banned_until: float = field(default=0.0, init=False)
    _refuse_next_s: float = field(default=0.0, init=False)  # refuse_for, from the next request on
    messages: list[tuple[int, str, bytes]] = field(default_factory=list, init=False)
    snapshots: dict[str, tuple[int, dict]] = field(default_factory=dict, init=False)  # recorded: (recv_ns, body)
    books: dict[str, BookSync] = field(default_factory=dict, init=False)
    trades: dict[tuple[str, str], list[dict]] = field(default_factory=dict, init=False)  # (symbol, e) → released
    finished: threading.Event = field(default_factory=threading.Event, init=False)  # the market has replayed all
    rest_requests: Counter = field(default_factory=Counter, init=False)  # path → requests answered
    _counts: dict[str, int] | None = field(default=None, init=False)  # symbol → trades a day (the listing)
    _clients: set[_Client] = field(default_factory=set, init=False)
    _server: Server | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _market: asyncio.Task | None = field(default=None, init=False)
    _client_joined: asyncio.Event | None = field(default=None, init=False)
    _held_after_ns: int | None = field(default=None, init=False)  # market time the replay holds after
    _moved: asyncio.Event | None = field(default=None, init=False)  # the hold moved
    _market_at: tuple[int, float] | None = field(default=None, init=False)  # (recv_ns, loop time) last passed
    recorder_behind_ns: int = field(default=0, init=False)  # how far the capture's clock was behind the venue's

    def __post_init__(self) -> None:
        for path in map(Path, self.captures):
            if ".http." in path.name:  # cryptofeed's REST log: the snapshots it fetched
                for recv_ns, symbol, snap in iter_rest_snapshots(path):
                    self._seed(symbol, recv_ns, snap)
                continue
            for recv_ns, msg in iter_capture(path):
                if "lastUpdateId" in msg:
                    # COIN-M snapshots name their symbol; USD-M and spot ones leave it to the file's name
                    self._seed(msg.get("symbol") or symbol_from_filename(path), recv_ns, msg)
                elif "stream" in msg:
                    self.messages.append((recv_ns, msg["stream"], orjson.dumps(msg)))
                    event_ms = msg.get("data", {}).get("E") if isinstance(msg.get("data"), dict) else None
                    if isinstance(event_ms, int):
                        self.recorder_behind_ns = max(self.recorder_behind_ns, event_ms * 1_000_000 - recv_ns)
        self.messages.sort(key=lambda m: m[0])

    def _seed(self, symbol: str, recv_ns: int, snap: dict) -> None:
        """The earliest recorded snapshot seeds the book; later ones (a session's next file) are states the
        book reaches by itself."""
        if symbol not in self.snapshots or recv_ns < self.snapshots[symbol][0]:
            self.snapshots[symbol] = (recv_ns, snap)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- REST ----------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        if url.path in WS_PATHS:
            wrong = _misrouted(WS_PATHS[url.path], (parse_qs(url.query).get("streams") or [""])[0].split("/"))
            if wrong:
                return connection.respond(400, f"{', '.join(wrong[:5])}: not served on {url.path}\n")
            return None  # go on with the WebSocket handshake
        self.rest_requests[url.path] += 1
        rest = REST_PATH.match(url.path)
        if not rest:
            return connection.respond(404, "not found\n")
        market = next(m for m in BINANCE_STREAM_MARKETS.values() if url.path.startswith(f"{m.rest_prefix}/"))
        limit = (parse_qs(url.query).get("limit") or ["500"])[0]
        refused = self._limit(connection, market.weight(rest.group(1).split("/")[0], int(limit) if limit.isdigit() else 500))
        if refused is not None:
            return refused
        if rest.group(1) == "time":
            return self._json(connection, 200, {"serverTime": self.market_now_ns() // 1_000_000})
        if rest.group(1) in ("exchangeInfo", "ticker/24hr"):
            return self._json(connection, 200, self._listing(rest.group(1)))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        symbol = q.get("symbol", "").upper()
        try:
            if rest.group(1) == "depth":
                if self.depth_unavailable:
                    return self._json(connection, 503, {"code": -1008, "msg": "Server is currently overloaded "
                                                        "with other requests. Please try again in a few minutes."})
                if symbol not in self.snapshots:
                    return self._json(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
                return self._json(connection, 200, self._snapshot(symbol))
            limit = min(int(q.get("limit", 500)), REST_LIMIT_MAX)
            from_id = int(q["fromId"]) if "fromId" in q else None
        except ValueError as e:
            return self._json(connection, 400, {"code": -1100, "msg": f"Illegal characters found in a parameter: {e}"})
        return self._json(connection, 200, self._trades(symbol, rest.group(1), from_id, limit))

    def disconnect_all(self) -> None:
        """Close every client's WebSocket now, as a venue's restart or a network blip does."""
        async def close() -> None:
            for c in list(self._clients):
                self._clients.discard(c)
                await c.ws.close(1001, "replay: disconnect all")

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def refuse_for(self, seconds: float) -> None:
        """Answer 429 for ``seconds`` from the next REST request on (another client on the IP spent the
        weight), as the venue would."""
        self._refuse_next_s = seconds

    def _limit(self, connection: ServerConnection, weight: int) -> Response | None:
        """The venue's weight rules for one request: None to answer it (its weight counted), else the
        429 or 418 it gets."""
        now = time.time()
        if self._refuse_next_s:
            self._refusing, self._refuse_next_s = (now + self._refuse_next_s, None), 0.0
        if now < self._banned_until:
            return self._refuse(connection, 418, self._banned_until - now)
        if self._refusing is not None and now < self._refusing[0]:
            until, told_at = self._refusing
            if told_at is not None and now - told_at > 0.25:  # asked again after being told: banned
                self._banned_until = now + self.ban_s
                return self._refuse(connection, 418, self.ban_s)
            self._refusing = (until, told_at if told_at is not None else now)
            return self._refuse(connection, 429, until - now)
        w = int(now // self.rest_window_s)
        if self.rest_weight_limit and self.rest_weight[w] + weight > self.rest_weight_limit:
            until = (w + 1) * self.rest_window_s
            self._refusing = (until, now)
            return self._refuse(connection, 429, until - now)
        self.rest_weight[w] += weight
        return None

    def _refuse(self, connection: ServerConnection, status: int, retry_after_s: float) -> Response:
        self.rest_refused[status] += 1
        msg = "Way too many requests; IP banned." if status == 418 else "Too many requests; please use the websocket."
        resp = self._json(connection, status, {"code": -1003, "msg": msg})
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
        return resp

    def _json(self, connection: ServerConnection, status: int, body) -> Response:
        resp = connection.respond(status, orjson.dumps(body).decode())
        del resp.headers["Content-Type"]
        resp.headers["Content-Type"] = "application/json"
        resp.headers["X-MBX-USED-WEIGHT-1M"] = str(self.rest_weight[int(time.time() // self.rest_window_s)])
        return resp

    def _snapshot(self, symbol: str) -> dict:
        """The book as of the market so far; the recorded snapshot until the market has reached it."""
        sync = self.books.get(symbol)
        if sync is None or not sync.synced:
            return self.snapshots[symbol][1]
        bids, asks = sync.book.top(1000)
        snap = {"lastUpdateId": sync.book.last_update_id,
                "bids": [[repr(p), repr(q)] for p, q in bids], "asks": [[repr(p), repr(q)] for p, q in asks]}
        if not sync.spot:  # spot snapshots carry no times
            snap["E"] = snap["T"] = sync.last_seen_ms
        return snap

    def _listing(self, endpoint: str):
        """exchangeInfo: every symbol the captures stream, trading; ticker/24hr: each one's trade count, the
        captures' trades scaled to a day (the rate a planner balances connectors by)."""
        if self._counts is None:
            trades, symbols = Counter(), set()
            for _, name, _ in self.messages:
                sym, _, kind = name.partition("@")
                symbols.add(sym.upper())
                if kind in ("aggTrade", "trade"):
                    trades[sym.upper()] += 1
            span_s = max((self.messages[-1][0] - self.messages[0][0]) / 1e9, 1.0) if self.messages else 1.0
            self._counts = {sym: round(trades[sym] * 86_400 / span_s) for sym in sorted(symbols)}
        if endpoint == "exchangeInfo":
            return {"timezone": "UTC", "serverTime": self.market_now_ns() // 1_000_000,
                    "symbols": [{"symbol": sym, "status": "TRADING"} for sym in self._counts]}
        return [{"symbol": sym, "count": n} for sym, n in self._counts.items()]

    def _trades(self, symbol: str, endpoint: str, from_id: int | None, limit: int) -> list[dict]:
        """Released trades in the venue's REST shape: aggTrades from the @aggTrade stream, historicalTrades
        from the @trade stream; the latest ``limit`` without ``fromId``."""
        if endpoint == "aggTrades":
            rows = self.trades.get((symbol, "aggTrade"), [])
            out = [{"a": d["a"], "p": d["p"], "q": d["q"], "f": d.get("f"), "l": d.get("l"), "T": d["T"],
                    "m": d["m"]} for d in self._from(rows, "a", from_id, limit)]
        else:
            rows = self.trades.get((symbol, "trade"), [])
            out = [{"id": d["t"], "price": d["p"], "qty": d["q"],
                    "quoteQty": repr(float(d["p"]) * float(d["q"])), "time": d["T"], "isBuyerMaker": d["m"]}
                   for d in self._from(rows, "t", from_id, limit)]
        return out

    @staticmethod
    def _from(rows: list[dict], key: str, from_id: int | None, limit: int) -> list[dict]:
        if from_id is None:
            return rows[-limit:]
        lo = bisect.bisect_left(rows, from_id, key=lambda d: d[key])  # ids rise
        return rows[lo: lo + limit]

    # ---- the market ----------------------------------------------------------------------------

    def market_now_ns(self) -> int:
        """The replayed market's clock: the recorded time of the last message it passed, running on at the
        replay's pace until the next one (held there at speed 0, whose pace is the clients', and by a hold)."""
        if self._market_at is None:
            return (self.messages[0][0] if self.messages else 0) + self.recorder_behind_ns
        recv_ns, at = self._market_at
        now = recv_ns + self.recorder_behind_ns
        if self.speed > 0:
            now += int((self._loop.time() - at) * self.speed * 1e9)
        return now if self._held_after_ns is None else min(now, max(self._held_after_ns, recv_ns + self.recorder_behind_ns))

    def hold_after(self, market_ns: int | None) -> None:
        """Hold the market before its first message past ``market_ns`` (the clock of ``market_now_ns``)
        until this is called again with a later time, or None to let it run on at its pace."""
        self._held_after_ns = market_ns
        if self._loop:
            self._loop.call_soon_threadsafe(self._moved.set)

    async def _hold(self, recv_ns: int) -> bool:
        """Wait while a hold stops the market before this message; whether it waited."""
        waited = False
        while self._held_after_ns is not None and recv_ns + self.recorder_behind_ns > self._held_after_ns:
            self._moved.clear()
            await self._moved.wait()
            waited = True
        return waited

    def _release(self, recv_ns: int, name: str, body: bytes) -> None:
        """The market passes a message: the exchange's book and trade history move, sent or not."""
        if name.partition("@")[2].partition("@")[0] not in ("depth", "aggTrade", "trade"):
            return  # nothing the REST side serves (most messages: not parsed, the replay keeps its pace)
        data = orjson.loads(body)["data"]
        e, symbol = data.get("e"), data.get("s", "")
        if e == "depthUpdate":
            sync = self.books.get(symbol)
            if sync is None:
                sync = self.books[symbol] = BookSync(symbol, spot="pu" not in data)
            snap = self.snapshots.get(symbol)
            if snap and recv_ns >= snap[0] and not sync.synced and sync.book.last_update_id is None:
                sync.on_rest_snapshot(snap[1])  # diffs before it were buffered and are replayed onto it
            sync.on_update(DepthUpdate.from_message(data))
        elif e in ("aggTrade", "trade"):
            self.trades.setdefault((symbol, e), []).append(data)

    async def _run_market(self) -> None:
        # the market opens a moment after the first client joins, so that a client's connections (one per
        # route on USD-M, opened together) all see it from its first message
        await asyncio.sleep(OPENING_S)
        timeline = sorted([(t, s, b, i) for i, (t, s, b) in enumerate(self.messages)]
                          + [(t, s, raw.encode(), -1) for t, s, raw in self.inject], key=lambda m: m[0])
        loop = asyncio.get_running_loop()
        t_anchor, clock_anchor, speed = timeline[0][0] if timeline else 0, loop.time(), self.speed
        for k, (recv_ns, name, body, index) in enumerate(timeline, 1):
            if _every(self.faults.stall_every, k):
                await asyncio.sleep(self.faults.stall_s)
            if await self._hold(recv_ns) or self.speed != speed:  # the pace counts from this message
                t_anchor, clock_anchor, speed = recv_ns, loop.time(), self.speed
            if speed > 0:
                delay = (recv_ns - t_anchor) / 1e9 / speed - (loop.time() - clock_anchor)
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                while not self._clients:
                    self._client_joined.clear()
                    await self._client_joined.wait()
            self._market_at = (recv_ns, loop.time())
            if index >= 0:
                self._release(recv_ns, name, body)
            if index in self.drop:
                continue
            text = body.decode()
            for client in [c for c in self._clients if name in c.streams]:
                try:
                    await self._deliver(client, text, "@depth" in name)
                except ConnectionClosed:
                    self._clients.discard(client)
        self.finished.set()

    async def _deliver(self, c: _Client, text: str, is_depth: bool) -> None:
        f = self.faults
        c.sent += 1
        if is_depth:
            c.depth_sent += 1
            if _every(f.drop_depth_every, c.depth_sent):
                return
        if _every(f.corrupt_every, c.sent):
            text = text[: len(text) // 2]
        if _every(f.reorder_every, c.sent) and c.held is None:
            c.held = text
            return
        await c.ws.send(text)
        if _every(f.duplicate_every, c.sent):
            await c.ws.send(text)
        if c.held is not None and c.held is not text:
            held, c.held = c.held, None
            await c.ws.send(held)
        if _every(f.disconnect_every, c.sent):
            self._clients.discard(c)
            await c.ws.close(1001, "replay fault: disconnect")

    # ---- connections ---------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        url = urlparse(ws.request.path)
        query = parse_qs(url.query).get("streams") or [""]
        client = _Client(ws, {s for s in query[0].split("/") if s}, WS_PATHS[url.path])
        self._join(client)
        try:
            async for text in ws:  # requests from the client; the market sends the data
                await ws.send(orjson.dumps(self._request(client, text)).decode())
        except ConnectionClosed:
            pass  # the client went away: it comes back on a new connection
        finally:
            self._clients.discard(client)

    def _join(self, client: _Client) -> None:
        if client.streams:
            self._clients.add(client)
            self._client_joined.set()
        if self._market is None:
            self._market = asyncio.get_running_loop().create_task(self._run_market())

    def _request(self, client: _Client, text: str) -> dict:
        """SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS, answered like the venue."""
        try:
            req = orjson.loads(text)
            method, params, rid = req["method"], req.get("params", []), req["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return {"code": 2, "msg": f"Invalid request: {text[:200]}"}
        if method in ("SUBSCRIBE", "UNSUBSCRIBE") and _misrouted(client.route, params):
            return {"error": {"code": 2, "msg": f"Invalid request: {', '.join(_misrouted(client.route, params))} "
                              f"not served on {client.route}"}, "id": rid}
        if method == "SUBSCRIBE":
            client.streams.update(params)
            self._join(client)
        elif method == "UNSUBSCRIBE":
            client.streams.difference_update(params)
        elif method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(client.streams), "id": rid}
        else:
            return {"code": 1, "msg": f"Invalid method {method!r}", "id": rid}
        return {"result": None, "id": rid}

    async def _start(self) -> None:
        self._client_joined, self._moved = asyncio.Event(), asyncio.Event()
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
                if self._market:
                    self._market.cancel()
                self._server.close()
                await self._server.wait_closed()

            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
