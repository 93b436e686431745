"""The vectorised backtest core: probabilities → positions → returns, for bars and ticks alike.

Rows are one price series per symbol, sorted by (symbol, ts) (ns). Time is the market's clock, never a
row count: a grid with holes (seconds without a defined feature, missing bars) is simulated in time.
A symbol's rows fall into sessions: a new one starts where the gap since the previous row is longer than
``session_gap_ns``. At row i of a symbol:

- the signal p_i (the probability that the price rises over the horizon) and its confidence c_i are
  known at the row's time, from information up to it;
- the target position is +s when p_i > 0.5 + threshold, -s when p_i < 0.5 - threshold, 0 otherwise.
  s is ``max_position`` (sizing ``fixed``) or ``max_position × min(1, c_i / full_size_confidence)``
  (sizing ``confidence``). With the shock filter a row whose confidence is 0 (the shock detector's
  verdict on an abnormal market) is flat; a row without a signal (NaN) is flat;
- decisions are due every ``hold_ns`` from the session's start (``hold`` = the horizon: bets do not
  overlap), each taken at the first row at or after its due time and held until the next;
- a decision is filled ``latency_ns`` later: the position at a row is the decision in force at the
  session's last row at or before the row's time − latency (flat before any);
- the position pos_i earns r_i = price_{i+1} / price_i − 1; each session's last row is flat (positions
  are closed before a gap and at the end: nothing is earned or lost while the market is not observed);
- every change of position pays (fee + slippage) bps on the traded size: cost_i = |pos_i − pos_{i−1}| ×
  (fee_bps + slippage_bps) / 10⁴.

Symbols are equally weighted: the portfolio return at a time is the sum of the symbols' net returns at
that time over the number of symbols (capital a symbol does not use earns nothing). Metrics read it on a
clock (:meth:`Simulation.portfolio`): the returns of each period of ``clock_ns`` compounded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tickray.errors import ConfigError

SIZING = ("fixed", "confidence")
# the thresholds a cost-aware strategy chooses from; 0.5 never trades
THRESHOLDS = (*(k / 100 for k in range(50)), 0.5)


@dataclass(frozen=True)
class Rules:
    """How probabilities become positions, and what trading costs; times in ns."""
    threshold: float = 0.02
    sizing: str = "fixed"
    max_position: float = 1.0
    full_size_confidence: float = 0.5
    shock_filter: bool = True
    hold_ns: int = 1  # between decisions (1: a decision at every row)
    latency_ns: int = 0  # from a decision to its fill
    session_gap_ns: int | None = None  # a longer gap between a symbol's rows ends a session (None: never)
    fee_bps: float = 0.0  # per side, on the traded size
    slippage_bps: float = 0.0

    def __post_init__(self):
        if self.sizing not in SIZING:
            raise ConfigError(f"strategy.sizing: {self.sizing!r} is not one of {', '.join(SIZING)}")
        if self.hold_ns < 1 or self.latency_ns < 0 or (self.session_gap_ns is not None and self.session_gap_ns < 1):
            raise ConfigError(f"strategy: hold must be > 0, latency ≥ 0 and the session gap > 0 "
                              f"(got {self.hold_ns}, {self.latency_ns}, {self.session_gap_ns} ns)")

    def describe(self) -> str:
        gap = f"{self.session_gap_ns / 1e9:g} s" if self.session_gap_ns is not None else "none"
        return (f"a decision every {self.hold_ns / 1e9:g} s, filled {self.latency_ns / 1e6:g} ms later, flat across "
                f"gaps over {gap}, costs {self.fee_bps + self.slippage_bps:g} bps per side, threshold {self.threshold:g}")


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

    def portfolio(self, clock_ns: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(period start, net return, mean gross exposure) of the equally weighted portfolio per period of
        ``clock_ns`` with rows in it (None: per row time), each period's returns compounded."""
        times, inv = np.unique(self.ts, return_inverse=True)
        ret = np.bincount(inv, self.net, times.size) / self.n_symbols
        exposure = np.bincount(inv, np.abs(self.position), times.size) / self.n_symbols
        if clock_ns is None:
            return times, ret, exposure
        periods, at = np.unique(times // clock_ns, return_inverse=True)
        growth = np.bincount(at, np.log1p(ret), periods.size)
        per_period = np.bincount(at, minlength=periods.size)
        return periods * clock_ns, np.expm1(growth), np.bincount(at, exposure, periods.size) / per_period

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


def _sessions(ts: np.ndarray, segment: np.ndarray, gap_ns: int | None, session: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each row's session, whether a row is its session's last): a session is a symbol's
    run of rows without a gap longer than ``gap_ns`` and, where ``session`` numbers the market's
    sessions (a resync of the book, a hole in the data: features.grid), within one of them."""
    n = segment.size
    new = np.ones(n, bool)
    new[1:] = segment[1:] != segment[:-1]
    if gap_ns is not None:
        new[1:] |= np.diff(ts) > gap_ns
    if session is not None:
        new[1:] |= session[1:] != session[:-1]
    first = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    last = np.ones(n, bool)
    last[:-1] = new[1:]
    return first, last


def _at_or_before(ts: np.ndarray, segment: np.ndarray, lag_ns: int) -> np.ndarray:
    """For each row, its symbol's last row at or before its time − ``lag_ns`` (-1: none)."""
    if lag_ns == 0:
        return np.arange(ts.size)
    out = np.full(ts.size, -1)
    bounds = np.flatnonzero(np.diff(segment)) + 1
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [ts.size]])):
        out[a:b] = a + np.searchsorted(ts[a:b], ts[a:b] - lag_ns, side="right") - 1
    return out


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
             n_symbols: int | None = None, session: np.ndarray | None = None) -> Simulation:
    """Hold, fill, earn and pay for ``target`` positions (rows sorted by ``segment`` then ``ts``); flat at
    the end of every session (see :func:`_sessions`)."""
    n = price.size
    ts = np.asarray(ts, np.int64)
    price = np.asarray(price, float)
    first, last = _sessions(ts, segment, rules.session_gap_ns, session)
    rows = np.arange(n)
    due = (ts - ts[first]) // rules.hold_ns  # which decision of its session a row falls in
    taken = rows == first
    taken[1:] |= due[1:] != due[:-1]
    decided = target[np.maximum.accumulate(np.where(taken, rows, 0))]
    filled = _at_or_before(ts, segment, rules.latency_ns)
    pos = np.where(filled >= first, decided[np.maximum(filled, 0)], 0.0)
    pos[last] = 0.0
    ret = np.zeros(n)
    if n > 1:
        ret[:-1] = price[1:] / price[:-1] - 1
    ret[last] = 0.0
    cost = np.abs(pos - previous_in_segment(pos, segment)) * (rules.fee_bps + rules.slippage_bps) * 1e-4
    count = n_symbols if n_symbols is not None else (int(segment.max()) + 1 if n else 1)
    return Simulation(ts, segment, pos, ret, pos * ret, cost, count)


