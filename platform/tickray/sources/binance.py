"""Binance file formats: public-data CSV/zip (aggTrades, klines, bookDepth) and WebSocket captures.

Every reader returns Arrow tables in the lake schema (tickray.lake.schema) plus what it could not use,
each with a reason, so the caller can quarantine it. Only an unreadable file raises, naming it.
"""

from __future__ import annotations

import datetime as dt
import gzip
import heapq
import io
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR, FUNDING, LIQUIDATION, TRADE, TS, conform_book
from tickray.market.book import BookSync, DepthUpdate
from tickray.market.venues import venue_name
from tickray.sources.book_rows import TopNWriter

AGG_TRADE_COLUMNS = ["agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id", "time",
                     "is_buyer_maker", "is_best_match"]
TRADE_COLUMNS = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]
BOOK_TICKER_COLUMNS = ["update_id", "best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty",
                       "transaction_time", "event_time"]
KLINE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
                 "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore"]
NO_BOOK = "diff with no book to apply to (no snapshot after it, or after a gap)"
FUNDING_RATE_COLUMNS = ["calc_time", "funding_interval_hours", "last_funding_rate"]
DEPTH_COLUMNS = ["symbol", "timestamp", "first_update_id", "last_update_id", "side", "update_type",
                 "price", "qty", "pu"]


CAPTURE_NAME = re.compile(r"^(?P<market>usdm|spot|cm)_(?P<symbol>.+)_(?P<day>\d{8})\.gz$")


def symbol_from_filename(path: Path) -> str:
    """BTCUSDT-aggTrades-2024-01-01.zip → BTCUSDT; usdm_btcusdt_20240718.gz → BTCUSDT;
    cm_ethusd_perp_20240808.gz → ETHUSD_PERP (COIN-M symbols hold an underscore)."""
    name = Path(path).name
    m = CAPTURE_NAME.match(name)
    if m:
        return m["symbol"].upper()
    return name.split("-")[0].upper()


def byte_range_shards(path: Path, shard_bytes: int) -> list[tuple[int, int] | None]:
    """Byte ranges of about ``shard_bytes`` for reading a large plain-text file in several tasks (each
    range is widened to whole lines when read); a small or compressed file is one shard, ``None``."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix in (".zip", ".gz") or size <= shard_bytes:
        return [None]
    return [(start, min(start + shard_bytes, size)) for start in range(0, size, shard_bytes)]


def _read_lines(path: Path, start: int, stop: int) -> bytes:
    """The whole lines that begin in [start, stop)."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the rest of a line that began before start belongs to the previous range
        begin = f.tell()
        if begin >= stop:
            return b""
        data = f.read(stop - begin)
        if not data.endswith(b"\n"):
            data += f.readline()
        return data


def read_bytes(path: Path, byte_range: tuple[int, int] | None = None) -> bytes:
    """The content of a plain, gzip or zip (first member) file; of a plain file, optionally only the
    whole lines beginning in ``byte_range``."""
    path = Path(path)
    try:
        if byte_range is not None:
            return _read_lines(path, *byte_range)
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                members = [n for n in z.namelist() if not n.endswith("/")]
                if not members:
                    raise DataFormatError(f"{path}: zip archive is empty")
                return z.read(members[0])
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError:  # a file cut off in transfer: say where
        raise DataFormatError(f"{path}: unreadable (truncated: the compressed data ends at byte "
                              f"{path.stat().st_size:,} before the end of its stream)") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise DataFormatError(f"{path}: unreadable ({e})") from None


def _read_csv(path: Path, names: list[str], optional_trailing: int = 0,
              byte_range: tuple[int, int] | None = None) -> pa.Table:
    """A CSV with or without its header row (both occur in Binance's archives). The last
    ``optional_trailing`` columns may be absent (spot aggTrades carry is_best_match, futures do not).
    With ``byte_range``, only the lines beginning in it (the header is in the first range only)."""
    data = read_bytes(path, byte_range)
    first = data[: data.find(b"\n")].strip()
    has_header = bool(first) and not first[:1].isdigit() and first[:1] != b"-"
    ncols = first.count(b",") + 1
    if not len(names) - optional_trailing <= ncols <= len(names):
        raise DataFormatError(f"{path}: {ncols} columns, expected {len(names)} ({', '.join(names)})")
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names[:ncols], skip_rows=1 if has_header else 0),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except pa.ArrowInvalid as e:
        raise DataFormatError(f"{path}: not a readable CSV ({e})") from None


