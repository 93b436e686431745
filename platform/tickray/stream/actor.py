"""The stream-ingest actor: one Binance combined-stream WebSocket connection → online features in Redis.

A reader task holds the connection (ping/pong, a read timeout after which it reconnects, exponential
backoff with jitter, a planned reconnect before the venue's 24 h cut-off) and puts messages in a bounded
queue: when processing falls behind, the queue fills and the reader stops reading, so the back-pressure
reaches the socket instead of messages being lost. Streams are added and removed at run time with the
venue's SUBSCRIBE / UNSUBSCRIBE requests.

Per message: parse (orjson) → validate → order book / grid / live bars / market state (SymbolPipeline) →
features published to Redis. Nothing valid is lost: a gap in the depth sequence resyncs the book from a
REST snapshot, and a gap in trade ids (a reconnect, a corrupt or reordered message) is filled from the
venue's REST trades before the trade that revealed it. Invalid messages go to the Redis stream
``tickray:quarantine`` with a reason and are counted; they never stop the actor.

Redis, per symbol: ``tickray:features:<SYM>`` (the latest features, one JSON value, so Serve reads every
symbol with one MGET) and ``tickray:features:history:<SYM>`` (capped stream of them), ``tickray:state:<SYM>``
(hash: the market state, see :mod:`tickray.stream.state`), the channel ``tickray:features``, closed 1m bars
in ``tickray:bars:1m:<SYM>`` and the open bar of each timeframe in ``tickray:bars:live:<SYM>``. The
checkpoint a restarted actor resumes from is ``tickray:stream:checkpoint:<SYM>`` (written with each lake
flush) plus the grid rows of the feature look-backs, ``tickray:stream:grid:<SYM>`` (written as they close);
it is resumed only when it is this connector's source and the market's first message continues it in time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import orjson
import ray
import redis.asyncio as aioredis
import websockets
from ray.util import metrics

from tickray import lake
from tickray.errors import ConfigError
from tickray.features import FEATURE_SET_VERSION, LOOKBACK
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.stream.clock import SourceClock
from tickray.stream.cold import ColdBuffer
from tickray.stream.pipeline import FeatureUpdate, SymbolPipeline

FEATURES_KEY = "tickray:features:{symbol}"
FEATURES_HISTORY = "tickray:features:history:{symbol}"
STATE_KEY = "tickray:state:{symbol}"
FEATURES_CHANNEL = "tickray:features"
QUARANTINE_STREAM = "tickray:quarantine"
QUARANTINE_MAXLEN = 100_000
CLOSED_BARS_STREAM = "tickray:bars:1m:{symbol}"
CLOSED_BARS_MAXLEN = 10_080  # a week of minutes
LIVE_BARS_KEY = "tickray:bars:live:{symbol}"
CHECKPOINT_KEY = "tickray:stream:checkpoint:{symbol}"
GRID_ROWS = "tickray:stream:grid:{symbol}"  # capped stream of the last LOOKBACK grid rows

DEFAULT_STREAMS = ("depth@0ms", "aggTrade", "bookTicker", "kline_1m")
KNOWN_EVENTS = {"depthUpdate", "aggTrade", "trade", "bookTicker", "kline", "markPriceUpdate"}
# In a burst, closed feature rows go to Redis together: after this many messages that closed some...
OUTBOX_MAX = 32
OUTBOX_MAX_WAIT_NS = 10_000_000  # ...or once the oldest has waited this long (at the live pace: at once)

log = logging.getLogger("tickray.stream")


@dataclass
class ConnectorOptions:
    venue: Literal["usdm", "coinm", "spot"] = "usdm"
    read_timeout_s: float = 30.0  # silence this long → reconnect
    backoff_s: float = 0.5  # first reconnect delay; doubles (with jitter) up to backoff_max_s
    backoff_max_s: float = 30.0
    max_connection_s: float = 23.5 * 3600  # the venue cuts connections at 24 h: reconnect before, on our terms
    buffer: int = 10_000  # messages read, not yet processed; a full buffer pauses reading
    bar_timeframes: tuple[str, ...] = ("15m", "1h", "4h")
    history_maxlen: int = 86_400  # feature rows kept per symbol (a day of seconds)
    autostart: bool = False  # connect on creation, so an actor that Ray restarts reconnects by itself
    name: str = "stream"  # the connector's name: its lake files and checkpoints carry it
    lake_root: str | None = None  # set: raw messages, trades and book states are appended to this lake
    flush_s: float = 60.0  # how often the lake is appended to and the checkpoint written
    # A checkpoint is resumed only when it is this source's and the market continues it: its first message
    # on this connection no older than the checkpoint's last event (less this slack) and no later than
    # resume_max_age_s after it (further than the trades REST can be asked to fill in).
    resume_max_age_s: float = 3600.0
    resume_clock_slack_s: float = 5.0
    # A restart within this keeps the feature look-backs, the missed seconds carrying the last book (their
    # trades come from REST); after a longer one the look-backs fill again from the live market.
    resume_features_max_gap_s: float = 60.0
    # How often the venue's time is asked (GET <prefix>/time, weight 1): lag is measured on the source's clock.
    clock_sync_s: float = 5.0


def stream_names(symbol: str, streams: tuple[str, ...] = DEFAULT_STREAMS) -> list[str]:
    return [f"{symbol.lower()}@{s}" for s in streams]


def event_type(data: dict) -> str | None:
    """The payload's event; spot @bookTicker carries no ``e``."""
    return data.get("e") or ("bookTicker" if {"u", "b", "a"} <= data.keys() else None)


