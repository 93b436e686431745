"""Order-book maintenance under Binance's diff-depth rules, shared by batch rebuilds and stream actors.

USD-M / COIN-M futures: drop events with ``u`` < the snapshot's ``lastUpdateId``; the first event kept
must straddle it (``U <= lastUpdateId <= u``); after that each event's ``pu`` equals the previous ``u``.
(A snapshot taken at an event boundary, as bookDepth files do, is followed by a diff whose ``pu``
is the snapshot's id: that chains too.)
Spot: drop events with ``u <= lastUpdateId``; the first event kept has ``U <= lastUpdateId + 1 <= u``; after
that ``U`` = previous ``u`` + 1.
A break in the chain is a gap: the book is marked unsynced and must be rebuilt from a new snapshot
(counted as a resync), never patched over.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tickray.errors import BookSequenceError

Levels = Iterable[tuple[str | float, str | float]]


@dataclass
class DepthUpdate:
    U: int
    u: int
    pu: int | None  # None on spot, which has no pu
    bids: list
    asks: list
    ts_ms: int = 0

    @classmethod
    def from_message(cls, d: dict) -> DepthUpdate:
        return cls(int(d["U"]), int(d["u"]), int(d["pu"]) if "pu" in d else None, d["b"], d["a"],
                   int(d.get("T") or d.get("E") or 0))


@dataclass
class BookCounters:
    applied: int = 0
    stale_dropped: int = 0
    gaps: int = 0
    resyncs: int = 0
    duplicates: int = 0  # diffs already applied (u at or below the book's), delivered again
    old_snapshots: int = 0  # snapshots older than the synced book they reached: not installed
    contradicted: int = 0  # the venue's bookTicker disagreed with the book: rebuilt like after a gap


class OrderBook:
    """Price → size on each side, updated with absolute sizes (size 0 removes a level).

    Prices are also kept sorted, so the top levels are read in O(levels) after every diff instead of
    scanning the whole (often 1,000-level) book.
    """

    def __init__(self, symbol: str):
        self.symbol = symbol
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self._bid_px: list[float] = []  # ascending
        self._ask_px: list[float] = []  # ascending
        self.last_update_id: int | None = None

    def reset(self, last_update_id: int, bids: Levels, asks: Levels) -> None:
        self.bids, self.asks, self._bid_px, self._ask_px = {}, {}, [], []
        self.apply_levels(bids, asks, last_update_id)

    @staticmethod
    def _set(side: dict[float, float], prices: list[float], levels: Levels) -> None:
        for p, q in levels:
            px, qty = float(p), float(q)
            if qty == 0.0:
                if side.pop(px, None) is not None:
                    del prices[bisect.bisect_left(prices, px)]
            else:
                if px not in side:
                    bisect.insort(prices, px)
                side[px] = qty

    def apply_levels(self, bids: Levels, asks: Levels, last_update_id: int) -> None:
        self._set(self.bids, self._bid_px, bids)
        self._set(self.asks, self._ask_px, asks)
        self.last_update_id = last_update_id

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The best n levels of each side, best first."""
        bids = [(p, self.bids[p]) for p in self._bid_px[:-n - 1:-1]]
        asks = [(p, self.asks[p]) for p in self._ask_px[:n]]
        return bids, asks

    def best(self) -> tuple[float, float, float, float]:
        """best bid, bid size, best ask, ask size (NaN where a side is empty)."""
        nan = float("nan")
        b = self._bid_px[-1] if self._bid_px else nan
        a = self._ask_px[0] if self._ask_px else nan
        return b, self.bids.get(b, nan), a, self.asks.get(a, nan)


