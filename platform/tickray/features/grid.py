"""The one-second market grid that features are computed on, built two ways from the same events.

Row ``s`` (``ts`` = second start, ns) holds the top ``BOOK_LEVELS`` of the book as of the end of second
``s`` (the last update with ts < (s+1)·1e9, carried forward) and the trades with ts in [s, s+1). The grid
starts at the second of the first book state. ``grid_from_events`` builds it in one vectorised pass
(batch); ``GridBuilder`` builds the same rows incrementally (stream actors), closing a second once events
``lag_s`` seconds later have been seen, so streams that interleave slightly out of order still agree.

Each trade is also matched to the book by an as-of join that never looks ahead: the last book state
strictly before the trade (a book update stamped the same instant may already contain the trade).

Validity, by the same rule both ways (:func:`_book_valid`): a row's ``book_synced`` is 1 when the book
behind it is the venue's: the state at the second's end is known (a book source writes a row of NaN
levels where its sync was lost), no such loss happened inside the second, and the newest state is at most
``book_gap_s`` old (a book silent for longer was not observed: a capture that stopped, a feed that
died). An unsynced row's levels are NaN, never a book carried over the gap. ``new_session`` is 1 on the
first synced row after unsynced ones (the grid's first row included) and, with ``trade_gap_s``, on the
row of the first trade after a longer silence in trades: rolling features and labels never reach across
a session start.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

import numba
import numpy as np
import pyarrow as pa

NS = 1_000_000_000
BOOK_LEVELS = 5
LEVEL_FIELDS = tuple(f"{side}_{kind}_{i}" for side in ("bid", "ask") for kind in ("px", "sz")
                     for i in range(1, BOOK_LEVELS + 1))
TRADE_FIELDS = ("buy_qty", "sell_qty", "n_trades", "notional", "max_qty", "asof_qty", "asof_cost_bps")
VALIDITY_FIELDS = ("book_synced", "new_session")  # 1.0 / 0.0, like every grid column a float
GRID_FIELDS = ("ts", *LEVEL_FIELDS, *TRADE_FIELDS, *VALIDITY_FIELDS)
# Book streams of every venue we read update many times a minute: a minute without a state is a hole.
BOOK_GAP_S = 60.0


def _book_valid(known_at_end, lost_inside, age_ns, book_gap_s: float):
    """The one rule behind ``book_synced`` (see the module's docstring), on arrays (batch) or scalars."""
    return np.logical_and(np.logical_and(known_at_end, np.logical_not(lost_inside)),
                          np.asarray(age_ns) <= book_gap_s * NS)


def _session_starts(synced: np.ndarray, trade_gap_start: np.ndarray) -> np.ndarray:
    new = synced.copy()
    new[1:] &= ~synced[:-1] | trade_gap_start[1:]
    return new


def _ns(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0, np.int64)


def _float(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:  # a source with fewer levels: the deeper ones are unknown
        return np.full(table.num_rows, np.nan)
    return _writable(np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64))


def _writable(a: np.ndarray) -> np.ndarray:
    """One array type for the compiled kernel: a read-only view (Arrow's zero-copy) would compile, and
    cache, a second time."""
    return np.require(a, requirements=["C", "W"])


@numba.njit(cache=True)
def _trades_per_second(tts, price, qty, buy, bts, bmid, s0, n, trade_gap_ns):  # pragma: no cover (compiled)
    """The TRADE_FIELDS rows of the grid and where a trade follows a silence longer than ``trade_gap_ns``
    (< 0: never), in one pass over the trades with the as-of book walked alongside. Sums run in the
    trades' order, as ``GridBuilder`` adds them, so both give the same bits."""
    out = np.zeros((7, n))
    after_gap = np.zeros(n, np.bool_)
    j = 0  # book states strictly before the current trade
    prev = np.int64(-1)  # the last trade counted
    for i in range(tts.size):
        t = tts[i]
        s = t // NS - s0
        if s < 0:
            continue
        if t < prev:  # out of order: find its place again
            j = np.searchsorted(bts, t)
        while j < bts.size and bts[j] < t:
            j += 1
        p, q = price[i], qty[i]
        if buy[i]:
            out[0, s] += q
        else:
            out[1, s] += q
        out[2, s] += 1.0
        out[3, s] += p * q
        out[4, s] = max(out[4, s], q)
        if j > 0 and not np.isnan(bmid[j - 1]):
            m = bmid[j - 1]
            out[5, s] += q
            out[6, s] += q * abs(p - m) / m * 1e4
        if trade_gap_ns >= 0 and prev >= 0 and t - prev > trade_gap_ns:
            after_gap[s] = True
        prev = t
    return out, after_gap


def grid_from_events(trades: pa.Table, book: pa.Table, book_gap_s: float = BOOK_GAP_S,
                     trade_gap_s: float | None = None) -> dict[str, np.ndarray]:
    """Batch grid of one symbol from trade rows and top-of-book rows (both sorted by ts)."""
    bts = _ns(book["ts"])
    if bts.size == 0:
        return {k: np.zeros(0) for k in GRID_FIELDS}
    tts = _ns(trades["ts"])
    s0 = bts[0] // NS
    s1 = max(bts[-1], tts[-1] if tts.size else bts[-1]) // NS
    secs = np.arange(s0, s1 + 1)
    ends = (secs + 1) * NS
    idx = np.searchsorted(bts, ends, side="left") - 1
    bid, ask = _float(book, "bid_px_1"), _float(book, "ask_px_1")
    unknown = np.isnan(bid) & np.isnan(ask)
    lost = np.concatenate([[0], np.cumsum(unknown)])
    lost_inside = lost[idx + 1] > lost[np.searchsorted(bts, secs * NS, side="left")]
    synced = _book_valid(~unknown[idx], lost_inside, ends - bts[idx], book_gap_s)
    grid = {"ts": secs * NS}
    # only the states in force at the seconds' ends leave Arrow
    at_end = book.select(["ts", *(c for c in LEVEL_FIELDS if c in book.column_names)]).take(pa.array(idx))
    for name in LEVEL_FIELDS:
        grid[name] = np.where(synced, _float(at_end, name), np.nan)
    per_second, after_gap = _trades_per_second(
        _writable(tts), _float(trades, "price"), _float(trades, "qty"),
        trades["side"].to_numpy(zero_copy_only=False) > 0, _writable(bts), (bid + ask) / 2, s0, secs.size,
        -1.0 if trade_gap_s is None else trade_gap_s * NS)
    grid.update(zip(TRADE_FIELDS, per_second))
    grid["book_synced"] = synced.astype(np.float64)
    grid["new_session"] = _session_starts(synced, after_gap).astype(np.float64)
    return grid


class GridBuilder:
    """Incremental twin of :func:`grid_from_events` for one symbol."""

    UNKNOWN = (math.nan,) * len(LEVEL_FIELDS)  # the state to hand :meth:`on_book` where the book was lost

    def __init__(self, lag_s: int = 2, book_gap_s: float = BOOK_GAP_S, trade_gap_s: float | None = None):
        self.lag_ns = lag_s * NS
        self.book_gap_s, self.trade_gap_s = book_gap_s, trade_gap_s
        self.next_sec: int | None = None  # the next second to close
        self.levels: tuple[float, ...] = (math.nan,) * len(LEVEL_FIELDS)  # the newest state (NaN: unknown)
        self._book_ts = 0  # when the newest state came
        self._synced = False  # the last closed row's book_synced
        self._last_trade_ts: int | None = None  # the newest trade in a closed row
        self._pending_book: list[tuple[int, tuple[float, ...]]] = []
        self._trades: dict[int, list[tuple[int, float, float, int]]] = defaultdict(list)
        self._max_ts = 0
        self.late = 0
        self.before_book = 0

    @staticmethod
    def flatten(bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> tuple[float, ...]:
        """Book levels (best first) in LEVEL_FIELDS order, NaN where a side has fewer levels."""
        out = []
        for side in (bids, asks):
            side = list(side[:BOOK_LEVELS]) + [(math.nan, math.nan)] * (BOOK_LEVELS - len(side))
            out += [p for p, _ in side] + [q for _, q in side]
        return tuple(out)

    def on_book(self, ts_ns: int, levels: tuple[float, ...]) -> list[dict]:
        """A new book state (``levels`` from :meth:`flatten`; :attr:`UNKNOWN` where the book's sync was
        lost); returns the grid rows it closed."""
        if ts_ns <= 0:
            raise ValueError(f"book state without a time (ts={ts_ns}): the grid cannot place it")
        if self.next_sec is None:
            # The grid starts at the first book state; trades held until now from earlier seconds go.
            self.next_sec = ts_ns // NS
            for sec in [s for s in self._trades if s < self.next_sec]:
                self.before_book += len(self._trades.pop(sec))
        elif ts_ns < self.next_sec * NS:
            self.late += 1
            return self._advance(ts_ns)
        self._pending_book.append((ts_ns, levels))
        return self._advance(ts_ns)

    def resume(self, last_row: dict) -> None:
        """Go on after ``last_row`` (closed before an interruption): its book carries into the next seconds
        until a new state comes (for ``book_gap_s`` at most, as from its second's end), and trades of its
        second or earlier are late (that row holds them)."""
        self.next_sec = last_row["ts"] // NS + 1
        self.levels = tuple(float(last_row[k]) for k in LEVEL_FIELDS)
        self._book_ts = self.next_sec * NS - 1
        self._synced = bool(last_row["book_synced"])
        self._last_trade_ts = None
        self._pending_book, self._trades, self._max_ts = [], defaultdict(list), 0

    def on_trade(self, ts_ns: int, price: float, qty: float, side: int) -> list[dict]:
        if self.next_sec is not None and ts_ns < self.next_sec * NS:
            self.late += 1
            return self._advance(ts_ns)
        self._trades[ts_ns // NS].append((ts_ns, price, qty, side))
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
        self._pending_book.sort(key=lambda x: x[0])
        n_applied = bisect.bisect_left([b[0] for b in self._pending_book], end)
        applied = self._pending_book[:n_applied]
        self._pending_book = self._pending_book[n_applied:]
        # As-of join: the states of this second, preceded by the one carried in from the last.
        states_ts = [-1] + [b[0] for b in applied]
        states = [self.levels] + [b[1] for b in applied]
        if applied:
            self._book_ts, self.levels = applied[-1]
        synced = bool(_book_valid(not _unknown(self.levels), any(_unknown(b[1]) for b in applied),
                                  end - self._book_ts, self.book_gap_s))
        buy = sell = notional = max_qty = asof_qty = asof_cost = 0.0
        trades = sorted(self._trades.pop(sec, []), key=lambda t: t[0])  # stable: arrival order on ties
        for ts, price, qty, side in trades:
            if side > 0:
                buy += qty
            else:
                sell += qty
            notional += price * qty
            max_qty = max(max_qty, qty)
            lv = states[bisect.bisect_left(states_ts, ts) - 1]
            mid = (lv[0] + lv[2 * BOOK_LEVELS]) / 2
            if not math.isnan(mid):
                asof_qty += qty
                asof_cost += qty * abs(price - mid) / mid * 1e4
        after_gap = bool(trades and self.trade_gap_s is not None and self._last_trade_ts is not None
                         and trades[0][0] - self._last_trade_ts > self.trade_gap_s * NS)
        if trades:
            self._last_trade_ts = trades[-1][0]
        new_session = synced and (not self._synced or after_gap)
        self._synced = synced
        row = {"ts": sec * NS, **dict(zip(LEVEL_FIELDS, self.levels if synced else self.UNKNOWN))}
        row.update(buy_qty=buy, sell_qty=sell, n_trades=float(len(trades)), notional=notional,
                   max_qty=max_qty, asof_qty=asof_qty, asof_cost_bps=asof_cost,
                   book_synced=float(synced), new_session=float(new_session))
        return row


def _unknown(levels: tuple[float, ...]) -> bool:
    """A state with neither a best bid nor a best ask: where a source lost its book (or one with no orders)."""
    return math.isnan(levels[0]) and math.isnan(levels[2 * BOOK_LEVELS])
