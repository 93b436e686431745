"""Databento: DBN files (``.dbn``, ``.dbn.zst``) decoded by Databento's own ``databento-dbn``, and MBP-1
as CSV (``*mbp-1*.csv``: every row the top of book after its event, ``action == T`` rows the trades).

As Databento documents DBN: prices are fixed-point integers of 1e-9 with ``UNDEF_PRICE`` for none;
``ts_event`` is the exchange's time (the lake's ``ts``), ``ts_recv`` Databento's receive time; records
name an ``instrument_id``, which the file's metadata maps to the raw symbol for each date.

- ``mbo`` (market by order): an order book keyed by order id. Add, Cancel (of part or all of an
  order's size), Modify (new price and size) and Clear change it; Trade and Fill do not (the resting
  orders' cancels that follow do). A book state is emitted only on the record that ends an event
  (``F_LAST``), the top levels with their order counts; a snapshot (``F_SNAPSHOT`` records after a
  Clear) is one state at its receive time (its records' ``ts_event`` are when each order was last
  changed). A cancel or modify of an order not in the book is quarantined, never a crash. Trades are
  the Trade records.
- ``mbp-1``, ``tbbo``, ``mbp-10``: book rows with order counts, and trades; ``trades``: trades;
  ``ohlcv-1m``: 1-minute bars. Other schemas are refused, naming the file and the schema.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR, TRADE, TS, conform_book
from tickray.sources.cme import read_csv

SCALE = 1e-9  # DBN prices: fixed-point integers of 1e-9 (dbn.FIXED_PRICE_SCALE)
CHUNK = 1 << 22  # compressed bytes handed to the decoder at a time
UNKNOWN_ORDER = "cancel or modify of an order not in the book"
TRADE_ACTIONS = ("T",)
BOOK_SCHEMAS = {"mbp-1": 1, "tbbo": 1, "mbp-10": 10}
SCHEMAS = ("mbo", "trades", "ohlcv-1m", *BOOK_SCHEMAS)
MBP1_COLUMNS = {"ts_recv_ns", "ts_event_ns", "symbol", "action", "side", "price", "size", "sequence",
                "bid_px_00", "ask_px_00", "bid_sz_00", "ask_sz_00", "bid_ct_00", "ask_ct_00"}


def _f(t: pa.Table, name: str) -> np.ndarray:
    return pc.cast(t[name], pa.float64()).to_numpy(zero_copy_only=False)


def _fill_ids(sequence: np.ndarray) -> np.ndarray:
    """One match can print several fills under one packet sequence number: id = sequence·1000 + the
    fill's number within it, in file order."""
    fill = pd.Series(sequence).groupby(sequence).cumcount().to_numpy()
    return sequence * 1000 + fill


def read_mbp1_csv(path: Path, levels: int = 10) -> tuple[pa.Table, pa.Table]:
    """(trades, book) from a Databento MBP-1 CSV. Every row carries the top of book after its event;
    ``action == T`` rows are trades, ``side`` is the aggressor (B buy, A sell, N unknown → null, which
    validation quarantines). Times are the exchange's event times."""
    t = read_csv(path, MBP1_COLUMNS)
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


def is_dbn(name: str) -> bool:
    return name.endswith((".dbn", ".dbn.zst"))


DATASETS = {"mbo": ("trades", "book"), "trades": ("trades",), "ohlcv-1m": ("bars_1m",),
            **dict.fromkeys(BOOK_SCHEMAS, ("trades", "book"))}


def _metadata_and_records(path: Path):
    """The file's metadata and schema (refused when it is not read), and an iterator over its records."""
    records = _records(Path(path))
    metadata = next(records, None)
    if not isinstance(metadata, dbn.Metadata):
        raise DataFormatError(f"{path}: not a DBN file (no metadata header)")
    schema = str(metadata.schema.value if hasattr(metadata.schema, "value") else metadata.schema)
    if schema not in SCHEMAS:
        raise DataFormatError(f"{path}: DBN schema {schema!r} is not read (read: {', '.join(SCHEMAS)})")
    return metadata, schema, records


def datasets_of(path: Path) -> tuple[str, ...]:
    """The lake datasets a DBN file feeds, told from its schema."""
    return DATASETS[_metadata_and_records(path)[1]]


