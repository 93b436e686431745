"""The venue's REST side, as a connector uses it: the depth snapshot a book syncs from (Binance's recipe:
buffer the diffs, fetch a snapshot, replay; at start and after every gap), the trades missed (fetched
from ``fromId`` and applied in order before the trade that showed them missing), and the server time
that lag is measured on.

Every request first takes its weight from the venue's budget that all connectors share
(:class:`~tickray.market.budget.RestBudget`): snapshots queue by how long their book has been unsynced,
a 429 or 418 pauses everyone for its ``Retry-After`` and the request is asked again after it."""

from __future__ import annotations

import asyncio
import time

import httpx
from redis.exceptions import RedisError

from tickray.stream.context import ConnectorContext
from tickray.stream.messages import AggTrade, Trade
from tickray.stream.pipeline import SymbolPipeline
from tickray.stream.publish import Publisher
from tickray.stream.telemetry import log_event

REST_PAGE = 1000  # trades per request, the venue's most
REFUSED = (418, 429)  # the venue's "too much": 429 past the limit, 418 a ban for asking on after a 429


class Refused(Exception):
    """The venue answered 429 or 418: everyone paused for its Retry-After; ask again after it."""


class VenueRest:
    def __init__(self, ctx: ConnectorContext, publisher: Publisher):
        self.ctx, self.publisher = ctx, publisher
        self._snapshot_tasks: dict[str, asyncio.Task] = {}
        self.unsynced_since: dict[str, float] = {}  # symbol → wall ms its book asked for a snapshot first
        self._unsynced_from = 0.0  # wall s the first of the books now unsynced went so
        self.resync_all_s: float | None = None  # how long the last time every book was unsynced took to end

    async def get(self, endpoint: str, params: dict | None = None, who: str = "", priority_ms: float = 0.0):
        """GET ``<prefix>/<endpoint>`` within the shared budget; the venue's count kept, its 429/418 obeyed."""
        ctx = self.ctx
        weight = ctx.market.weight(endpoint, (params or {}).get("limit", 500))
        await ctx.budget.take(weight, who, priority_ms)
        ctx.counts["rest weight"] += weight
        ctx.counts[f"rest weight: {endpoint}"] += weight
        r = await ctx.http.get(f"{ctx.rest_prefix}/{endpoint}", params=params)
        used = r.headers.get("x-mbx-used-weight-1m")
        if used and used.isdigit():
            await ctx.budget.venue_counted(int(used))
        if r.status_code in REFUSED:
            retry_after = float(r.headers.get("retry-after") or 1)
            ctx.counts[f"rest {r.status_code}"] += 1
            await ctx.budget.pause(retry_after, str(r.status_code))
            log_event("rest refused", status=r.status_code, retry_after_s=retry_after, endpoint=endpoint)
            raise Refused(f"{r.status_code}, Retry-After {retry_after:g} s")
        r.raise_for_status()
        return r

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
                r = await self.get(path, {"symbol": pipe.symbol, "fromId": start, "limit": limit},
                                   f"{ctx.opt.name}:{pipe.symbol}:trades", time.time() * 1000)
                rows = [rest_trade(row, e, pipe.symbol) for row in r.json()]
            except Refused:
                if ctx.stopping:
                    break
                continue  # the budget holds everyone until its Retry-After: then this page again
            except (httpx.HTTPError, ValueError, KeyError, TypeError, RedisError) as exc:
                ctx.counts[f"backfill failed: {type(exc).__name__}"] += 1
                log_event("backfill failed", symbol=pipe.symbol, from_id=start, detail=str(exc)[:200])
                break
            page = len(rows)
            rows = [t for t in rows if t.id >= start and (stop is None or t.id < stop)]
            if not rows:
                break
            for d in rows:
                self.publisher.apply_trade(pipe, d, time.perf_counter_ns())
            await self.publisher.send()
            got += len(rows)
            start = rows[-1].id + 1
            if stop is None and page < limit:
                break  # a short page: the venue has no more (not asked again, 20 weight saved)
        if stop is not None and start < stop:
            ctx.counts["trades lost"] += stop - start  # the venue no longer has them: said, not hidden
        ctx.counts["trades backfilled"] += got
        ctx.metrics.pending[("event", "trades backfilled")] += got
        log_event("backfill", symbol=pipe.symbol, trades=got, next_id=start)
        if then is not None:
            self.publisher.apply_trade(pipe, *then)

    def request_snapshot(self, symbol: str) -> None:
        if symbol not in self._snapshot_tasks and not self.ctx.stopping:
            if not self.unsynced_since:
                self._unsynced_from = time.time()
            self.unsynced_since.setdefault(symbol, time.time() * 1000)
            self._snapshot_tasks[symbol] = asyncio.get_running_loop().create_task(self._fetch_snapshot(symbol))

    def synced(self, symbol: str) -> None:
        """The symbol's book is synced again (by its snapshot, or by the diff that continued it)."""
        if self.unsynced_since.pop(symbol, None) is not None and not self.unsynced_since:
            self.resync_all_s = round(time.time() - self._unsynced_from, 3)

    async def _fetch_snapshot(self, symbol: str) -> None:
        ctx = self.ctx
        try:
            r = await self.get("depth", {"symbol": symbol, "limit": ctx.opt.snapshot_limit}, f"{ctx.opt.name}:{symbol}:depth",
                               self.unsynced_since.get(symbol, time.time() * 1000))
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
        except (httpx.HTTPError, ValueError, KeyError, Refused, RedisError) as e:  # RedisError: the budget's
            ctx.counts[f"snapshot failed: {type(e).__name__}"] += 1
            log_event("snapshot failed", symbol=symbol, detail=str(e)[:200])
            await asyncio.sleep(1.0)  # the next diff asks again
        finally:
            self._snapshot_tasks.pop(symbol, None)
        if ctx.pipes[symbol].sync.synced:
            self.synced(symbol)
        if ctx.pipes[symbol].sync.needs_snapshot and not ctx.stopping:
            # The buffered diffs did not chain onto it: ask again even if no new diff comes to ask
            # (one a second at most, within the shared budget: a 1000-level snapshot weighs 20 of 2,400 a minute).
            asyncio.get_running_loop().call_later(1.0, self.request_snapshot, symbol)

    async def clock_loop(self) -> None:
        """The venue's time every ``clock_sync_s``, for the publisher's source clock."""
        ctx, clock = self.ctx, self.publisher.clock
        while True:
            sent = time.time() * 1e3
            try:
                r = await self.get("time")
                clock.observe(sent, float(r.json()["serverTime"]), time.time() * 1e3)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, Refused, RedisError) as e:
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
