"""The stream supervisor: one detached actor that owns the cluster's connectors.

It starts, stops and lists connectors (each a detached :class:`StreamIngestActor` named
``tickray-stream-<name>``), and watches them: a connector that Ray restarted after a crash is counted (its
incarnation changed), one that is gone for good (restarts exhausted, its node lost, killed) is created
again from its spec, and one that stops answering is reported, then replaced. Connectors resume from their
Redis checkpoints, so a replacement counts nothing twice and fetches what it missed.

The specs live in Redis (``tickray:stream:connectors``), so a supervisor that Ray restarts adopts the
connectors still running and recreates the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field

import orjson
import ray
import redis.asyncio as aioredis

from tickray.errors import ConfigError
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.stream.actor import StreamIngestActor
from tickray.stream.context import ConnectorOptions
from tickray.stream.messages import stream_names
from tickray.stream.plan import streams_per_route
from tickray.stream.telemetry import log_event

NAMESPACE = "tickray"
SUPERVISOR = "tickray-stream-supervisor"
CONNECTOR_PREFIX = "tickray-stream-"
SPECS_KEY = "tickray:stream:connectors"

log = logging.getLogger("tickray.stream")


@dataclass
class ConnectorSpec:
    name: str
    symbols: list[str]
    streams: list[str]
    ws_url: str
    rest_url: str
    redis_url: str
    options: dict = field(default_factory=dict)  # ConnectorOptions fields

    def connector_options(self) -> ConnectorOptions:
        return ConnectorOptions(**{**self.options, "name": self.name, "autostart": True})


@dataclass
class _Watch:
    incarnation: str | None = None
    restarts: int = 0  # by Ray (same actor, new process) or by us (a new actor)
    unanswered: int = 0  # checks in a row without an answer
    last: dict = field(default_factory=dict)  # the latest stats
    checked_at: float = 0.0
    received_before: tuple[float, int] = (0.0, 0)  # (time, messages) at the previous check, for the rate
    rate: float = 0.0
    problem: str = ""
    node: str = ""  # the node the connector runs on


@ray.remote(num_cpus=0)
class StreamSupervisor:
    def __init__(self, redis_url: str, check_s: float = 5.0, stale_s: float = 60.0, replace_after: int = 6):
        self.redis = aioredis.from_url(redis_url)
        self.check_s, self.stale_s, self.replace_after = check_s, stale_s, replace_after
        self.specs: dict[str, ConnectorSpec] = {}
        self.watch: dict[str, _Watch] = {}
        self._actors: dict[str, ray.actor.ActorHandle] = {}
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    # ---- control -------------------------------------------------------------------------------

    async def start_connector(self, spec: dict) -> dict:
        s = ConnectorSpec(**spec)
        async with self._lock:
            await self._load()
            if s.name in self.specs:
                raise ConfigError(f"stream: connector {s.name!r} is already running; stop it first")
            taken = {sym for other in self.specs.values() for sym in other.symbols} & set(s.symbols)
            if taken:
                raise ConfigError(f"stream: {', '.join(sorted(taken))} already streamed by another connector "
                                  "(one connector per symbol: they share its checkpoint)")
            s.connector_options()  # bad options fail here, not in a detached actor
            self.specs[s.name] = s
            await self.redis.hset(SPECS_KEY, s.name, orjson.dumps(asdict(s)))
            self._create(s)
        return {"name": s.name, "actor": CONNECTOR_PREFIX + s.name}

    async def stop_connector(self, name: str) -> dict:
        async with self._lock:
            await self._load()
            if name not in self.specs:
                raise ConfigError(f"stream: no connector named {name!r} is running")
            del self.specs[name]
            self.watch.pop(name, None)
            await self.redis.hdel(SPECS_KEY, name)
            actor = self._actors.pop(name, None) or _get(name)
            stats = {}
            if actor is not None:
                try:
                    await asyncio.wait_for(actor.stop.remote(), 60)  # flushes the lake, checkpoints
                    stats = await actor.stats.remote()
                except (ray.exceptions.RayError, TimeoutError):
                    pass
                ray.kill(actor, no_restart=True)
        log_event("connector stopped", name=name)
        return stats

    async def health(self) -> dict[str, dict]:
        """Per connector: ``status`` (ok, disconnected, stale, unanswered, restarting) and its figures."""
        await self._load()
        out = {}
        for name, spec in self.specs.items():
            w = self.watch.get(name, _Watch())
            st = w.last
            out[name] = {
                "status": w.problem or ("ok" if st else "starting"), "symbols": spec.symbols,
                "streams": spec.streams, "restarts": w.restarts, "messages_per_s": round(w.rate, 1),
                "connected": st.get("connected"), "received": st.get("messages", {}).get("received", 0),
                "quarantined": sum(st.get("quarantined", {}).values()),
                "book_gaps": sum(b["gaps"] for b in st.get("book", {}).values()),
                "unsynced": st.get("unsynced", []), "rest_weight": st.get("messages", {}).get("rest weight", 0),
                "node": w.node,
                "lag_ms": st.get("lag_ms", {}), "pipeline_ms": st.get("pipeline_ms", {}),
                "checked_at": w.checked_at,
            }
        return out

    async def add_symbols(self, group: str, symbols: list[str]) -> dict[str, list[str]]:
        """Stream ``symbols`` too, on the running connectors of ``group`` (its name, or its plan's
        ``<group>-N``): each goes to the connector taking the fewest messages a second that has room for
        its streams, and is SUBSCRIBEd on its live connections (the others carry on untouched)."""
        async with self._lock:
            await self._load()
            names = group_names(self.specs, group)
            taken = {sym for spec in self.specs.values() for sym in spec.symbols} & set(symbols)
            if taken:
                raise ConfigError(f"stream: {', '.join(sorted(taken))} already streamed")
            added: dict[str, list[str]] = {}
            # measured msg/s; each symbol added counts as its connector's average symbol until measured
            load = {n: self.watch[n].rate if n in self.watch else 0.0 for n in names}
            for sym in symbols:
                name = min((n for n in names if self._room(self.specs[n], 1)),
                           key=lambda n: (load[n], len(self.specs[n].symbols)), default=None)
                if name is None:
                    raise ConfigError(f"stream: no connector of {group!r} has room for {sym}'s streams; start another")
                load[name] += load[name] / max(len(self.specs[name].symbols), 1)
                self.specs[name].symbols.append(sym)
                added.setdefault(name, []).append(sym)
            for name, syms in added.items():
                await self._resubscribe(name, "subscribe", syms)
        log_event("symbols added", group=group, added=added)
        return added

    async def remove_symbols(self, group: str, symbols: list[str]) -> dict[str, list[str]]:
        """Stop streaming ``symbols`` (UNSUBSCRIBE on their connectors' live connections)."""
        async with self._lock:
            await self._load()
            removed: dict[str, list[str]] = {}
            for name in group_names(self.specs, group):
                mine = [sym for sym in symbols if sym in self.specs[name].symbols]
                if mine:
                    self.specs[name].symbols = [sym for sym in self.specs[name].symbols if sym not in mine]
                    removed[name] = mine
                    await self._resubscribe(name, "unsubscribe", mine)
            missing = set(symbols) - {sym for syms in removed.values() for sym in syms}
            if missing:
                raise ConfigError(f"stream: {', '.join(sorted(missing))} not streamed by {group!r}")
        log_event("symbols removed", group=group, removed=removed)
        return removed

    def _room(self, spec: ConnectorSpec, more: int) -> bool:
        market = BINANCE_STREAM_MARKETS[spec.options.get("venue", "usdm")]
        return all(n * (len(spec.symbols) + more) <= market.max_streams
                   for n in streams_per_route(market, spec.streams).values())

    async def _resubscribe(self, name: str, how: str, symbols: list[str]) -> None:
        """The spec saved (a restart takes the new symbols), then the streams asked of the live actor."""
        spec = self.specs[name]
        await self.redis.hset(SPECS_KEY, name, orjson.dumps(asdict(spec)))
        streams = [n for sym in symbols for n in stream_names(sym, tuple(spec.streams))]
        actor = self._actors.get(name) or _get(name)
        if actor is not None:
            await getattr(actor, how).remote(streams)

    async def stats(self, name: str) -> dict:
        await self._load()
        if name not in self.specs:
            raise ConfigError(f"stream: no connector named {name!r} is running")
        return await (self._actors.get(name) or self._create(self.specs[name])).stats.remote()

    # ---- watching ------------------------------------------------------------------------------

    async def _load(self) -> None:
        """The specs from Redis (after a supervisor restart, or another supervisor's writes)."""
        for name, raw in (await self.redis.hgetall(SPECS_KEY)).items():
            name = name.decode()
            if name not in self.specs:
                self.specs[name] = ConnectorSpec(**orjson.loads(raw))

    def _create(self, s: ConnectorSpec) -> ray.actor.ActorHandle:
        actor = _get(s.name)
        if actor is None:
            actor = StreamIngestActor.options(
                name=CONNECTOR_PREFIX + s.name, namespace=NAMESPACE, lifetime="detached", max_restarts=-1,
                max_task_retries=-1, get_if_exists=True,
                scheduling_strategy="SPREAD").remote(  # a plan's connectors spread over the nodes
                s.symbols, s.ws_url, s.rest_url, s.redis_url, streams=tuple(s.streams), options=s.connector_options())
            log_event("connector created", name=s.name, symbols=s.symbols)
        self._actors[s.name] = actor
        return actor

    async def _watch_loop(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self._load()
                    await asyncio.gather(*(self._check(n) for n in list(self.specs)))
            except Exception:  # the watch must outlive any one bad check
                log.exception("stream supervisor check failed")
            await asyncio.sleep(self.check_s)

    async def _check(self, name: str) -> None:
        w = self.watch.setdefault(name, _Watch())
        actor = self._actors.get(name) or self._create(self.specs[name])
        try:
            st = await asyncio.wait_for(actor.stats.remote(), timeout=max(self.check_s, 5.0))
        except (ray.exceptions.RayActorError, TimeoutError) as e:
            gone = isinstance(e, ray.exceptions.ActorDiedError)  # for good: Ray will not bring it back
            w.problem = "restarting" if gone else "unanswered"
            w.unanswered += 1
            if gone or w.unanswered >= self.replace_after:
                await self._replace(name, w, type(e).__name__)
            return
        now = time.time()
        if w.incarnation is not None and st["incarnation"] != w.incarnation:
            w.restarts += 1  # Ray restarted the process: it resumed from its checkpoint
            log_event("connector restarted by Ray", name=name, incarnation=st["incarnation"])
        received = st["messages"].get("received", 0)
        t_prev, n_prev = w.received_before
        w.rate = (received - n_prev) / (now - t_prev) if t_prev and received >= n_prev else 0.0
        w.received_before, w.incarnation, w.last, w.checked_at, w.unanswered = (now, received), st["incarnation"], st, now, 0
        w.node = st.get("node", "")
        if not st["connected"]:
            w.problem = "disconnected"
        elif st["last_message_at"] and now - st["last_message_at"] > self.stale_s:
            w.problem = "stale"
        else:
            w.problem = ""

    async def _replace(self, name: str, w: _Watch, why: str) -> None:
        actor = self._actors.pop(name, None) or _get(name)
        if actor is not None:
            ray.kill(actor, no_restart=True)
            for _ in range(100):  # the name is free once Ray has the old actor down
                if _get(name) is None:
                    break
                await asyncio.sleep(0.1)
        w.restarts += 1
        w.unanswered, w.incarnation, w.received_before = 0, None, (0.0, 0)
        log_event("connector replaced", name=name, reason=why)
        self._create(self.specs[name])


def group_names(names, group: str) -> list[str]:
    """The connectors a name stands for: itself, or the ones a plan named <group>-1, <group>-2, ..."""
    return sorted((n for n in names if n == group or (n.startswith(f"{group}-") and n[len(group) + 1:].isdigit())),
                  key=lambda n: (len(n), n))


def _get(name: str):
    try:
        return ray.get_actor(CONNECTOR_PREFIX + name, namespace=NAMESPACE)
    except ValueError:
        return None


def supervisor(redis_url: str, check_s: float = 5.0, stale_s: float = 60.0):
    """The cluster's supervisor, started (detached) when there is none."""
    return StreamSupervisor.options(name=SUPERVISOR, namespace=NAMESPACE, lifetime="detached", max_restarts=-1,
                                    max_task_retries=-1, get_if_exists=True).remote(redis_url, check_s, stale_s)


def find_supervisor():
    try:
        return ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
    except ValueError:
        return None
