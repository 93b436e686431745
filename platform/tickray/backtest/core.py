"""A vectorised backtest of probability forecasts on held-out data (walk-forward comes with its issue).

Every ``horizon`` seconds (non-overlapping, so no return is counted twice) a position is taken:
long when prob_up > 0.5 + threshold, short when < 0.5 - threshold, flat otherwise; it is held for the
horizon and pays ``fee_bps`` on entry and on exit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

SECONDS_PER_YEAR = 365 * 24 * 3600


@dataclass
class BacktestResult:
    periods: int
    trades: int
    hit_rate: float
    gross_bps: float
    net_bps: float
    buy_hold_bps: float
    sharpe_net: float
    max_drawdown_bps: float

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def gross_per_trade_bps(self) -> float:
        """The edge per round trip before costs: the fee per side it could pay is half of it."""
        return self.gross_bps / self.trades if self.trades else 0.0

    def line(self) -> str:
        return (f"{self.trades} trades over {self.periods} periods, hit rate {self.hit_rate:.1%}, "
                f"gross {self.gross_bps:+.1f} bps ({self.gross_per_trade_bps:+.2f} per trade), "
                f"net {self.net_bps:+.1f} bps, buy&hold {self.buy_hold_bps:+.1f} bps, "
                f"Sharpe (net, annualised) {self.sharpe_net:.2f}, max drawdown {self.max_drawdown_bps:.1f} bps")


def backtest(df: pd.DataFrame, horizon_s: int, threshold: float = 0.02, fee_bps: float = 1.0) -> BacktestResult:
    """``df``: ts, symbol, prob_up, fwd_ret_<h>s (bps) on a one-second grid."""
    for col in ("ts", "symbol", "prob_up", f"fwd_ret_{horizon_s}s"):
        if col not in df.columns:
            raise KeyError(f"backtest input lacks column {col!r}")
    pnl_gross, pnl_net, hits, trades, bh, n_periods = [], [], 0, 0, 0.0, 0
    for _, g in df.sort_values("ts").groupby("symbol", sort=True):
        g = g.iloc[::horizon_s]
        ret = g[f"fwd_ret_{horizon_s}s"].to_numpy(float)
        p = g["prob_up"].to_numpy(float)
        pos = np.where(p > 0.5 + threshold, 1.0, np.where(p < 0.5 - threshold, -1.0, 0.0))
        gross = pos * ret
        net = gross - 2 * fee_bps * np.abs(pos)
        pnl_gross.append(gross)
        pnl_net.append(net)
        trades += int(np.count_nonzero(pos))
        hits += int(np.count_nonzero(gross > 0))
        bh += float(np.nansum(ret))
        n_periods += ret.size
    gross = np.concatenate(pnl_gross) if pnl_gross else np.zeros(0)
    net = np.concatenate(pnl_net) if pnl_net else np.zeros(0)
    equity = np.cumsum(net)
    dd = float(np.max(np.maximum.accumulate(equity) - equity)) if equity.size else 0.0
    sd = float(np.std(net))
    sharpe = float(np.mean(net) / sd * np.sqrt(SECONDS_PER_YEAR / horizon_s)) if sd > 0 else 0.0
    return BacktestResult(n_periods, trades, hits / trades if trades else 0.0, float(gross.sum()),
                          float(net.sum()), bh, sharpe, dd)
