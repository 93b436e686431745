"""The backtest core against hand-computed values."""

import numpy as np
import pandas as pd
import pytest
from tickray.backtest.core import backtest


def test_positions_fees_and_metrics_by_hand():
    # One symbol, horizon 2 s: every second row is a decision (rows 0, 2, 4, 6).
    df = pd.DataFrame({
        "ts": np.arange(8), "symbol": "X",
        "prob_up": [0.9, 0.5, 0.1, 0.5, 0.51, 0.5, 0.8, 0.5],
        "fwd_ret_2s": [10.0, 0, -4.0, 0, 7.0, 0, -3.0, 0],
    })
    r = backtest(df, horizon_s=2, threshold=0.02, fee_bps=1.0)
    # long +10, short +4, flat (0.51 is inside the threshold), long -3
    assert r.periods == 4 and r.trades == 3
    assert r.gross_bps == pytest.approx(11.0)
    assert r.net_bps == pytest.approx(11.0 - 3 * 2.0)
    assert r.hit_rate == pytest.approx(2 / 3)
    assert r.buy_hold_bps == pytest.approx(10.0)
    # net per period: 8, 2, 0, -5 → equity 8, 10, 10, 5 → drawdown 5
    assert r.max_drawdown_bps == pytest.approx(5.0)
    net = np.array([8.0, 2.0, 0.0, -5.0])
    assert r.sharpe_net == pytest.approx(net.mean() / net.std() * np.sqrt(365 * 24 * 3600 / 2))
    assert r.gross_per_trade_bps == pytest.approx(11.0 / 3)


def test_missing_column_is_named():
    with pytest.raises(KeyError, match="fwd_ret_10s"):
        backtest(pd.DataFrame({"ts": [], "symbol": [], "prob_up": []}), horizon_s=10)