def _records(path: Path):
    """(metadata, then every record) of a DBN file, decoded a chunk at a time."""
    dec = dbn.DBNDecoder(has_metadata=True, compression=dbn.Compression.ZSTD if path.name.endswith(".zst")
                         else dbn.Compression.NONE)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                dec.write(chunk)
                yield from dec.decode()
        left = len(dec.buffer())
    except (ValueError, dbn.DBNError, OSError) as e:
        raise DataFormatError(f"{path}: not a readable DBN file ({' '.join(str(e).split())})") from None
    if left:  # the decoder says no more than this: a cut that falls between records goes unseen
        raise DataFormatError(f"{path}: truncated: the file ends {left} bytes into a record")


class Symbols:
    """instrument_id → raw symbol on a date, from the file's metadata mappings."""

    def __init__(self, metadata):
        self.intervals: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        for raw, spans in metadata.mappings.items():
            for s in spans:
                start, end = (np.datetime64(s[k], "D").astype(np.int64) for k in ("start_date", "end_date"))
                if s["symbol"].isdigit():
                    self.intervals[int(s["symbol"])].append((int(start), int(end), raw))
        self._cache: dict[tuple[int, int], str] = {}

    def __call__(self, instrument_id: int, ts_ns: int) -> str:
        day = ts_ns // 86_400_000_000_000
        key = (instrument_id, day)
        if key not in self._cache:
            found = [raw for start, end, raw in self.intervals.get(instrument_id, []) if start <= day < end]
            self._cache[key] = found[0] if found else str(instrument_id)  # kept as given, never dropped
        return self._cache[key]


def _px(v: int) -> float:
    return float("nan") if v == dbn.UNDEF_PRICE else v * SCALE


def _side(c: str) -> int | None:
    return 1 if c == "B" else -1 if c == "A" else None


class _Trades:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, ts: int, symbol: str, r) -> None:
        self.rows.append((ts, symbol, r.price * SCALE, float(r.size), _side(r.side), r.sequence))

    def table(self) -> pa.Table:
        ts, sym, px, qty, side, seq = zip(*self.rows) if self.rows else ((),) * 6
        return pa.table({"ts": pa.array(np.array(ts, np.int64)).cast(TS), "symbol": pa.array(sym, pa.string()),
                         "price": pa.array(px, pa.float64()), "qty": pa.array(qty, pa.float64()),
                         "side": pa.array(side, pa.int8()), "trade_id": pa.array(_fill_ids(np.array(seq, np.int64)))}, schema=TRADE)


class _BookRows:
    """Top-N rows with order counts, from (price, size, count) levels per side, best first."""

    def __init__(self, levels: int):
        self.levels, self.ts, self.symbols, self.rows = levels, [], [], []

    def add(self, ts: int, symbol: str, bids: list, asks: list) -> None:
        k, nan = self.levels, float("nan")
        pad = [(nan, nan, None)] * k
        b, a = (bids + pad)[:k], (asks + pad)[:k]
        self.ts.append(ts)
        self.symbols.append(symbol)
        self.rows.append((b, a))

    def table(self) -> pa.Table:
        n, k = len(self.rows), self.levels
        cols: dict = {"ts": pa.array(np.array(self.ts, np.int64)).cast(TS), "symbol": pa.array(self.symbols, pa.string())}
        for j, side in enumerate(("bid", "ask")):
            for i in range(k):
                cols[f"{side}_px_{i + 1}"] = np.array([r[j][i][0] for r in self.rows], np.float64)
                cols[f"{side}_sz_{i + 1}"] = np.array([r[j][i][1] for r in self.rows], np.float64)
                cols[f"{side}_ct_{i + 1}"] = pa.array([r[j][i][2] for r in self.rows], pa.int64())
        return conform_book(cols, n, k)


class OrderBookL3:
    """One instrument's orders: id → (side, price, size), and per side price → (size, orders)."""

    def __init__(self):
        self.orders: dict[int, tuple[str, int, int]] = {}
        self.levels = {"B": defaultdict(lambda: [0, 0]), "A": defaultdict(lambda: [0, 0])}

    def clear(self) -> None:
        self.orders.clear()
        for side in self.levels.values():
            side.clear()

    def _level(self, side: str, price: int, size: int, count: int) -> None:
        lv = self.levels[side][price]
        lv[0] += size
        lv[1] += count
        if lv[1] <= 0:
            del self.levels[side][price]

    def add(self, oid: int, side: str, price: int, size: int) -> None:
        if oid in self.orders:  # the same id added twice: the new one replaces it
            self.cancel(oid, self.orders[oid][2])
        self.orders[oid] = (side, price, size)
        self._level(side, price, size, 1)

    def cancel(self, oid: int, size: int) -> bool:
        """Remove ``size`` of an order (all of it at or above its size); False when it is unknown."""
        found = self.orders.get(oid)
        if found is None:
            return False
        side, price, left = found
        gone = min(size, left)
        if gone >= left:
            del self.orders[oid]
            self._level(side, price, -left, -1)
        else:
            self.orders[oid] = (side, price, left - gone)
            self._level(side, price, -gone, 0)
        return True

    def modify(self, oid: int, side: str, price: int, size: int) -> bool:
        found = self.orders.get(oid)
        if found is None:
            return False
        self.cancel(oid, found[2])
        self.add(oid, side, price, size)
        return True

    def top(self, n: int) -> tuple[list, list]:
        """(price, size, orders) of the best n levels per side, best first."""
        out = []
        for side, best_first in (("B", True), ("A", False)):
            prices = sorted(self.levels[side], reverse=best_first)[:n]
            out.append([(p * SCALE, float(self.levels[side][p][0]), self.levels[side][p][1]) for p in prices])
        return out[0], out[1]