def buy_and_hold(ts: np.ndarray, segment: np.ndarray, price: np.ndarray, rules: Rules,
                 n_symbols: int | None = None, session: np.ndarray | None = None) -> Simulation:
    """Long ``max_position`` through each session of each symbol, paying entry and exit costs."""
    flat_rules = Rules(max_position=rules.max_position, session_gap_ns=rules.session_gap_ns, fee_bps=rules.fee_bps,
                       slippage_bps=rules.slippage_bps)
    return simulate(ts, segment, price, np.full(price.size, rules.max_position), flat_rules, n_symbols, session)


def fitted_threshold(ts: np.ndarray, segment: np.ndarray, price: np.ndarray, prob: np.ndarray,
                     confidence: np.ndarray | None, rules: Rules, session: np.ndarray | None = None) -> float:
    """The threshold of :data:`THRESHOLDS` whose positions made the most net of costs over these rows (the
    fitting part of a window, never its test part); a tie goes to the larger (trading less), and none
    that beats doing nothing gives 0.5: never trade."""
    best, best_net = 0.5, 0.0
    for threshold in sorted(THRESHOLDS, reverse=True):
        r = replace(rules, threshold=threshold)
        net = float(simulate(ts, segment, price, targets(prob, confidence, r), r, session=session).net.sum())
        if net > best_net:
            best, best_net = threshold, net
    return best