def _positive(data: dict, *keys: str) -> str | None:
    for k in keys:
        if not (v := float(data[k])) > 0:
            return f"non-positive {k}"
        data[k] = v
    return None


def validate(data: dict, e: str) -> str | None:
    """A reason the payload cannot be used, or None. The numbers it checks are parsed in place, once:
    the pipeline takes them as they are."""
    try:
        if e in ("aggTrade", "trade"):
            tid = "a" if e == "aggTrade" else "t"
            data["T"], data[tid], _ = int(data["T"]), int(data[tid]), bool(data["m"])
            if not (p := float(data["p"])) > 0:
                return "non-positive price"
            if not (q := float(data["q"])) > 0:
                return "non-positive quantity"
            data["p"], data["q"] = p, q
        elif e == "depthUpdate":
            int(data["U"]), int(data["u"])
            bids = [(float(p), float(q)) for p, q in data["b"]]
            asks = [(float(p), float(q)) for p, q in data["a"]]
            for p, q in bids + asks:
                if not (p > 0 and q >= 0):
                    return "non-positive price or negative quantity in depth"
            data["b"], data["a"] = bids, asks
        elif e == "bookTicker":
            data["u"] = int(data["u"])
            return _positive(data, "b", "a", "B", "A")
        elif e == "kline":
            k = data["k"]
            if not all(float(k[f]) > 0 for f in "ohlc") or float(k["h"]) < float(k["l"]):
                return "kline with non-positive prices or high below low"
        elif e == "markPriceUpdate":
            return _positive(data, "p")
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed {e}: missing or bad {exc}"
    return None


class _Metrics:
    """Counts kept in the actor and handed to Ray's metrics (the dashboard, Prometheus) once a second,
    so the per-message cost is a dict increment."""

    def __init__(self) -> None:
        self.messages = metrics.Counter("tickray_stream_messages", "messages processed",
                                        tag_keys=("symbol", "stream"))
        self.errors = metrics.Counter("tickray_stream_quarantined", "invalid messages, by reason",
                                      tag_keys=("reason",))
        self.events = metrics.Counter("tickray_stream_events", "reconnects, resyncs, gaps, duplicates, backfills",
                                      tag_keys=("event",))
        self.latency = metrics.Histogram("tickray_stream_pipeline_ms", "receive to features published, ms",
                                         boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100])
        self.lag = metrics.Gauge("tickray_stream_lag_ms", "exchange event time to features published, ms",
                                 tag_keys=("symbol",))
        self.pending: Counter = Counter()

    def flush(self, samples: list[float], lags: dict[str, float]) -> None:
        for (kind, *tags), n in self.pending.items():
            if kind == "msg":
                self.messages.inc(n, {"symbol": tags[0], "stream": tags[1]})
            elif kind == "err":
                self.errors.inc(n, {"reason": tags[0]})
            else:
                self.events.inc(n, {"event": tags[0]})
        self.pending.clear()
        for ms in samples:
            self.latency.observe(ms)
        for sym, ms in lags.items():
            self.lag.set(ms, {"symbol": sym})


def log_event(event: str, **fields) -> None:
    """Connection events as one JSON object per line (what log shippers parse)."""
    log.warning(orjson.dumps({"event": event, "ts": time.time(), **fields}).decode())


