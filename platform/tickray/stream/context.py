"""One connector's options, and what its parts share (pipelines, stream list, counters, clients)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import httpx
import redis.asyncio as aioredis

from tickray.market.budget import RestBudget
from tickray.market.venues import StreamMarket
from tickray.stream.pipeline import SymbolPipeline
from tickray.stream.telemetry import StreamMetrics


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
    # The REST weight budget every connector and collector of the venue shares through Redis (see
    # tickray.market.budget): None takes the venue's limit and window; "cluster" scope when the nodes
    # leave through one address, a node's name where each has its own
    rest_weight_limit: int | None = None
    rest_window_s: float | None = None
    rest_budget_scope: str = "cluster"
    # Levels a book's REST snapshot asks for: 1000 (weight 20 on futures) knows the deep book at once;
    # 100 (weight 5) resyncs four times as many books a minute, deeper levels known as the diffs touch them
    snapshot_limit: int = 1000


@dataclass(eq=False)
class ConnectorContext:
    """What the parts of one connector share. ``streams`` is changed in place (SUBSCRIBE / UNSUBSCRIBE);
    the clients exist from ``start`` on."""
    opt: ConnectorOptions
    ws_url: str
    rest_url: str
    market: StreamMarket
    pipes: dict[str, SymbolPipeline] = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    metrics: StreamMetrics | None = None
    redis: aioredis.Redis | None = None
    budget: RestBudget | None = None
    http: httpx.AsyncClient | None = None
    stopping: bool = False

    @property
    def rest_prefix(self) -> str:
        return self.market.rest_prefix

    def symbol_depth(self, symbol: str) -> bool:
        """The symbol's book is streamed (a depth stream): it can be synced."""
        return any(n.startswith(f"{symbol.lower()}@depth") for n in self.streams)

    def symbol_streams(self, symbol: str) -> list[str]:
        return [n for n in self.streams if n.split("@", 1)[0].upper() == symbol]
