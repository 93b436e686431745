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
    """A Binance market's WebSocket side and the REST prefix its snapshots, trades and time come from."""
    rest_prefix: str
    max_streams: int  # streams one connection may carry


BINANCE_STREAM_MARKETS = {
    "usdm": StreamMarket("/fapi/v1", 200),
    "coinm": StreamMarket("/dapi/v1", 200),
    "spot": StreamMarket("/api/v3", 1024),
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
