"""Performance metrics of a simulated strategy. Returns are simple, per period of a clock (a minute for
tick data, a bar for bars: :meth:`Simulation.portfolio`), compounded within it; only periods in which the
market was observed count (T below), so a lake with gaps is annualised by the market time it covers. A
year is ``periods_per_year`` periods (crypto trades around the clock: 365 days of the clock's period);
the risk-free rate is 0.

| metric | definition |
| --- | --- |
| total_return | ∏(1 + r_t) − 1 |
| annual_return | (1 + total_return)^(periods_per_year / T) − 1 (T periods) |
| annual_volatility | std(r, ddof=1) · √periods_per_year |
| sharpe | mean(r) / std(r, ddof=1) · √periods_per_year (0 when std is 0) |
| sortino | mean(r) / √mean(min(r, 0)²) · √periods_per_year (NaN without a losing period) |
| max_drawdown | max_t (1 − E_t / max_{s≤t} E_s), E the equity ∏(1 + r), starting at 1 |
| max_drawdown_periods | the longest run of periods spent below a previous equity peak |
| calmar | annual_return / max_drawdown (NaN without a drawdown) |
| trades | runs of same-sign position in a symbol |
| hit_rate | share of trades with net pnl > 0 |
| profit_factor | Σ winning trades' pnl / |Σ losing trades' pnl| (NaN without a loss) |
| turnover | Σ |Δposition| per symbol per year (1 = the whole allocation bought or sold once) |
| costs | Σ cost per symbol (a return: 0.01 = 1% of the allocation) |
| cost_share | costs / Σ gross pnl per symbol: the share of the gross pnl paid in costs (NaN without a gross gain) |
| exposure | share of symbol-periods with a position |
| mean_abs_position | mean |position| over symbol-periods |
"""

from __future__ import annotations

import math

import numpy as np

from tickray.backtest.core import Simulation, previous_in_segment


def drawdown(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(equity, drawdown) per period: equity starts at 1 before the first period."""
    equity = np.cumprod(1 + returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return equity, 1 - equity / peak


def longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def performance(sim: Simulation, periods_per_year: float, clock_ns: int | None = None) -> dict[str, float]:
    """The metrics above, on returns per ``clock_ns`` (None: per row time, for a regular grid)."""
    _, r, _ = sim.portfolio(clock_ns)
    n = r.size
    if n == 0:
        raise ValueError("performance: no periods to measure")
    total = float(np.prod(1 + r) - 1)
    # compounded in logs: a short, lucky span raised to a year's periods overflows a float (said as inf)
    growth = math.log1p(total) * periods_per_year / n if total > -1 else -math.inf
    annual = math.expm1(growth) if growth < 700 else math.inf
    sd = float(np.std(r, ddof=1)) if n > 1 else 0.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0) ** 2)))
    _, dd = drawdown(r)
    max_dd = float(dd.max())
    trades = sim.trades()
    wins, losses = trades[trades > 0].sum(), trades[trades < 0].sum()
    dpos = np.abs(sim.position - previous_in_segment(sim.position, sim.segment))
    years = n / periods_per_year
    costs, gross = float(sim.cost.sum() / sim.n_symbols), float(sim.gross.sum() / sim.n_symbols)
    return {
        "periods": n,
        "periods_per_year": float(periods_per_year),
        "total_return": total,
        "annual_return": annual,
        "annual_volatility": sd * math.sqrt(periods_per_year),
        "sharpe": float(np.mean(r) / sd * math.sqrt(periods_per_year)) if sd > 0 else 0.0,
        "sortino": float(np.mean(r) / downside * math.sqrt(periods_per_year)) if downside > 0 else math.nan,
        "max_drawdown": max_dd,
        "max_drawdown_periods": longest_run(dd > 0),
        "calmar": annual / max_dd if max_dd > 0 else math.nan,
        "trades": int(trades.size),
        "hit_rate": float(np.mean(trades > 0)) if trades.size else math.nan,
        "profit_factor": float(wins / -losses) if losses < 0 else math.nan,
        "turnover": float(dpos.sum() / sim.n_symbols / years),
        "exposure": float(np.mean(sim.position != 0)),
        "mean_abs_position": float(np.mean(np.abs(sim.position))),
        "costs": costs,
        "cost_share": costs / gross if gross > 0 else math.nan,
    }
