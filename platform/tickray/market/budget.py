"""A venue's REST request weight, budgeted per window and shared through Redis by every client of one
venue and IP (the stream connectors of a cluster, the kline collector), so that a mass resync of hundreds
of books never gets the IP banned.

The venue counts weight per window (Binance: per minute, ``X-MBX-USED-WEIGHT-1M``) and answers 429 with
``Retry-After`` past its limit, then 418 (a ban of minutes to days) to a client that keeps asking. Here:

- a request takes its weight from the window's count in Redis before it is sent, and waits for the next
  window when the count would pass the limit; weight taken in a window's last moments is counted in the
  next window too (the request may reach the venue after its window turned);
- the venue's own count, when it tells it, raises ours (other clients on the IP count too);
- a 429 or 418 pauses every client until its ``Retry-After`` has passed;
- requests with a priority queue for the budget: only the ``slots`` oldest waiting may take weight, so
  the books unsynced longest are fetched first (a waiter that stops asking leaves the queue).

Everything happens in one Lua script per step, on Redis's clock, so clients on other nodes agree.
:class:`LocalBudget` keeps the same rules in one process, for a client without Redis.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

PREFIX = "tickray:rest"

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member, slots = ARGV[5], tonumber(ARGV[7])
if member ~= '' then
  redis.call('ZADD', KEYS[3], 'NX', ARGV[6], member)
  redis.call('HSET', KEYS[4], member, now)
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, slots - 1)) do
    if now - tonumber(redis.call('HGET', KEYS[4], m) or '0') > tonumber(ARGV[8]) then
      redis.call('ZREM', KEYS[3], m)
      redis.call('HDEL', KEYS[4], m)
    end
  end
end
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {paused, 'paused'} end
if member ~= '' and redis.call('ZRANK', KEYS[3], member) >= slots then return {25, 'queued'} end
local window_ms, weight = tonumber(ARGV[3]), tonumber(ARGV[1])
local w = math.floor(now / window_ms)
local key = KEYS[1] .. ':' .. w
if tonumber(redis.call('GET', key) or '0') + weight > tonumber(ARGV[2]) then
  return {(w + 1) * window_ms - now + 5, 'budget'}
end
redis.call('INCRBY', key, weight)
redis.call('PEXPIRE', key, 3 * window_ms)
if (w + 1) * window_ms - now < tonumber(ARGV[4]) then
  local nxt = KEYS[1] .. ':' .. (w + 1)
  redis.call('INCRBY', nxt, weight)
  redis.call('PEXPIRE', nxt, 3 * window_ms)
end
if member ~= '' then
  redis.call('ZREM', KEYS[3], member)
  redis.call('HDEL', KEYS[4], member)
end
return {0, 'ok'}
"""

