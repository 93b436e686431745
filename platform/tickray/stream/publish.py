"""Publishing: closed feature rows and 1m bars, the market state and the open bars, to Redis.

Rows wait in an outbox and go in one Redis pipeline: at the live pace after every message that closed
one; in a burst, every OUTBOX_MAX messages or after OUTBOX_MAX_WAIT_NS. A row or bar Redis already has
(published before a restart, rebuilt after it from the checkpoint and the backfilled trades) is not sent
again. Latency (receive → published, our clock) and lag (exchange event → published, the source's clock)
are measured here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

import orjson

from tickray.features import FEATURE_SET_VERSION, LOOKBACK
from tickray.stream.clock import SourceClock
from tickray.stream.context import ConnectorContext
from tickray.stream.keys import (
    CLOSED_BARS_MAXLEN,
    CLOSED_BARS_STREAM,
    FEATURES_CHANNEL,
    FEATURES_HISTORY,
    FEATURES_KEY,
    GRID_ROWS,
    LIVE_BARS_KEY,
    STATE_KEY,
)
from tickray.stream.messages import AggTrade, Trade
from tickray.stream.pipeline import FeatureUpdate, SymbolPipeline

# In a burst, closed feature rows go to Redis together: after this many messages that closed some...
OUTBOX_MAX = 32
OUTBOX_MAX_WAIT_NS = 10_000_000  # ...or once the oldest has waited this long (at the live pace: at once)


class Publisher:
    def __init__(self, ctx: ConnectorContext):
        self.ctx = ctx
        self.clock = SourceClock()
        self.latency: deque = deque(maxlen=20_000)  # ms, receive → published, the latest messages
        self.latency_by_symbol: dict[str, deque] = {}  # the same per symbol, the latest 2,000 of each
        self.samples: list[float] = []  # latencies not yet handed to the metrics
        self.lag: dict[str, float] = {}  # symbol → ms from the event time to published, on the source's clock
        self.last_features: dict[str, dict] = {}
        self.published_ts: dict[tuple[str, str], int] = {}  # (symbol, "bar" | "row") → newest in Redis
        # feature rows and bars closed, not yet in Redis: (pipeline, rows, receive perf_counter_ns, event ms)
        self._outbox: list[tuple[SymbolPipeline, list[FeatureUpdate], int, int | None]] = []
        self._outbox_since = 0  # perf_counter_ns when the oldest row in the outbox was put there
        self._sending = asyncio.Lock()

    def add(self, pipe: SymbolPipeline, updates: list[FeatureUpdate], t0: int, event_ms: int | None = None) -> None:
        if not self._outbox:
            self._outbox_since = time.perf_counter_ns()
        self._outbox.append((pipe, updates, t0, event_ms))

    def apply_trade(self, pipe: SymbolPipeline, ev: AggTrade | Trade, t0: int) -> None:
        """A trade into its pipeline; what it closed to the outbox."""
        updates = pipe.on_trade(ev)
        if updates or pipe.closed_minutes:
            self.add(pipe, updates, t0, ev.E)

    def due(self, nothing_queued: bool) -> bool:
        return bool(self._outbox) and (nothing_queued or len(self._outbox) >= OUTBOX_MAX
                                       or time.perf_counter_ns() - self._outbox_since > OUTBOX_MAX_WAIT_NS)

    async def load_published(self, symbol: str) -> None:
        """The newest bar and row Redis holds for ``symbol``: nothing older is sent again."""
        for kind, key, field_ in (("bar", CLOSED_BARS_STREAM, "bar"), ("row", FEATURES_HISTORY, "doc")):
            last = await self.ctx.redis.xrevrange(key.format(symbol=symbol), count=1)
            if last:
                doc = orjson.loads(last[0][1][field_.encode()])
                self.published_ts[(symbol, kind)] = doc["ts" if kind == "bar" else "ts_ns"]

    def forget_published(self, symbol: str) -> None:
        for kind in ("bar", "row"):
            self.published_ts.pop((symbol, kind), None)

    def _first_time(self, symbol: str, kind: str, ts: int) -> bool:
        if ts <= self.published_ts.get((symbol, kind), -1):
            return False
        self.published_ts[(symbol, kind)] = ts
        return True

    def live_bars(self, symbol: str) -> dict[str, dict | None]:
        """The open bar of each timeframe (1m and the configured ones), up to the last trade."""
        bars = self.ctx.pipes[symbol.upper()].bars
        return {tf: bars.current(tf) for tf in ("1m", *self.ctx.opt.bar_timeframes)}

    async def send(self) -> None:
        """Publish the outbox in one Redis pipeline, in order (one sender at a time)."""
        async with self._sending:
            outbox, self._outbox = self._outbox, []
            if not outbox:
                return
            last: dict[str, SymbolPipeline] = {}
            bars = 0
            async with self.ctx.redis.pipeline(transaction=False) as p:
                for pipe, updates, t0, _ in outbox:
                    last[pipe.symbol] = pipe
                    self._rows(p, pipe.symbol, updates, t0)
                for sym, pipe in last.items():
                    bars += self._bars_and_state(p, sym, pipe)
                await p.execute()
        self.ctx.counts["bars closed"] += bars
        self._measure(outbox)

    def _rows(self, p, sym: str, updates: list[FeatureUpdate], t0: int) -> None:
        # the wall time the message that closed these rows arrived: where tick -> prediction lag starts
        tick_at = time.time() - (time.perf_counter_ns() - t0) / 1e9
        for up in updates:
            body = orjson.dumps({"symbol": sym, "ts_ns": up.ts_ns, "mid": up.mid, "features": up.features,
                                 "book_synced": up.book_synced,
                                 "feature_set_version": FEATURE_SET_VERSION, "tick_received_at": tick_at,
                                 "published_at": time.time()})
            if up is updates[-1]:
                p.set(FEATURES_KEY.format(symbol=sym), body)
            if self._first_time(sym, "row", up.ts_ns):
                p.xadd(FEATURES_HISTORY.format(symbol=sym), {"doc": body},
                       maxlen=self.ctx.opt.history_maxlen, approximate=True)
                p.xadd(GRID_ROWS.format(symbol=sym), {"ts": up.ts_ns, "trade_id": up.grid_trade_id,
                                                      "row": up.grid_row}, maxlen=LOOKBACK, approximate=True)
            p.publish(FEATURES_CHANNEL, body)

    def _bars_and_state(self, p, sym: str, pipe: SymbolPipeline) -> int:
        bars = 0
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
        return bars

    def _measure(self, outbox: list) -> None:
        done_ns, now_ms = time.perf_counter_ns(), self.clock.now_ms()
        for pipe, updates, t0, event_ms in outbox:
            if not updates:
                continue  # a trade that closed a 1m bar and no feature row
            ms = (done_ns - t0) / 1e6
            self.latency.append(ms)
            self.samples.append(ms)
            mine = self.latency_by_symbol.get(pipe.symbol)
            if mine is None:
                mine = self.latency_by_symbol[pipe.symbol] = deque(maxlen=2000)
            mine.append(ms)
            if event_ms:
                self.lag[pipe.symbol] = now_ms - event_ms
            n = self.last_features.get(pipe.symbol, {}).get("n", 0) + len(updates)
            self.last_features[pipe.symbol] = {"n": n, "ts_ns": updates[-1].ts_ns}
