"""Candles as people keep them: time, open, high, low, close, volume, and nothing else.

- Plain OHLCV in Parquet, CSV (plain or .gz), Feather / Arrow IPC or JSON records, the time column named
  ``ts``, ``timestamp``, ``date``, ``datetime``, ``open_time`` or ``time`` (seconds, ms, µs or ns since the
  epoch, told by their magnitude; ISO strings; or a timestamp type, UTC when it names no zone); the symbol
  from a ``symbol`` or ``pair`` column (``BTC/USDT`` → ``BTCUSDT``), else from the file name. ccxt's CSV
  (``timestamp,open,high,low,close,volume``) is one of these.
- freqtrade's data directory: ``<BASE>_<QUOTE>-<timeframe>.{json,jsongz,feather,parquet}`` and futures as
  ``<BASE>_<QUOTE>_<SETTLE>-<timeframe>-futures.*``; JSON as ``[[ts_ms, o, h, l, c, v], …]``, the others
  with a ``date`` column.

Quote volume, trade count, VWAP and taker buy volume are not in such files: they stay null, never
invented. Candles land as bars of their own length (told by the name, else by the data's own spacing):
1m in ``bars_1m``, 5m in ``bars_5m``, 1h in ``bars_1h``, ... (lengths that divide a day); longer bars are
built from them, shorter ones never are. Weekly, monthly and sub-minute candles are refused, naming it.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import csv as pacsv
from pyarrow import feather
from pyarrow import json as pajson

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR, TS, bars_dataset_name
from tickray.sources.parquet_rows import read_rows

FREQTRADE = re.compile(r"^(?P<base>[A-Za-z0-9]+)_(?P<quote>[A-Za-z0-9]+)(?:_(?P<settle>[A-Za-z0-9]+))?"
                       r"-(?P<tf>\d+[smhdwM])(?P<futures>-futures)?\.(?:json|jsongz|feather|parquet)$")
TIME_COLUMNS = ("ts", "timestamp", "date", "datetime", "open_time", "time")
PRICES = ("open", "high", "low", "close")
SUFFIXES = (".csv", ".csv.gz", ".feather", ".arrow", ".ipc", ".json", ".json.gz", ".jsongz", ".parquet")
_TF_IN_NAME = re.compile(r"[-_.](\d+)(s|m|min|h|d|w)(?=[-_.])", re.IGNORECASE)
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080}


def is_freqtrade(name: str) -> bool:
    return FREQTRADE.match(name) is not None


def may_be_candles(name: str) -> bool:
    """A file whose name leaves it to its columns (a plain table format)."""
    return name.lower().endswith(SUFFIXES)


def _load(path: Path, rows: tuple[int, int] | None = None) -> pa.Table:
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return read_rows(path, rows)
        if name.endswith((".feather", ".arrow", ".ipc")):
            return feather.read_table(path)
        data = path.read_bytes()
        if name.endswith((".gz", ".jsongz")):
            data = gzip.decompress(data)
        if name.endswith((".csv", ".csv.gz")):
            return pacsv.read_csv(pa.py_buffer(data))
        if data.lstrip()[:1] == b"[":  # one JSON array: of records, or freqtrade's one array per candle
            rows = orjson.loads(data)
            if rows and isinstance(rows[0], dict):
                return pa.Table.from_pylist(rows)
            cols = list(zip(*rows)) if rows else [[]] * 6
            return pa.table({"date": pa.array(cols[0], pa.int64()),
                             **{c: pa.array(v, pa.float64()) for c, v in zip((*PRICES, "volume"), cols[1:6])}})
        return pajson.read_json(pa.py_buffer(data))  # JSON records, one object per line
    except (OSError, EOFError, pa.ArrowInvalid, orjson.JSONDecodeError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable candle file ({e})") from None


def _columns(names: list[str]) -> dict[str, str]:
    """Our column name → the file's (case-insensitive); missing ones absent."""
    lower = {c.lower(): c for c in names}
    out = {c: lower[c] for c in (*PRICES, "volume", "symbol", "pair") if c in lower}
    time = next((lower[c] for c in TIME_COLUMNS if c in lower), None)
    if time is not None:
        out["ts"] = time
    return out


def _json_head_names(path: Path, head_bytes: int = 1 << 16) -> list[str]:
    """The column names a JSON candle file would load with, told from its first record only (the ingest
    task reads the whole file once; planning must not read it too)."""
    opener = gzip.open if path.name.lower().endswith((".gz", ".jsongz")) else open
    with opener(path, "rb") as f:
        text = f.read(head_bytes).decode("utf-8", errors="ignore").lstrip()
    try:
        if text.startswith("["):  # one array: of records, or freqtrade's one array per candle
            first, _ = json.JSONDecoder().raw_decode(text, len(text) - len(text[1:].lstrip()))
            if isinstance(first, list):
                return ["date", *PRICES, "volume"][:len(first)]
        else:  # records, one object per line
            first = json.loads(text.split("\n", 1)[0])
    except (ValueError, IndexError):  # its first record is not within the head, or not JSON
        return []
    return list(first) if isinstance(first, dict) else []


def looks_like_candles(path: Path) -> bool:
    """Whether a file's columns are a time, open, high, low, close and volume (from its schema or header
    where the format has one; a JSON file's first record)."""
    try:
        name = path.name.lower()
        if is_freqtrade(path.name):
            return True
        if name.endswith(".parquet"):
            names = pq.read_schema(path).names
        elif name.endswith((".feather", ".arrow", ".ipc")):
            names = pa.ipc.open_file(path).schema.names
        elif name.endswith((".csv", ".csv.gz")):
            with pacsv.open_csv(pa.input_stream(path, compression="gzip" if name.endswith(".gz") else None)) as r:
                names = r.schema.names
        else:
            names = _json_head_names(path)
        return {"ts", *PRICES, "volume"} <= _columns(names).keys()
    except (DataFormatError, OSError, pa.ArrowInvalid):
        return False