def read_dbn(path: Path, levels: int = 10) -> tuple[dict[str, pa.Table], list[tuple[int, str, str]]]:
    """{dataset: rows} of a DBN file, and the records that could not become rows (ts ms, symbol, why)."""
    metadata, schema, records = _metadata_and_records(path)
    symbols = Symbols(metadata)
    if schema == "mbo":
        return _read_mbo(records, symbols, levels)
    if schema == "ohlcv-1m":
        return {"bars_1m": _read_ohlcv(records, symbols)}, []
    trades, book = _Trades(), _BookRows(levels)
    depth = BOOK_SCHEMAS.get(schema, 0)
    for r in records:
        if not hasattr(r, "instrument_id") or not hasattr(r, "action"):
            continue  # system and mapping messages of live-recorded files
        sym = symbols(r.instrument_id, r.ts_event)
        if r.action in TRADE_ACTIONS:
            trades.add(r.ts_event, sym, r)
        if depth:
            pairs = [r.levels[i] for i in range(depth)]
            book.add(r.ts_event, sym, [(_px(p.bid_px), float(p.bid_sz), p.bid_ct) for p in pairs],
                     [(_px(p.ask_px), float(p.ask_sz), p.ask_ct) for p in pairs])
    out = {"trades": trades.table()}
    if depth:
        out["book"] = book.table()
    return out, []


def _read_mbo(records, symbols: Symbols, levels: int) -> tuple[dict[str, pa.Table], list]:
    books: dict[int, OrderBookL3] = defaultdict(OrderBookL3)
    trades, rows, dropped = _Trades(), _BookRows(levels), []
    for r in records:
        if not hasattr(r, "order_id"):
            continue
        iid, action, flags = r.instrument_id, r.action.value, int(r.flags)
        book = books[iid]
        snapshot = bool(flags & dbn.F_SNAPSHOT)
        if action == "R":
            book.clear()
        elif action == "A":
            book.add(r.order_id, r.side.value, r.price, r.size)
        elif action == "C":
            if not book.cancel(r.order_id, r.size):
                dropped.append((r.ts_event // 1_000_000, symbols(iid, r.ts_event), UNKNOWN_ORDER))
        elif action == "M":
            if not book.modify(r.order_id, r.side.value, r.price, r.size):
                dropped.append((r.ts_event // 1_000_000, symbols(iid, r.ts_event), UNKNOWN_ORDER))
        elif action in TRADE_ACTIONS:
            trades.add(r.ts_event, symbols(iid, r.ts_event), r)
        if flags & dbn.F_LAST:
            ts = r.ts_recv if snapshot else r.ts_event
            rows.add(ts, symbols(iid, ts), *book.top(levels))
    return {"trades": trades.table(), "book": rows.table()}, dropped


def _read_ohlcv(records, symbols: Symbols) -> pa.Table:
    rows = [(r.ts_event, symbols(r.instrument_id, r.ts_event), r.open * SCALE, r.high * SCALE, r.low * SCALE,
             r.close * SCALE, float(r.volume)) for r in records if hasattr(r, "open")]
    ts, sym, o, h, lo, c, v = zip(*rows) if rows else ((),) * 7
    n = len(rows)
    cols = {"ts": pa.array(np.array(ts, np.int64)).cast(TS), "symbol": pa.array(sym, pa.string()),
            "open": pa.array(o, pa.float64()), "high": pa.array(h, pa.float64()), "low": pa.array(lo, pa.float64()),
            "close": pa.array(c, pa.float64()), "volume": pa.array(v, pa.float64())}
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in BAR}, schema=BAR)
