"""The cold path of a stream actor: what it received and rebuilt, kept for the Parquet lake.

Per symbol, between two flushes: every message of the symbol's streams as received (dataset ``ws_raw``,
invalid ones included: the record of what the wire said), every trade applied (``trades``, backfilled
ones included, each id once) and every book state (``book``, the top levels after each diff), in the
lake's schemas, so the batch side (features, bars, backtests) reads live-collected days like ingested ones.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tickray.lake.schema import TRADE, TS, WS_RAW
from tickray.market.book import BookSync
from tickray.sources.book_rows import TopNWriter

LAKE_BOOK_LEVELS = 10  # as `tickray ingest` rebuilds captures


class ColdBuffer:
    def __init__(self, symbol: str, levels: int = LAKE_BOOK_LEVELS):
        self.symbol, self.levels = symbol, levels
        self._reset()

    def _reset(self) -> None:
        self.raw: tuple[list, list, list] = ([], [], [])  # receive ns, stream, text
        self.trades: tuple[list, ...] = ([], [], [], [], [])  # ts ns, price, qty, side, id
        self.book = TopNWriter(self.symbol, self.levels)

    def on_raw(self, recv_ns: int, stream: str, text: str) -> None:
        self.raw[0].append(recv_ns)
        self.raw[1].append(stream)
        self.raw[2].append(text)

    def on_trade(self, ts_ns: int, price: float, qty: float, side: int, trade_id: int) -> None:
        for col, v in zip(self.trades, (ts_ns, price, qty, side, trade_id)):
            col.append(v)

    def on_book(self, ts_ns: int, sync: BookSync) -> None:
        self.book.add(ts_ns, sync.book)

    def on_book_lost(self, ts_ns: int) -> None:
        self.book.unknown(ts_ns)

    def take(self) -> dict[str, pa.Table]:
        """The rows gathered since the last call, by dataset (empty ones left out); the buffer starts over."""
        out = {}
        n = len(self.raw[0])
        if n:
            out["ws_raw"] = pa.table([_ts(self.raw[0]), pa.array([self.symbol] * n, pa.string()),
                                      pa.array(self.raw[1], pa.string()), pa.array(self.raw[2], pa.string())],
                                     schema=WS_RAW)
        n = len(self.trades[0])
        if n:
            ts, price, qty, side, tid = self.trades
            out["trades"] = pa.table([_ts(ts), pa.array([self.symbol] * n, pa.string()),
                                      pa.array(price, pa.float64()), pa.array(qty, pa.float64()),
                                      pa.array(side, pa.int8()), pa.array(tid, pa.int64())], schema=TRADE)
        if self.book.rows:
            out["book"] = self.book.table()
        self._reset()
        return out


def _ts(ns: list[int]) -> pa.Array:
    return pa.array(np.array(ns, dtype=np.int64)).cast(TS)
