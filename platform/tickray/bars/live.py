"""Bars kept up to date tick by tick, for live monitoring (the stream actors feed it).

``LiveBars`` holds, for one symbol, the 1-minute bar being built and the open bar of every configured
timeframe. A trade updates them in O(1); when time moves past a minute, that minute is closed and
returned (minutes without trades as flat bars, the same rule as the batch side), and folded into the
open bar of each higher timeframe. So the current bar of every timeframe is always up to date without
recomputing history, and the closed 1m bars equal what ``bars.bars_from_trades`` computes from the same
trades.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tickray.bars.build import MINUTE_NS, timeframe_minutes


@dataclass
class Bar:
    ts: int  # start, ns
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    quote_volume: float = 0.0
    trades: int = 0
    buy_volume: float = 0.0

    @property
    def vwap(self) -> float:
        return self.quote_volume / self.volume if self.volume > 0 else self.close

    def as_dict(self, symbol: str, **extra) -> dict:
        return {"ts": self.ts, "symbol": symbol, "open": self.open, "high": self.high, "low": self.low,
                "close": self.close, "volume": self.volume, "quote_volume": self.quote_volume,
                "trades": self.trades, "vwap": self.vwap, "buy_volume": self.buy_volume, **extra}

    def fold(self, minute: Bar) -> None:
        """Add a later minute to this (higher-timeframe) bar."""
        self.high, self.low = max(self.high, minute.high), min(self.low, minute.low)
        self.close = minute.close
        self.volume += minute.volume
        self.quote_volume += minute.quote_volume
        self.trades += minute.trades
        self.buy_volume += minute.buy_volume


@dataclass
class LiveBars:
    symbol: str
    timeframes: tuple[str, ...] = ("15m", "1h", "4h")
    minute: Bar | None = None
    _open: dict[int, Bar] = field(default_factory=dict)  # timeframe minutes → its open bar (closed minutes)
    late: int = 0  # trades older than the minute being built: counted, not applied

    def __post_init__(self) -> None:
        self._minutes = sorted({timeframe_minutes(t) for t in self.timeframes} - {1})

    def on_trade(self, ts_ns: int, price: float, qty: float, side: int) -> list[dict]:
        """Apply one trade; return the 1m bars it closed (oldest first)."""
        start = ts_ns // MINUTE_NS * MINUTE_NS
        closed: list[dict] = []
        if self.minute is not None and start < self.minute.ts:
            self.late += 1
            return closed
        while self.minute is not None and start > self.minute.ts:
            closed.append(self._close_minute())
        if self.minute is None:
            self.minute = Bar(start, price, price, price, price)
        m = self.minute
        if m.trades == 0:
            m.open = m.high = m.low = price
        m.high, m.low, m.close = max(m.high, price), min(m.low, price), price
        m.volume += qty
        m.quote_volume += price * qty
        m.trades += 1
        if side > 0:
            m.buy_volume += qty
        return closed

    def _close_minute(self) -> dict:
        m = self.minute
        for minutes in self._minutes:
            bucket = m.ts // (minutes * MINUTE_NS) * minutes * MINUTE_NS
            bar = self._open.get(minutes)
            if bar is None or bar.ts != bucket:
                self._open[minutes] = Bar(bucket, m.open, m.high, m.low, m.close, m.volume, m.quote_volume,
                                          m.trades, m.buy_volume)
            else:
                bar.fold(m)
        # the next minute starts flat at this close; a trade in it replaces open/high/low
        self.minute = Bar(m.ts + MINUTE_NS, m.close, m.close, m.close, m.close)
        return m.as_dict(self.symbol)

    def checkpoint(self) -> dict:
        """The bars being built (JSON), for a restarted actor to go on from; see :meth:`restore`."""
        return {"minute": asdict(self.minute) if self.minute else None,
                "open": {str(k): asdict(b) for k, b in self._open.items()}, "late": self.late}

    def restore(self, doc: dict) -> None:
        self.minute = Bar(**doc["minute"]) if doc["minute"] else None
        self._open = {int(k): Bar(**b) for k, b in doc["open"].items()}
        self.late = doc["late"]

    def current(self, timeframe: str) -> dict | None:
        """The open bar of ``timeframe`` including the minute being built (``complete`` False)."""
        minutes = timeframe_minutes(timeframe)
        m = self.minute
        if m is None:
            return None
        if minutes == 1:
            return m.as_dict(self.symbol, complete=False)
        bucket = m.ts // (minutes * MINUTE_NS) * minutes * MINUTE_NS
        bar = self._open.get(minutes)
        if bar is None or bar.ts != bucket:
            return Bar(bucket, m.open, m.high, m.low, m.close, m.volume, m.quote_volume, m.trades,
                       m.buy_volume).as_dict(self.symbol, complete=False)
        view = Bar(**{k: getattr(bar, k) for k in bar.__dataclass_fields__})
        view.fold(m)
        return view.as_dict(self.symbol, complete=False)
