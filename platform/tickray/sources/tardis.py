"""Tardis.dev CSV downloads (plain or .gz): one data type per file, ``<exchange>_<data type>_…csv[.gz]``
as their download client names them (``binance-futures_incremental_book_L2_2020-09-01_BTCUSDT.csv.gz``).

As Tardis.dev documents them: timestamps are µs since the epoch, ``timestamp`` the exchange's (the lake's
``ts``) and ``local_timestamp`` the moment Tardis received the message; ``exchange`` and ``symbol`` are
columns, so one file may hold many symbols.

- ``incremental_book_L2`` (``is_snapshot,side,price,amount``): ``amount`` is the level's new size, 0
  removes it. Rows of one symbol with one ``local_timestamp`` are one update: applied together, one book
  state. A block of ``is_snapshot`` rows after updates means the book was reset (a reconnect): the book
  is cleared and rebuilt from it, counted as a resync. Rows before a symbol's first snapshot cannot be
  applied and are quarantined.
- ``book_snapshot_N`` (``asks[i].price``, ``asks[i].amount``, ``bids[i].…``), ``quotes`` (best bid and
  ask): book rows as they are.
- ``trades`` (``id,side,price,amount``; ``side`` the aggressor, ``unknown`` kept as null and so
  quarantined by validation).
- ``derivative_ticker``: its ``open_interest`` into the ``open_interest`` dataset; mark and index prices,
  funding rate, predicted funding rate and next funding time into ``funding``. Venues send some fields on
  some messages only: a missing one stays null (never a zero), a row with none of them is no row.
- ``liquidations`` (``id,side,price,amount``; ``side`` the liquidation order's: ``buy`` closes a short).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from tickray.errors import DataFormatError
from tickray.lake.schema import FUNDING, LIQUIDATION, OPEN_INTEREST, TRADE, TS, conform_book
from tickray.market.venues import venue_name
from tickray.sources.binance import read_bytes
from tickray.sources.book_rows import BookDay, book_table

NAME = re.compile(r"^(?P<exchange>[a-z0-9-]+)_(?P<type>incremental_book_l2|book_snapshot_\d+|trades|quotes|"
                  r"derivative_ticker|liquidations)_.+\.csv(\.gz)?$")
HEAD = ["exchange", "symbol", "timestamp", "local_timestamp"]
COLUMNS = {
    "incremental_book_l2": HEAD + ["is_snapshot", "side", "price", "amount"],
    "trades": HEAD + ["id", "side", "price", "amount"],
    "quotes": HEAD + ["ask_amount", "ask_price", "bid_price", "bid_amount"],
    "liquidations": HEAD + ["id", "side", "price", "amount"],
    "derivative_ticker": HEAD + ["funding_timestamp", "funding_rate", "predicted_funding_rate", "open_interest",
                                 "last_price", "index_price", "mark_price"],
}
BEFORE_SNAPSHOT = "book update before the symbol's first snapshot"
TIME_BACKWARDS = "local_timestamp going backwards"


def data_type(path: Path) -> str | None:
    """The Tardis data type a file name says (lower case), or None."""
    m = NAME.match(Path(path).name.lower())
    return m["type"] if m else None


def _read(path: Path, kind: str, dictionary: tuple[str, ...] = ()) -> pa.Table:
    """The file's columns, checked against the data type's documented ones (book snapshots: by depth);
    the ``dictionary`` ones dictionary-encoded as they are read, one dictionary for the whole table."""
    # a plain file is parsed where it lies (pyarrow reads it in parallel, without a copy); .gz decompressed first
    if path.suffix == ".gz":
        data = read_bytes(path)
        head, source = data[: data.find(b"\n")], io.BytesIO(data)
    else:
        with open(path, "rb") as f:
            head, source = f.readline(), str(path)
    header = head.decode(errors="replace").strip().split(",")
    expected = COLUMNS.get(kind) or HEAD + [f"{side}[{i}].{what}" for i in range(int(kind.rsplit("_", 1)[1]))
                                           for side in ("asks", "bids") for what in ("price", "amount")]
    missing, unknown = set(expected) - set(header), set(header) - set(expected)
    if missing or unknown:
        raise DataFormatError(f"{path}: not a Tardis.dev {kind} file: columns missing {sorted(missing)[:6]}, "
                              f"unknown {sorted(unknown)[:6]}")
    types = {"exchange": pa.string(), "symbol": pa.string(), "timestamp": pa.int64(), "local_timestamp": pa.int64(),
             "side": pa.string(), "id": pa.string(), "is_snapshot": pa.bool_(), "funding_timestamp": pa.int64()}
    types.update(dict.fromkeys(dictionary, pa.dictionary(pa.int32(), pa.string())))
    try:
        return pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(
            column_types={c: types.get(c, pa.float64()) for c in header}, strings_can_be_null=False)
        ).unify_dictionaries()
    except pa.ArrowInvalid as e:
        raise DataFormatError(f"{path}: not a readable Tardis.dev {kind} CSV ({e})") from None


def _ts(t: pa.Table, column: str = "timestamp") -> pa.Array:
    return pc.multiply(t[column], 1000).cast(TS)


def _side(t: pa.Table) -> pa.Array:
    """buy → +1, sell → -1, anything else (``unknown``) null, so that validation quarantines it."""
    side = pc.if_else(pc.equal(t["side"], "buy"), 1, pc.if_else(pc.equal(t["side"], "sell"), -1, None))
    return pc.cast(side, pa.int8())


def read_trades(path: Path) -> pa.Table:
    t = _read(path, "trades")
    return pa.table({"ts": _ts(t), "symbol": t["symbol"], "price": t["price"], "qty": t["amount"],
                     "side": _side(t), "trade_id": trade_ids(t["id"])}, schema=TRADE)


def read_liquidations(path: Path) -> pa.Table:
    t = _read(path, "liquidations")
    return pa.table({"ts": _ts(t), "symbol": t["symbol"], "side": _side(t), "price": t["price"], "qty": t["amount"],
                     "liquidation_id": trade_ids(t["id"])}, schema=LIQUIDATION)


def trade_ids(ids: pa.ChunkedArray) -> pa.Array:
    """The venue's trade ids as integers; ids that are not (UUIDs on some venues) as a stable 63-bit
    hash of the text, so that duplicates are still found."""
    text = ids.to_pylist()
    try:
        return pa.array([int(s) if s else None for s in text], pa.int64())
    except ValueError:
        return pa.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") >> 1
                         if s else None for s in text], pa.int64())


def read_book_snapshots(path: Path, kind: str, levels: int) -> pa.Table:
    t = _read(path, kind)
    cols = {"ts": _ts(t), "symbol": t["symbol"]}
    for i in range(min(levels, int(kind.rsplit("_", 1)[1]))):
        for side, ours in (("bids", "bid"), ("asks", "ask")):
            cols[f"{ours}_px_{i + 1}"] = t[f"{side}[{i}].price"]
            cols[f"{ours}_sz_{i + 1}"] = t[f"{side}[{i}].amount"]
    return conform_book(cols, t.num_rows, levels)


def read_quotes(path: Path, levels: int) -> pa.Table:
    t = _read(path, "quotes")
    return conform_book({"ts": _ts(t), "symbol": t["symbol"], "bid_px_1": t["bid_price"], "bid_sz_1": t["bid_amount"],
                         "ask_px_1": t["ask_price"], "ask_sz_1": t["ask_amount"]}, t.num_rows, levels)


def read_derivative_ticker(path: Path) -> dict[str, pa.Table]:
    """``open_interest`` and ``funding`` rows: each from the messages that carry its fields."""
    t = _read(path, "derivative_ticker")
    oi = t.filter(pc.is_valid(t["open_interest"]))
    values = ["mark_price", "index_price", "funding_rate", "predicted_funding_rate"]
    funding = t.filter(pc.or_(pc.or_(pc.is_valid(t["mark_price"]), pc.is_valid(t["index_price"])),
                              pc.or_(pc.is_valid(t["funding_rate"]), pc.is_valid(t["predicted_funding_rate"]))))
    return {
        "open_interest": pa.table({"ts": _ts(oi), "symbol": oi["symbol"], "open_interest": oi["open_interest"]},
                                  schema=OPEN_INTEREST),
        "funding": pa.table({"ts": _ts(funding), "symbol": funding["symbol"], **{c: funding[c] for c in values},
                             "funding_ts": _ts(funding, "funding_timestamp")}, schema=FUNDING),
    }


def rebuild_incremental_book(path: Path, levels: int) -> tuple[pa.Table, list[tuple[int, str, str]], list[BookDay]]:
    """(book rows, rows that could not be applied as (ts ms, symbol, reason), each symbol's BookDay) from an
    ``incremental_book_L2`` file: one book state per update of each symbol (see the module's rules).

    Tardis.dev gives no update ids: a symbol's gap report counts its snapshots after the first as resyncs
    and reads its receive times (µs) as its sequence; it is unsynced from its first row to its first
    snapshot, and its day is that of its first row."""
    from tickray.sources.tardis_kernels import replay_l2

    t = _read(path, "incremental_book_l2", dictionary=("exchange", "symbol", "side"))
    # writable arrays whatever the file's size (one Arrow chunk converts read-only, several to a copy): the
    # kernels are then compiled for one type only, the one compile_kernels caches
    ts, local, price, amount = (np.require(t[c].to_numpy(), requirements="W")
                                for c in ("timestamp", "local_timestamp", "price", "amount"))
    snap = t["is_snapshot"].to_numpy(zero_copy_only=False)
    sides = t["side"].combine_chunks()
    side_of = np.array([{"bid": 0, "ask": 1}.get(v, 2) for v in sides.dictionary.to_pylist()] or [2], np.int8)
    side = side_of[sides.indices.to_numpy()]
    is_bid, bad_side = side == 0, side == 2
    tables, dropped, days = [], [], []
    codes = t["symbol"].combine_chunks()
    names = codes.dictionary.to_pylist()
    code = codes.indices.to_numpy().astype(np.int16 if len(names) < 2**15 else np.int32)  # int16: a radix sort
    # each symbol's rows, in file order (a file of one symbol, as Tardis names most, needs no sort)
    order = np.argsort(code, kind="stable") if len(names) > 1 else np.arange(code.size)
    bounds = np.searchsorted(code[order], np.arange(len(names) + 1))
    for j in sorted(range(len(names)), key=lambda j: order[bounds[j]]):  # symbols as they first appear
        rows = order[bounds[j]:bounds[j + 1]]
        out_ts, out_lv, drop_rows, drop_codes, updates, resyncs, end = replay_l2(
            rows, ts, local, snap, is_bid, bad_side, price, amount, levels)
        tables.append(book_table(names[j], out_ts, out_lv.T, levels))
        lost = [(int(ts[i]) // 1000, names[j], DROP_REASONS[c]) for i, c in zip(drop_rows, drop_codes)]
        dropped += lost
        days.append(_book_day(t["exchange"][int(rows[0])].as_py(), names[j], rows, ts, local, snap, updates,
                              resyncs, end, lost))
    book = pa.concat_tables(tables) if tables else book_table("", np.zeros(0, np.int64), np.zeros((0, 4 * levels)),
                                                              levels)
    return book, dropped, days


def _book_day(exchange: str, symbol: str, rows: np.ndarray, ts, local, snap, updates: int, resyncs: int,
              end: tuple, lost: list) -> BookDay:
    first_snap = rows[snap[rows]][:1]
    unsynced_us = (local[first_snap[0]] if first_snap.size else local[rows[-1]]) - local[rows[0]]
    bid_keys, bid_sizes, ask_keys, ask_sizes = end
    state = {"symbol": symbol, "synced": bool(first_snap.size), "last_local_us": int(local[rows[-1]]),
             "bids": [[float(p), float(q)] for p, q in zip(bid_keys[::-1], bid_sizes[::-1])],
             "asks": [[float(-p), float(q)] for p, q in zip(ask_keys[::-1], ask_sizes[::-1])]}
    report = {"start": "its own snapshot" if snap[rows[0]] else "nothing (its first rows waited for a snapshot)",
              "sequence": "receive time (µs)", "first": int(local[rows[0]]), "last": int(local[rows[-1]]),
              "applied": updates, "gaps": 0, "resyncs": resyncs, "unsynced_s": round(float(unsynced_us) / 1e6, 3),
              "quarantined": dict(Counter(why for *_, why in lost))}
    day = str(np.datetime64(int(ts[rows[0]]), "us").astype("datetime64[D]"))
    return BookDay(venue_name(exchange), symbol, day, state, report)


DROP_REASONS = (TIME_BACKWARDS, "side is neither bid nor ask", BEFORE_SNAPSHOT)