_COUNTED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_ms = tonumber(ARGV[2])
local key = KEYS[1] .. ':' .. math.floor(now / window_ms)
if tonumber(redis.call('GET', key) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', key, ARGV[1], 'PX', 3 * window_ms)
end
return 0
"""

_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
return 0
"""


@dataclass
class Taken:
    waited_s: float = 0.0
    why: str = ""  # what it waited for longest: paused, queued or budget


class _Gate:
    """At most ``n`` holders at a time, the waiting ones let in lowest priority first: a client's hundreds
    of waiting requests do not all poll Redis (nor exhaust its connection pool), its oldest do."""

    def __init__(self, n: int):
        self.free, self._waiting, self._seq = n, [], itertools.count()

    async def acquire(self, priority: float) -> None:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed the slot as it was cancelled: pass it on
            raise

    async def yield_to_better(self, priority: float) -> None:
        """Hand this holder's slot to a waiter with a lower priority, if any, and wait for it again."""
        if self._waiting and self._waiting[0][0] < priority:
            self.release()
            await self.acquire(priority)

    def release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class RestBudget:
    """One venue's weight budget for one IP (``scope``: the cluster's by default, where every node leaves
    through one address; a node's own address where each has its own)."""

    def __init__(self, redis: aioredis.Redis, venue: str, limit: int, window_s: float = 60.0,
                 scope: str = "cluster", slots: int = 4, edge_s: float | None = None):
        self.redis, self.limit, self.window_ms, self.slots = redis, limit, int(window_s * 1000), slots
        self.edge_ms = int(1000 * (edge_s if edge_s is not None else min(0.25, window_s / 10)))
        base = f"{PREFIX}:{venue}:{scope}"
        self.keys = [f"{base}:used", f"{base}:paused", f"{base}:queue", f"{base}:seen"]
        self._gate = _Gate(slots)  # this client's waiters that ask Redis: as many as the queue's head holds
        self._take = redis.register_script(_TAKE)
        self._counted = redis.register_script(_COUNTED)
        self._pause = redis.register_script(_PAUSE)

    async def take(self, weight: int, who: str = "", priority_ms: float = 0.0) -> Taken:
        """Wait until ``weight`` may be spent, and spend it. ``who`` (unique per request in flight) with
        ``priority_ms`` (lower first: the time a book went unsynced) queues it; without, it only waits
        for the budget and pauses."""
        loop = asyncio.get_running_loop()
        t0, waited = loop.time(), {}
        rank = priority_ms if who else float("-inf")
        await self._gate.acquire(rank)
        try:
            while True:
                await self._gate.yield_to_better(rank)
                wait_ms, why = await self._take(keys=self.keys, args=[
                    weight, self.limit, self.window_ms, self.edge_ms, who, priority_ms, self.slots, 2000])
                if wait_ms <= 0:
                    return Taken(loop.time() - t0, max(waited, key=waited.get) if waited else "")
                why = why.decode() if isinstance(why, bytes) else why
                step = min(wait_ms, 500) / 1000  # a waiter asks again at least twice a second: it stays queued
                waited[why] = waited.get(why, 0.0) + step
                await asyncio.sleep(step)
        finally:
            self._gate.release()

    async def venue_counted(self, used: int | None) -> None:
        """The venue's count of this window's weight (its header), where it is higher than ours."""
        if used is not None:
            await self._counted(keys=self.keys[:1], args=[int(used), self.window_ms])

    async def pause(self, seconds: float, why: str = "429") -> None:
        """Nobody asks for ``seconds`` (a 429's or 418's Retry-After)."""
        await self._pause(keys=self.keys[1:2], args=[max(1, int(seconds * 1000)), why])

    async def state(self) -> dict:
        """This window's weight used, the pause left (s) and how many requests wait in the queue."""
        t = await self.redis.time()
        now = t[0] * 1000 + t[1] // 1000
        used = await self.redis.get(f"{self.keys[0]}:{now // self.window_ms}")
        paused = await self.redis.pttl(self.keys[1])
        return {"used": int(used or 0), "limit": self.limit, "paused_s": max(paused, 0) / 1000,
                "queued": await self.redis.zcard(self.keys[2])}


class LocalBudget:
    """:class:`RestBudget`'s rules (no queue) kept in this process."""

    def __init__(self, limit: int, window_s: float = 60.0, edge_s: float | None = None):
        self.limit, self.window_s = limit, window_s
        self.edge_s = edge_s if edge_s is not None else min(0.25, window_s / 10)
        self.window, self.used, self.carried, self.pause_until = -1, 0, 0, 0.0

    def _roll(self) -> None:
        w = int(time.time() // self.window_s)
        if w != self.window:
            self.used = self.carried if w == self.window + 1 else 0
            self.window, self.carried = w, 0

    async def take(self, weight: int, who: str = "", priority_ms: float = 0.0) -> Taken:
        t0, why = time.monotonic(), ""
        while True:
            now = time.time()
            if now < self.pause_until:
                why = "paused"
                await asyncio.sleep(self.pause_until - now)
                continue
            self._roll()
            if self.used + weight <= self.limit:
                self.used += weight
                if (self.window + 1) * self.window_s - now < self.edge_s:
                    self.carried += weight
                return Taken(time.monotonic() - t0, why)
            why = why or "budget"
            await asyncio.sleep((self.window + 1) * self.window_s - now + 0.01)

    async def venue_counted(self, used: int | None) -> None:
        self._roll()
        if used is not None and used > self.used:
            self.used = used

    async def pause(self, seconds: float, why: str = "429") -> None:
        self.pause_until = max(self.pause_until, time.time() + seconds)