def _to_ns(t: pa.Array) -> pa.Array:
    """Binance time columns are ms, or µs in spot files since 2025: normalise to ns."""
    arr = pc.cast(t, pa.int64()).to_numpy(zero_copy_only=False)
    unit = np.where(arr > 10**14, 1_000, 1_000_000)
    return pa.array(arr * unit, type=pa.int64()).cast(pa.timestamp("ns", tz="UTC"))


def _trades_table(t: pa.Table, id_column: str, symbol: str) -> pa.Table:
    maker = t["is_buyer_maker"]
    if not pa.types.is_boolean(maker.type):
        maker = pc.equal(pc.utf8_lower(pc.cast(maker, pa.string())), "true")
    side = pc.if_else(maker, pa.scalar(-1, pa.int8()), pa.scalar(1, pa.int8()))
    return pa.table({
        "ts": _to_ns(t["time"]), "symbol": pa.array([symbol] * t.num_rows, pa.string()),
        "price": pc.cast(t["price"], pa.float64()), "qty": pc.cast(t["qty"], pa.float64()),
        "side": side, "trade_id": pc.cast(t[id_column], pa.int64()),
    }, schema=TRADE)


def read_agg_trades(path: Path, symbol: str | None = None, byte_range: tuple[int, int] | None = None) -> pa.Table:
    t = _read_csv(path, AGG_TRADE_COLUMNS, optional_trailing=1, byte_range=byte_range)
    return _trades_table(t, "agg_trade_id", symbol or symbol_from_filename(path))


def read_trades(path: Path, symbol: str | None = None, byte_range: tuple[int, int] | None = None) -> pa.Table:
    """Public-data ``trades`` (every fill): id, price, qty, quote_qty, time, is_buyer_maker
    (+ is_best_match on spot)."""
    t = _read_csv(path, TRADE_COLUMNS, optional_trailing=1, byte_range=byte_range)
    return _trades_table(t, "id", symbol or symbol_from_filename(path))


def read_book_ticker(path: Path, levels: int = 10, symbol: str | None = None) -> pa.Table:
    """Public-data ``bookTicker`` (USD-M): the best bid and ask after each update, as level 1 of the book."""
    t = _read_csv(path, BOOK_TICKER_COLUMNS)
    symbol = symbol or symbol_from_filename(path)
    cols = {"ts": _to_ns(t["transaction_time"]), "symbol": pa.array([symbol] * t.num_rows, pa.string()),
            "bid_px_1": t["best_bid_price"], "bid_sz_1": t["best_bid_qty"],
            "ask_px_1": t["best_ask_price"], "ask_sz_1": t["best_ask_qty"]}
    return conform_book({k: pc.cast(v, pa.float64()) if k not in ("ts", "symbol") else v for k, v in cols.items()},
                        t.num_rows, levels)


def read_klines(path: Path, symbol: str | None = None) -> pa.Table:
    t = _read_csv(path, KLINE_COLUMNS)
    symbol = symbol or symbol_from_filename(path)
    vol = pc.cast(t["volume"], pa.float64())
    qv = pc.cast(t["quote_volume"], pa.float64())
    close = pc.cast(t["close"], pa.float64())
    vwap = pc.if_else(pc.greater(vol, 0), pc.divide(qv, vol), close)
    return pa.table({
        "ts": _to_ns(t["open_time"]), "symbol": pa.array([symbol] * t.num_rows, pa.string()),
        "open": pc.cast(t["open"], pa.float64()), "high": pc.cast(t["high"], pa.float64()),
        "low": pc.cast(t["low"], pa.float64()), "close": close, "volume": vol, "quote_volume": qv,
        "trades": pc.cast(t["count"], pa.int64()), "vwap": vwap,
        "buy_volume": pc.cast(t["taker_buy_volume"], pa.float64()),
    }, schema=BAR)


