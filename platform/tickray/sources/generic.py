"""Generic tick files (CSV, CSV.gz or Parquet) for futures and options, mapped by a small YAML schema.

A schema file ``<anything>.tickschema.yaml`` in a folder maps the files it names (``files``: a glob
beside it) onto the lake: each row may carry a trade, a book (per-level price, size and order count) and
an open interest. Example, for option ticks::

    files: "es_options_*.csv"
    timestamp: {column: ts, unit: us}       # s, ms, us, ns, or iso (ISO-8601 text); UTC
    symbol: {column: root}                  # or {value: ESZ4}
    option: {expiry: expiry, strike: strike, right: cp}   # optional: folded into the symbol
    trade: {price: last_px, size: last_qty, side: {column: aggressor, buy: B, sell: S}}
    book: {levels: 2, bid_price: "bid_px_{level}", bid_size: "bid_sz_{level}", bid_orders: "bid_n_{level}",
           ask_price: "ask_px_{level}", ask_size: "ask_sz_{level}", ask_orders: "ask_n_{level}"}
    open_interest: oi

An option's canonical symbol is ``<root>-<YYYYMMDD>-<strike>-<C|P>`` (``ES-20241220-4500-C``). Without
an aggressor column a trade's side comes from the quote on its row (at or above the ask: buy; at or
below the bid: sell; in between: the tick rule), and without trade ids a trade's id is its row number in
the file. A mapped column missing from a file is an error naming the file, the key and the column.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pyarrow import csv as pacsv
from pydantic import ValidationError

from tickray.config import StrictModel
from tickray.errors import DataFormatError
from tickray.lake.schema import OPEN_INTEREST, TRADE, TS, conform_book
from tickray.sources.binance import read_bytes

SCHEMA_SUFFIX = ".tickschema.yaml"
_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}




class Timestamp(StrictModel):
    column: str
    unit: Literal["s", "ms", "us", "ns", "iso"] = "ns"


class Symbol(StrictModel):
    column: str | None = None
    value: str | None = None


class Option(StrictModel):
    expiry: str
    strike: str
    right: str


class Side(StrictModel):
    column: str
    buy: str | int = "B"
    sell: str | int = "S"


class Trade(StrictModel):
    price: str
    size: str
    side: Side | None = None
    trade_id: str | None = None


class Book(StrictModel):
    levels: int = 1
    bid_price: str
    bid_size: str
    ask_price: str
    ask_size: str
    bid_orders: str | None = None
    ask_orders: str | None = None


class TickSchema(StrictModel):
    files: str
    format: Literal["csv", "parquet"] = "csv"
    delimiter: str = ","
    header: bool = True
    columns: list[str] | None = None  # the column names when the file has no header row
    timestamp: Timestamp
    symbol: Symbol
    option: Option | None = None
    trade: Trade | None = None
    book: Book | None = None
    open_interest: str | None = None


def load_schema(path: Path) -> TickSchema:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        schema = TickSchema.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        where = ".".join(str(x) for x in first["loc"]) if first else ""
        why = first["msg"] if first else str(e).splitlines()[0]
        raise DataFormatError(f"{path}: bad tick schema{f' at {where}' if where else ''}: {why}") from None
    if (schema.symbol.column is None) == (schema.symbol.value is None):
        raise DataFormatError(f"{path}: symbol needs exactly one of 'column' or 'value'")
    if schema.trade is None and schema.book is None and schema.open_interest is None:
        raise DataFormatError(f"{path}: maps no trade, book or open_interest: nothing to ingest")
    if not schema.header and not schema.columns and schema.format == "csv":
        raise DataFormatError(f"{path}: header: false needs 'columns' (the names, in file order)")
    return schema


def schema_files(schema_path: Path, schema: TickSchema) -> list[Path]:
    return sorted(p for p in schema_path.parent.glob(schema.files) if p.is_file() and p != schema_path)


def datasets_of(schema: TickSchema) -> tuple[str, ...]:
    return tuple(d for d, part in (("trades", schema.trade), ("book", schema.book),
                                    ("open_interest", schema.open_interest)) if part is not None)


def _read_table(path: Path, s: TickSchema) -> pa.Table:
    try:
        if s.format == "parquet":
            return pq.read_table(path)
        opts = pacsv.ReadOptions(column_names=None if s.header else s.columns)
        return pacsv.read_csv(io.BytesIO(read_bytes(path)), read_options=opts,
                              parse_options=pacsv.ParseOptions(delimiter=s.delimiter))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(f"{path}: not a readable {s.format} file ({e})") from None


def _col(t: pa.Table, path: Path, key: str, name: str) -> pa.ChunkedArray:
    if name not in t.column_names:
        raise DataFormatError(f"{path}: schema key {key} names column {name!r}, which the file lacks "
                              f"(it has {t.column_names})")
    return t[name]


def _float(t: pa.Table, path: Path, key: str, name: str) -> pa.Array:
    return pc.cast(_col(t, path, key, name), pa.float64(), safe=False).combine_chunks()


def _timestamps(t: pa.Table, path: Path, s: TickSchema) -> pa.Array:
    col = _col(t, path, "timestamp.column", s.timestamp.column)
    if s.timestamp.unit == "iso":
        if not pa.types.is_timestamp(col.type):
            col = pc.strptime(pc.cast(col, pa.string()), format="%Y-%m-%dT%H:%M:%S", unit="ns", error_is_null=True)
        return pc.cast(col, pa.timestamp("ns")).cast(pa.int64()).cast(TS).combine_chunks()
    ns = pc.multiply(pc.cast(col, pa.int64()), _UNITS[s.timestamp.unit])
    return pc.cast(ns, TS).combine_chunks()


def _symbols(t: pa.Table, path: Path, s: TickSchema) -> pa.Array:
    if s.symbol.value is not None:
        root = pa.array([s.symbol.value] * t.num_rows, pa.string())
    else:
        root = pc.cast(_col(t, path, "symbol.column", s.symbol.column), pa.string()).combine_chunks()
    if s.option is None:
        return pc.utf8_upper(root)
    expiry = pc.cast(_col(t, path, "option.expiry", s.option.expiry), pa.string())
    expiry = pc.replace_substring(pc.replace_substring(expiry, "-", ""), "/", "")
    strike = _float(t, path, "option.strike", s.option.strike).to_numpy(zero_copy_only=False)
    right = pc.utf8_upper(pc.utf8_slice_codeunits(pc.cast(_col(t, path, "option.right", s.option.right),
                                                          pa.string()), 0, 1))
    strike_txt = pa.array([f"{k:g}" for k in strike], pa.string())
    return pc.binary_join_element_wise(pc.utf8_upper(root), expiry, strike_txt, right, "-").combine_chunks()


def _infer_sides(price: np.ndarray, bid: np.ndarray | None, ask: np.ndarray | None) -> np.ndarray:
    """Lee-Ready: against the quote when there is one, else the tick rule (last price change)."""
    side = np.zeros(price.size, np.int8)
    if bid is not None and ask is not None:
        side[price >= ask] = 1
        side[price <= bid] = -1
    change = np.sign(np.diff(price, prepend=np.nan))
    tick = np.where(change > 0, 1, np.where(change < 0, -1, 0)).astype(np.int8)
    # a zero tick keeps the last non-zero one
    last = np.maximum.accumulate(np.where(tick != 0, np.arange(tick.size), -1))
    tick = np.where(last >= 0, tick[np.maximum(last, 0)], 0).astype(np.int8)
    side[side == 0] = tick[side == 0]
    return side  # 0 = undecidable (the first trades of a file without quotes): quarantined as null


def read_generic(path: Path, schema: TickSchema, levels: int = 10) -> dict[str, pa.Table]:
    """dataset → rows of one mapped file."""
    path = Path(path)
    t = _read_table(path, schema)
    ts, symbol = _timestamps(t, path, schema), _symbols(t, path, schema)
    out: dict[str, pa.Table] = {}
    bid = ask = None
    if schema.book is not None:
        b = schema.book
        cols: dict[str, pa.Array] = {"ts": ts, "symbol": symbol}
        for level in range(1, min(b.levels, levels) + 1):
            for side in ("bid", "ask"):
                for kind, key in (("px", "price"), ("sz", "size"), ("ct", "orders")):
                    template = getattr(b, f"{side}_{key}")
                    if template is None:
                        continue
                    name = template.format(level=level)
                    arr = _float(t, path, f"book.{side}_{key}", name)
                    cols[f"{side}_{kind}_{level}"] = pc.cast(arr, pa.int64(), safe=False) if kind == "ct" else arr
        book = conform_book(cols, t.num_rows, levels)
        has_quote = pc.or_(pc.is_valid(book["bid_px_1"]), pc.is_valid(book["ask_px_1"]))
        out["book"] = book.filter(has_quote)
        bid = book["bid_px_1"].to_numpy(zero_copy_only=False)
        ask = book["ask_px_1"].to_numpy(zero_copy_only=False)
    if schema.trade is not None:
        tr = schema.trade
        price, size = _float(t, path, "trade.price", tr.price), _float(t, path, "trade.size", tr.size)
        is_trade = pc.and_(pc.is_valid(price), pc.is_valid(size))
        if tr.side is not None:
            raw = pc.cast(_col(t, path, "trade.side.column", tr.side.column), pa.string())
            side = pc.if_else(pc.equal(raw, str(tr.side.buy)), 1,
                              pc.if_else(pc.equal(raw, str(tr.side.sell)), -1, None))
        else:
            p = price.to_numpy(zero_copy_only=False)
            mask = is_trade.to_numpy(zero_copy_only=False)
            inferred = np.zeros(t.num_rows, np.int8)
            inferred[mask] = _infer_sides(p[mask], None if bid is None else bid[mask],
                                          None if ask is None else ask[mask])
            side = pa.array(inferred, pa.int8(), mask=inferred == 0)
        ids = (pc.cast(_col(t, path, "trade.trade_id", tr.trade_id), pa.int64()) if tr.trade_id
               else pa.array(np.arange(t.num_rows, dtype=np.int64)))
        out["trades"] = pa.table({
            "ts": ts.filter(is_trade), "symbol": symbol.filter(is_trade), "price": price.filter(is_trade),
            "qty": size.filter(is_trade), "side": pc.cast(side, pa.int8()).filter(is_trade),
            "trade_id": pc.cast(ids, pa.int64()).filter(is_trade)}, schema=TRADE)
    if schema.open_interest is not None:
        oi = _float(t, path, "open_interest", schema.open_interest)
        has = pc.is_valid(oi)
        out["open_interest"] = pa.table({"ts": ts.filter(has), "symbol": symbol.filter(has),
                                         "open_interest": oi.filter(has)}, schema=OPEN_INTEREST)
    return out
