"""LOBSTER (NASDAQ) message + orderbook files: ``<TICKER>_<date>_<start>_<end>_{message,orderbook}_<N>.csv``.

Message columns: time (seconds after midnight, New York), event type, order id, size, price (×10⁴),
direction (the resting order's side). Orderbook row i is the book after message i: ask price, ask size,
bid price, bid size for each level. Executions (types 4 visible, 5 hidden) are the trades; the aggressor
is on the other side of the resting order. Empty levels carry the dummy prices ±9999999999.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
from pyarrow import csv as pacsv

from tickray.errors import DataFormatError
from tickray.lake.schema import TRADE, TS, conform_book
from tickray.sources.binance import read_bytes

NAME = re.compile(r"(?P<ticker>[A-Za-z.]+)_(?P<date>\d{4}-\d{2}-\d{2})_\d+_\d+_(?P<kind>message|orderbook)_(?P<n>\d+)")
NEW_YORK = ZoneInfo("America/New_York")
PRICE_SCALE = 10_000
EXECUTIONS = (4, 5)


def parse_name(path: Path) -> dict[str, str]:
    m = NAME.search(Path(path).name)
    if not m:
        raise DataFormatError(f"{path}: not a LOBSTER file name (<TICKER>_<date>_<start>_<end>_message_<N>.csv)")
    return m.groupdict()


def orderbook_path(message_path: Path) -> Path:
    return Path(str(message_path).replace("_message_", "_orderbook_"))


def _read(path: Path, ncols: int) -> np.ndarray:
    try:
        t = pacsv.read_csv(pa.py_buffer(read_bytes(path)),
                           read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    except pa.ArrowInvalid as e:
        raise DataFormatError(f"{path}: not a readable CSV ({e})") from None
    if t.num_columns == ncols + 1 and t.column(ncols).null_count == t.num_rows:
        t = t.drop_columns([t.column_names[ncols]])  # a trailing comma on every line: some LOBSTER downloads
    if t.num_columns != ncols:
        raise DataFormatError(f"{path}: {t.num_columns} columns, expected {ncols}")
    return np.column_stack([c.to_numpy(zero_copy_only=False).astype(np.float64) for c in t.columns]) \
        if t.num_rows else np.zeros((0, ncols))


NO_BOOK = "no orderbook file: the book after this message is unknown"


def read_lobster(message_path: Path, levels: int = 10) -> tuple[pa.Table, pa.Table, list]:
    """(trades, book, messages whose book is unknown as (ts ms, symbol, reason)) from a message file and
    its orderbook twin. Without the twin the trades still come from the messages; the book cannot be
    rebuilt from them (the book before the first message is not in the file), so every message is
    reported as one whose book is unknown."""
    meta = parse_name(message_path)
    n_levels = int(meta["n"])
    msg = _read(message_path, 6)
    book_path = orderbook_path(message_path)
    ob = _read(book_path, 4 * n_levels) if book_path.exists() else None
    if ob is not None and len(ob) != len(msg):
        raise DataFormatError(f"{book_path}: {len(ob)} rows but the message file has {len(msg)}")
    symbol = meta["ticker"].upper()
    midnight = datetime.fromisoformat(meta["date"]).replace(tzinfo=NEW_YORK)
    ts = int(midnight.timestamp()) * 1_000_000_000 + np.rint(msg[:, 0] * 1e9).astype(np.int64)
    ts_arr = pa.array(ts).cast(TS)

    ex = np.isin(msg[:, 1], EXECUTIONS)
    trades = pa.table({
        "ts": ts_arr.filter(pa.array(ex)), "symbol": pa.array([symbol] * int(ex.sum()), pa.string()),
        "price": msg[ex, 4] / PRICE_SCALE, "qty": msg[ex, 3],
        "side": (-msg[ex, 5]).astype(np.int8),  # a resting sell executed = a buyer-initiated trade
        # LOBSTER order ids repeat across partial fills and hidden executions carry id 0: the message
        # row number is the trade's identity within the file.
        "trade_id": np.flatnonzero(ex).astype(np.int64),
    }, schema=TRADE)

    if ob is None:
        return trades, conform_book({"ts": ts_arr.slice(0, 0), "symbol": pa.array([], pa.string())}, 0, levels), \
            [(int(t) // 1_000_000, symbol, NO_BOOK) for t in ts]
    cols: dict = {"ts": ts_arr, "symbol": pa.array([symbol] * len(msg), pa.string())}
    for i in range(1, min(levels, n_levels) + 1):
        base = 4 * (i - 1)
        ask_px, ask_sz, bid_px, bid_sz = (ob[:, base + j] for j in range(4))
        cols[f"ask_px_{i}"] = np.where(np.abs(ask_px) >= 9_999_999_999, np.nan, ask_px / PRICE_SCALE)
        cols[f"bid_px_{i}"] = np.where(np.abs(bid_px) >= 9_999_999_999, np.nan, bid_px / PRICE_SCALE)
        cols[f"ask_sz_{i}"] = np.where(np.isnan(cols[f"ask_px_{i}"]), np.nan, ask_sz)
        cols[f"bid_sz_{i}"] = np.where(np.isnan(cols[f"bid_px_{i}"]), np.nan, bid_sz)
    return trades, conform_book(cols, len(msg), levels), []