def read_funding_rates(path: Path, symbol: str | None = None) -> pa.Table:
    """Public-data monthly ``fundingRate`` (USD-M and COIN-M): the rate settled at each funding time; no
    mark or index price (null)."""
    t = _read_csv(path, FUNDING_RATE_COLUMNS)
    at = _to_ns(t["calc_time"])
    n = t.num_rows
    return pa.table({"ts": at, "symbol": pa.array([symbol or symbol_from_filename(path)] * n, pa.string()),
                     "mark_price": pa.nulls(n, pa.float64()), "index_price": pa.nulls(n, pa.float64()),
                     "funding_rate": pc.cast(t["last_funding_rate"], pa.float64()),
                     "predicted_funding_rate": pa.nulls(n, pa.float64()), "funding_ts": at}, schema=FUNDING)


@dataclass
class BookRebuild:
    """Top-N book snapshots after every applied update, with the sync counters."""

    book: pa.Table
    applied: int = 0
    gaps: int = 0
    resyncs: int = 0
    stale_dropped: int = 0
    unsynced_dropped: int = 0
    dropped: list[tuple[int, str, str]] = field(default_factory=list)  # (ts ms, symbol, reason)
    state: dict | None = None  # one book's end state (BookSync.export), where the rebuild was of one
    report: dict | None = None  # and its gap report (see _SymbolRebuild.report)


def rebuild_book_depth(path: Path, levels: int = 10) -> BookRebuild:
    """Replay a bookDepth file (``snap`` rows open a book, ``set`` rows are diffs chained by ``pu``)."""
    t = _read_csv(path, DEPTH_COLUMNS)
    symbol = t["symbol"][0].as_py() if t.num_rows else symbol_from_filename(path)
    ts = t["timestamp"].to_numpy()
    first = t["first_update_id"].to_numpy()
    last = t["last_update_id"].to_numpy()
    pu = t["pu"].to_numpy()
    side = t["side"].to_pylist()
    kind = t["update_type"].to_pylist()
    price = pc.cast(t["price"], pa.string()).to_pylist()
    qty = pc.cast(t["qty"], pa.string()).to_pylist()
    dropped: list[tuple[int, str, str]] = []
    r = _SymbolRebuild(symbol, levels, False, dropped)
    sync = r.sync
    # Rows of one event share (timestamp, last_update_id, update_type).
    n = t.num_rows
    bounds = np.flatnonzero((np.diff(last) != 0) | (np.diff(ts) != 0)) + 1
    starts = np.concatenate([[0], bounds]) if n else np.array([], dtype=np.int64)
    ends = np.concatenate([bounds, [n]]) if n else np.array([], dtype=np.int64)
    for s, e in zip(starts.tolist(), ends.tolist()):
        bids = [(price[i], qty[i]) for i in range(s, e) if side[i] == "b"]
        asks = [(price[i], qty[i]) for i in range(s, e) if side[i] == "a"]
        if kind[s] == "snap":
            sync.on_snapshot(int(last[s]), bids, asks, int(ts[s]))
            r.observe(int(ts[s]), int(last[s]), int(last[s]), snapshot=True)
            continue
        sync.on_update(DepthUpdate(int(first[s]), int(last[s]), int(pu[s]), bids, asks, int(ts[s])))
        r.observe(int(ts[s]), int(first[s]), int(last[s]))
    leftover = [(up.ts_ms, symbol, NO_BOOK) for up in sync.pending()]
    c = sync.counters
    day = re.search(r"\d{4}-\d{2}-\d{2}", path.name)
    report = r.report(Counter(why for *_, why in dropped + leftover), day[0] if day else "")
    return BookRebuild(r.out.table(), c.applied, c.gaps, c.resyncs, c.stale_dropped, len(leftover),
                       dropped + leftover, state=sync.export(), report=report)


# ------------------------------------------------------------------------------ WebSocket captures


# A receive time's unit, told by its magnitude for a time in 1999..2100: (name, ns per unit, lowest value).
# hftbacktest captures are in ns (µs in its 2023 files), cryptofeed's in seconds.
RECV_UNITS = (("ns", 1, 9e17), ("µs", 1_000, 9e14), ("ms", 1_000_000, 9e11), ("s", 1_000_000_000, 9e8))


