"""Predictions pushed over a WebSocket (``/v1/stream``): the client sends ``{"subscribe": [symbols]}`` or
``{"unsubscribe": [...]}`` and receives a prediction for every new feature row of its symbols, announced
by the stream actors on a Redis channel, with the row's age when it was pushed. A row is pushed once: where
rows are announced faster than predictions are made, those announced meanwhile are conflated into the
newest, and its message counts them (``conflated``), as market-data feeds do for a slow consumer (each
prediction reads the newest row, so pushing one per announcement would repeat it). Symbols are checked as the
HTTP API checks them, and a connection holds at most ``max_symbols``. Sessions are counted per replica and
per client address (``Sessions``), and one subscribed to nothing for ``websocket_idle_s`` is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import contextmanager

import orjson
from fastapi import WebSocket, WebSocketDisconnect

from tickray.serving.api import ApiError, symbol_problem
from tickray.serving.predictor import Predictor
from tickray.serving.security import address
from tickray.stream.keys import FEATURES_CHANNEL

PROTOCOL_ERRORS_BEFORE_CLOSE = 3
MAX_DRAINED = 10_000  # announcements read before predicting: a flood cannot hold pushes back


class Sessions:
    """The WebSocket sessions of one replica, per client address, within the configured caps."""

    def __init__(self, limits):
        self.limits = limits
        self.by_client = Counter()

    @contextmanager
    def hold(self, ws: WebSocket):
        """Yields None while the session holds its place, or why it may not (the session then ends)."""
        client = address(ws)
        total = sum(self.by_client.values())
        if total >= self.limits.websockets:
            yield f"server busy: {total} sessions, at most {self.limits.websockets} per replica; try again later"
            return
        if self.by_client[client] >= self.limits.websockets_per_client:
            yield (f"{self.by_client[client]} sessions from {client}, at most "
                   f"{self.limits.websockets_per_client} per client")
            return
        self.by_client[client] += 1
        try:
            yield None
        finally:
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


async def push_predictions(ws: WebSocket, redis_async, predictor: Predictor, max_symbols: int,
                           idle_s: float) -> None:
    """Serve one accepted connection until the client leaves, breaks the protocol, or stays subscribed to
    nothing for ``idle_s``."""
    subscribed: set[str] = set()
    for s in (s.strip() for s in ws.query_params.get("symbols", "").split(",") if s.strip()):
        if symbol_problem(s) is None and len(subscribed) < max_symbols:
            subscribed.add(s.upper())
    pubsub = redis_async.pubsub()
    await pubsub.subscribe(FEATURES_CHANNEL)
    listener = asyncio.get_running_loop().create_task(_listen(ws, subscribed, max_symbols))
    idle_since = time.monotonic()
    pushed: dict[str, int] = {}  # symbol → the row last pushed (ts_ns)
    announced: dict[str, set[int]] = {}  # symbol → the rows (ts_ns) announced since
    try:
        while True:
            # the session ends as soon as the listener does, not at the next poll: its place is free at once
            getter = asyncio.ensure_future(pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5))
            await asyncio.wait({getter, listener}, return_when=asyncio.FIRST_COMPLETED)
            if listener.done():
                getter.cancel()
                return
            msg = getter.result()
            if subscribed:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_s:
                await ws.close(code=1000, reason=f"idle: subscribed to nothing for {idle_s:g}s")
                return
            for _ in range(MAX_DRAINED):  # the announcements already queued: only the newest row is predicted
                if msg is None:
                    break
                _note(msg, subscribed, pushed, announced)
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            for symbol in list(announced):
                await _push(ws, predictor, symbol, pushed, announced.pop(symbol))
    except WebSocketDisconnect:
        pass
    finally:
        listener.cancel()
        await pubsub.aclose()


def _note(msg: dict, subscribed: set[str], pushed: dict[str, int], announced: dict[str, set[int]]) -> None:
    try:
        doc = orjson.loads(msg["data"])
        symbol, ts_ns = doc["symbol"], int(doc["ts_ns"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return  # not a stream actor's announcement
    if symbol in subscribed and ts_ns > pushed.get(symbol, -1):
        announced.setdefault(symbol, set()).add(ts_ns)


async def _push(ws: WebSocket, predictor: Predictor, symbol: str, pushed: dict[str, int], rows: set[int]) -> None:
    """The prediction for the newest row of ``symbol`` (``rows``: those announced since the last push)."""
    try:
        out = await predictor.from_symbols([symbol], announced_at=True)
    except ApiError as e:
        await ws.send_json({"symbol": symbol, "error": e.status, "detail": e.detail})
        return
    pred = out["predictions"][0]
    if pred["ts_ns"] <= pushed.get(symbol, -1):
        return  # pushed already
    pushed[symbol] = pred["ts_ns"]
    pred["conflated"] = sum(1 for t in rows if t < pred["ts_ns"])
    pred["pushed_at"] = time.time()
    await ws.send_text(orjson.dumps({"model": out["model"], **pred}).decode())


def _request(text: str, subscribed: set[str], max_symbols: int) -> tuple[set[str], set[str]]:
    """(symbols to add, symbols to drop) of a client's message; ValueError saying what is wrong."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(msg, dict) or not msg or not set(msg) <= {"subscribe", "unsubscribe"}:
        raise ValueError('send {"subscribe": [symbols]} or {"unsubscribe": [symbols]}')
    asked = {}
    for key in ("subscribe", "unsubscribe"):
        value = msg.get(key, [])
        if not isinstance(value, list):
            raise ValueError(f"{key}: a list of symbols, not {type(value).__name__}")  # noqa: TRY004 (one type: each is an error frame)
        for s in value:
            why = symbol_problem(s)
            if why:
                raise ValueError(f"{key}: {why}")
        asked[key] = {s.upper() for s in value}
    after = (subscribed | asked["subscribe"]) - asked["unsubscribe"]
    if len(after) > max_symbols:
        raise ValueError(f"subscribe: at most {max_symbols} symbols per connection")
    return asked["subscribe"], asked["unsubscribe"]


async def _listen(ws: WebSocket, subscribed: set[str], max_symbols: int) -> None:
    """The client's subscription messages, applied to ``subscribed`` as they come. A message that breaks
    the protocol gets an error frame; the third closes the connection (1008), as does a binary frame
    (1003: not this protocol's data)."""
    errors = 0
    while True:
        frame = await ws.receive()
        if frame["type"] == "websocket.disconnect":
            return
        if frame.get("text") is None:
            await ws.close(code=1003, reason="binary frames are not part of this protocol")
            return
        try:
            add, drop = _request(frame["text"], subscribed, max_symbols)
        except ValueError as e:
            errors += 1
            if errors >= PROTOCOL_ERRORS_BEFORE_CLOSE:
                await ws.close(code=1008, reason=f"{errors} protocol errors; the last: {e}"[:120])
                return
            await ws.send_json({"error": 422, "detail": str(e)})
            continue
        subscribed.update(add)
        subscribed.difference_update(drop)
        await ws.send_json({"subscribed": sorted(subscribed)})
