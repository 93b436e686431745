"""CME futures: Databento MBP-1 CSV (top of book + trades) and 1-minute OHLCV bar CSVs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR, TRADE, TS, conform_book
from tickray.sources.binance import read_bytes

MBP1_COLUMNS = {"ts_recv_ns", "ts_event_ns", "symbol", "action", "side", "price", "size", "sequence",
                "bid_px_00", "ask_px_00", "bid_sz_00", "ask_sz_00", "bid_ct_00", "ask_ct_00"}
BAR_COLUMNS = {"timestamp_utc", "open", "high", "low", "close", "volume"}


def _csv(path: Path, required: set[str]) -> pa.Table:
    try:
        t = pacsv.read_csv(io.BytesIO(read_bytes(path)))
    except pa.ArrowInvalid as e:
        raise DataFormatError(f"{path}: not a readable CSV ({e})") from None
    missing = required - set(t.column_names)
    if missing:
        raise DataFormatError(f"{path}: missing columns {sorted(missing)}")
    return t


def _f(t: pa.Table, name: str) -> np.ndarray:
    return pc.cast(t[name], pa.float64()).to_numpy(zero_copy_only=False)


def _fill_ids(sequence: np.ndarray) -> np.ndarray:
    """One match can print several fills under one packet sequence number: id = sequence·1000 + the
    fill's number within it, in file order."""
    fill = pd.Series(sequence).groupby(sequence).cumcount().to_numpy()
    return sequence * 1000 + fill


def read_mbp1(path: Path, levels: int = 10) -> tuple[pa.Table, pa.Table]:
    """(trades, book) from a Databento MBP-1 CSV. Every row carries the top of book after its event;
    ``action == T`` rows are trades, ``side`` is the aggressor (B buy, A sell, N unknown → null, which
    validation quarantines). Times are the exchange's event times."""
    t = _csv(path, MBP1_COLUMNS)
    ts = pc.cast(t["ts_event_ns"], pa.int64()).cast(TS)
    symbol = pc.cast(t["symbol"], pa.string())
    is_trade = pc.equal(t["action"], "T")
    side = pc.if_else(pc.equal(t["side"], "B"), 1, pc.if_else(pc.equal(t["side"], "A"), -1, None))
    trades = pa.table({
        "ts": ts.filter(is_trade), "symbol": symbol.filter(is_trade),
        "price": pc.cast(t["price"], pa.float64()).filter(is_trade),
        "qty": pc.cast(t["size"], pa.float64()).filter(is_trade),
        "side": pc.cast(side, pa.int8()).filter(is_trade),
        "trade_id": _fill_ids(pc.cast(t["sequence"], pa.int64()).filter(is_trade).to_numpy()),
    }, schema=TRADE)
    cols = {"ts": ts, "symbol": symbol,
            "bid_px_1": _f(t, "bid_px_00"), "ask_px_1": _f(t, "ask_px_00"),
            "bid_sz_1": _f(t, "bid_sz_00"), "ask_sz_1": _f(t, "ask_sz_00"),
            "bid_ct_1": t["bid_ct_00"], "ask_ct_1": t["ask_ct_00"]}
    return trades, conform_book(cols, t.num_rows, levels)


def read_bars_csv(path: Path, symbol: str | None = None) -> pa.Table:
    """``timestamp_utc,open,high,low,close,volume`` 1-minute bars (gz or plain); the symbol is the file
    name's first dot-separated part (6EH4.XCME_1min_bars_... → 6EH4)."""
    t = _csv(path, BAR_COLUMNS)
    symbol = symbol or Path(path).name.split(".")[0].upper()
    ts = pc.cast(pc.strptime(pc.cast(t["timestamp_utc"], pa.string()), format="%Y-%m-%d %H:%M:%S", unit="ns",
                             error_is_null=True), pa.timestamp("ns", tz="UTC"))
    n = t.num_rows
    return pa.table({
        "ts": ts, "symbol": pa.array([symbol] * n, pa.string()),
        **{c: pc.cast(t[c], pa.float64()) for c in ("open", "high", "low", "close", "volume")},
        # The vendor gives neither quote volume nor trade count nor VWAP: null, not invented.
        "quote_volume": pa.nulls(n, pa.float64()), "trades": pa.nulls(n, pa.int64()), "vwap": pa.nulls(n, pa.float64()),
        "buy_volume": pa.nulls(n, pa.float64()),
    }, schema=BAR)
