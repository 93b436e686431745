"""The venue's REST side, as a connector uses it: the depth snapshot a book syncs from (Binance's recipe:
buffer the diffs, fetch a snapshot, replay; at start and after every gap), the trades missed (fetched
from ``fromId`` and applied in order before the trade that showed them missing), and the server time
that lag is measured on."""

from __future__ import annotations

import asyncio
import time

import httpx

from tickray.stream.context import ConnectorContext
from tickray.stream.messages import AggTrade, Trade
from tickray.stream.pipeline import SymbolPipeline
from tickray.stream.publish import Publisher
from tickray.stream.telemetry import log_event

REST_PAGE = 1000  # trades per request, the venue's most


class VenueRest:
    def __init__(self, ctx: ConnectorContext, publisher: Publisher):
        self.ctx, self.publisher = ctx, publisher
        self._snapshot_tasks: dict[str, asyncio.Task] = {}

    async def backfill(self, pipe: SymbolPipeline, start: int, stop: int | None, e: str | None = None,
                       then: tuple[AggTrade | Trade, int] | None = None) -> None:
        """Trades ``start`` .. ``stop - 1`` (or up to the latest) from the venue's REST, applied in order;
        then the live trade ``then`` (payload, receive time) that showed them missing."""
        ctx = self.ctx
        e = e or ("aggTrade" if any(s.startswith(f"{pipe.symbol.lower()}@aggTrade") for s in ctx.streams)
                  else "trade")
        path = "aggTrades" if e == "aggTrade" else "historicalTrades"
        got = 0
        while stop is None or start < stop:
            limit = REST_PAGE if stop is None else min(REST_PAGE, stop - start)
            try:
                ctx.counts["rest weight"] += ctx.market.weight(path)
                r = await ctx.http.get(f"{ctx.rest_prefix}/{path}",
                                       params={"symbol": pipe.symbol, "fromId": start, "limit": limit})
                r.raise_for_status()
                rows = [rest_trade(row, e, pipe.symbol) for row in r.json()]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                ctx.counts[f"backfill failed: {type(exc).__name__}"] += 1
                log_event("backfill failed", symbol=pipe.symbol, from_id=start, detail=str(exc)[:200])
                break
            rows = [t for t in rows if t.id >= start and (stop is None or t.id < stop)]
            if not rows:
                break
            for d in rows:
                self.publisher.apply_trade(pipe, d, time.perf_counter_ns())
            await self.publisher.send()
            got += len(rows)
            start = rows[-1].id + 1
        if stop is not None and start < stop:
            ctx.counts["trades lost"] += stop - start  # the venue no longer has them: said, not hidden
        ctx.counts["trades backfilled"] += got
        ctx.metrics.pending[("event", "trades backfilled")] += got
        log_event("backfill", symbol=pipe.symbol, trades=got, next_id=start)
        if then is not None:
            self.publisher.apply_trade(pipe, *then)

    def request_snapshot(self, symbol: str) -> None:
        if symbol not in self._snapshot_tasks and not self.ctx.stopping:
            self._snapshot_tasks[symbol] = asyncio.get_running_loop().create_task(self._fetch_snapshot(symbol))

    async def _fetch_snapshot(self, symbol: str) -> None:
        ctx = self.ctx
        try:
            ctx.counts["rest weight"] += ctx.market.weight("depth")
            r = await ctx.http.get(f"{ctx.rest_prefix}/depth", params={"symbol": symbol, "limit": 1000})
            r.raise_for_status()
            ctx.counts["snapshots"] += 1
            pipe = ctx.pipes[symbol]
            resyncs = pipe.sync.counters.resyncs
            updates = pipe.on_snapshot(r.json())
            if updates:
                self.publisher.add(pipe, updates, time.perf_counter_ns())
                await self.publisher.send()
            if pipe.sync.counters.resyncs > resyncs:
                ctx.metrics.pending[("event", "book resync")] += 1
                log_event("book resync", symbol=symbol, last_update_id=pipe.sync.book.last_update_id)
        except (httpx.HTTPError, ValueError, KeyError) as e:
            ctx.counts[f"snapshot failed: {type(e).__name__}"] += 1
            log_event("snapshot failed", symbol=symbol, detail=str(e)[:200])
            await asyncio.sleep(1.0)  # the next diff asks again
        finally:
            self._snapshot_tasks.pop(symbol, None)
        if ctx.pipes[symbol].sync.needs_snapshot and not ctx.stopping:
            # The buffered diffs did not chain onto it: ask again even if no new diff comes to ask
            # (one a second at most: a 1000-level snapshot weighs 20 of the venue's 2,400 a minute).
            asyncio.get_running_loop().call_later(1.0, self.request_snapshot, symbol)

    async def clock_loop(self) -> None:
        """The venue's time every ``clock_sync_s``, for the publisher's source clock."""
        ctx, clock = self.ctx, self.publisher.clock
        while True:
            sent = time.time() * 1e3
            try:
                ctx.counts["rest weight"] += ctx.market.weight("time")
                r = await ctx.http.get(f"{ctx.rest_prefix}/time")
                r.raise_for_status()
                clock.observe(sent, float(r.json()["serverTime"]), time.time() * 1e3)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                ctx.counts[f"clock sync failed: {type(e).__name__}"] += 1
                clock.failed(f"{ctx.rest_prefix}/time: {type(e).__name__}: {str(e)[:120]}")
            await asyncio.sleep(ctx.opt.clock_sync_s)


def rest_trade(row: dict, e: str, symbol: str) -> AggTrade | Trade:
    """A REST trade row as the stream's event."""
    if e == "aggTrade":
        return AggTrade(s=symbol, a=int(row["a"]), p=float(row["p"]), q=float(row["q"]), T=int(row["T"]),
                        m=bool(row["m"]))
    return Trade(s=symbol, t=int(row["id"]), p=float(row["price"]), q=float(row["qty"]), T=int(row["time"]),
                 m=bool(row["isBuyerMaker"]))
