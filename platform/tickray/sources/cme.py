"""CME futures: 1-minute OHLCV bar CSVs (Databento's MBP-1 CSV and DBN files are read in sources.databento)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR
from tickray.sources.binance import read_bytes

BAR_COLUMNS = {"timestamp_utc", "open", "high", "low", "close", "volume"}


def read_csv(path: Path, required: set[str]) -> pa.Table:
    """A CSV with a header, plain or gzip, that has at least the ``required`` columns."""
    try:
        t = pacsv.read_csv(io.BytesIO(read_bytes(path)))
    except pa.ArrowInvalid as e:
        raise DataFormatError(f"{path}: not a readable CSV ({e})") from None
    missing = required - set(t.column_names)
    if missing:
        raise DataFormatError(f"{path}: missing columns {sorted(missing)}")
    return t


def read_bars_csv(path: Path, symbol: str | None = None) -> pa.Table:
    """``timestamp_utc,open,high,low,close,volume`` 1-minute bars (gz or plain); the symbol is the file
    name's first dot-separated part (6EH4.XCME_1min_bars_... → 6EH4)."""
    t = read_csv(path, BAR_COLUMNS)
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
