"""The venues' own rules, as their documentation states them: REST endpoints, rows per request, request
weights and the budget per window, streams per connection. The clients (the stream connector, the kline
collector) follow them; the local stand-ins in :mod:`tickray.sim` enforce the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

# Venues as tickray names them (``binance-usdm``, ``binance-cm``, ``binance-spot``, ...), from the names
# vendors give the same feeds: Tardis.dev's exchanges, cryptofeed's (upper case), hftbacktest's markets.
VENUE_ALIASES = {"binance-futures": "binance-usdm", "binance-delivery": "binance-cm", "binance": "binance-spot"}


def venue_name(vendor_name: str) -> str:
    """tickray's name for a vendor's name of a venue; a venue tickray has no name for is kept as given."""
    name = vendor_name.lower().replace("_", "-")
    return VENUE_ALIASES.get(name, name)


@dataclass(frozen=True)
class StreamMarket:
    """A Binance market's WebSocket rules and the REST prefix its snapshots, trades and time come from.

    The numbers are the venue's documentation as read on 2026-12-08 (developers.binance.com, "Websocket
    Market Streams" of USDⓈ-M, COIN-M and spot, and USDⓈ-M's "Important WebSocket Change Notice"):
    1,024 streams a connection; 10 incoming messages (SUBSCRIBE and friends) a second a connection on the
    futures markets, 5 on spot; a connection lives 24 h; spot allows 300 connection attempts per 5 minutes
    per IP, and the futures pages name no number, so the same is kept there. USDⓈ-M routes streams by
    path since 2026-04-23 (the unrouted URLs are retired): ``/public`` carries the high-frequency book
    streams, ``/market`` the rest; a connection carries one route's streams only."""
    rest_prefix: str
    max_streams: int = 1024  # streams one connection may carry
    requests_per_s: float = 10.0  # SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS a connection may send
    connection_life_s: float = 24 * 3600.0
    connects_per_window: int = 300  # connection attempts per IP ...
    connect_window_s: float = 300.0  # ... per this window
    routed: bool = False  # streams go to /public or /market (see route)
    rest_weight_limit: int = 2400  # REST request weight per IP ...
    rest_window_s: float = 60.0  # ... per this window
    # REST request weights of what a connector asks: a page of trades, the time, the listing; depth's by
    # its limit, in steps (limit up to the step → weight): futures 50 → 2, 100 → 5, 500 → 10, 1000 → 20
    weights: tuple[tuple[str, int], ...] = (("aggTrades", 20), ("historicalTrades", 20), ("time", 1),
                                            ("exchangeInfo", 1), ("ticker", 40))
    depth_weights: tuple[tuple[int, int], ...] = ((50, 2), (100, 5), (500, 10), (1000, 20))

    def weight(self, endpoint: str, limit: int = 1000) -> int:
        if endpoint == "depth":
            return next((w for most, w in self.depth_weights if limit <= most), self.depth_weights[-1][1])
        return dict(self.weights).get(endpoint, 1)

    def route(self, stream: str) -> str:
        """The URL path a stream (``btcusdt@depth@0ms``) is served on: ``""`` where the market does not
        route, else ``/public`` for the book streams and ``/market`` for the others."""
        if not self.routed:
            return ""
        kind = stream[1:] if stream.startswith("!") else stream.split("@", 1)[-1]  # !bookTicker: all symbols'
        return "/public" if kind.startswith(PUBLIC_ROUTE_STREAMS) else "/market"


# USDⓈ-M's /public route: book tickers, partial and diff depth, raw trades; every other stream is /market's
PUBLIC_ROUTE_STREAMS = ("bookTicker", "depth", "trade")

BINANCE_STREAM_MARKETS = {
    "usdm": StreamMarket("/fapi/v1", routed=True),
    "coinm": StreamMarket("/dapi/v1"),
    "spot": StreamMarket("/api/v3", requests_per_s=5.0, rest_weight_limit=6000,
                         weights=(("aggTrades", 4), ("historicalTrades", 25), ("time", 1), ("exchangeInfo", 20),
                                  ("ticker", 80)),
                         depth_weights=((100, 5), (500, 25), (1000, 50), (5000, 250))),
}


@dataclass(frozen=True)
class KlineEndpoint:
    """A venue's REST 1m kline endpoint and the limits it enforces."""
    base_url: str
    dialect: str  # "binance" or "upbit": how requests are asked and rows answered
    path: str
    limit: int  # rows per request
    weight_limit: int  # request weight per window
    window_s: float = 60.0


KLINE_ENDPOINTS = {
    "binance-usdm": KlineEndpoint("https://fapi.binance.com", "binance", "/fapi/v1/klines", 1500, 2400),
    "binance-spot": KlineEndpoint("https://api.binance.com", "binance", "/api/v3/klines", 1000, 6000),
    "upbit": KlineEndpoint("https://api.upbit.com", "upbit", "/v1/candles/minutes/1", 200, 10, window_s=1.0),
}
UPBIT_CANDLE_WEIGHT = 1  # every candle request counts one against the window's budget


def binance_kline_weight(limit: int) -> int:
    """USD-M futures ``/fapi/v1/klines`` request weight by ``limit``."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