@dataclass
class BookSync:
    """Snapshot + diff synchronisation of one symbol's book (the Binance "manage a local book" recipe).

    Feed every diff to :meth:`on_update`; while ``needs_snapshot``, fetch a REST snapshot and hand it to
    :meth:`on_snapshot`. Updates that arrive before the snapshot are buffered and replayed.
    ``on_change(ts_ms)`` is called after the snapshot is installed and after every applied diff,
    replayed ones included, so a listener sees every book state.
    """

    symbol: str
    spot: bool = False
    on_change: Callable[[int], None] | None = None
    # Called for each diff thrown away as older than the snapshot (the recipe drops them by design).
    on_drop: Callable[[DepthUpdate, str], None] | None = None
    # The venue's bookTicker as a judge of every state (``on_ticker``); None: not checked.
    check: TopOfBookCheck | None = None
    # Called when a synced book is lost (a gap, a contradiction), with the time of the latest diff seen:
    # from then until a new snapshot the book is unknown.
    on_unsync: Callable[[int], None] | None = None
    book: OrderBook = field(init=False)
    synced: bool = field(default=False, init=False)
    counters: BookCounters = field(default_factory=BookCounters, init=False)
    last_seen_ms: int = field(default=0, init=False)  # latest diff time received, applied or not
    _buffer: list[DepthUpdate] = field(default_factory=list, init=False)
    _first_after_snapshot: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.book = OrderBook(self.symbol)

    @property
    def needs_snapshot(self) -> bool:
        return not self.synced

    def pending(self) -> list[DepthUpdate]:
        """Diffs buffered for a snapshot that has not come (yet): at the end of an input, never applied."""
        return list(self._buffer)

    def on_update(self, up: DepthUpdate) -> bool:
        """Apply (or buffer) one diff. Returns True when the book changed."""
        self.last_seen_ms = max(self.last_seen_ms, up.ts_ms)
        if not self.synced:
            self._buffer.append(up)
            return False
        try:
            return self._apply(up)
        except BookSequenceError:
            self.counters.gaps += 1
            self._unsync([up])
            return False

    def _unsync(self, buffer: list[DepthUpdate]) -> None:
        if self.synced and self.on_unsync:
            self.on_unsync(self.last_seen_ms)
        self.synced = False
        self._buffer = buffer
        if self.check:
            self.check.reset()

    def on_ticker(self, u: int, bid: float, ask: float) -> bool:
        """Judge the book by a bookTicker (see :class:`TopOfBookCheck`); a contradiction unsyncs the book,
        which then needs a new snapshot. Returns False on a contradiction."""
        if self.check is None or self.check.on_ticker(u, bid, ask):
            return True
        self.counters.contradicted += 1
        self._unsync([])
        return False

    def _judged(self, U: int) -> bool:
        """Hand the new state to the check; False (and unsynced) when a waiting ticker contradicts it."""
        if self.check:
            bid, _, ask, _ = self.book.best()
            if not self.check.on_book(U, self.book.last_update_id, bid, ask):
                self.counters.contradicted += 1
                self._unsync([])
                return False
        return True

    def snapshot_time_ms(self, snap: dict) -> int:
        """When a REST snapshot was taken: its T or E, else (spot carries neither) the latest diff seen."""
        return int(snap.get("T") or snap.get("E") or self.last_seen_ms)

    def on_rest_snapshot(self, snap: dict) -> None:
        """Install a REST depth snapshot as the venue returns it ({lastUpdateId, bids, asks, ...})."""
        self.on_snapshot(int(snap["lastUpdateId"]), snap["bids"], snap["asks"], self.snapshot_time_ms(snap))

    def on_snapshot(self, last_update_id: int, bids: Levels, asks: Levels, ts_ms: int = 0) -> None:
        """Install a snapshot (taken at ``ts_ms``) and replay the buffered diffs onto it. A synced book
        already past the snapshot keeps its state: installing it would take the book back in time and break
        the chain with the next diff."""
        if self.synced and last_update_id < (self.book.last_update_id or 0):
            self.counters.old_snapshots += 1
            return
        if not self.synced and self.book.last_update_id is not None:
            self.counters.resyncs += 1  # a new snapshot after a gap (periodic ones while in sync are not)
        self.book.reset(last_update_id, bids, asks)
        self.synced = True
        self._first_after_snapshot = True
        if self.check:
            self.check.reset()
            self._judged(last_update_id)
        if self.on_change:
            self.on_change(ts_ms)
        buffered, self._buffer = self._buffer, []
        for up in buffered:
            if not self.synced:  # a gap inside the buffer: keep buffering for the next snapshot
                self._buffer.append(up)
                continue
            self.on_update(up)

    def export(self) -> dict:
        """The whole state a later input continues from (full depth, the diffs waiting for a snapshot), as
        plain JSON-able values: see :meth:`restore`."""
        return {"symbol": self.symbol, "spot": self.spot, "synced": self.synced,
                "last_update_id": self.book.last_update_id, "last_seen_ms": self.last_seen_ms,
                "first_after_snapshot": self._first_after_snapshot,
                "bids": list(self.book.bids.items()), "asks": list(self.book.asks.items()),
                "pending": [[up.U, up.u, up.pu, up.bids, up.asks, up.ts_ms] for up in self._buffer]}

    def restore(self, state: dict) -> None:
        """Continue from an exported state, as if its diffs had been read just before this input's."""
        self.book.reset(state["last_update_id"], state["bids"], state["asks"])
        self.synced, self.last_seen_ms = state["synced"], state["last_seen_ms"]
        self._first_after_snapshot = state["first_after_snapshot"]
        self._buffer = [DepthUpdate(*up) for up in state["pending"]]

    def _apply(self, up: DepthUpdate) -> bool:
        lid = self.book.last_update_id
        assert lid is not None
        if self._first_after_snapshot:
            if up.u < lid or (self.spot and up.u == lid):  # spot: the snapshot already holds event u = lid
                self.counters.stale_dropped += 1
                if self.on_drop:
                    self.on_drop(up, "diff older than the snapshot")
                return False
            lo = lid + 1 if self.spot else lid
            # bookDepth files snapshot at an event boundary: the next diff then chains by pu.
            chains = up.pu is not None and up.pu == lid
            if not (up.U <= lo <= up.u or chains):
                raise BookSequenceError(
                    f"{self.symbol}: first diff after snapshot {lid} does not straddle it (U={up.U}, u={up.u})")
            self._first_after_snapshot = False
        elif up.u <= lid:  # sent twice (or late): already in the book, not a gap
            self.counters.duplicates += 1
            return False
        elif self.spot or up.pu is None:
            if up.U != lid + 1:
                raise BookSequenceError(f"{self.symbol}: gap, U={up.U} after u={lid}")
        elif up.pu != lid:
            raise BookSequenceError(f"{self.symbol}: gap, pu={up.pu} but previous u={lid}")
        self.book.apply_levels(up.bids, up.asks, up.u)
        self.counters.applied += 1
        if not self._judged(up.U):
            return False
        if self.on_change:
            self.on_change(up.ts_ms)
        return True


