"""Arrow schemas of the data model (DESIGN.md): nanosecond UTC timestamps everywhere."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

TS = pa.timestamp("ns", tz="UTC")

TRADE = pa.schema([
    ("ts", TS), ("symbol", pa.string()), ("price", pa.float64()), ("qty", pa.float64()),
    ("side", pa.int8()),  # +1 buyer was the aggressor, -1 seller
    ("trade_id", pa.int64()),
])

# What a stream actor received, as received: the receive time, the combined-stream name and the text.
WS_RAW = pa.schema([("ts", TS), ("symbol", pa.string()), ("stream", pa.string()), ("msg", pa.string())])

BAR = pa.schema([
    ("ts", TS), ("symbol", pa.string()), ("open", pa.float64()), ("high", pa.float64()),
    ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64()),
    ("quote_volume", pa.float64()), ("trades", pa.int64()), ("vwap", pa.float64()),
    ("buy_volume", pa.float64()),  # taker buy volume; null where the vendor does not give it
])

# Bars are kept at the length they came in: 1m (from trades, klines and most vendors' candles) and, where a
# vendor's candles are longer, that length (bars_5m, bars_1h, bars_1d, ...), never split into shorter ones.
# Only lengths that divide a day: a day's partition then holds whole bars, each starting where UTC
# epoch-minutes is a multiple of its length, so longer bars are built from any of them alike.
_BAR_DATASET = re.compile(r"^bars_(\d+)([mhd])$")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440}


def bars_dataset_name(minutes: int) -> str:
    """The dataset of bars ``minutes`` long: ``bars_1m``, ``bars_5m``, ``bars_1h``, ``bars_1d``."""
    if minutes <= 0 or 1440 % minutes:
        raise ValueError(f"bars of {minutes} minutes: the lake keeps bars whose length divides a day "
                         "(1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d)")
    unit = "d" if minutes == 1440 else "h" if minutes % 60 == 0 else "m"
    return f"bars_{minutes // _UNIT_MINUTES[unit]}{unit}"


def bar_minutes(dataset: str) -> int | None:
    """How long the bars of a dataset are (``bars_1h`` → 60); None for a dataset that is not bars."""
    m = _BAR_DATASET.match(dataset)
    return int(m[1]) * _UNIT_MINUTES[m[2]] if m else None


OPEN_INTEREST = pa.schema([("ts", TS), ("symbol", pa.string()), ("open_interest", pa.float64())])

# Perpetual futures' mark and index prices and funding rate, each null where the source does not carry it
# (Binance's monthly fundingRate files give only the rate settled at each funding time). ``funding_ts`` is
# the funding time the rate belongs to: the next one for a live or predicted rate, the settled one for a
# settled rate.
FUNDING = pa.schema([
    ("ts", TS), ("symbol", pa.string()), ("mark_price", pa.float64()), ("index_price", pa.float64()),
    ("funding_rate", pa.float64()), ("predicted_funding_rate", pa.float64()), ("funding_ts", TS),
])

# Forced orders: ``side`` is the liquidation order's (+1 a buy, closing a short; -1 a sell, closing a long).
LIQUIDATION = pa.schema([
    ("ts", TS), ("symbol", pa.string()), ("side", pa.int8()), ("price", pa.float64()), ("qty", pa.float64()),
    ("liquidation_id", pa.int64()),  # null where the venue gives none
])


# What an exchange says an instrument is (Databento's ``definition`` records): ``symbol`` is tickray's name
# (an option's ``<root>-<YYYYMMDD>-<strike>-<C|P>``, as the generic CSV reader names them; else the raw
# symbol), ``raw_symbol`` the venue's. ``ts`` is when the definition was received; each field null where
# the venue gives none.
INSTRUMENT = pa.schema([
    ("ts", TS), ("symbol", pa.string()), ("raw_symbol", pa.string()), ("instrument_id", pa.int64()),
    ("instrument_class", pa.string()),  # future, call, put, stock, future_spread, ...
    ("tick_size", pa.float64()), ("multiplier", pa.float64()), ("expiration", TS), ("strike", pa.float64()),
    ("right", pa.string()),  # C or P for an option
    ("underlying", pa.string()), ("currency", pa.string()), ("exchange", pa.string()),
])

# The exchange's settlement prices (Databento ``statistics``), preliminary and final alike, as published.
SETTLEMENT = pa.schema([("ts", TS), ("symbol", pa.string()), ("price", pa.float64())])


def book_schema(levels: int) -> pa.Schema:
    """Top-N book: price and size per level and side, plus the order count where the venue gives it
    (CME, LOBSTER-style feeds; null for Binance). One schema for every venue, so one lake dataset."""
    fields = [("ts", TS), ("symbol", pa.string())]
    for side in ("bid", "ask"):
        fields += [(f"{side}_px_{i}", pa.float64()) for i in range(1, levels + 1)]
        fields += [(f"{side}_sz_{i}", pa.float64()) for i in range(1, levels + 1)]
    for side in ("bid", "ask"):
        fields += [(f"{side}_ct_{i}", pa.int64()) for i in range(1, levels + 1)]
    return pa.schema(fields)


def conform_book(columns: dict[str, pa.Array | np.ndarray], n_rows: int, levels: int) -> pa.Table:
    """A book table in book_schema(levels) from whatever levels a source has: missing levels and counts
    are null, deeper levels are dropped."""
    schema = book_schema(levels)
    out = []
    for f in schema:
        col = columns.get(f.name)
        out.append(pa.nulls(n_rows, f.type) if col is None else pa.array(col, type=f.type, from_pandas=True))
    return pa.Table.from_arrays(out, schema=schema)
