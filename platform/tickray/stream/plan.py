"""Planning connectors for many symbols: which symbols each connector streams, within the venue's rules.

A connector is one actor holding one WebSocket per route (see :mod:`~tickray.stream.connection`); it may
carry at most the venue's ``max_streams`` on each route, and one actor processes a bounded message rate
(``rate_per_connector``: bench_stream measures 56-61k msg/s for one actor on this machine; the default
keeps room for bursts several times the day's average). The plan uses as few connectors as those two
limits allow (and at least ``min_connectors``, e.g. one per node), then balances them by expected message
rate, not by count: symbols are placed busiest first, each on the connector with the lowest rate so far
that still has room for its streams (longest-processing-time first: within 4/3 of the best balance).

Expected rates come from the venue's 24 h ticker (its trade count): unpaced streams (``@depth@0ms``,
``@bookTicker``, ``@aggTrade``, ``@trade``) scale with trading, paced ones (``@depth@100ms``,
``@kline_1m``, ``@markPrice@1s``) send at most their pace. These are estimates for the plan; a running
connector reports its measured rate (``tickray status``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from tickray.errors import ConfigError
from tickray.market.venues import StreamMarket

DAY_S = 86_400.0
# messages per trade of the unpaced streams, from the real BTCUSDT capture (tests/data in ../shared):
# @depth@0ms sends about one diff per trade, @bookTicker about two
PER_TRADE = {"aggTrade": 1.0, "trade": 1.0, "depth": 1.0, "bookTicker": 2.0}
PACED = re.compile(r"@(\d+)(ms|s)$")  # depth@100ms, markPrice@1s: at most one message per period


@dataclass
class PlannedConnector:
    name: str
    symbols: list[str] = field(default_factory=list)
    rate: float = 0.0  # expected messages per second
    streams_per_route: dict[str, int] = field(default_factory=dict)


def stream_rate(stream: str, trades_per_s: float) -> float:
    """Expected messages per second of one symbol's stream (``depth@0ms``, ``kline_1m``, ...)."""
    kind = stream.split("@", 1)[0]
    per = next((v for k, v in PER_TRADE.items() if kind == k or (k != "depth" and kind.startswith(k))), None)
    unpaced = trades_per_s * (per or 1.0)
    paced = PACED.search(stream)
    if paced:
        period_s = int(paced.group(1)) / (1000.0 if paced.group(2) == "ms" else 1.0)
        return unpaced if period_s == 0 else min(1.0 / period_s, unpaced if per else 1.0 / period_s)
    if kind.startswith(("depth", "kline", "continuousKline")):
        return min(4.0, unpaced)  # every 250 ms at most (futures' default depth pace, kline updates)
    return unpaced if per else 1.0  # markPrice, forceOrder and the like: about one a second or fewer


def symbol_rate(streams: list[str], trades_per_s: float) -> float:
    return sum(stream_rate(s, trades_per_s) for s in streams)


def streams_per_route(market: StreamMarket, streams: list[str]) -> dict[str, int]:
    """How many of one symbol's ``streams`` (``depth@0ms``, ...) each route of the market carries."""
    return dict(Counter(market.route(f"x@{s}") for s in streams))


def plan_connectors(trades_per_s: dict[str, float], streams: list[str], market: StreamMarket, prefix: str,
                    rate_per_connector: float = 20_000.0, min_connectors: int = 1) -> list[PlannedConnector]:
    """Connectors named ``<prefix>-1`` ... (``<prefix>`` alone when one is enough) for every symbol of
    ``trades_per_s`` (symbol → its trades per second) with ``streams`` each."""
    if not trades_per_s:
        raise ConfigError("stream: no symbols to plan")
    per_route = streams_per_route(market, streams)
    widest = max(per_route.values())
    if widest > market.max_streams:
        raise ConfigError(f"stream: {widest} streams per symbol on one route; the venue allows "
                          f"{market.max_streams} a connection")
    rates = {sym: symbol_rate(streams, max(t, 0.0)) for sym, t in trades_per_s.items()}
    busiest = max(rates.values())
    if busiest > rate_per_connector:
        raise ConfigError(f"stream: {max(rates, key=rates.get)} alone is expected to send {busiest:,.0f} msg/s, "
                          f"more than one connector takes ({rate_per_connector:,.0f})")
    per_connector = market.max_streams // widest  # symbols one connector's widest route holds
    k = max(min_connectors, math.ceil(len(rates) / per_connector), math.ceil(sum(rates.values()) / rate_per_connector))
    while True:
        plan = _place(rates, k, per_connector, rate_per_connector)
        if plan is not None:
            break
        k += 1  # the rates did not pack into k: one more
    names = [prefix] if k == 1 else [f"{prefix}-{i + 1}" for i in range(k)]
    out = []
    for name, (symbols, rate) in zip(names, plan):
        out.append(PlannedConnector(name, sorted(symbols), rate, {r: n * len(symbols) for r, n in per_route.items()}))
    return [c for c in out if c.symbols]


def _place(rates: dict[str, float], k: int, per_connector: int, rate_cap: float) -> list | None:
    bins: list[tuple[list[str], float]] = [([], 0.0) for _ in range(k)]
    for sym in sorted(rates, key=lambda s: (-rates[s], s)):
        room = [i for i, (syms, rate) in enumerate(bins) if len(syms) < per_connector and rate + rates[sym] <= rate_cap]
        if not room:
            return None
        i = min(room, key=lambda j: (bins[j][1], len(bins[j][0])))
        bins[i] = (bins[i][0] + [sym], bins[i][1] + rates[sym])
    return bins


def venue_listing(rest_url: str, market: StreamMarket, symbols: list[str] | None = None) -> dict[str, float]:
    """Symbol → trades per second over the venue's last 24 h, for ``symbols`` or, when None, every symbol
    its exchange info lists as trading (two requests: exchangeInfo, weight 1, and ticker/24hr for all
    symbols, weight 40 of the 2,400 a minute)."""
    import httpx

    base = f"{rest_url.rstrip('/')}{market.rest_prefix}"
    try:
        with httpx.Client(timeout=30) as http:
            if symbols is None:
                r = http.get(f"{base}/exchangeInfo")
                r.raise_for_status()
                symbols = [s["symbol"] for s in r.json()["symbols"] if s.get("status") == "TRADING"]
            r = http.get(f"{base}/ticker/24hr")
            r.raise_for_status()
            counts = {row["symbol"]: float(row.get("count") or 0) for row in r.json()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"stream: the venue's listing at {base} could not be read ({type(e).__name__}: {e})") from None
    unknown = [s for s in symbols if s not in counts]
    if unknown:
        raise ConfigError(f"stream: {', '.join(unknown[:10])} not listed by the venue at {base}")
    return {s: counts[s] / DAY_S for s in symbols}