def recv_unit(value: float) -> tuple[str, int] | None:
    """The unit of a receive time from its magnitude, or None when it fits none (not a time 1999..2100)."""
    for name, ns, low in RECV_UNITS:
        if low <= value < low * 4.6:
            return name, ns
    return None


def iter_capture(path: Path, bad: list | None = None, units: dict | None = None) -> Iterator[tuple[int, dict]]:
    """(receive time in ns, message) from a capture: ``<recv_ts> <json>`` lines (hftbacktest),
    ``<recv_ts>: <json>`` lines (cryptofeed, whose ``wss://... <-> ts`` connection lines are skipped)
    or JSONL ``{"recv_ts", "msg"}``. The receive times' unit is the file's, told once by the magnitude
    of its first (recorded in ``units[path]``); a line whose time is not in that unit, or that cannot
    be parsed, is skipped and listed in ``bad`` as (line number, the line)."""
    scale = None
    for lineno, line in enumerate(read_bytes(path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith((b"wss://", b"ws://")):
            continue
        try:
            if line.startswith(b"{"):
                doc = orjson.loads(line)
                recv, msg = float(doc["recv_ts"]), doc["msg"]
            else:
                head, _, body = line.partition(b" ")
                recv, msg = float(head.rstrip(b":")), orjson.loads(body)
            unit = recv_unit(recv)
            if unit is None or (scale is not None and unit[1] != scale):
                raise ValueError("receive time not in the file's unit")
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            if bad is not None:
                bad.append((lineno, line[:4096].decode(errors="replace")))
            continue
        if scale is None:
            scale = unit[1]
            if units is not None:
                units[str(path)] = unit[0]
        yield int(recv * scale) if scale > 1 else int(recv), msg


def iter_rest_snapshots(path: Path) -> Iterator[tuple[int, str, dict]]:
    """(receive time ns, symbol, snapshot) from cryptofeed's HTTP log: ``<url> -> <recv_ts>: <json>``."""
    for line in read_bytes(path).splitlines():
        url, sep, rest = line.partition(b" -> ")
        if not sep or b"/depth" not in url:
            continue  # exchangeInfo and other calls
        ts, _, body = rest.partition(b": ")
        symbol = (parse_qs(urlparse(url.decode()).query).get("symbol") or [""])[0].upper()
        try:
            recv = float(ts)
            unit = recv_unit(recv)
            if unit is None:  # never guessed: the book would be seeded at the wrong moment
                raise ValueError(f"receive time {ts.decode(errors='replace')[:40]} is no time in s, ms, µs or ns")
            yield int(recv * unit[1]), symbol, orjson.loads(body)
        except (ValueError, orjson.JSONDecodeError) as e:
            raise DataFormatError(f"{path}: unreadable snapshot line for {symbol} ({e})") from None


# Capture messages that have no lake dataset yet: counted as skipped, never quarantined as errors.
SKIPPED_EVENTS = ("kline", "bookTicker", "24hrTicker")


@dataclass
class CaptureRead:
    trades: pa.Table
    book: BookRebuild
    # Messages that could not be used: (receive time ns, symbol, reason, raw text).
    quarantine: list[tuple[int, str, str, str]] = field(default_factory=list)
    streams: Counter = field(default_factory=Counter)
    recv_units: dict[str, str] = field(default_factory=dict)  # file → unit of its receive times
    coinm: bool = False  # COIN-M: trade quantities are contracts, not coin
    funding: pa.Table = field(default_factory=FUNDING.empty_table)  # from @markPrice
    liquidations: pa.Table = field(default_factory=LIQUIDATION.empty_table)  # from @forceOrder
    books: dict[str, dict] = field(default_factory=dict)  # symbol → its book as the read ended (BookSync.export)
    reports: dict[str, dict] = field(default_factory=dict)  # symbol → its gap report (_SymbolRebuild.report)
    venue: str = "binance"  # the feed, for the (venue, symbol, day) keys of the books' days

    def notes(self) -> list[str]:
        """What a reader of the lake should know about this capture (the ingest report prints them)."""
        units = set(self.recv_units.values())
        out = [f"receive times in {units.pop()} (told by their magnitude)"] if len(units) == 1 else [
            f"{Path(f).name}: receive times in {u} (told by their magnitude)" for f, u in self.recv_units.items()]
        skipped = {e: n for e, n in self.streams.items() if e in SKIPPED_EVENTS}
        if skipped:
            out.append("messages kept in no dataset: " + ", ".join(f"{e} {n:,}" for e, n in sorted(skipped.items())))
        if self.coinm:
            out.append("COIN-M: trade qty in contracts (a contract is a fixed USD amount: exchangeInfo contractSize)")
        return out


class _SymbolRebuild:
    """One symbol's book and trades in a capture, and what its gap report says (see ``report``)."""

    def __init__(self, symbol: str, levels: int, spot: bool, dropped: list, state: dict | None = None):
        self.out = TopNWriter(symbol, levels)
        self.sync = BookSync(symbol, spot=spot, on_change=lambda ts_ms: self.out.add(ts_ms * 1_000_000, self.sync.book),
                             on_drop=lambda up, why: dropped.append((up.ts_ms, symbol, why)),
                             on_unsync=lambda ts_ms: self.out.unknown(ts_ms * 1_000_000))
        self.start = ""  # where the book started from: told by the state given, else by the first book message
        if state is not None:
            self.sync.restore(state)
            self.start = "the day before's book" if state["synced"] else "the day before's unsynced book"
        self.trades: dict[str, list] = {"ts": [], "price": [], "qty": [], "side": [], "trade_id": []}
        self.first_id: int | None = None
        self.last_id: int | None = None
        # time without a synced book between the first and the last book message, on the receive clock
        self._synced = self.sync.synced
        self._unsynced_from: int | None = None
        self._unsynced_ms = 0
        self._first_ms: int | None = None
        self._last_ms: int | None = None

    def observe(self, recv_ms: int, first_id: int, last_id: int, snapshot: bool = False) -> None:
        """After each book message (diff or ``snapshot``) received at ``recv_ms``."""
        if self._last_ms is None and not self._synced:
            self._unsynced_from = recv_ms
        self.start = self.start or ("its own snapshot" if snapshot else "nothing (its first diffs waited for a snapshot)")
        if self.sync.synced != self._synced:
            self._synced = self.sync.synced
            if self._synced:
                self._unsynced_ms += recv_ms - self._unsynced_from
            else:
                self._unsynced_from = recv_ms
        self._last_ms = recv_ms
        if self.first_id is None:
            self.first_id, self._first_ms = first_id, recv_ms
        self.last_id = last_id

    def report(self, quarantined: Counter, day: str = "") -> dict:
        """The gap report of this read: its day (``day``, else its first book message's), where the book
        started from, the update ids seen, diffs applied, gaps, resyncs, seconds unsynced and the rows
        quarantined, by reason."""
        open_ms = self._last_ms - self._unsynced_from if self._last_ms is not None and not self._synced else 0
        c = self.sync.counters
        first = self._first_ms if self._first_ms is not None else 0
        return {"day": day or str(np.datetime64(first, "ms").astype("datetime64[D]")),
                "start": self.start or "no book message", "sequence": "update id", "first": self.first_id,
                "last": self.last_id,
                "applied": c.applied, "gaps": c.gaps, "resyncs": c.resyncs,
                "unsynced_s": round((self._unsynced_ms + open_ms) / 1000, 3), "quarantined": dict(quarantined)}

    def trade_table(self) -> pa.Table:
        t = self.trades
        return pa.table({
            "ts": pa.array(t["ts"], pa.int64()).cast(TS), "symbol": pa.array([self.sync.symbol] * len(t["ts"])),
            "price": pa.array(t["price"], pa.float64()), "qty": pa.array(t["qty"], pa.float64()),
            "side": pa.array(t["side"], pa.int8()), "trade_id": pa.array(t["trade_id"], pa.int64()),
        }, schema=TRADE)


def opens_with_snapshot(path: Path) -> bool:
    """Whether a capture's first book message is a REST snapshot: then its books need nothing from the day
    before (a collector that snapshots as it opens each day's file). Reads only up to that message."""
    try:
        with gzip.open(path) as f:
            for line in f:
                if b'"lastUpdateId"' in line:
                    return True
                if b"depthUpdate" in line:
                    return False
    except (OSError, EOFError, zlib.error):
        return False  # read in full, it fails in its own task, with its own error
    return True  # no book at all: nothing to carry


def read_ws_capture(path: Path | Sequence[Path], levels: int = 10, symbol: str | None = None,
                    snapshots: Path | None = None, start: dict[str, dict] | None = None,
                    carry: bool = False) -> CaptureRead:
    """Trades and rebuilt books from a capture of combined-stream messages, one symbol (hftbacktest:
    its snapshot line is in the file) or many (cryptofeed: REST snapshots in the ``snapshots`` log,
    merged in by receive time). Diffs that find no book (before a snapshot, after a gap) are counted
    and listed in ``book.dropped``, never applied.

    A sequence of paths is one recording session split across files (a collector rotates its file at
    midnight UTC): the books carry over from file to file, so the next file needs no snapshot of its own.
    The same holds across reads: ``start`` gives each symbol's book as the read before ended
    (``CaptureRead.books``), and with ``carry`` the diffs still waiting for a snapshot at the end are
    handed on in ``books`` (the next read applies them) instead of quarantined.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    path = paths[0]
    name = path.name
    spot = name.startswith(("spot", "BINANCE."))  # hftbacktest spot, cryptofeed spot
    default_symbol = (symbol or (symbol_from_filename(path) if snapshots is None else "")).upper()
    bad: list[tuple[int, str]] = []
    books: dict[str, _SymbolRebuild] = {}
    quarantine: list[tuple[int, str, str, str]] = []
    unknown = default_symbol or "UNKNOWN"
    streams: Counter = Counter()
    dropped: list[tuple[int, str, str]] = []
    units: dict[str, str] = {}
    events: Iterator = ((t, None, m) for p in paths for t, m in iter_capture(p, bad, units))
    if snapshots is not None:
        events = heapq.merge(events, iter_rest_snapshots(snapshots), key=lambda e: e[0])
    start = start or {}

    def state(sym: str) -> _SymbolRebuild:
        if sym not in books:
            books[sym] = _SymbolRebuild(sym, levels, spot, dropped, start.get(sym))
        return books[sym]

    for sym in start:  # a book carried in lives on (and is handed on) even on a day with no message for it
        state(sym)
    last_recv = 0

    def flush_bad(at_ns: int) -> None:
        # An unparsable line has no time of its own: it is stamped with the last good line's.
        quarantine.extend((at_ns, unknown, "unparsable line", f"line {n}: {raw}") for n, raw in bad)
        bad.clear()

    funding: list[dict] = []
    liquidations: list[dict] = []
    for recv_ns, snap_symbol, msg in events:
        flush_bad(last_recv or recv_ns)
        last_recv = recv_ns
        if "lastUpdateId" in msg:
            # COIN-M's snapshot names its symbol; USD-M's and spot's do not (the file name does)
            b = state(snap_symbol or msg.get("symbol") or default_symbol)
            b.sync.on_rest_snapshot(msg)
            b.observe(recv_ns // 1_000_000, int(msg["lastUpdateId"]), int(msg["lastUpdateId"]), snapshot=True)
            streams["snapshot"] += 1
            continue
        data = msg.get("data", msg)
        etype = data.get("e") if isinstance(data, dict) else None
        if etype is None and isinstance(data, dict) and {"u", "b", "a"} <= data.keys():
            etype = "bookTicker"  # spot bookTicker carries no e/E/T
        streams[etype or "unknown"] += 1
        try:
            if etype == "depthUpdate":
                up = DepthUpdate.from_message(data)
                b = state(data["s"].upper())
                b.sync.on_update(up)
                b.observe(recv_ns // 1_000_000, up.U, up.u)
            elif etype in ("aggTrade", "trade"):
                # Parse every field before appending any: a bad message must not leave ragged columns.
                row = {"ts": int(data["T"]) * 1_000_000, "price": float(data["p"]), "qty": float(data["q"]),
                       "side": -1 if data["m"] else 1, "trade_id": int(data["a"] if etype == "aggTrade" else data["t"])}
                t = state(data["s"].upper()).trades
                for key, value in row.items():
                    t[key].append(value)
            elif etype == "markPriceUpdate":
                funding.append(mark_price_row(data))
            elif etype == "forceOrder":
                liquidations.append(force_order_row(data))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            sym = data.get("s") if isinstance(data, dict) and isinstance(data.get("s"), str) else unknown
            quarantine.append((recv_ns, sym.upper(), f"malformed {etype} message ({type(e).__name__})",
                               orjson.dumps(msg).decode()))
    flush_bad(last_recv)
    ordered = [books[s] for s in sorted(books)]
    leftover = [] if carry else [(up.ts_ms, b.sync.symbol, NO_BOOK) for b in ordered for up in b.sync.pending()]
    trades = pa.concat_tables([b.trade_table() for b in ordered]) if ordered else TRADE.empty_table()
    book = pa.concat_tables([b.out.table() for b in ordered]) if ordered else TopNWriter("", levels).table()
    rebuild = BookRebuild(book, *(sum(getattr(b.sync.counters, k) for b in ordered)
                                  for k in ("applied", "gaps", "resyncs", "stale_dropped")),
                          unsynced_dropped=len(leftover), dropped=dropped + leftover)
    lost = Counter((sym, why) for _, sym, why in rebuild.dropped)
    lost.update((sym, why) for _, sym, why, _ in quarantine)
    m = CAPTURE_NAME.match(name)
    day = capture_day(path)
    reports = {b.sync.symbol: b.report(Counter({why: n for (sym, why), n in lost.items() if sym == b.sync.symbol}),
                                       day.isoformat() if day else "")
               for b in ordered if b.first_id is not None or b.start}
    coinm = (m is not None and m["market"] == "cm") or name.startswith("BINANCE_DELIVERY.")
    return CaptureRead(trades, rebuild, quarantine, streams, units, coinm,
                       pa.Table.from_pylist(funding, FUNDING), pa.Table.from_pylist(liquidations, LIQUIDATION),
                       books={b.sync.symbol: _handed_on(b.sync.export(), carry) for b in ordered}, reports=reports,
                       venue=capture_venue(path))


def _handed_on(state: dict, carry: bool) -> dict:
    """A book's end state as the next read gets it: without the diffs waiting for a snapshot unless they
    were handed on (``carry``): otherwise they are quarantined here, and must not be counted twice."""
    return state if carry else state | {"pending": []}


def capture_day(path: Path) -> dt.date | None:
    """The day a daily capture file holds, from its name (``usdm_btcusdt_20240718.gz``); None for others."""
    m = CAPTURE_NAME.match(Path(path).name)
    return dt.datetime.strptime(m["day"], "%Y%m%d").date() if m else None


def capture_venue(path: Path) -> str:
    """The venue a capture recorded: ``binance-usdm`` from hftbacktest's ``usdm_…`` and from cryptofeed's
    ``BINANCE_FUTURES.ws…`` alike."""
    m = CAPTURE_NAME.match(Path(path).name)
    return venue_name(f"binance-{m['market']}" if m else Path(path).name.split(".")[0])


def _number_or_none(text) -> float | None:
    """A number field that COIN-M delivery contracts send as "" (no funding): null, never 0."""
    return None if text in (None, "") else float(text)


def mark_price_row(data: dict) -> dict:
    """A ``funding`` row from a ``markPriceUpdate``: mark ``p``, index ``i``, the funding rate ``r`` that
    applies at the next funding time ``T`` (both empty for delivery contracts)."""
    return {"ts": int(data["E"]) * 1_000_000, "symbol": data["s"].upper(), "mark_price": float(data["p"]),
            "index_price": _number_or_none(data.get("i")), "funding_rate": _number_or_none(data.get("r")),
            "predicted_funding_rate": None,
            "funding_ts": int(data["T"]) * 1_000_000 if data.get("T") not in (None, "", 0) else None}


def force_order_row(data: dict) -> dict:
    """A ``liquidations`` row from a ``forceOrder``: the order's side (BUY closes a short), its average
    fill price and filled quantity (the order's price and size while nothing has filled)."""
    o = data["o"]
    side = {"BUY": 1, "SELL": -1}[o["S"]]
    price = float(o.get("ap") or 0) or float(o["p"])
    qty = float(o.get("z") or 0) or float(o["q"])
    return {"ts": int(o["T"]) * 1_000_000, "symbol": o["s"].upper(), "side": side, "price": price, "qty": qty,
            "liquidation_id": None}
