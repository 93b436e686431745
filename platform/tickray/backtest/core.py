"""The vectorised backtest core: probabilities → positions → returns, for bars and ticks alike.

Rows are one price series per symbol, sorted by (symbol, ts), on a regular grid (the one-second tick
grid, or bars of one timeframe). At row i of a symbol:

- the signal p_i (the probability that the price rises over the horizon) and its confidence c_i are
  known at the row's time, from information up to it;
- the target position is +s when p_i > 0.5 + threshold, -s when p_i < 0.5 - threshold, 0 otherwise.
  s is ``max_position`` (sizing ``fixed``) or ``max_position × min(1, c_i / full_size_confidence)``
  (sizing ``confidence``). With the shock filter a row whose confidence is 0 (the shock detector's
  verdict on an abnormal market) is flat; a row without a signal (NaN) is flat;
- a target is taken every ``hold`` rows from the symbol's first row (``hold`` = the horizon: bets do not
  overlap) and held in between;
- it is filled ``latency`` rows later (the first row at or after decision time + decision latency);
- the position pos_i earns r_i = price_{i+1} / price_i − 1; each symbol's last row is flat (positions
  are closed at the end);
- every change of position pays (fee + slippage) bps on the traded size: cost_i = |pos_i − pos_{i−1}| ×
  (fee_bps + slippage_bps) / 10⁴.

Symbols are equally weighted: the portfolio return at a time is the sum of the symbols' net returns at
that time over the number of symbols (capital a symbol does not use earns nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tickray.errors import ConfigError

SIZING = ("fixed", "confidence")


@dataclass(frozen=True)
class Rules:
    """How probabilities become positions, and what trading costs."""
    threshold: float = 0.02
    sizing: str = "fixed"
    max_position: float = 1.0
    full_size_confidence: float = 0.5
    shock_filter: bool = True
    hold: int = 1  # rows between decisions
    latency: int = 0  # rows between a decision and its fill
    fee_bps: float = 0.0  # per side, on the traded size
    slippage_bps: float = 0.0

    def __post_init__(self):
        if self.sizing not in SIZING:
            raise ConfigError(f"strategy.sizing: {self.sizing!r} is not one of {', '.join(SIZING)}")
        if self.hold < 1 or self.latency < 0:
            raise ConfigError(f"strategy: hold must be ≥ 1 row and latency ≥ 0 rows (got {self.hold}, {self.latency})")


@dataclass
class Simulation:
    """Per row (sorted by symbol, ts): the position held, the asset's return, and the pnl it made."""
    ts: np.ndarray
    segment: np.ndarray  # symbol index of each row
    position: np.ndarray
    asset_return: np.ndarray
    gross: np.ndarray
    cost: np.ndarray
    n_symbols: int

    @property
    def net(self) -> np.ndarray:
        return self.gross - self.cost

    def portfolio(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, net return, gross exposure) of the equally weighted portfolio, one entry per time."""
        times, inv = np.unique(self.ts, return_inverse=True)
        ret = np.bincount(inv, self.net, times.size) / self.n_symbols
        exposure = np.bincount(inv, np.abs(self.position), times.size) / self.n_symbols
        return times, ret, exposure

    def trades(self) -> np.ndarray:
        """Net pnl of each trade (a run of same-sign position), with its entry and exit costs; the cost of
        a flip from long to short goes to the new trade."""
        pos = self.position
        prev = previous_in_segment(pos, self.segment)
        starts = (pos != 0) & (np.sign(pos) != np.sign(prev))
        if not starts.any():
            return np.zeros(0)
        trade = np.cumsum(starts) - 1
        counted = ((pos != 0) | (prev != 0)) & (trade >= 0)
        return np.bincount(trade[counted], self.net[counted], int(starts.sum()))


def _segments(segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each row's symbol, whether a row is its symbol's last)."""
    n = segment.size
    new = np.ones(n, bool)
    new[1:] = segment[1:] != segment[:-1]
    first = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    last = np.ones(n, bool)
    last[:-1] = new[1:]
    return first, last


def previous_in_segment(x: np.ndarray, segment: np.ndarray) -> np.ndarray:
    prev = np.empty_like(x)
    if x.size:
        prev[0] = 0
        prev[1:] = np.where(segment[1:] == segment[:-1], x[:-1], 0)
    return prev


def targets(prob: np.ndarray, confidence: np.ndarray | None, rules: Rules) -> np.ndarray:
    """The position each row's signal asks for (before holding and latency)."""
    edge = np.nan_to_num(np.asarray(prob, float) - 0.5, nan=0.0)
    size = np.full(edge.size, rules.max_position)
    if rules.sizing == "confidence":
        if confidence is None:
            raise ConfigError("strategy.sizing: 'confidence' needs a confidence column")
        size = rules.max_position * np.clip(np.nan_to_num(confidence) / rules.full_size_confidence, 0, 1)
    target = np.sign(edge) * (np.abs(edge) > rules.threshold) * size
    if rules.shock_filter and confidence is not None:
        target[~(np.asarray(confidence) > 0)] = 0.0
    return target


def simulate(ts: np.ndarray, segment: np.ndarray, price: np.ndarray, target: np.ndarray, rules: Rules,
             n_symbols: int | None = None) -> Simulation:
    """Hold, fill, earn and pay for ``target`` positions (rows sorted by ``segment`` then ``ts``)."""
    n = price.size
    price = np.asarray(price, float)
    first, last = _segments(segment)
    rows = np.arange(n)
    decided = target[first + (rows - first) // rules.hold * rules.hold]
    src = rows - rules.latency
    pos = np.where(src >= first, decided[np.maximum(src, 0)], 0.0)
    pos[last] = 0.0
    ret = np.zeros(n)
    if n > 1:
        ret[:-1] = price[1:] / price[:-1] - 1
    ret[last] = 0.0
    cost = np.abs(pos - previous_in_segment(pos, segment)) * (rules.fee_bps + rules.slippage_bps) * 1e-4
    count = n_symbols if n_symbols is not None else (int(segment.max()) + 1 if n else 1)
    return Simulation(np.asarray(ts), segment, pos, ret, pos * ret, cost, count)


def buy_and_hold(ts: np.ndarray, segment: np.ndarray, price: np.ndarray, rules: Rules,
                 n_symbols: int | None = None) -> Simulation:
    """Long ``max_position`` from each symbol's first row to its last, paying entry and exit costs."""
    flat_rules = Rules(max_position=rules.max_position, fee_bps=rules.fee_bps, slippage_bps=rules.slippage_bps)
    return simulate(ts, segment, price, np.full(price.size, rules.max_position), flat_rules, n_symbols)
