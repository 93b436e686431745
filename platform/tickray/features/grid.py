"""The one-second market grid that features are computed on, built two ways from the same events.

Row ``s`` (``ts`` = second start, ns) holds the top of book as of the end of second ``s`` (the last
update with ts < (s+1)·1e9, carried forward) and the trades with ts in [s, s+1). The grid starts at the
second of the first book state. ``grid_from_events`` builds it in one vectorised pass (batch);
``GridBuilder`` builds the same rows incrementally (stream actors), closing a second once events
``lag_s`` seconds later have been seen, so streams that interleave slightly out of order still agree.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

NS = 1_000_000_000
GRID_FIELDS = ("ts", "bid_px", "bid_sz", "ask_px", "ask_sz", "buy_qty", "sell_qty", "n_trades")


def _ns(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0, np.int64)


def grid_from_events(trades: pa.Table, book: pa.Table) -> dict[str, np.ndarray]:
    """Batch grid of one symbol from trade rows and top-of-book rows (both sorted by ts)."""
    bts = _ns(book["ts"])
    if bts.size == 0:
        return {k: np.zeros(0) for k in GRID_FIELDS}
    tts = _ns(trades["ts"])
    s0 = bts[0] // NS
    s1 = max(bts[-1], tts[-1] if tts.size else bts[-1]) // NS
    secs = np.arange(s0, s1 + 1)
    idx = np.searchsorted(bts, (secs + 1) * NS, side="left") - 1
    grid = {"ts": secs * NS}
    for name, col in (("bid_px", "bid_px_1"), ("bid_sz", "bid_sz_1"), ("ask_px", "ask_px_1"), ("ask_sz", "ask_sz_1")):
        grid[name] = book[col].to_numpy(zero_copy_only=False)[idx]
    keep = tts >= s0 * NS
    tsec = tts[keep] // NS - s0
    qty = trades["qty"].to_numpy(zero_copy_only=False)[keep]
    buy = trades["side"].to_numpy(zero_copy_only=False)[keep] > 0
    n = secs.size
    grid["buy_qty"] = np.bincount(tsec, weights=qty * buy, minlength=n)[:n]
    grid["sell_qty"] = np.bincount(tsec, weights=qty * ~buy, minlength=n)[:n]
    grid["n_trades"] = np.bincount(tsec, minlength=n)[:n].astype(np.float64)
    return grid


class GridBuilder:
    """Incremental twin of :func:`grid_from_events` for one symbol."""

    def __init__(self, lag_s: int = 2):
        self.lag_ns = lag_s * NS
        self.next_sec: int | None = None  # the next second to close
        self.top = (math.nan, math.nan, math.nan, math.nan)
        self._pending_book: list[tuple[int, tuple[float, float, float, float]]] = []
        self._trades: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self._max_ts = 0
        self.late = 0
        self.before_book = 0

    def on_book(self, ts_ns: int, bid_px: float, bid_sz: float, ask_px: float, ask_sz: float) -> list[dict]:
        if ts_ns <= 0:
            raise ValueError(f"book state without a time (ts={ts_ns}): the grid cannot place it")
        if self.next_sec is None:
            # The grid starts at the first book state; trades held until now from earlier seconds go.
            self.next_sec = ts_ns // NS
            for sec in [s for s in self._trades if s < self.next_sec]:
                self.before_book += int(self._trades.pop(sec)[2])
        elif ts_ns < self.next_sec * NS:
            self.late += 1
            return self._advance(ts_ns)
        self._pending_book.append((ts_ns, (bid_px, bid_sz, ask_px, ask_sz)))
        return self._advance(ts_ns)

    def on_trade(self, ts_ns: int, qty: float, side: int) -> list[dict]:
        if self.next_sec is not None and ts_ns < self.next_sec * NS:
            self.late += 1
            return self._advance(ts_ns)
        acc = self._trades[ts_ns // NS]
        acc[0 if side > 0 else 1] += qty
        acc[2] += 1
        if self.next_sec is None:  # before the first book state trades are only held
            self._max_ts = max(self._max_ts, ts_ns)
            return []
        return self._advance(ts_ns)

    def _advance(self, ts_ns: int) -> list[dict]:
        self._max_ts = max(self._max_ts, ts_ns)
        rows = []
        while self.next_sec is not None and (self.next_sec + 1) * NS + self.lag_ns <= self._max_ts:
            rows.append(self._close(self.next_sec))
            self.next_sec += 1
        return rows

    def _close(self, sec: int) -> dict:
        end = (sec + 1) * NS
        if self._pending_book:
            self._pending_book.sort(key=lambda x: x[0])
            applied = [b for b in self._pending_book if b[0] < end]
            if applied:
                self.top = applied[-1][1]
                self._pending_book = self._pending_book[len(applied):]
        buy, sell, n = self._trades.pop(sec, (0.0, 0.0, 0.0))
        bid_px, bid_sz, ask_px, ask_sz = self.top
        return {"ts": sec * NS, "bid_px": bid_px, "bid_sz": bid_sz, "ask_px": ask_px, "ask_sz": ask_sz,
                "buy_qty": buy, "sell_qty": sell, "n_trades": n}