@dataclass
class TopOfBookCounters:
    checked: int = 0  # bookTickers whose update id names a known book state
    matched: int = 0
    mismatched: int = 0
    unobservable: int = 0  # ids inside a diff's [U, u]: the venue never shows that state in the diff stream
    unjudged: int = 0  # no known state to judge against (before a snapshot, after a gap, too old)
    waiting: int = 0  # ahead of the book: the next diff judges them


@dataclass
class _State:
    u: int  # the book is known as of this update id
    bid: float
    ask: float
    next_U: int | None = None  # first id of the next applied diff: ids in (u, next_U) leave the book as it is


class TopOfBookCheck:
    """The venue's own ``@bookTicker`` judges a rebuilt book.

    A bookTicker with update id ``b`` is comparable when ``b`` equals an applied diff's ``u`` or lies
    strictly between one diff's ``u`` and the next one's ``U``: the book state at ``b`` is then known, and
    its best bid and ask must equal the ticker's. Ids inside a diff's ``[U, u]`` are not observable. Tickers
    and diffs travel on separate streams, so a ticker ahead of the book waits for the next diff, and the
    states of the last ``keep`` diffs answer tickers that come late. After a gap nothing is judged until
    the book is rebuilt.
    """

    def __init__(self, keep: int = 512, max_waiting: int = 10_000):
        self.counters = TopOfBookCounters()
        self._states: list[_State] = []
        self._ids: list[int] = []  # the states' u, for bisect without a key function (a ticker each ~20 µs)
        self._keep = keep
        self._waiting: list[tuple[int, float, float]] = []  # tickers ahead of the book
        self._max_waiting = max_waiting
        self.last_mismatch: dict | None = None

    def reset(self) -> None:
        """The book's chain broke: what is waiting cannot be judged."""
        self.counters.unjudged += len(self._waiting)
        self._states, self._ids, self._waiting, self.counters.waiting = [], [], [], 0

    def on_book(self, U: int, u: int, bid: float, ask: float) -> bool:
        """A book state after an applied diff ``[U, u]`` (or a snapshot, ``U = u``). False on a mismatch."""
        if self._states and self._states[-1].next_U is None:
            self._states[-1].next_U = U
        self._states.append(_State(u, bid, ask))
        self._ids.append(u)
        if len(self._states) > 2 * self._keep:
            del self._states[:-self._keep], self._ids[:-self._keep]
        ok, waiting, self._waiting = True, self._waiting, []
        self.counters.waiting = 0
        for b, tb, ta in waiting:
            ok &= self.on_ticker(b, tb, ta)
        return ok

    def on_ticker(self, b: int, bid: float, ask: float) -> bool:
        """A bookTicker (its ``u``, best bid and ask price). False when it contradicts the book."""
        c = self.counters
        if not self._states or b < self._states[0].u:
            c.unjudged += 1
            return True
        last = self._states[-1]
        if b > last.u:
            if len(self._waiting) >= self._max_waiting:
                c.unjudged += 1
            else:
                self._waiting.append((b, bid, ask))
                c.waiting += 1
            return True
        i = bisect.bisect_right(self._ids, b) - 1
        s = self._states[i]
        if b != s.u and (s.next_U is None or b >= s.next_U):
            c.unobservable += 1
            return True
        c.checked += 1
        if (bid, ask) == (s.bid, s.ask):
            c.matched += 1
            return True
        c.mismatched += 1
        self.last_mismatch = {"u": b, "ticker": (bid, ask), "book": (s.bid, s.ask), "book_u": s.u}
        return False