def _to_ts(col: pa.ChunkedArray, path: Path) -> pa.Array:
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.timestamp(col.type.unit, tz=col.type.tz or "UTC")).cast(TS)
    if pa.types.is_date(col.type):
        return col.cast(pa.timestamp("s")).cast(pa.timestamp("ns", tz="UTC"))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            return pa.array(pd.to_datetime(col.to_pandas(), utc=True, format="ISO8601"), TS)
        except (ValueError, TypeError) as e:
            raise DataFormatError(f"{path}: time column is neither a number nor an ISO time ({e})") from None
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DataFormatError(f"{path}: time column of type {col.type} is not a time")
    biggest = pc.max(pc.abs(col)).as_py() or 0
    scale = 10**9 if biggest < 1e11 else 10**6 if biggest < 1e14 else 10**3 if biggest < 1e17 else 1
    if pa.types.is_integer(col.type):
        return pc.multiply(col.cast(pa.int64()), scale).cast(TS)
    return pc.cast(pc.round(pc.multiply(col, float(scale))), pa.int64()).cast(TS)


def _symbol_from_name(path: Path) -> str:
    m = FREQTRADE.match(path.name)
    if m:
        return f"{m['base']}{m['quote']}".upper()
    return re.split(r"[-_.]", path.name)[0].upper()


def _timeframe_from_name(path: Path) -> str | None:
    m = FREQTRADE.match(path.name)
    if m:
        return m["tf"]
    found = _TF_IN_NAME.search(path.name)
    return f"{found[1]}{found[2][0].lower()}" if found else None


def spacing_s(ts: pa.Array, symbol: pa.DictionaryArray) -> float | None:
    """The most common step between one symbol's consecutive candles, in seconds."""
    v = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)
    code = symbol.indices.to_numpy(zero_copy_only=False)
    same = code[1:] == code[:-1]
    if not ((code[1:] >= code[:-1]).all() and (v[1:] >= v[:-1])[same].all()):  # most files: in order already
        order = np.lexsort((v, code))
        v, code = v[order], code[order]
        same = code[1:] == code[:-1]
    steps = np.diff(v)[same]
    steps = steps[steps > 0]
    if steps.size == 0:
        return None
    values, counts = np.unique(steps, return_counts=True)
    return values[counts.argmax()] / 1e9


def candles_dataset(path: Path, timeframe: str | None = None, spacing_s: float | None = None) -> str:
    """The bar dataset of a file's candles, from their timeframe as named (``5m``, ``1h``: freqtrade's and
    Binance's interval names) or else the spacing of the data (none: one candle each, taken as 1m)."""
    if timeframe is not None:
        n, unit = int(timeframe[:-1]), timeframe[-1]
        minutes = n * _UNIT_MINUTES[unit] if unit in _UNIT_MINUTES else None  # s: seconds, M: months
        said = f"{timeframe} candles"
    elif spacing_s is None:
        minutes, said = 1, ""
    else:
        minutes = int(spacing_s // 60) if spacing_s % 60 == 0 else None
        said = f"candles {spacing_s:g} s apart"
    try:
        if minutes is None:
            raise ValueError("the lake keeps bars of whole minutes")
        return bars_dataset_name(minutes)
    except ValueError as e:
        raise DataFormatError(f"{path}: {said}: {e}; longer bars are built from shorter ones, never the "
                              "other way round") from None


def read_candles(path: Path, rows: tuple[int, int] | None = None) -> tuple[str, pa.Table]:
    """The file's candles (a Parquet file's rows [start, stop) only, if given) as rows of the bar dataset
    of their length (``bars_1m``, ``bars_1h``, ...), the columns the file lacks null."""
    path = Path(path)
    t = _load(path, rows)
    cols = _columns(t.column_names)
    missing = [c for c in ("ts", *PRICES, "volume") if c not in cols]
    if missing:
        raise DataFormatError(f"{path}: candles need a time ({'/'.join(TIME_COLUMNS)}), open, high, low, close and "
                              f"volume; missing {missing} in columns {t.column_names}")
    n = t.num_rows
    ts = _to_ts(t[cols["ts"]], path)
    if "symbol" in cols or "pair" in cols:  # normalised once per distinct name, not per row
        raw = pc.dictionary_encode(pc.cast(t[cols.get("symbol") or cols["pair"]], pa.string()).combine_chunks())
        names = pc.utf8_upper(pc.replace_substring_regex(raw.dictionary, r"/|:.*$", ""))
        symbol = pa.DictionaryArray.from_arrays(raw.indices, names)
    else:
        symbol = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [_symbol_from_name(path)])
    tf = _timeframe_from_name(path)
    dataset = candles_dataset(path, tf, None if tf else spacing_s(ts, symbol))
    price = {c: pc.cast(t[cols[c]], pa.float64()) for c in (*PRICES, "volume")}
    return dataset, pa.table({"ts": ts, "symbol": symbol.cast(pa.string()), **price, "quote_volume": pa.nulls(n, pa.float64()),
                     "trades": pa.nulls(n, pa.int64()), "vwap": pa.nulls(n, pa.float64()),
                     "buy_volume": pa.nulls(n, pa.float64())}, schema=BAR)
