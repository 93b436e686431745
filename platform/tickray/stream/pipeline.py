"""Per-symbol message pipeline of a stream actor: validate → order book → one-second grid → features,
and trades → live bars and the market state.

It uses the same book (tickray.market.book), grid rules and feature function (tickray.features) as the batch
path, so online features equal offline ones on the same ticks; trades also advance the symbol's live
bars (tickray.bars.live), whose closed minutes equal the batch 1m bars.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tickray.bars.live import LiveBars
from tickray.features import BOOK_LEVELS, GRID_FIELDS, GridBuilder, OnlineFeatures
from tickray.market.book import BookSync, DepthUpdate, TopOfBookCheck
from tickray.stream.cold import ColdBuffer
from tickray.stream.messages import EVENT_NAME, AggTrade, AnyEvent, BookTicker, Depth, Trade, as_event
from tickray.stream.state import MarketState

RESUMED = 2**63 - 1  # SymbolPipeline._carried_until_ns: resumed, no snapshot yet


@dataclass
class FeatureUpdate:
    symbol: str
    ts_ns: int  # second start of the grid row the features belong to
    features: dict[str, float]  # NaN while a feature's look-back is not yet covered
    mid: float
    grid_row: bytes  # the grid row itself (OnlineFeatures.last_row): kept so a restarted actor resumes
    grid_trade_id: int  # the newest trade in this row or an earlier one (-1: none yet)
    book_synced: bool  # the row's book is the venue's: synced from a snapshot, every diff since applied


@dataclass
class SymbolPipeline:
    symbol: str
    spot: bool = False
    bar_timeframes: tuple[str, ...] = ("15m", "1h", "4h")
    sync: BookSync = field(init=False)
    bars: LiveBars = field(init=False)
    closed_minutes: list[dict] = field(default_factory=list)  # 1m bars closed since the caller last took them
    grid: GridBuilder = field(default_factory=GridBuilder)
    online: OnlineFeatures = field(default_factory=OnlineFeatures)
    state: MarketState = field(init=False)
    last_trade_id: int = -1
    grid_trade_id: int = -1  # the newest trade handed to the grid (ahead of last_trade_id after resume_grid)
    cold: ColdBuffer | None = None  # set: trades and book states are also kept for the lake
    _closed: list = field(default_factory=list)
    _in_grid: deque = field(default_factory=deque)  # (ts_ns, id) of trades in seconds the grid has not closed
    _closed_trade_id: int = -1  # the newest trade in a closed grid row
    _marks: dict[str, int] = field(default_factory=dict)  # event → the last E (or bookTicker u) taken
    # After a resume the grid carries the book it resumed with until the first snapshot: its time (None: not
    # resumed, or that snapshot has come and gone; RESUMED: it has not come yet).
    _carried_until_ns: int | None = None

    def __post_init__(self) -> None:
        self.sync = BookSync(self.symbol, spot=self.spot, on_change=self._book_changed, check=TopOfBookCheck(),
                             on_unsync=self._book_lost)
        self.bars = LiveBars(self.symbol, self.bar_timeframes)
        self.state = MarketState(self.symbol)

    def _book_changed(self, ts_ms: int) -> None:
        if self.cold:
            self.cold.on_book(ts_ms * 1_000_000, self.sync)
        levels = GridBuilder.flatten(*self.sync.book.top(BOOK_LEVELS))
        self._closed.extend(self.grid.on_book(ts_ms * 1_000_000, levels))

    def _book_lost(self, ts_ms: int) -> None:
        """The book's sync was lost at ``ts_ms``: unknown in the grid (and the lake) until it is rebuilt."""
        if self.cold:
            self.cold.on_book_lost(ts_ms * 1_000_000)
        self._closed.extend(self.grid.on_book(ts_ms * 1_000_000, GridBuilder.UNKNOWN))

    def on_snapshot(self, snap: dict) -> list[FeatureUpdate]:
        if self._carried_until_ns == RESUMED:  # before the rows it closes
            self._carried_until_ns = self.sync.snapshot_time_ms(snap) * 1_000_000
        self.sync.on_rest_snapshot(snap)
        return self._emit()

    def on_depth(self, ev: Depth | dict) -> list[FeatureUpdate]:
        """A valid @depth diff (its event, or its payload as the venue sent it)."""
        if isinstance(ev, dict):
            ev = as_event(ev, "depthUpdate")
        self.sync.on_update(DepthUpdate(ev.U, ev.u, ev.pu, ev.b, ev.a, ev.T or ev.E))
        return self._emit()

    def out_of_order(self, ev: AnyEvent) -> str | None:
        """Why a message of a stream without ids goes back in time (bookTicker: by its update id), or None."""
        if isinstance(ev, BookTicker):
            e, mark = "bookTicker", ev.u
        elif isinstance(ev, (Depth, AggTrade, Trade)):
            return None
        else:
            e, mark = EVENT_NAME[type(ev)], ev.E
        last = self._marks.get(e, -1)
        if mark < last:
            return f"{e} going backwards ({mark} after {last})"
        if mark == last and e == "bookTicker":
            return "duplicate bookTicker update id"
        self._marks[e] = mark
        return None

    def on_book_ticker(self, ev: BookTicker) -> bool:
        """The venue's best bid and ask at an update id; False when it contradicts the book."""
        return self.sync.on_ticker(ev.u, ev.b, ev.a)

    def missing_trades(self, ev: AggTrade | Trade) -> range:
        """The trade ids skipped before this one (ids rise by one within a stream): none before the first."""
        return range(self.last_trade_id + 1, ev.id) if self.last_trade_id >= 0 else range(0)

    def on_trade(self, ev: AggTrade | Trade | dict) -> list[FeatureUpdate]:
        """A valid @aggTrade / @trade (its event, or its payload as the venue sent it); returns the feature
        rows it closed. After :meth:`resume_grid` a trade may be new to the grid only, or to everything but
        the grid."""
        if isinstance(ev, dict):
            ev = as_event(ev)
        tid, ts, price, qty, side = ev.id, ev.T * 1_000_000, ev.p, ev.q, -1 if ev.m else 1
        if tid > self.grid_trade_id:
            self.grid_trade_id = tid
            self._in_grid.append((ts, tid))
            self._closed.extend(self.grid.on_trade(ts, price, qty, side))
        if tid <= self.last_trade_id:
            return self._emit()
        self.last_trade_id = tid
        self.closed_minutes.extend(self.bars.on_trade(ts, price, qty, side))
        self.state.on_trade(ts, price, qty, side > 0)
        if self.cold:
            self.cold.on_trade(ts, price, qty, side, self.last_trade_id)
        return self._emit()

    def checkpoint(self) -> dict:
        """What a restarted actor resumes from (JSON): the last trade applied, the market state and the
        bars being built. The book is not kept (it resyncs from a snapshot), nor the feature look-backs
        (the grid rows published to Redis bring them back: :meth:`resume_grid`)."""
        return {"last_trade_id": self.last_trade_id, "state": self.state.checkpoint(), "bars": self.bars.checkpoint()}

    def restore(self, doc: dict) -> None:
        self.last_trade_id = self.grid_trade_id = doc["last_trade_id"]
        self.state.restore(doc["state"])
        self.bars.restore(doc["bars"])

    def resume_grid(self, ts: list[int], rows: list[bytes], trade_id: int) -> None:
        """Go on from the grid rows published before an interruption (consecutive seconds, oldest first;
        ``trade_id`` from the newest), so the feature look-backs need not fill again. The seconds until
        the book is synced again carry the last book, as the batch grid does over a gap in book data; the
        trades after ``trade_id`` reach the grid, those after ``last_trade_id`` everything else."""
        self.online.restore(ts, rows)
        self.grid.resume({"ts": ts[-1], **dict(zip(GRID_FIELDS[1:], np.frombuffer(rows[-1], np.float64)))})
        self.grid_trade_id = self._closed_trade_id = trade_id
        self._in_grid.clear()
        self._carried_until_ns = RESUMED

    def resume_from_trade(self) -> int:
        """The first trade id a restarted actor fetches again: the grid may be behind the checkpoint."""
        return min(self.last_trade_id, self.grid_trade_id) + 1

    def _row_book_synced(self, row: dict) -> bool:
        """Whether a row holds the venue's book: the grid's rule (as in batch), and after a resume the row
        ends after the first snapshot (the seconds before carried the book the actor resumed with)."""
        carried = self._carried_until_ns is not None and row["ts"] + 1_000_000_000 <= self._carried_until_ns
        return row["book_synced"] > 0 and not carried

    def _emit(self) -> list[FeatureUpdate]:
        out = []
        for row in self._closed:
            feats = self.online.update(row)
            end = row["ts"] + 1_000_000_000
            while self._in_grid and self._in_grid[0][0] < end:
                self._closed_trade_id = self._in_grid.popleft()[1]
            out.append(FeatureUpdate(self.symbol, row["ts"], feats, (row["bid_px_1"] + row["ask_px_1"]) / 2,
                                     self.online.last_row(), self._closed_trade_id, self._row_book_synced(row)))
        self._closed = []
        return out
