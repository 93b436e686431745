"""The venue's REST weight budget shared through Redis (tickray.market.budget): its limit per window across
clients, its pause for everyone on a 429, and its queue by priority. A real redis-server; the oracle is the
order and the counts written here."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis
from tickray.market.budget import RestBudget


def _run(settings, main):
    async def go():
        r = aioredis.from_url(settings.redis_url)
        try:
            return await main(r, f"test-{uuid.uuid4().hex[:8]}")  # a venue name of its own
        finally:
            await r.aclose()
    return asyncio.run(go())


def test_clients_together_stay_within_the_window_limit(redis_settings):
    """Three clients (three budgets on one Redis, as on three nodes) take 20 each, 12 times, against 60 a
    window of 0.5 s: no window ever counts more than 60, and 12 requests need at least 4 windows."""
    async def main(r, venue):
        budgets = [RestBudget(r, venue, 60, window_s=0.5, edge_s=0) for _ in range(3)]
        taken: list[float] = []

        async def client(b: RestBudget) -> None:
            for _ in range(4):
                await b.take(20)
                taken.append(time.time())

        await asyncio.gather(*(client(b) for b in budgets))
        return taken

    taken = _run(redis_settings, main)
    per_window: dict[int, int] = {}
    for t in taken:
        per_window[int(t // 0.5)] = per_window.get(int(t // 0.5), 0) + 20
    assert len(taken) == 12 and max(per_window.values()) <= 60, per_window
    assert len(per_window) >= 4


def test_a_429_pauses_every_client_and_the_venues_count_is_kept(redis_settings):
    async def main(r, venue):
        a, b = RestBudget(r, venue, 100, window_s=60), RestBudget(r, venue, 100, window_s=60)
        await a.pause(0.6, "429")
        t0 = time.monotonic()
        waited = await b.take(1)
        after_pause = time.monotonic() - t0
        await b.venue_counted(95)  # the venue counted more (another client on the IP)
        state = await a.state()
        return after_pause, waited, state

    after_pause, waited, state = _run(redis_settings, main)
    assert after_pause >= 0.5 and waited.why == "paused"
    assert state["used"] == 95 and state["limit"] == 100


def test_the_longest_waiting_books_are_fetched_first(redis_settings):
    """Five snapshots wait out a pause (a 429), then a budget that allows one per window with one slot at
    the head of the queue: they are granted in the order their books went unsynced, not the order they
    asked."""
    async def main(r, venue):
        budget = RestBudget(r, venue, 20, window_s=0.3, slots=1, edge_s=0)
        await budget.pause(0.3)  # all five ask during it: all queue
        granted: list[str] = []
        unsynced_since = {"ETH": 5.0, "BTC": 1.0, "SOL": 4.0, "XRP": 2.0, "ADA": 3.0}

        async def snapshot(sym: str) -> None:
            await budget.take(20, who=f"c:{sym}:depth", priority_ms=unsynced_since[sym])
            granted.append(sym)

        await asyncio.gather(*(snapshot(s) for s in unsynced_since))
        return granted

    assert _run(redis_settings, main) == ["BTC", "XRP", "ADA", "SOL", "ETH"]
