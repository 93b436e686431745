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
  changed). A cancel or modify of an order not in the book, and an add or modify without a side, are
  quarantined, never a crash. Trades are the Trade records. The book runs compiled (numba) over the
  records read into arrays at once.
- ``mbp-1``, ``tbbo``, ``mbp-10``: book rows with order counts, and trades; ``trades``: trades;
  ``ohlcv-1m``, ``-1h``, ``-1d``: bars of that length (``bars_1m``, ``bars_1h``, ``bars_1d``); ``ohlcv-1s``
  summed up to 1-minute bars.
- ``definition``: the ``instruments`` dataset (tick size, multiplier, expiration, strike, call or put,
  underlying), an option named ``<root>-<YYYYMMDD>-<strike>-<C|P>`` as the generic CSV reader names them.
- ``statistics``: open interest into ``open_interest``, settlement prices into ``settlements``; a
  statistic the venue deletes is quarantined with the reason, other statistics are kept in no dataset.

Other schemas are refused, naming the file and the schema.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR, INSTRUMENT, OPEN_INTEREST, SETTLEMENT, TRADE, TS, conform_book
from tickray.sources.book_rows import BookDay
from tickray.sources.cme import read_csv

# DBN prices are integers of 1e-9 (dbn.FIXED_PRICE_SCALE): divided by this, never multiplied by 1e-9, which
# is inexact (4033.5 would read 4033.5000000000005)
PRICE_UNITS = 1e9
CHUNK = 1 << 22  # compressed bytes handed to the decoder at a time
UNKNOWN_ORDER = "cancel or modify of an order not in the book"
TRADE_ACTIONS = ("T",)
BOOK_SCHEMAS = {"mbp-1": 1, "tbbo": 1, "mbp-10": 10}
# Bars come in at their own length (ohlcv-1s is summed up to 1m: the lake keeps no bars under a minute).
OHLCV_DATASETS = {"ohlcv-1s": "bars_1m", "ohlcv-1m": "bars_1m", "ohlcv-1h": "bars_1h", "ohlcv-1d": "bars_1d"}
SCHEMAS = ("mbo", "trades", *OHLCV_DATASETS, *BOOK_SCHEMAS, "definition", "statistics")
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


DATASETS = {"mbo": ("trades", "book"), "trades": ("trades",), **{k: (v,) for k, v in OHLCV_DATASETS.items()},
            **dict.fromkeys(BOOK_SCHEMAS, ("trades", "book")), "definition": ("instruments",),
            "statistics": ("open_interest", "settlements")}


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
    return float("nan") if v == dbn.UNDEF_PRICE else v / PRICE_UNITS


def _side(c: str) -> int | None:
    return 1 if c == "B" else -1 if c == "A" else None


class _Trades:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, ts: int, symbol: str, r) -> None:
        self.rows.append((ts, symbol, r.price / PRICE_UNITS, float(r.size), _side(r.side), r.sequence))

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


def read_dbn(path: Path, levels: int = 10, days: list[BookDay] | None = None
             ) -> dict[str, tuple[pa.Table, list[tuple[int, str, str]]]]:
    """{dataset: (rows, the records that could not become rows as (ts ms, symbol, why))} of a DBN file; an
    MBO file's books, each with its end state and gap report, are added to ``days``."""
    metadata, schema, records = _metadata_and_records(path)
    symbols = Symbols(metadata)
    if schema == "mbo":
        return _read_mbo(records, symbols, levels, days if days is not None else [], str(metadata.dataset))
    if schema in OHLCV_DATASETS:
        bars = _read_ohlcv(records, symbols)
        return {OHLCV_DATASETS[schema]: (_seconds_to_minutes(bars) if schema == "ohlcv-1s" else bars, [])}
    if schema == "definition":
        return {"instruments": (_read_definitions(records), [])}
    if schema == "statistics":
        return _read_statistics(records, symbols)
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
    out = {"trades": (trades.table(), [])}
    if depth:
        out["book"] = (book.table(), [])
    return out


