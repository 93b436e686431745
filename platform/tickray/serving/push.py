"""Predictions pushed over a WebSocket (``/v1/stream``): the client sends ``{"subscribe": [symbols]}`` or
``{"unsubscribe": [...]}`` and receives a prediction for every new feature row of its symbols, announced
by the stream actors on a Redis channel, with the row's age when it was pushed.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import WebSocket, WebSocketDisconnect

from tickray.serving.api import ApiError
from tickray.serving.predictor import Predictor
from tickray.stream.keys import FEATURES_CHANNEL


async def push_predictions(ws: WebSocket, redis_async, predictor: Predictor) -> None:
    """Serve one accepted connection until the client leaves."""
    subscribed: set[str] = {s.strip().upper() for s in ws.query_params.get("symbols", "").split(",") if s.strip()}
    pubsub = redis_async.pubsub()
    await pubsub.subscribe(FEATURES_CHANNEL)
    listener = asyncio.get_running_loop().create_task(_listen(ws, subscribed))
    try:
        while not listener.done():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg is None:
                continue
            doc = orjson.loads(msg["data"])
            if doc["symbol"] not in subscribed:
                continue
            try:
                out = await predictor.from_symbols([doc["symbol"]])
            except ApiError as e:
                await ws.send_json({"symbol": doc["symbol"], "error": e.status, "detail": e.detail})
                continue
            pred = out["predictions"][0]
            pred["pushed_at"] = time.time()
            pred["published_at"] = doc["published_at"]
            pred["tick_received_at"] = doc.get("tick_received_at")  # the stream actor's, when it says
            await ws.send_text(orjson.dumps({"model": out["model"], **pred}).decode())
    except WebSocketDisconnect:
        pass
    finally:
        listener.cancel()
        await pubsub.aclose()


async def _listen(ws: WebSocket, subscribed: set[str]) -> None:
    """The client's subscription messages, applied to ``subscribed`` as they come."""
    while True:
        try:
            msg = orjson.loads(await ws.receive_text())
            if not isinstance(msg, dict) or not set(msg) <= {"subscribe", "unsubscribe"}:
                raise ValueError("send {\"subscribe\": [symbols]} or {\"unsubscribe\": [symbols]}")
        except WebSocketDisconnect:
            return
        except ValueError as e:
            await ws.send_json({"error": 422, "detail": str(e)})
            continue
        subscribed.update(s.upper() for s in msg.get("subscribe", []))
        subscribed.difference_update(s.upper() for s in msg.get("unsubscribe", []))
        await ws.send_json({"subscribed": sorted(subscribed)})
