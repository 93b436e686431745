"""A symbol's live market state: the normalised view of its book and trades that screens and models read.

Trades update rolling windows in amortised O(1) (running sums over a deque, evicted by trade time; the
sums are recomputed exactly, with ``math.fsum``, once as many trades have left as remain, and whenever a
trade that leaves outweighs what stays, so a day of adding and subtracting never drifts from the window's
true sums); the book side is read from the order book when the state is published, so a busy book costs
nothing between reads.

Definitions (windows end at the latest trade's time, ``w`` in {1m, 5m}):
- ``spread = ask - bid``, ``spread_bps = spread / mid * 1e4``, ``imbalance_l1 = (bq - aq) / (bq + aq)``;
- ``microprice = (bid * aq + ask * bq) / (bq + aq)`` (the L1 size-weighted mid);
- ``weighted_mid``: the mean of each side's size-weighted price over the top ``levels`` levels;
- ``bid_volume`` / ``ask_volume``: the resting size over those levels;
- ``volume_w``, ``buy_volume_w``, ``sell_volume_w``, ``trades_w``; ``vwap_1m = sum(p q) / sum(q)``;
- ``buy_pressure_1m = buy / (buy + sell)`` volume; ``cumulative_volume`` since the actor started;
- ``momentum_1m_bps = ln(last / first price in the 1m window) * 1e4``;
- ``volume_spike = volume_1m / (volume_5m / 5)``: above 1 when the last minute trades more than usual;
- ``large_trades_1m``: trades in the last minute of at least ``large_trade_k`` times the 5m mean size.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from tickray.market.book import OrderBook

MINUTE_NS = 60_000_000_000


@dataclass
class RollingTrades:
    """Sums over the trades of the last ``window_ns`` of trade time."""
    window_ns: int
    trades: deque = field(default_factory=deque)  # (ts_ns, price, qty, buy)
    volume: float = 0.0
    quote: float = 0.0
    buy: float = 0.0
    evicted: int = 0  # trades that left since the sums were last recomputed

    def add(self, ts: int, price: float, qty: float, buy: bool) -> None:
        self.trades.append((ts, price, qty, buy))
        self.volume += qty
        self.quote += price * qty
        self.buy += qty if buy else 0.0
        cancelled = False
        while self.trades[0][0] <= ts - self.window_ns:
            _, p, q, b = self.trades.popleft()
            self.volume -= q
            self.quote -= p * q
            self.buy -= q if b else 0.0
            self.evicted += 1
            cancelled |= q > self.volume  # more left than stays: the difference kept few exact digits
        if cancelled or self.evicted >= len(self.trades):
            self._resum()

    def _resum(self) -> None:
        self.volume = math.fsum(t[2] for t in self.trades)
        self.quote = math.fsum(t[1] * t[2] for t in self.trades)
        self.buy = math.fsum(t[2] for t in self.trades if t[3])
        self.evicted = 0

    @property
    def count(self) -> int:
        return len(self.trades)

    def sums(self) -> list[float]:
        return [self.volume, self.quote, self.buy, self.evicted]

    def restore(self, trades: list, sums: list[float]) -> None:
        """The window as checkpointed: its trades, running sums and evictions since they were recomputed
        (kept, not re-added, so the figures are the ones the actor had, to the last bit)."""
        self.trades = deque(tuple(t) for t in trades)
        self.volume, self.quote, self.buy = sums[:3]
        self.evicted = int(sums[3]) if len(sums) > 3 else 0  # a checkpoint from before the count was kept


@dataclass
class MarketState:
    symbol: str
    levels: int = 20
    large_trade_k: float = 5.0
    last_price: float = math.nan
    last_qty: float = math.nan
    last_trade_ts: int = 0
    cumulative_volume: float = 0.0
    trades_total: int = 0
    one: RollingTrades = field(default_factory=lambda: RollingTrades(MINUTE_NS))
    five: RollingTrades = field(default_factory=lambda: RollingTrades(5 * MINUTE_NS))
    large: deque = field(default_factory=deque)  # times of large trades in the last minute

    def on_trade(self, ts: int, price: float, qty: float, buy: bool) -> None:
        mean_5m = self.five.volume / self.five.count if self.five.count else math.inf
        self.one.add(ts, price, qty, buy)
        self.five.add(ts, price, qty, buy)
        if qty >= self.large_trade_k * mean_5m:
            self.large.append(ts)
        while self.large and self.large[0] <= ts - MINUTE_NS:
            self.large.popleft()
        self.last_price, self.last_qty, self.last_trade_ts = price, qty, ts
        self.cumulative_volume += qty
        self.trades_total += 1

    def checkpoint(self) -> dict:
        """Everything a restarted actor needs to go on from here (JSON); see :meth:`restore`."""
        return {"last": [self.last_price, self.last_qty, self.last_trade_ts], "cumulative_volume": self.cumulative_volume,
                "trades_total": self.trades_total, "five": list(self.five.trades), "five_sums": self.five.sums(),
                "one_count": self.one.count, "one_sums": self.one.sums(), "large": list(self.large)}

    def restore(self, doc: dict) -> None:
        self.last_price, self.last_qty, self.last_trade_ts = doc["last"]
        self.cumulative_volume, self.trades_total = doc["cumulative_volume"], doc["trades_total"]
        self.five.restore(doc["five"], doc["five_sums"])
        # the 1m window is the tail of the 5m one: both end at the latest trade
        self.one.restore(doc["five"][len(doc["five"]) - doc["one_count"]:], doc["one_sums"])
        self.large = deque(doc["large"])

    def snapshot(self, book: OrderBook | None) -> dict[str, float]:
        """Every field of the state now (NaN where undefined: an empty side, no trade yet)."""
        nan = math.nan
        out = {"last_price": self.last_price, "last_qty": self.last_qty, "last_trade_ts": float(self.last_trade_ts),
               "cumulative_volume": self.cumulative_volume, "trades_total": float(self.trades_total)}
        for name, w in (("1m", self.one), ("5m", self.five)):
            out[f"volume_{name}"] = w.volume
            out[f"buy_volume_{name}"] = w.buy
            out[f"sell_volume_{name}"] = w.volume - w.buy
            out[f"trades_{name}"] = float(w.count)
        one, five = self.one, self.five
        out["vwap_1m"] = one.quote / one.volume if one.volume > 0 else nan
        out["buy_pressure_1m"] = one.buy / one.volume if one.volume > 0 else nan
        out["momentum_1m_bps"] = (math.log(self.last_price / one.trades[0][1]) * 1e4) if one.count else nan
        out["volume_spike"] = one.volume / (five.volume / 5) if five.volume > 0 else nan
        out["large_trades_1m"] = float(len(self.large))
        bids, asks = book.top(self.levels) if book is not None else ([], [])
        if bids and asks:
            (bid, bq), (ask, aq) = bids[0], asks[0]
            mid = (bid + ask) / 2
            bid_volume, ask_volume = sum(q for _, q in bids), sum(q for _, q in asks)
            out.update(best_bid=bid, best_ask=ask, bid_size=bq, ask_size=aq, mid=mid, spread=ask - bid,
                       spread_bps=(ask - bid) / mid * 1e4, imbalance_l1=(bq - aq) / (bq + aq),
                       microprice=(bid * aq + ask * bq) / (bq + aq),
                       weighted_mid=(sum(p * q for p, q in bids) / bid_volume
                                     + sum(p * q for p, q in asks) / ask_volume) / 2,
                       bid_volume=bid_volume, ask_volume=ask_volume)
        else:
            out.update(dict.fromkeys(("best_bid", "best_ask", "bid_size", "ask_size", "mid", "spread", "spread_bps",
                                      "imbalance_l1", "microprice", "weighted_mid", "bid_volume", "ask_volume"), nan))
        return out
