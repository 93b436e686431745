"""The stream-ingest actor: one Binance combined-stream WebSocket connection → online features in Redis.

Per message: parse (orjson) → validate → order book / grid / live bars (SymbolPipeline) → features
published to Redis (hash ``tickray:features:<SYM>`` and channel ``tickray:features``). Live bars: each
closed minute is appended to the capped stream ``tickray:bars:1m:<SYM>``, and the open bar of every
timeframe is in the hash ``tickray:bars:live:<SYM>`` (one field per timeframe, refreshed with the features)
and answered by ``live_bars``. Invalid messages go to the Redis stream ``tickray:quarantine`` with a
reason and are counted; they never stop the actor.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import httpx
import orjson
import ray
import redis.asyncio as aioredis
import websockets

from tickray.features import FEATURE_SET_VERSION
from tickray.stream.pipeline import FeatureUpdate, SymbolPipeline

FEATURES_KEY = "tickray:features:{symbol}"
FEATURES_CHANNEL = "tickray:features"
QUARANTINE_STREAM = "tickray:quarantine"
QUARANTINE_MAXLEN = 100_000
CLOSED_BARS_STREAM = "tickray:bars:1m:{symbol}"
CLOSED_BARS_MAXLEN = 10_080  # a week of minutes
LIVE_BARS_KEY = "tickray:bars:live:{symbol}"


DEFAULT_STREAMS = ("depth@0ms", "aggTrade", "bookTicker", "kline_1m")


def stream_names(symbol: str, streams: tuple[str, ...] = DEFAULT_STREAMS) -> list[str]:
    return [f"{symbol.lower()}@{s}" for s in streams]


def validate(data: dict) -> str | None:
    """A reason the payload cannot be used, or None."""
    e = data.get("e")
    try:
        if e in ("aggTrade", "trade"):
            if float(data["p"]) <= 0:
                return "non-positive price"
            if float(data["q"]) <= 0:
                return "non-positive quantity"
            int(data["T"])
        elif e == "depthUpdate":
            int(data["U"]), int(data["u"])
            for p, q in data["b"] + data["a"]:
                if float(p) <= 0 or float(q) < 0:
                    return "non-positive price or negative quantity in depth"
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed {e}: missing or bad {exc}"
    return None


@ray.remote(num_cpus=0)
class StreamIngestActor:
    def __init__(self, symbols: list[str], ws_url: str, rest_url: str, redis_url: str,
                 streams: tuple[str, ...] = DEFAULT_STREAMS, read_timeout_s: float = 30.0,
                 bar_timeframes: tuple[str, ...] = ("15m", "1h", "4h")):
        self.symbols = [s.upper() for s in symbols]
        self.streams = tuple(streams)
        self.ws_url, self.rest_url, self.redis_url = ws_url.rstrip("/"), rest_url.rstrip("/"), redis_url
        self.read_timeout_s = read_timeout_s
        self.pipes = {s: SymbolPipeline(s, bar_timeframes=tuple(bar_timeframes)) for s in self.symbols}
        self.bar_timeframes = ("1m", *bar_timeframes)
        self.counts: Counter = Counter()
        self.quarantined: Counter = Counter()
        self.last_features: dict[str, dict] = {}
        self._task: asyncio.Task | None = None
        self._snapshot_tasks: dict[str, asyncio.Task] = {}
        self._stop = False

    async def start(self) -> None:
        if self._task is None:
            self._redis = aioredis.from_url(self.redis_url)
            self._http = httpx.AsyncClient(base_url=self.rest_url, timeout=10)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop = True
        if self._task:
            self._task.cancel()
            await self._http.aclose()
            await self._redis.aclose()

    def stats(self) -> dict:
        return {
            "messages": dict(self.counts), "quarantined": dict(self.quarantined),
            "features_published": {s: self.last_features.get(s, {}).get("n", 0) for s in self.symbols},
            "book": {s: vars(p.sync.counters) for s, p in self.pipes.items()},
            "late": {s: p.grid.late for s, p in self.pipes.items()},
        }

    def live_bars(self, symbol: str) -> dict[str, dict | None]:
        """The open bar of each timeframe (1m and the configured ones), up to the last trade."""
        bars = self.pipes[symbol.upper()].bars
        return {tf: bars.current(tf) for tf in self.bar_timeframes}

    async def _run(self) -> None:
        url = f"{self.ws_url}/stream?streams=" + "/".join(n for s in self.symbols for n in stream_names(s, self.streams))
        backoff = 0.5
        while not self._stop:
            try:
                async with websockets.connect(url, max_size=None, ping_interval=20) as ws:
                    self.counts["connections"] += 1
                    backoff = 0.5
                    while not self._stop:
                        raw = await asyncio.wait_for(ws.recv(), timeout=self.read_timeout_s)
                        await self._on_raw(raw)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.ConnectionClosed) as e:
                self.counts[f"reconnect: {type(e).__name__}"] += 1
                for pipe in self.pipes.values():
                    pipe.sync.synced = False  # diffs were missed while disconnected: a new snapshot is due
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 30.0)

    def _request_snapshot(self, symbol: str) -> None:
        """Binance's recipe: buffer the diffs, fetch a snapshot, replay. At start and after every gap."""
        if symbol not in self._snapshot_tasks:
            self._snapshot_tasks[symbol] = asyncio.get_running_loop().create_task(self._fetch_snapshot(symbol))

    async def _fetch_snapshot(self, symbol: str) -> None:
        try:
            r = await self._http.get("/fapi/v1/depth", params={"symbol": symbol, "limit": 1000})
            r.raise_for_status()
            self.counts["snapshots"] += 1
            await self._publish(self.pipes[symbol].on_snapshot(r.json()))
        except (httpx.HTTPError, ValueError, KeyError) as e:
            self.counts[f"snapshot failed: {type(e).__name__}"] += 1
            await asyncio.sleep(1.0)  # the next diff asks again
        finally:
            self._snapshot_tasks.pop(symbol, None)

    async def _on_raw(self, raw: str | bytes) -> None:
        self.counts["received"] += 1
        try:
            msg = orjson.loads(raw)
            data = msg["data"]
            symbol = data["s"].upper()
            pipe = self.pipes[symbol]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            return await self._quarantine(raw, f"unparsable or unknown message ({type(e).__name__}: {e})")
        reason = validate(data)
        e = data.get("e")
        if reason is None and e in ("aggTrade", "trade"):
            reason = pipe.check_trade(data)
        if reason:
            return await self._quarantine(raw, reason)
        self.counts[e or "bookTicker"] += 1
        if e == "depthUpdate":
            await self._publish(pipe.on_depth(data))
            if pipe.sync.needs_snapshot:
                self._request_snapshot(symbol)
        elif e in ("aggTrade", "trade"):
            await self._publish(pipe.on_trade(data))
            if pipe.closed_minutes:
                await self._publish_closed_minutes(pipe)

    async def _quarantine(self, raw: str | bytes, reason: str) -> None:
        self.quarantined[reason] += 1
        raw_s = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        await self._redis.xadd(QUARANTINE_STREAM, {"reason": reason, "raw": raw_s[:4096]},
                               maxlen=QUARANTINE_MAXLEN, approximate=True)

    async def _publish_closed_minutes(self, pipe: SymbolPipeline) -> None:
        async with self._redis.pipeline(transaction=False) as p:
            for bar in pipe.closed_minutes:
                p.xadd(CLOSED_BARS_STREAM.format(symbol=pipe.symbol), {"bar": orjson.dumps(bar)},
                       maxlen=CLOSED_BARS_MAXLEN, approximate=True)
            await p.execute()
        self.counts["bars closed"] += len(pipe.closed_minutes)
        pipe.closed_minutes = []

    async def _publish(self, updates: list[FeatureUpdate]) -> None:
        for up in updates:
            doc = {"symbol": up.symbol, "ts_ns": up.ts_ns, "mid": up.mid, "features": up.features,
                   "feature_set_version": FEATURE_SET_VERSION, "published_at": time.time()}
            body = orjson.dumps(doc)
            live = {tf: orjson.dumps(bar) for tf, bar in self.live_bars(up.symbol).items() if bar is not None}
            async with self._redis.pipeline(transaction=False) as p:
                p.set(FEATURES_KEY.format(symbol=up.symbol), body)
                p.publish(FEATURES_CHANNEL, body)
                if live:
                    p.hset(LIVE_BARS_KEY.format(symbol=up.symbol), mapping=live)
                await p.execute()
            n = self.last_features.get(up.symbol, {}).get("n", 0) + 1
            self.last_features[up.symbol] = {"n": n, "ts_ns": up.ts_ns}


def wait_for_messages(actor, count: int, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict:
    """Poll the actor until it has received ``count`` messages (or time runs out); return its stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = ray.get(actor.stats.remote())
        if stats["messages"].get("received", 0) >= count or time.monotonic() >= deadline:
            return stats
        time.sleep(poll_s)
