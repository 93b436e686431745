"""Arrow schemas of the data model (DESIGN.md): nanosecond UTC timestamps everywhere."""

from __future__ import annotations

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
