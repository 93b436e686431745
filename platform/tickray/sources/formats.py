"""Every vendor file format tickray reads, in one ordered table: how a file is recognised by its name, the
lake datasets it feeds, and the reader that turns it into rows. A vendor's readers live in
``sources/<vendor>.py``; adding a format is adding its row here.

Two kinds of input are not vendor formats and are read by the ingest itself: Parquet files already in a
lake schema (``lake_parquet``, a row here so that names settle in one order) and files mapped by a
``.tickschema.yaml`` (``generic``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from tickray.errors import DataFormatError
from tickray.sources import binance, cme, databento, lobster, ohlcv, tardis
from tickray.sources.book_rows import BookDay, book_days

Rows = dict[str, tuple[pa.Table, list]]  # dataset → (rows, events that could not become rows: (ts ms, symbol, why))


@dataclass
class Unit:
    """What a reader is given: its files (one, or a capture session's days), the book depth to keep, the
    shard of a large file to read (None: all of it), and a list for what a reader of the lake should know
    about the input (a unit told from the data, messages kept in no dataset).

    A book source leaves in ``days`` each (venue, symbol, day)'s end state and gap report (BookDay). A
    capture, read a day at a time, is also given the books the day before ended with (``start``, symbol
    → state) and whether a later day goes on from this one (``carry``), and leaves its end states by
    symbol in ``books``."""
    paths: list[Path]
    levels: int = 10
    shard: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    start: dict[str, dict] | None = None
    carry: bool = False
    books: dict[str, dict] = field(default_factory=dict)
    days: list[BookDay] = field(default_factory=list)

    @property
    def path(self) -> Path:
        (only,) = self.paths
        return only


@dataclass(frozen=True)
class Format:
    kind: str
    datasets: tuple[str, ...]
    matches: Callable[[str], bool]  # on the lower-cased file name
    read: Callable[[Unit], Rows] | None = None  # None: read with its twin (or by the ingest: lake_parquet)
    byte_shards: bool = False  # a large file is read by several tasks, a range of whole lines each
    datasets_of: Callable[[Path], tuple[str, ...]] | None = None  # when the file itself says (DBN's schema)


def _capture_rows(cap: binance.CaptureRead, unit: Unit) -> Rows:
    unit.notes += cap.notes()
    unit.books = cap.books
    unit.days += book_days(cap.venue, cap.reports, cap.books)
    # unusable messages are counted once, with the trades
    rows = {"trades": (cap.trades, [(t // 1_000_000, sym, why) for t, sym, why, _ in cap.quarantine]),
            "book": (cap.book.book, cap.book.dropped)}
    rows |= {ds: (t, []) for ds, t in (("funding", cap.funding), ("liquidations", cap.liquidations)) if t.num_rows}
    return rows


def _read_candles(unit: Unit) -> Rows:
    dataset, t = ohlcv.read_candles(unit.path, rows=unit.shard)
    return {dataset: (t, [])}


def _read_klines(unit: Unit) -> Rows:
    """Binance klines of any interval (``BTCUSDT-1h-2024-01.zip``): bars of that length."""
    interval = KLINE_NAME.search(unit.path.name)[1]
    return {ohlcv.candles_dataset(unit.path, interval): (binance.read_klines(unit.path), [])}


# Binance's kline intervals as its public data names them (1s, 1m … 1d, 3d, 1w, 1mo)
KLINE_NAME = re.compile(r"-(\d+(?:s|m|h|d|w|mo))-\d{4}-\d{2}")


def cryptofeed_snapshots(ws_path: Path) -> Path | None:
    """BINANCE_FUTURES.ws.1.0.txt → BINANCE_FUTURES.http.0.0.txt beside it (its REST log)."""
    exchange = ws_path.name.split(".ws.")[0]
    found = sorted(ws_path.parent.glob(f"{exchange}.http.*.txt"))
    return found[0] if found else None


def _read_cryptofeed(u: Unit) -> Rows:
    snaps = cryptofeed_snapshots(u.path)
    if snaps is None:
        raise DataFormatError(f"{u.path}: no REST snapshot log (<exchange>.http.*.txt) beside it")
    return _capture_rows(binance.read_ws_capture(u.path, u.levels, snapshots=snaps), u)


def _read_lobster(u: Unit) -> Rows:
    trades, book, unknown = lobster.read_lobster(u.path, u.levels)
    return {"trades": (trades, []), "book": (book, unknown)}


def _read_mbp1_csv(u: Unit) -> Rows:
    trades, book = databento.read_mbp1_csv(u.path, u.levels)
    return {"trades": (trades, []), "book": (book, [])}


def _read_dbn(u: Unit) -> Rows:
    return databento.read_dbn(u.path, u.levels, u.days)


def _read_depth(u: Unit) -> Rows:
    rebuilt = binance.rebuild_book_depth(u.path, u.levels)
    symbol = rebuilt.state["symbol"]
    u.days += book_days("binance-cm" if "_" in symbol else "binance-usdm", {symbol: rebuilt.report},
                        {symbol: rebuilt.state})  # COIN-M symbols hold an underscore
    return {"book": (rebuilt.book, rebuilt.dropped)}


def _read_tardis_book(u: Unit) -> Rows:
    book, dropped, days = tardis.rebuild_incremental_book(u.path, u.levels)
    u.days += days
    return {"book": (book, dropped)}


def _tardis(kind: str) -> Callable[[str], bool]:
    return lambda n: tardis.data_type(n) == kind


# First match wins: the order settles names that fit several patterns.
FORMATS: list[Format] = [
    Format("tardis_incremental_book_l2", ("book",), _tardis("incremental_book_l2"), _read_tardis_book),
    Format("tardis_book_snapshot", ("book",), lambda n: (tardis.data_type(n) or "").startswith("book_snapshot_"),
           lambda u: {"book": (tardis.read_book_snapshots(u.path, tardis.data_type(u.path), u.levels), [])}),
    Format("tardis_quotes", ("book",), _tardis("quotes"),
           lambda u: {"book": (tardis.read_quotes(u.path, u.levels), [])}),
    Format("tardis_trades", ("trades",), _tardis("trades"), lambda u: {"trades": (tardis.read_trades(u.path), [])}),
    Format("tardis_derivative_ticker", ("open_interest", "funding"), _tardis("derivative_ticker"),
           lambda u: {ds: (t, []) for ds, t in tardis.read_derivative_ticker(u.path).items()}),
    Format("tardis_liquidations", ("liquidations",), _tardis("liquidations"),
           lambda u: {"liquidations": (tardis.read_liquidations(u.path), [])}),
    Format("agg_trades", ("trades",), lambda n: "aggtrades" in n,
           lambda u: {"trades": (binance.read_agg_trades(u.path, byte_range=u.shard), [])}, byte_shards=True),
    Format("trades", ("trades",), lambda n: "-trades-" in n,
           lambda u: {"trades": (binance.read_trades(u.path, byte_range=u.shard), [])}, byte_shards=True),
    Format("book_ticker", ("book",), lambda n: "-bookticker-" in n,
           lambda u: {"book": (binance.read_book_ticker(u.path, u.levels), [])}),
    # candles: the dataset is the bars of their length, told by the file (bars_1m, bars_1h, ...)
    Format("freqtrade", (), ohlcv.is_freqtrade, _read_candles),
    # its dataset is told from its columns; plain candles (ohlcv below) are told by theirs
    Format("lake_parquet", (), lambda n: n.endswith(".parquet")),
    Format("book_depth", ("book",), lambda n: "bookdepth" in n or "-depth-" in n, _read_depth),
    Format("funding_rate", ("funding",), lambda n: "-fundingrate-" in n,
           lambda u: {"funding": (binance.read_funding_rates(u.path), [])}),
    Format("klines", (), lambda n: KLINE_NAME.search(n) is not None, _read_klines),
    # daily captures of one stream, a task per day, each day's books going on from the day before's
    Format("ws_capture", ("trades", "book"), lambda n: n.endswith(".gz") and n.split("_")[0] in ("usdm", "spot", "cm"),
           lambda u: _capture_rows(binance.read_ws_capture(u.paths, u.levels, start=u.start, carry=u.carry), u)),
    Format("cryptofeed_ws", ("trades", "book"), lambda n: ".ws." in n and n.endswith((".txt", ".jsonl")),
           _read_cryptofeed),
    Format("cryptofeed_http", (), lambda n: ".http." in n and n.endswith(".txt")),  # read with its .ws. twin
    Format("lobster", ("trades", "book"), lambda n: "_message_" in n and n.endswith(".csv"), _read_lobster),
    Format("lobster_orderbook", (), lambda n: "_orderbook_" in n and n.endswith(".csv")),  # with its message file
    Format("databento_dbn", ("trades", "book", "bars_1m"), databento.is_dbn, _read_dbn,
           datasets_of=databento.datasets_of),
    Format("databento_mbp1", ("trades", "book"), lambda n: "mbp-1" in n and n.endswith((".csv", ".csv.gz")),
           _read_mbp1_csv),
    Format("bars_csv", ("bars_1m",), lambda n: "_1min_bars_" in n and n.endswith((".csv", ".csv.gz")),
           lambda u: {"bars_1m": (cme.read_bars_csv(u.path), [])}),
    # last: a table file no name above claims, taken when its columns are a time and OHLCV
    Format("ohlcv", (), ohlcv.may_be_candles, _read_candles),
]
BY_KIND = {f.kind: f for f in FORMATS}


def detect(path: Path) -> Format | None:
    """The format of a file, from its name (None: no known format)."""
    name = path.name.lower()
    return next((f for f in FORMATS if f.matches(name)), None)
