"""Order-book states as rows of the lake's ``book`` dataset: every book source writes them the same way.

A row whose every level is NaN says the book became unknown at its time (a gap in the diffs, a reset):
the states before it must not be carried past it. The next state is the resynced book.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tickray.lake.schema import TS, conform_book
from tickray.market.book import OrderBook


class TopNWriter:
    """Book states as rows of the lake's ``book`` dataset (the top ``levels`` of each side)."""

    def __init__(self, symbol: str, levels: int):
        self.symbol, self.levels = symbol, levels
        self.ts: list[int] = []
        self.rows: list[list[float]] = []

    def add(self, ts_ns: int, book: OrderBook) -> None:
        bids, asks = book.top(self.levels)
        nan = float("nan")
        pad = [(nan, nan)] * self.levels
        bids, asks = (bids + pad)[: self.levels], (asks + pad)[: self.levels]
        self.ts.append(ts_ns)
        self.rows.append([p for p, _ in bids] + [q for _, q in bids] + [p for p, _ in asks] + [q for _, q in asks])

    def unknown(self, ts_ns: int) -> None:
        """From ``ts_ns`` the book is unknown (its sync was lost) until the next state."""
        self.ts.append(ts_ns)
        self.rows.append([float("nan")] * (4 * self.levels))

    def table(self) -> pa.Table:
        m = np.array(self.rows, dtype=np.float64).reshape(len(self.rows), 4 * self.levels)
        return book_table(self.symbol, np.array(self.ts, dtype=np.int64), m, self.levels)


def book_table(symbol: str, ts_ns: np.ndarray, m: np.ndarray, levels: int) -> pa.Table:
    """Book rows from a matrix of states: per row the bid prices, bid sizes, ask prices and ask sizes of
    ``levels`` levels, best first, NaN where a side has fewer."""
    n, k = len(ts_ns), levels
    names = [f"{side}_{what}_{i}" for side in ("bid", "ask") for what in ("px", "sz") for i in range(1, k + 1)]
    cols = {name: m[:, j] for j, name in enumerate(names)}
    cols["ts"] = pa.array(ts_ns).cast(TS)
    cols["symbol"] = pa.array([symbol] * n, pa.string())
    return conform_book(cols, n, k)


@dataclass(frozen=True)
class BookDay:
    """One book's day as a source rebuilt it: the state it ended with (full depth) and its gap report
    (where the book started from, first and last update id or sequence, updates applied, gaps, resyncs,
    seconds unsynced, rows quarantined by reason). The day is the file's, else its first row's."""
    venue: str
    symbol: str
    day: str
    state: dict
    report: dict


def book_days(venue: str, reports: dict[str, dict], states: dict[str, dict]) -> list[BookDay]:
    """BookDays from a reader's reports and end states by symbol (each report naming its ``day``)."""
    return [BookDay(venue, sym, r["day"], states[sym], {k: v for k, v in r.items() if k != "day"})
            for sym, r in reports.items()]