def _span(seconds: float) -> str:
    """A duration as people say it: 45 s, 3.2 min, 5.1 h, 12 days, 2.4 years."""
    for unit, size in (("years", 365.25 * 86_400), ("days", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


@ray.remote(num_cpus=0)
class StreamIngestActor:
    def __init__(self, symbols: list[str], ws_url: str, rest_url: str, redis_url: str,
                 streams: tuple[str, ...] = DEFAULT_STREAMS, options: ConnectorOptions | None = None):
        self.opt = options or ConnectorOptions()
        market = BINANCE_STREAM_MARKETS.get(self.opt.venue)
        if market is None:
            raise ConfigError(f"stream venue {self.opt.venue!r} is not one of {', '.join(BINANCE_STREAM_MARKETS)}")
        self.rest_prefix, self.max_streams = market.rest_prefix, market.max_streams
        self.ws_url, self.rest_url, self.redis_url = ws_url.rstrip("/"), rest_url.rstrip("/"), redis_url
        self.pipes: dict[str, SymbolPipeline] = {}
        self.streams: list[str] = []
        self._add_streams([n for s in symbols for n in stream_names(s, tuple(streams))])
        self.counts: Counter = Counter()
        self.quarantined: Counter = Counter()
        self.last_features: dict[str, dict] = {}
        self._latency: deque = deque(maxlen=20_000)  # ms, receive → published, the latest messages
        self._lag: dict[str, float] = {}  # symbol → ms from the event time to published, on the source's clock
        self._clock = SourceClock()
        self._samples: list[float] = []
        self._tasks: list[asyncio.Task] = []
        self._snapshot_tasks: dict[str, asyncio.Task] = {}
        self._ws = None
        self._requests: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._stop = False
        # symbol → (checkpoint, its grid rows) of this source, resumed or refused by the market's first message
        self._pending_resume: dict[str, tuple[dict, list]] = {}
        self.resume: dict[str, str] = {}  # symbol → how it started: resumed, or fresh and why (one line)
        self._event_ms: dict[str, int] = {}  # symbol → the newest exchange event time taken
        self._seq = 0  # lake flushes; files are named by it and by this incarnation, so none is overwritten
        self._incarnation = uuid.uuid4().hex[:8]  # a new one each time Ray (re)starts the process
        self._last_message_at = 0.0
        self._last_recv_ns = 0  # perf_counter_ns of the last message read (the watchdog's clock)
        self._ended_by: str | None = None  # why the watchdog ended the connection: "silent" or "planned"
        self._unwritten: list[tuple[int, dict]] = []  # flushes the lake has not taken yet (retried)
        self._checkpointed: dict[str, int] = {}  # symbol → last trade id of its latest checkpoint
        self.durable: Counter = Counter()  # checkpoints written, rows appended to the lake, failed writes
        self._published_ts: dict[tuple[str, str], int] = {}  # (symbol, "bar" | "row") → newest in Redis
        # feature rows and bars closed, not yet in Redis: (pipeline, rows, receive perf_counter_ns, event ms)
        self._outbox: list[tuple[SymbolPipeline, list[FeatureUpdate], int, int | None]] = []
        self._outbox_since = 0  # perf_counter_ns when the oldest row in the outbox was put there
        self._sending = asyncio.Lock()
        if self.opt.autostart:  # Ray runs an async actor's __init__ on its event loop
            asyncio.get_running_loop().create_task(self.start())

    # ---- control -------------------------------------------------------------------------------

    def _add_streams(self, names: list[str]) -> None:
        new = [n for n in names if n not in self.streams]
        if len(self.streams) + len(new) > self.max_streams:
            raise ConfigError(f"{len(self.streams) + len(new)} streams on one {self.opt.venue} connection: "
                              f"the venue allows {self.max_streams}; start another connector")
        for n in new:
            sym = n.split("@", 1)[0].upper()
            if sym not in self.pipes:
                self.pipes[sym] = SymbolPipeline(sym, spot=self.opt.venue == "spot",
                                                 bar_timeframes=tuple(self.opt.bar_timeframes),
                                                 cold=ColdBuffer(sym) if self.opt.lake_root else None)
        self.streams.extend(new)

    async def start(self) -> None:
        if not self._tasks:
            # bounded: a Redis that stops answering is an error here, never a connector (or its stop) hung
            self._redis = aioredis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)
            self._http = httpx.AsyncClient(base_url=self.rest_url, timeout=10)
            self._queue: asyncio.Queue = asyncio.Queue(maxsize=self.opt.buffer)
            self._metrics = _Metrics()
            await self._resume()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._read()), loop.create_task(self._process()),
                           loop.create_task(self._flush_metrics()), loop.create_task(self._flush_loop()),
                           loop.create_task(self._clock_loop())]

    async def stop(self) -> None:
        """Stop reading, then flush to the lake and checkpoint: a stopped connector loses nothing."""
        self._stop = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10)
            if stuck:
                log_event("stop: tasks still running after 10 s", tasks=[t.get_coro().__qualname__ for t in stuck])
            await self._send_outbox()
            await self._flush()
            await self._http.aclose()
            await self._redis.aclose()
        self._tasks = []

    async def subscribe(self, streams: list[str]) -> dict:
        """Add streams (``btcusdt@aggTrade``) on the live connection; kept across reconnects."""
        self._add_streams(list(streams))
        return await self._request("SUBSCRIBE", list(streams))

    async def unsubscribe(self, streams: list[str]) -> dict:
        self.streams = [s for s in self.streams if s not in streams]
        return await self._request("UNSUBSCRIBE", list(streams))

    async def list_subscriptions(self) -> dict:
        return await self._request("LIST_SUBSCRIPTIONS", [])

    async def _request(self, method: str, params: list) -> dict:
        """A request on the connection and the venue's answer (connected or not, the stream list is kept)."""
        if self._ws is None:
            return {"result": None, "queued": True}  # the next connection's URL carries the streams
        rid, self._next_id = self._next_id, self._next_id + 1
        fut = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        await self._ws.send(orjson.dumps({"method": method, "params": params, "id": rid}).decode())
        log_event(method.lower(), streams=params, id=rid)
        try:
            return await asyncio.wait_for(fut, 10)
        finally:
            self._requests.pop(rid, None)

    def stats(self) -> dict:
        lat = np.array(self._latency) if self._latency else np.array([np.nan])
        return {
            "messages": dict(self.counts), "quarantined": dict(self.quarantined),
            "features_published": {s: self.last_features.get(s, {}).get("n", 0) for s in self.pipes},
            "book": {s: asdict(p.sync.counters) for s, p in self.pipes.items()},
            "book_check": {s: asdict(p.sync.check.counters) for s, p in self.pipes.items()},
            "late": {s: p.grid.late for s, p in self.pipes.items()},
            "trades": {s: p.state.trades_total for s, p in self.pipes.items()},
            "pipeline_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "resume": dict(self.resume), "lag_ms": dict(self._lag), "clock": self._clock.describe(),
            "queued": self._queue.qsize() if self._tasks else 0,
            "connected": self._ws is not None, "streams": list(self.streams),
            "durable": dict(self.durable), "incarnation": self._incarnation, "last_message_at": self._last_message_at,
            "cpu_s": time.process_time(),  # this actor's process: with last_message_at, how busy it is
        }

    def state(self, symbol: str) -> dict[str, float]:
        p = self.pipes[symbol.upper()]
        return p.state.snapshot(p.sync.book if p.sync.synced else None)

    def book(self, symbol: str, levels: int = 20) -> dict:
        sync = self.pipes[symbol.upper()].sync
        bids, asks = sync.book.top(levels)
        return {"synced": sync.synced, "last_update_id": sync.book.last_update_id, "bids": bids, "asks": asks}

    def live_bars(self, symbol: str) -> dict[str, dict | None]:
        """The open bar of each timeframe (1m and the configured ones), up to the last trade."""
        bars = self.pipes[symbol.upper()].bars
        return {tf: bars.current(tf) for tf in ("1m", *self.opt.bar_timeframes)}

    # ---- the connection ------------------------------------------------------------------------

    async def _read(self) -> None:
        backoff, first = self.opt.backoff_s, True
        while not self._stop:
            url = f"{self.ws_url}/stream?streams=" + "/".join(self.streams)
            watch = None
            try:
                async with websockets.connect(url, max_size=None, ping_interval=20, ping_timeout=20,
                                              open_timeout=10, compression=None) as ws:
                    self._ws = ws
                    self.counts["connections"] += 1
                    log_event("connected", url=url, streams=len(self.streams))
                    if not first:
                        await self._queue.put(("reconnected", 0, 0))  # in order with the messages before it
                    first, backoff = False, self.opt.backoff_s
                    self._last_recv_ns, self._ended_by = time.perf_counter_ns(), None
                    watch = asyncio.get_running_loop().create_task(self._watch(ws))
                    try:
                        while not self._stop:
                            raw = await ws.recv()
                            self._last_recv_ns = t0 = time.perf_counter_ns()
                            await self._queue.put((raw, t0, time.time_ns()))  # waits while the buffer is full
                    except websockets.ConnectionClosed:
                        if self._ended_by == "silent":
                            raise TimeoutError(f"no message for {self.opt.read_timeout_s:g} s") from None
                        if self._ended_by == "planned":
                            continue  # straight back, no backoff
                        raise
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as e:
                reason = type(e).__name__
                self.counts[f"reconnect: {reason}"] += 1
                self._metrics.pending[("event", f"reconnect {reason}")] += 1
                log_event("disconnected", reason=reason, detail=str(e)[:200], retry_in_s=round(backoff, 3))
            finally:
                self._ws = None
                if watch:
                    watch.cancel()
            await asyncio.sleep(backoff * (0.5 + random.random()))  # jitter: clients do not come back in step
            backoff = min(backoff * 2, self.opt.backoff_max_s)

    async def _watch(self, ws) -> None:
        """Ends a connection that has been silent for ``read_timeout_s`` or has lived ``max_connection_s``,
        saying which in ``_ended_by``. A watchdog, not a timeout around every read: that cost a tenth of
        the actor's time at full rate."""
        opened, tick = time.monotonic(), min(1.0, self.opt.read_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            if self._queue.full():  # reading is paused for a slow consumer: that is not the venue's silence
                self._last_recv_ns = time.perf_counter_ns()
            elif (time.perf_counter_ns() - self._last_recv_ns) / 1e9 >= self.opt.read_timeout_s:
                self._ended_by = "silent"
                ws.transport.abort()  # a stalled server would not answer a closing handshake either
                return
            if time.monotonic() - opened >= self.opt.max_connection_s:
                self.counts["planned reconnects"] += 1
                log_event("planned reconnect", after_s=round(time.monotonic() - opened, 1))
                self._ended_by = "planned"
                await ws.close(1000, "planned reconnect")
                return

    async def _process(self) -> None:
        while True:
            raw, t0, recv_ns = await self._queue.get()
            try:
                if raw == "reconnected":
                    await self._after_reconnect()
                else:
                    io = self._on_raw(raw, t0, recv_ns)
                    if io is not None:
                        await io
                if self._outbox and (self._queue.empty() or len(self._outbox) >= OUTBOX_MAX
                                     or time.perf_counter_ns() - self._outbox_since > OUTBOX_MAX_WAIT_NS):
                    await self._send_outbox()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not take the connection down: quarantine and carry on
                log.exception("stream pipeline error")
                await self._quarantine(raw, f"internal error ({type(e).__name__}: {e})")

    async def _after_reconnect(self) -> None:
        """Diffs and trades were missed while away: trades are fetched from REST, then every book resyncs
        (in that order, so the trades land in the grid seconds they belong to before the book moves on)."""
        for pipe in self.pipes.values():
            if pipe.sync.synced:
                pipe.sync.synced = False
                pipe.sync.counters.gaps += 1
        await asyncio.gather(*(self._backfill(pipe, pipe.resume_from_trade(), None)
                               for pipe in self.pipes.values() if pipe.last_trade_id >= 0))
        for pipe in self.pipes.values():
            if any(n.startswith(f"{pipe.symbol.lower()}@depth") for n in self.streams):
                self._request_snapshot(pipe.symbol)

    # ---- durability: the lake and the checkpoint -------------------------------------------------

    def _source(self, symbol: str) -> dict:
        """What a checkpoint must have been written from to be resumed here."""
        return {"venue": self.opt.venue, "ws_url": self.ws_url, "rest_url": self.rest_url, "symbols": sorted(self.pipes),
                "streams": sorted(n for n in self.streams if n.split("@", 1)[0].upper() == symbol)}

    async def _resume(self) -> None:
        """Find each symbol's checkpoint and keep it if it is this source's (venue, URLs, stream set); the
        market's first message then resumes it or refuses it (:meth:`_judge_checkpoint`)."""
        for sym in self.pipes:
            for kind, key, field_ in (("bar", CLOSED_BARS_STREAM, "bar"), ("row", FEATURES_HISTORY, "doc")):
                last = await self._redis.xrevrange(key.format(symbol=sym), count=1)
                if last:
                    doc = orjson.loads(last[0][1][field_.encode()])
                    self._published_ts[(sym, kind)] = doc["ts" if kind == "bar" else "ts_ns"]
            raw = await self._redis.get(CHECKPOINT_KEY.format(symbol=sym))
            if raw is None:
                self.resume[sym] = "fresh: no checkpoint"
                continue
            ck = orjson.loads(raw)
            why = self._other_source(ck.get("source") or {}, self._source(sym))
            if why:
                self._refuse(sym, why)
                continue
            grid = await self._redis.xrevrange(GRID_ROWS.format(symbol=sym), count=LOOKBACK - 1)
            self._pending_resume[sym] = (ck, grid)
            self.resume[sym] = f"checkpoint {ck['seq']} of {ck['connector']}: waiting for the market"

    @staticmethod
    def _other_source(was: dict, now: dict) -> str | None:
        if not was:
            return "checkpoint is from another source: it records none"
        for key, what in (("venue", "venue"), ("ws_url", "source"), ("rest_url", "REST source"),
                          ("symbols", "symbol set"), ("streams", "stream set")):
            if was.get(key) != now[key]:
                show = (lambda v: ",".join(v or [])) if key in ("symbols", "streams") else str
                return f"checkpoint is from another {what}: {show(was.get(key))} vs {show(now[key])}"
        return None

    def _refuse(self, sym: str, why: str) -> None:
        """Start ``sym`` fresh: what was published from the refused checkpoint's market does not hold back
        this one's rows (its clock may be behind)."""
        self.resume[sym] = f"fresh: {why}"
        self.counts["checkpoints refused"] += 1
        for kind in ("bar", "row"):
            self._published_ts.pop((sym, kind), None)
        log_event("checkpoint refused", symbol=sym, reason=why)

    def _judge_checkpoint(self, pipe: SymbolPipeline, data: dict, e: str) -> bool:
        """Does the market continue this symbol's checkpoint? Its first message must be no older than the
        checkpoint's last event, nor later than the trades missed since could be fetched. Resumed: the pipeline goes on from the checkpoint (True: the trades
        since are to be fetched); refused: the pipeline starts fresh, said in one line."""
        sym = pipe.symbol
        ck, grid = self._pending_resume.pop(sym)
        event_ms = int(data.get("E") or data.get("T") or 0)
        was_ms = int(ck.get("event_ms") or 0)
        jump_s = (event_ms - was_ms) / 1e3
        why = None
        if event_ms and was_ms and jump_s < -self.opt.resume_clock_slack_s:
            why = f"market time jumped back {_span(-jump_s)}"
        elif event_ms and was_ms and jump_s > self.opt.resume_max_age_s:
            why = (f"market time jumped forward {_span(jump_s)}, beyond the {_span(self.opt.resume_max_age_s)} "
                   "the trades missed can be fetched for")
        if why:
            self._refuse(sym, why)
            return False
        pipe.restore(ck["pipeline"])
        self._seq = max(self._seq, ck["seq"])
        removed = self._drop_trades_after(sym, ck["connector"], ck["seq"]) if self.opt.lake_root else 0
        self._checkpointed[sym] = pipe.last_trade_id
        self.counts["resumed from checkpoint"] += 1
        rows = self._resume_grid(pipe, grid)
        self.resume[sym] = f"resumed from checkpoint {ck['seq']} of {ck['connector']} (market {_span(abs(jump_s))} on)"
        log_event("resumed", symbol=sym, last_trade_id=pipe.last_trade_id, checkpoint_seq=ck["seq"],
                  market_gap_s=round(jump_s, 3), lake_trade_files_removed=removed, grid_rows=rows)
        return True

    async def _resume_then(self, pipe: SymbolPipeline, raw, data: dict, e: str, t0: int) -> None:
        """After a resume: the trades since the checkpoint from REST (so they land in their grid seconds
        before the book moves on), then the message that resumed it."""
        await self._backfill(pipe, pipe.resume_from_trade(), None)
        io = self._on_data(raw, data, e, pipe, t0)
        if io is not None:
            await io

    def _resume_grid(self, pipe: SymbolPipeline, entries: list) -> int:
        """Hand the pipeline the consecutive grid rows published last (newest first in ``entries``) unless
        they are older than ``resume_features_max_gap_s``; returns how many it took."""
        if not entries:
            return 0
        gap_s = time.time() - int(entries[0][0].split(b"-")[0]) / 1e3  # the entry id: when Redis took it
        if gap_s > self.opt.resume_features_max_gap_s:
            log_event("feature look-backs not resumed", symbol=pipe.symbol, gap_s=round(gap_s, 1),
                      max_gap_s=self.opt.resume_features_max_gap_s)
            return 0
        ts, rows = [], []
        for _, f in entries:
            if ts and int(f[b"ts"]) != ts[-1] - 1_000_000_000:
                break  # an earlier run of rows, before a restart that did not resume them
            ts.append(int(f[b"ts"]))
            rows.append(f[b"row"])
        pipe.resume_grid(ts[::-1], rows[::-1], int(entries[0][1][b"trade_id"]))
        self.counts["grid rows resumed"] += len(ts)
        return len(ts)

    def _drop_trades_after(self, symbol: str, connector: str, seq: int) -> int:
        removed = 0
        for f in Path(self.opt.lake_root).glob(f"trades/date=*/symbol={symbol}/part-live-{connector}-*.parquet"):
            if int(f.stem.rsplit("-", 2)[1]) > seq:
                f.unlink()
                removed += 1
        return removed

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opt.flush_s)
            await self._flush()

    async def _flush(self) -> None:
        """Append what was gathered to the lake, then checkpoint every symbol as of that same moment: a
        checkpoint never claims trades the lake does not hold. A lake that refuses the write (full, gone)
        keeps the rows in memory for the next flush, and the checkpoint waits."""
        self._seq += 1
        seq, at = self._seq, time.time()
        if self.opt.lake_root:
            self._unwritten.append((seq, {s: p.cold.take() for s, p in self.pipes.items()}))
        # only symbols that traded since their last checkpoint: the state and bars move with trades
        docs = {s: orjson.dumps({"connector": self.opt.name, "seq": seq, "at": at, "source": self._source(s),
                                 "event_ms": self._event_ms.get(s, 0), "pipeline": p.checkpoint()})
                for s, p in self.pipes.items() if p.last_trade_id > self._checkpointed.get(s, -1)}
        ids = {s: self.pipes[s].last_trade_id for s in docs}
        if self._unwritten:
            try:
                self.durable.update(await asyncio.to_thread(self._write_lake, list(self._unwritten)))
                self._unwritten = []
            except OSError as e:
                self.durable[f"lake write failed: {type(e).__name__}"] += 1
                log_event("lake write failed", detail=str(e)[:200], pending_flushes=len(self._unwritten))
                return
        if docs:
            await self._redis.mset({CHECKPOINT_KEY.format(symbol=s): d for s, d in docs.items()})
            self._checkpointed.update(ids)
            self.durable["checkpoints"] += len(docs)

    def _write_lake(self, flushes: list[tuple[int, dict]]) -> Counter:
        rows: Counter = Counter()
        for seq, by_symbol in flushes:
            for tables in by_symbol.values():
                for dataset, t in tables.items():
                    lake.append_partitions(t, Path(self.opt.lake_root), dataset,
                                           f"live-{self.opt.name}-{seq:08d}-{self._incarnation}")
                    rows[f"lake {dataset} rows"] += t.num_rows
        return rows

    async def _clock_loop(self) -> None:
        while True:
            sent = time.time() * 1e3
            try:
                r = await self._http.get(f"{self.rest_prefix}/time")
                r.raise_for_status()
                self._clock.observe(sent, float(r.json()["serverTime"]), time.time() * 1e3)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                self.counts[f"clock sync failed: {type(e).__name__}"] += 1
                self._clock.failed(f"{self.rest_prefix}/time: {type(e).__name__}: {str(e)[:120]}")
            await asyncio.sleep(self.opt.clock_sync_s)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            samples, self._samples = self._samples[-1000:], []
            self._metrics.flush(samples, self._lag)

    # ---- per message ---------------------------------------------------------------------------

    def _on_raw(self, raw: str | bytes, t0: int, recv_ns: int) -> Coroutine | None:
        """Parse, validate and apply one message; returns the Redis or REST work it leaves, if any (most
        leave none: no coroutine per message)."""
        self.counts["received"] += 1
        self._last_message_at = time.time()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return self._quarantine(raw, f"unparsable JSON ({e})")
        if not isinstance(msg, dict):
            return self._quarantine(raw, "unknown message: not a JSON object")
        if "data" not in msg:
            if msg.get("id") in self._requests:  # the venue's answer to SUBSCRIBE and friends
                self._requests[msg["id"]].set_result(msg)
                return None
            return self._quarantine(raw, "unknown message: neither stream data nor a request's answer")
        data, stream = msg["data"], str(msg.get("stream", ""))
        e = event_type(data) if isinstance(data, dict) else None
        if e not in KNOWN_EVENTS:
            return self._quarantine(raw, f"unknown event type {e!r} on stream {stream!r}")
        symbol = str(data.get("s", "")).upper()
        if stream.split("@", 1)[0].upper() != symbol:
            return self._quarantine(raw, f"symbol mismatch: stream {stream!r} carries {symbol or 'no symbol'}")
        pipe = self.pipes.get(symbol)
        if pipe is None:
            return self._quarantine(raw, f"unknown symbol {symbol}: not subscribed")
        if pipe.cold:
            pipe.cold.on_raw(recv_ns, stream, raw if isinstance(raw, str) else raw.decode())
        reason = validate(data, e) or pipe.out_of_order(e, data)
        if reason:
            return self._quarantine(raw, reason, symbol)
        if symbol in self._pending_resume and self._judge_checkpoint(pipe, data, e):
            return self._resume_then(pipe, raw, data, e, t0)
        return self._on_data(raw, data, e, pipe, t0)

    def _on_data(self, raw, data: dict, e: str, pipe: SymbolPipeline, t0: int) -> Coroutine | None:
        """A valid message of a symbol's pipeline, applied."""
        symbol = pipe.symbol
        event_ms = data.get("E") or data.get("T")
        if event_ms and event_ms > self._event_ms.get(symbol, 0):
            self._event_ms[symbol] = event_ms
        self.counts[e] += 1
        self._metrics.pending[("msg", symbol, e)] += 1
        if e == "depthUpdate":
            before = pipe.sync.counters.gaps
            updates = pipe.on_depth(data)
            if pipe.sync.counters.gaps > before:
                self._metrics.pending[("event", "book gap")] += 1
                log_event("book gap", symbol=symbol, u=data["u"], pu=data.get("pu"))
            if pipe.sync.needs_snapshot:
                self._request_snapshot(symbol)
            if updates:
                self._to_outbox(pipe, updates, t0, data.get("E"))
            return None
        if e == "bookTicker" and not pipe.on_book_ticker(data):
            self._metrics.pending[("event", "book contradicted")] += 1
            log_event("book contradicted", symbol=symbol, **pipe.sync.check.last_mismatch)
            self._request_snapshot(symbol)
        elif e in ("aggTrade", "trade"):
            tid = pipe.trade_id(data)
            if tid <= pipe.last_trade_id:
                self.counts["duplicate trades"] += 1
                self._metrics.pending[("event", "duplicate trade")] += 1
                return self._quarantine(raw, "duplicate trade id", symbol, counted=False)
            missing = pipe.missing_trades(data)
            if missing:
                return self._backfill(pipe, missing.start, missing.stop, e, then=(data, t0))
            return self._apply_trade(pipe, data, t0)
        return None

    def _apply_trade(self, pipe: SymbolPipeline, data: dict, t0: int) -> None:
        updates = pipe.on_trade(data)
        if updates or pipe.closed_minutes:
            self._to_outbox(pipe, updates, t0, data.get("E"))

    async def _backfill(self, pipe: SymbolPipeline, start: int, stop: int | None, e: str | None = None,
                        then: tuple[dict, int] | None = None) -> None:
        """Trades ``start`` .. ``stop - 1`` (or up to the latest) from the venue's REST, applied in order;
        then the live trade ``then`` (payload, receive time) that showed them missing."""
        e = e or ("aggTrade" if any(s.startswith(f"{pipe.symbol.lower()}@aggTrade") for s in self.streams)
                  else "trade")
        path = "aggTrades" if e == "aggTrade" else "historicalTrades"
        got = 0
        while stop is None or start < stop:
            limit = 1000 if stop is None else min(1000, stop - start)
            try:
                r = await self._http.get(f"{self.rest_prefix}/{path}",
                                         params={"symbol": pipe.symbol, "fromId": start, "limit": limit})
                r.raise_for_status()
                rows = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                self.counts[f"backfill failed: {type(exc).__name__}"] += 1
                log_event("backfill failed", symbol=pipe.symbol, from_id=start, detail=str(exc)[:200])
                break
            rows = [self._rest_trade(row, e, pipe.symbol) for row in rows]
            rows = [d for d in rows if pipe.trade_id(d) >= start and (stop is None or pipe.trade_id(d) < stop)]
            if not rows:
                break
            for d in rows:
                self._apply_trade(pipe, d, time.perf_counter_ns())
            await self._send_outbox()
            got += len(rows)
            start = pipe.trade_id(rows[-1]) + 1
        if stop is not None and start < stop:
            self.counts["trades lost"] += stop - start  # the venue no longer has them: said, not hidden
        self.counts["trades backfilled"] += got
        self._metrics.pending[("event", "trades backfilled")] += got
        log_event("backfill", symbol=pipe.symbol, trades=got, next_id=start)
        if then is not None:
            self._apply_trade(pipe, *then)

    @staticmethod
    def _rest_trade(row: dict, e: str, symbol: str) -> dict:
        """A REST trade row in the stream's payload shape."""
        if e == "aggTrade":
            return {"e": "aggTrade", "s": symbol, "a": row["a"], "p": row["p"], "q": row["q"], "T": row["T"],
                    "m": row["m"]}
        return {"e": "trade", "s": symbol, "t": row["id"], "p": row["price"], "q": row["qty"], "T": row["time"],
                "m": row["isBuyerMaker"]}

    def _request_snapshot(self, symbol: str) -> None:
        """Binance's recipe: buffer the diffs, fetch a snapshot, replay. At start and after every gap."""
        if symbol not in self._snapshot_tasks and not self._stop:
            self._snapshot_tasks[symbol] = asyncio.get_running_loop().create_task(self._fetch_snapshot(symbol))

    async def _fetch_snapshot(self, symbol: str) -> None:
        try:
            r = await self._http.get(f"{self.rest_prefix}/depth", params={"symbol": symbol, "limit": 1000})
            r.raise_for_status()
            self.counts["snapshots"] += 1
            pipe = self.pipes[symbol]
            resyncs = pipe.sync.counters.resyncs
            updates = pipe.on_snapshot(r.json())
            if updates:
                self._to_outbox(pipe, updates, time.perf_counter_ns())
                await self._send_outbox()
            if pipe.sync.counters.resyncs > resyncs:
                self._metrics.pending[("event", "book resync")] += 1
                log_event("book resync", symbol=symbol, last_update_id=pipe.sync.book.last_update_id)
        except (httpx.HTTPError, ValueError, KeyError) as e:
            self.counts[f"snapshot failed: {type(e).__name__}"] += 1
            log_event("snapshot failed", symbol=symbol, detail=str(e)[:200])
            await asyncio.sleep(1.0)  # the next diff asks again
        finally:
            self._snapshot_tasks.pop(symbol, None)
        if self.pipes[symbol].sync.needs_snapshot and not self._stop:
            # The buffered diffs did not chain onto it: ask again even if no new diff comes to ask
            # (one a second at most: a 1000-level snapshot weighs 20 of the venue's 2,400 a minute).
            asyncio.get_running_loop().call_later(1.0, self._request_snapshot, symbol)

    async def _quarantine(self, raw, reason: str, symbol: str = "", counted: bool = True) -> None:
        if counted:
            self.quarantined[reason] += 1
        self._metrics.pending[("err", reason.split(" (")[0][:60])] += 1
        raw_s = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        await self._redis.xadd(QUARANTINE_STREAM, {"reason": reason, "symbol": symbol, "raw": raw_s[:4096]},
                               maxlen=QUARANTINE_MAXLEN, approximate=True)

    # ---- publishing ----------------------------------------------------------------------------

    def _first_time(self, symbol: str, kind: str, ts: int) -> bool:
        """False for a bar or feature row Redis already has (published before a restart, rebuilt after it
        from the checkpoint and the backfilled trades)."""
        if ts <= self._published_ts.get((symbol, kind), -1):
            return False
        self._published_ts[(symbol, kind)] = ts
        return True

    def _to_outbox(self, pipe: SymbolPipeline, updates: list[FeatureUpdate], t0: int,
                   event_ms: int | None = None) -> None:
        if not self._outbox:
            self._outbox_since = time.perf_counter_ns()
        self._outbox.append((pipe, updates, t0, event_ms))

    async def _send_outbox(self) -> None:
        """Publish the feature rows and 1m bars closed since the last call, in one Redis pipeline: at the
        live pace that is after every message that closed one; in a burst, every OUTBOX_MAX messages that
        closed rows or after OUTBOX_MAX_WAIT_NS. Sent in order (one sender at a time)."""
        async with self._sending:
            outbox, self._outbox = self._outbox, []
            if not outbox:
                return
            last: dict[str, SymbolPipeline] = {}
            bars = 0
            async with self._redis.pipeline(transaction=False) as p:
                for pipe, updates, t0, _ in outbox:
                    sym = pipe.symbol
                    last[sym] = pipe
                    # the wall time the message that closed these rows arrived: where tick -> prediction lag starts
                    tick_at = time.time() - (time.perf_counter_ns() - t0) / 1e9
                    for up in updates:
                        body = orjson.dumps({"symbol": sym, "ts_ns": up.ts_ns, "mid": up.mid, "features": up.features,
                                             "feature_set_version": FEATURE_SET_VERSION, "tick_received_at": tick_at,
                                             "published_at": time.time()})
                        if up is updates[-1]:
                            p.set(FEATURES_KEY.format(symbol=sym), body)
                        if self._first_time(sym, "row", up.ts_ns):
                            p.xadd(FEATURES_HISTORY.format(symbol=sym), {"doc": body},
                                   maxlen=self.opt.history_maxlen, approximate=True)
                            p.xadd(GRID_ROWS.format(symbol=sym), {"ts": up.ts_ns, "trade_id": up.grid_trade_id,
                                                                  "row": up.grid_row}, maxlen=LOOKBACK, approximate=True)
                        p.publish(FEATURES_CHANNEL, body)
                for sym, pipe in last.items():
                    for bar in pipe.closed_minutes:
                        if self._first_time(sym, "bar", bar["ts"]):
                            p.xadd(CLOSED_BARS_STREAM.format(symbol=sym), {"bar": orjson.dumps(bar)},
                                   maxlen=CLOSED_BARS_MAXLEN, approximate=True)
                            bars += 1
                    pipe.closed_minutes = []
                    state = pipe.state.snapshot(pipe.sync.book if pipe.sync.synced else None)
                    p.hset(STATE_KEY.format(symbol=sym), mapping={
                        k: ("nan" if isinstance(v, float) and math.isnan(v) else repr(v)) for k, v in state.items()})
                    live = {tf: orjson.dumps(bar) for tf, bar in self.live_bars(sym).items() if bar is not None}
                    if live:
                        p.hset(LIVE_BARS_KEY.format(symbol=sym), mapping=live)
                await p.execute()
        self.counts["bars closed"] += bars
        done_ns, now_ms = time.perf_counter_ns(), self._clock.now_ms()
        for pipe, updates, t0, event_ms in outbox:
            if not updates:
                continue  # a trade that closed a 1m bar and no feature row
            ms = (done_ns - t0) / 1e6
            self._latency.append(ms)
            self._samples.append(ms)
            if event_ms:
                self._lag[pipe.symbol] = now_ms - event_ms
            n = self.last_features.get(pipe.symbol, {}).get("n", 0) + len(updates)
            self.last_features[pipe.symbol] = {"n": n, "ts_ns": updates[-1].ts_ns}


def forget(r, symbols: list[str]) -> None:
    """Drop what Redis holds of these symbols' live state (checkpoints included), so the next connector
    starts clean instead of resuming: for replaying another session's capture."""
    keys = [k.format(symbol=s.upper()) for s in symbols
            for k in (CHECKPOINT_KEY, GRID_ROWS, FEATURES_KEY, FEATURES_HISTORY, STATE_KEY, CLOSED_BARS_STREAM,
                      LIVE_BARS_KEY)]
    r.delete(*keys)


def wait_for_messages(actor, count: int, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict:
    """Poll the actor until it has received ``count`` messages (or time runs out); return its stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = ray.get(actor.stats.remote())
        if stats["messages"].get("received", 0) >= count or time.monotonic() >= deadline:
            return stats
        time.sleep(poll_s)