# An MBO record as databento-dbn holds it in memory (``bytes(record)``): read into arrays at once, so the
# book below runs compiled instead of a Python call per record.
MBO_RECORD = np.dtype([("length", "u1"), ("rtype", "u1"), ("publisher_id", "<u2"), ("instrument_id", "<u4"),
                       ("ts_event", "<u8"), ("order_id", "<u8"), ("price", "<i8"), ("size", "<u4"),
                       ("flags", "u1"), ("channel_id", "u1"), ("action", "S1"), ("side", "S1"),
                       ("ts_recv", "<u8"), ("ts_in_delta", "<i4"), ("sequence", "<u4")])
MBO_DROPS = (UNKNOWN_ORDER, "order without a side")


def _read_mbo(records, symbols: Symbols, levels: int, days: list[BookDay], venue: str
              ) -> dict[str, tuple[pa.Table, list]]:
    from tickray.sources.databento_kernels import replay_mbo

    if MBO_RECORD.itemsize != dbn.MBOMsg.size_hint:
        raise DataFormatError(f"databento-dbn's MBO record is {dbn.MBOMsg.size_hint} bytes, not "
                              f"{MBO_RECORD.itemsize}: this reader does not know its layout")
    m = np.frombuffer(b"".join([bytes(r) for r in records if isinstance(r, dbn.MBOMsg)]), MBO_RECORD)
    iids, inst = np.unique(m["instrument_id"], return_inverse=True)
    action, side = m["action"].view(np.uint8), m["side"].view(np.uint8)
    ts_event, ts_recv = m["ts_event"].astype(np.int64), m["ts_recv"].astype(np.int64)
    state_rec, lv, ct, drop_rec, drop_code, end = replay_mbo(
        inst.astype(np.int64), iids.size, action, side, m["order_id"].astype(np.int64), m["price"],
        m["size"].astype(np.int64), m["flags"], levels)
    snap = (m["flags"][state_rec] & dbn.F_SNAPSHOT) > 0
    ts = np.where(snap, ts_recv[state_rec], ts_event[state_rec])  # a snapshot is one state at its receive time

    def names(rec: np.ndarray, at: np.ndarray) -> list[str]:
        day = at // 86_400_000_000_000
        pairs, back = np.unique(np.stack([m["instrument_id"][rec].astype(np.int64), day]), axis=1,
                                return_inverse=True)
        found = [symbols(int(i), int(d) * 86_400_000_000_000) for i, d in pairs.T]
        return [found[j] for j in np.asarray(back).ravel()]

    cols: dict = {"ts": pa.array(ts).cast(TS), "symbol": pa.array(names(state_rec, ts), pa.string())}
    for j, side_name in enumerate(("bid", "ask")):
        for i in range(levels):
            cols[f"{side_name}_px_{i + 1}"] = lv[2 * j * levels + i]
            cols[f"{side_name}_sz_{i + 1}"] = lv[(2 * j + 1) * levels + i]
            c = ct[j * levels + i]
            cols[f"{side_name}_ct_{i + 1}"] = pa.array(c, pa.int64(), mask=c < 0)
    book = conform_book(cols, state_rec.size, levels)
    trade = np.flatnonzero(np.isin(m["action"], [a.encode() for a in TRADE_ACTIONS]))
    tside = m["side"][trade]
    trades = pa.table({"ts": pa.array(ts_event[trade]).cast(TS),
                       "symbol": pa.array(names(trade, ts_event[trade]), pa.string()),
                       "price": pa.array(m["price"][trade] / PRICE_UNITS), "qty": pa.array(m["size"][trade].astype(np.float64)),
                       "side": pa.array(np.where(tside == b"B", 1, -1).astype(np.int8), mask=(tside != b"B") & (tside != b"A")),
                       "trade_id": pa.array(_fill_ids(m["sequence"][trade].astype(np.int64)))}, schema=TRADE)
    drop_names = names(drop_rec, ts_event[drop_rec])
    dropped = [(int(ts_event[r]) // 1_000_000, drop_names[k], MBO_DROPS[c]) for k, (r, c) in
               enumerate(zip(drop_rec.tolist(), drop_code.tolist()))]
    days += _mbo_days(m, inst, iids.size, end, state_rec, drop_rec, drop_code, names, venue)
    return {"trades": (trades, []), "book": (book, dropped)}


def _mbo_days(m: np.ndarray, inst: np.ndarray, n_inst: int, end: tuple, state_rec: np.ndarray,
              drop_rec: np.ndarray, drop_code: np.ndarray, names, venue: str) -> list[BookDay]:
    """Each instrument's book as the file ended (its price levels, full depth, with order counts) and its
    gap report: the venue's sequence numbers seen, events applied, Clears after the first record counted
    as resyncs, records quarantined by reason. A book that does not open with Databento's snapshot is never
    known whole: unsynced from its first record to its last. DBN numbers messages per channel, not per
    instrument, so gaps are not counted here."""
    keys, sizes, counts, used = end
    first = np.unique(inst, return_index=True)[1]
    last = inst.size - 1 - np.unique(inst[::-1], return_index=True)[1]
    applied = np.bincount(inst[state_rec], minlength=n_inst)
    clears = np.bincount(inst[m["action"] == b"R"], minlength=n_inst)
    t0, t1 = m["ts_recv"][first].astype(np.int64), m["ts_recv"][last].astype(np.int64)  # a snapshot's ts_event is old
    symbols = names(first, t0)
    out = []
    for g in range(n_inst):
        own = bool(m["flags"][first[g]] & dbn.F_SNAPSHOT)
        lost = Counter(MBO_DROPS[c] for c in drop_code[inst[drop_rec] == g].tolist())
        book = {}
        for s, side in ((0, "bids"), (1, "asks")):
            b = 2 * g + s
            px = (keys[b, :used[b]][::-1] if s == 0 else -keys[b, :used[b]][::-1]) / PRICE_UNITS
            book[side] = [list(lv) for lv in zip(px.tolist(), sizes[b, :used[b]][::-1].tolist(),
                                                 counts[b, :used[b]][::-1].tolist())]
        report = {"start": "its own snapshot" if own else "nothing (its book is never known whole)",
                  "sequence": "sequence", "first": int(m["sequence"][first[g]]), "last": int(m["sequence"][last[g]]),
                  "applied": int(applied[g]), "gaps": 0,
                  "resyncs": int(clears[g]) - int(m["action"][first[g]] == b"R"),
                  "unsynced_s": 0.0 if own else round((t1[g] - t0[g]) / 1e9, 3), "quarantined": dict(lost)}
        state = {"symbol": symbols[g], "synced": own, **book}
        out.append(BookDay(venue, symbols[g], str(np.datetime64(int(t0[g]), "ns").astype("datetime64[D]")),
                           state, report))
    return out


def _seconds_to_minutes(bars: pa.Table) -> pa.Table:
    """1-second bars summed up to the minute: first open, highest high, lowest low, last close, volume
    summed (Databento writes a second only when it traded, so the minutes are whole)."""
    if bars.num_rows == 0:
        return bars
    ts = pc.cast(bars["ts"], pa.int64()).to_numpy()
    minute, sym = ts // 60_000_000_000 * 60_000_000_000, bars["symbol"].to_numpy(zero_copy_only=False)
    order = np.lexsort((ts, minute, sym))
    minute, sym = minute[order], sym[order]
    col = {c: bars[c].to_numpy()[order] for c in ("open", "high", "low", "close", "volume")}
    starts = np.flatnonzero(np.r_[True, (minute[1:] != minute[:-1]) | (sym[1:] != sym[:-1])])
    ends = np.r_[starts[1:], len(minute)] - 1
    cols = {"ts": pa.array(minute[starts]).cast(TS), "symbol": pa.array(sym[starts], pa.string()),
            "open": col["open"][starts], "high": np.maximum.reduceat(col["high"], starts),
            "low": np.minimum.reduceat(col["low"], starts), "close": col["close"][ends],
            "volume": np.add.reduceat(col["volume"], starts)}
    return pa.table({f.name: cols.get(f.name, pa.nulls(starts.size, f.type)) for f in BAR}, schema=BAR)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows of plain values (times as ns since the epoch) as a table of ``schema``."""
    return pa.table({f.name: pa.array([r[f.name] for r in rows], pa.int64() if f.type == TS else f.type).cast(f.type)
                     for f in schema}, schema=schema)


def _undef(v: int) -> float | None:
    """A fixed-point DBN value (a price, a tick size, a multiplier), None where the venue gives none."""
    return None if v == dbn.UNDEF_PRICE else v / PRICE_UNITS


def _read_definitions(records) -> pa.Table:
    """Instrument definitions: an option is named ``<root>-<YYYYMMDD>-<strike>-<C|P>`` as the generic CSV
    reader names options (the root is its ``asset``), anything else by its raw symbol."""
    rows = []
    for r in records:
        if not isinstance(r, dbn.InstrumentDefMsg):
            continue
        cls = r.instrument_class
        right = {dbn.InstrumentClass.CALL: "C", dbn.InstrumentClass.PUT: "P"}.get(cls)
        expiry = None if r.expiration == dbn.UNDEF_TIMESTAMP else r.expiration
        strike = _undef(r.strike_price)
        symbol = r.raw_symbol
        if right and expiry is not None and strike is not None:
            day = np.datetime64(expiry, "ns").astype("datetime64[D]").astype(str).replace("-", "")
            symbol = f"{r.asset.upper()}-{day}-{strike:g}-{right}"
        rows.append({"ts": r.ts_recv, "symbol": symbol, "raw_symbol": r.raw_symbol, "instrument_id": r.instrument_id,
                     "instrument_class": cls.name.lower(), "tick_size": _undef(r.min_price_increment),
                     "multiplier": _undef(r.unit_of_measure_qty), "expiration": expiry, "strike": strike, "right": right,
                     "underlying": r.underlying or None, "currency": r.currency or None,
                     "exchange": r.exchange or None})
    return _table(rows, INSTRUMENT)


def _read_statistics(records, symbols: Symbols) -> dict[str, tuple[pa.Table, list]]:
    """Open interest (``OPEN_INTEREST``, its quantity) and settlement prices (``SETTLEMENT_PRICE``), at the
    time the venue sent them; a statistic the venue deletes is quarantined with the reason. Other
    statistics (session high and low, cleared volume, ...) are kept in no dataset."""
    oi, settle, dropped = [], [], []
    for r in records:
        if not isinstance(r, dbn.StatMsg) or r.stat_type not in (dbn.StatType.OPEN_INTEREST,
                                                                  dbn.StatType.SETTLEMENT_PRICE):
            continue
        sym = symbols(r.instrument_id, r.ts_event)
        if r.update_action == dbn.StatUpdateAction.DELETE:
            dropped.append((r.ts_event // 1_000_000, sym, f"{r.stat_type.name.lower()} deleted by the venue"))
        elif r.stat_type == dbn.StatType.OPEN_INTEREST:
            oi.append({"ts": r.ts_event, "symbol": sym, "open_interest": float(r.quantity)})
        else:
            settle.append({"ts": r.ts_event, "symbol": sym, "price": _undef(r.price)})
    out = {}
    for name, rows, schema, stat in (("open_interest", oi, OPEN_INTEREST, "open_interest"),
                                     ("settlements", settle, SETTLEMENT, "settlement_price")):
        out[name] = (_table(rows, schema), [d for d in dropped if d[2].startswith(stat)])
    return out


def _read_ohlcv(records, symbols: Symbols) -> pa.Table:
    rows = [(r.ts_event, symbols(r.instrument_id, r.ts_event), r.open / PRICE_UNITS, r.high / PRICE_UNITS,
             r.low / PRICE_UNITS, r.close / PRICE_UNITS, float(r.volume)) for r in records if hasattr(r, "open")]
    ts, sym, o, h, lo, c, v = zip(*rows) if rows else ((),) * 7
    n = len(rows)
    cols = {"ts": pa.array(np.array(ts, np.int64)).cast(TS), "symbol": pa.array(sym, pa.string()),
            "open": pa.array(o, pa.float64()), "high": pa.array(h, pa.float64()), "low": pa.array(lo, pa.float64()),
            "close": pa.array(c, pa.float64()), "volume": pa.array(v, pa.float64())}
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in BAR}, schema=BAR)
