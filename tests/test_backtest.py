"""The backtest core and its metrics against hand-computed values and an independent pandas loop."""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from tickray.backtest.config import BacktestConfig, load_backtest_config
from tickray.backtest.core import (
    THRESHOLDS,
    Rules,
    Simulation,
    buy_and_hold,
    fitted_threshold,
    simulate,
    targets,
)
from tickray.backtest.frame import BacktestInputError, align, simulate_frame
from tickray.backtest.metrics import drawdown, longest_run, performance
from tickray.backtest.walkforward import backtest_rows, run_backtest, shards
from tickray.cli import main
from tickray.errors import ConfigError
from tickray.features import FEATURES
from tickray.ingest.job import ingest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from pandas_backtest import pandas_backtest, random_market

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


S = 1_000_000_000  # a second in ns


def _one_symbol(price, prob, rules, confidence=None, ts=None):
    n = len(price)
    return simulate(np.arange(n) * S if ts is None else np.array(ts) * S, np.zeros(n, int), np.array(price, float),
                    targets(np.array(prob, float), confidence, rules), rules)


def test_positions_costs_and_trades_by_hand():
    rules = Rules(threshold=0.02, fee_bps=8.0, slippage_bps=2.0)
    sim = _one_symbol([100, 110, 99, 99, 108.9], [0.9, 0.1, 0.5, 0.8, 0.5], rules)
    # long, short, flat, long, and the last row is closed
    assert sim.position.tolist() == [1, -1, 0, 1, 0]
    assert sim.asset_return == pytest.approx([0.1, -0.1, 0, 0.1, 0])
    # |Δposition| 1, 2, 1, 1, 1 at 10 bps
    assert sim.cost == pytest.approx([0.001, 0.002, 0.001, 0.001, 0.001])
    assert sim.net == pytest.approx([0.099, 0.098, -0.001, 0.099, -0.001])
    # three trades; the flat row's exit cost belongs to the short, the last row's to the final long
    assert sim.trades() == pytest.approx([0.099, 0.097, 0.098])


def test_hold_latency_and_nan_signals_by_hand():
    rules = Rules(threshold=0.0, hold_ns=2 * S, latency_ns=S // 4)
    sim = _one_symbol([1, 1, 1, 1, 1, 1, 1], [0.9, 0.1, np.nan, 0.9, 0.2, 0.9, 0.9], rules)
    # decisions at 0, 2, 4, 6 s → +1, 0 (no signal), -1, +1, each held 2 s, filled at the next row (0.25 s later)
    assert sim.position.tolist() == [0, 1, 1, 0, 0, -1, 0]


def test_holds_latency_and_sessions_are_durations_on_a_grid_with_holes():
    """Seconds 0 1 2 5 6 7 8 | 100 101 102: decisions every 3 s from a session's start, filled 1.5 s later;
    a gap over 10 s ends a session, whose last row is flat: nothing is held across the hole."""
    ts = [0, 1, 2, 5, 6, 7, 8, 100, 101, 102]
    price = [100, 101, 102, 103, 104, 105, 106, 200, 202, 204]
    prob = [0.9, 0.1, 0.1, 0.2, 0.9, 0.9, 0.2, 0.2, 0.9, 0.9]
    sim = _one_symbol(price, prob, Rules(threshold=0.0, hold_ns=3 * S, latency_ns=3 * S // 2, session_gap_ns=10 * S,
                                         fee_bps=10.0), ts=ts)
    # due at 0, 3, 6, 9 s (taken at rows 0 s, 5 s, 6 s; none at 9 s: held) and at 100 s in the next session
    # decided:  +1 +1 +1 -1 +1 +1 +1 | -1 -1 -1
    # filled 1.5 s later, from the last row at or before t - 1.5 s: at 2 s ← 0 s, 5 s ← 2 s, 6 s ← 2 s,
    # 7 s ← 5 s, 8 s ← 6 s; 101 s ← none of its session; 102 s: the session's last row, flat
    assert sim.position.tolist() == [0, 0, 1, 1, 1, -1, 0, 0, 0, 0]
    assert sim.asset_return == pytest.approx([0.01, 1 / 101, 1 / 102, 1 / 103, 1 / 104, 1 / 105, 0, 0.01, 1 / 101, 0])
    assert sim.cost == pytest.approx([0, 0, 1e-3, 0, 0, 2e-3, 1e-3, 0, 0, 0])
    # on a 2 s clock: periods [0, 2) [2, 4) [4, 6) [6, 8) [8, 10) [100, 102) [102, 104); none for the hole
    times, ret, exposure = sim.portfolio(2 * S)
    assert (times // S).tolist() == [0, 2, 4, 6, 8, 100, 102]
    net = sim.net
    assert ret == pytest.approx([net[0] + net[1] + net[0] * net[1], net[2], net[3], (1 + net[4]) * (1 + net[5]) - 1,
                                 net[6], 0, 0])
    assert exposure == pytest.approx([0, 1, 1, 1, 0, 0, 0])
    # annualised by the 7 periods observed (a year of 14 here: half a year), not by the hole's 46 periods
    m = performance(sim, periods_per_year=14, clock_ns=2 * S)
    gross = 1 / 102 + 1 / 103 + 1 / 104 - 1 / 105
    assert m["periods"] == 7 and m["annual_return"] == pytest.approx((1 + m["total_return"]) ** 2 - 1)
    assert m["costs"] == pytest.approx(4e-3) and m["cost_share"] == pytest.approx(4e-3 / gross)


def test_a_session_start_without_a_hole_is_a_forced_flat_by_hand():
    """Rows one second apart, the market's session changing at 3 s (a book resync): the position is closed
    on the last row of the first session, and the second session's decisions start from its own start."""
    n = 6
    rules = Rules(threshold=0.0, hold_ns=2 * S, fee_bps=10.0)
    frame = pd.DataFrame({"ts": np.arange(n) * S, "symbol": "X", "price": [100, 101, 102, 103, 104, 105],
                          "p": [0.9, 0.1, 0.1, 0.1, 0.9, 0.9], "session": [1, 1, 1, 2, 2, 2]})
    # decisions due at 0 s (+1, held to 2 s) and 2 s (-1); 2 s is the session's last row: flat.
    # the next session decides at 3 s (-1) and 5 s; 5 s is the last row: flat.
    sim = simulate_frame(frame, "p", rules)
    assert sim.position.tolist() == [1, 1, 0, -1, -1, 0]
    assert sim.asset_return == pytest.approx([0.01, 1 / 101, 0, 1 / 103, 1 / 104, 0])  # nothing earned across
    # without the session column the same rows are one session: the position runs through 2 s and 3 s
    assert simulate_frame(frame.drop(columns="session"), "p", rules).position.tolist() == [1, 1, -1, -1, 1, 0]


def test_the_cost_aware_threshold_leaves_out_the_edges_costs_eat_by_hand():
    """Entries at 0 s and 4 s (edge 0.25) gain about 1% each; the one at 2 s (edge 0.06, a hair more in
    floating point) loses 0.099%. At 10 bps a side, thresholds 0.07 to 0.24 keep the two winners alone:
    1% + 0.991% - 4 x 0.1% = 1.59% against 1.29% with the loser; from 0.25 nothing trades. The largest of
    the best wins (trading less on a tie); at 200 bps a side no threshold beats doing nothing: 0.5."""
    ts = np.arange(7) * S
    price = np.array([100, 101, 101, 100.9, 100.9, 101.9, 101.9])
    prob = np.array([0.75, 0.5, 0.56, 0.5, 0.75, 0.5, 0.5])
    seg = np.zeros(7, int)
    assert fitted_threshold(ts, seg, price, prob, None, Rules(hold_ns=S, fee_bps=10.0)) == 0.24
    assert fitted_threshold(ts, seg, price, prob, None, Rules(hold_ns=S, fee_bps=200.0)) == 0.5


def test_confidence_sizing_and_shock_filter():
    rules = Rules(threshold=0.0, sizing="confidence", max_position=2.0, full_size_confidence=0.5)
    conf = np.array([0.25, 0.9, 0.0, 0.1])
    t = targets(np.array([0.7, 0.1, 0.9, 0.45]), conf, rules)
    assert t == pytest.approx([1.0, -2.0, 0.0, -0.4])
    assert targets(np.array([0.9]), np.array([0.0]), Rules(shock_filter=False)) == pytest.approx([1.0])
    with pytest.raises(ConfigError, match="needs a confidence"):
        targets(np.array([0.9]), None, rules)
    with pytest.raises(ConfigError, match="strategy.sizing"):
        Rules(sizing="kelly")


def test_portfolio_weights_symbols_equally():
    ts = np.array([0, 1, 2, 0, 1, 2]) * S
    seg = np.array([0, 0, 0, 1, 1, 1])
    price = np.array([100, 101, 102, 50, 49, 48.0])
    sim = buy_and_hold(ts, seg, price, Rules(fee_bps=0.0))
    times, ret, exposure = sim.portfolio()
    assert (times // S).tolist() == [0, 1, 2]
    assert ret == pytest.approx([(0.01 + (-0.02)) / 2, (1 / 101 + (-1 / 49)) / 2, 0.0])
    assert exposure == pytest.approx([1, 1, 0])


def test_matches_the_row_by_row_loop():
    """On minute bars with holes (missing bars, outages): holds, latency and sessions in time."""
    df = random_market(3_000, 3, seed=4)
    minute = 60 * S
    for hold, latency, gap in ((3, 2, 4), (1, 0, 1), (7, 1, 200)):
        rules = Rules(threshold=0.05, max_position=1.5, hold_ns=hold * minute, latency_ns=latency * minute,
                      session_gap_ns=gap * minute, fee_bps=4.0, slippage_bps=1.0)
        codes = df["symbol"].astype("category").cat.codes.to_numpy()
        sim = simulate(df["ts"].to_numpy(), codes, df["price"].to_numpy(),
                       targets(df["prob"].to_numpy(), None, rules), rules)
        ref = pandas_backtest(df, 0.05, 1.5, hold * minute, latency * minute, gap * minute, 4.0, 1.0)
        np.testing.assert_allclose(sim.position, ref["position"].to_numpy())
        np.testing.assert_allclose(sim.net, ref["net"].to_numpy(), atol=1e-15)


def test_drawdown_and_its_duration_by_hand():
    r = np.array([0.1, -0.5, 0.2, 0.2, 1.0, -0.1])
    equity, dd = drawdown(r)
    assert equity == pytest.approx([1.1, 0.55, 0.66, 0.792, 1.584, 1.4256])
    assert dd == pytest.approx([0, 0.5, 0.4, 0.28, 0, 0.1])
    assert longest_run(dd > 0) == 3
    assert longest_run(np.zeros(3, bool)) == 0


def test_performance_metrics_by_hand():
    r = np.array([0.1, -0.5, 0.2, 0.2, 1.0, -0.1])
    n = r.size
    pos = np.array([1, 1, 1, -1, -1, 0.0])
    sim = Simulation(np.arange(n), np.zeros(n, int), pos, r, r, np.zeros(n), 1)
    m = performance(sim, periods_per_year=6)  # six periods = one year
    assert m["total_return"] == pytest.approx(0.4256)
    assert m["annual_return"] == pytest.approx(0.4256)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(6))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt((0.25 + 0.01) / 6) * math.sqrt(6))
    assert m["max_drawdown"] == pytest.approx(0.5)
    assert m["max_drawdown_periods"] == 3
    assert m["calmar"] == pytest.approx(0.4256 / 0.5)
    # trades: long rows 0-2 (0.1 - 0.5 + 0.2), short rows 3-4 (0.2 + 1.0), its exit row (-0.1)
    assert m["trades"] == 2
    assert m["hit_rate"] == pytest.approx(0.5)
    assert m["profit_factor"] == pytest.approx(1.1 / 0.2)
    # |Δposition|: 1 (enter), 2 (flip), 1 (exit) over one year
    assert m["turnover"] == pytest.approx(4.0)
    assert m["exposure"] == pytest.approx(5 / 6)
    assert m["mean_abs_position"] == pytest.approx(5 / 6)


def test_metrics_on_a_clock_over_rows_with_irregular_gaps_by_hand():
    """Rows at 0, 10, 50, 70, 130, 400, 410 and 1000 s, measured per minute: the minutes with rows are
    0 (three rows), 1, 2, 6 (two rows) and 16; each minute's return is its rows' compounded, and a year
    is 525,600 minutes whatever the holes."""
    ts = np.array([0, 10, 50, 70, 130, 400, 410, 1000]) * 1_000_000_000
    r = np.array([0.01, -0.02, 0.005, 0.03, -0.01, 0.002, -0.004, 0.02])
    pos = np.array([1, 1, -1, -1, 0, 1, 1, 0.0])
    sim = Simulation(ts, np.zeros(ts.size, int), pos, r, r, np.zeros(ts.size), 1)
    starts, per_minute, _ = sim.portfolio(60 * 1_000_000_000)
    assert (starts // 1_000_000_000).tolist() == [0, 60, 120, 360, 960]
    minute = np.array([1.01 * 0.98 * 1.005 - 1, 0.03, -0.01, 1.002 * 0.996 - 1, 0.02])
    assert per_minute == pytest.approx(minute)
    year = 365 * 1440
    m = performance(sim, periods_per_year=year, clock_ns=60 * 1_000_000_000)
    total = float(np.prod(1 + minute) - 1)
    assert m["periods"] == 5 and m["total_return"] == pytest.approx(total)
    assert m["annual_return"] == math.inf  # 5 minutes up 3.3%, compounded over a year: no float holds it
    assert m["sharpe"] == pytest.approx(minute.mean() / minute.std(ddof=1) * math.sqrt(year))
    assert m["annual_volatility"] == pytest.approx(minute.std(ddof=1) * math.sqrt(year))
    losing = [minute[0], minute[2], minute[3]]  # minutes 0, 2 and 6 lost
    assert m["sortino"] == pytest.approx(minute.mean() / math.sqrt(sum(x * x for x in losing) / 5) * math.sqrt(year))
    # |Δposition| 1 + 2 + 1 + 1 + 1 = 6 over 5 minutes of a 525,600-minute year
    assert m["turnover"] == pytest.approx(6 / (5 / year))
    # trades: long 0-1, short 2-3, exit at 4; long 5-6, exit at 7
    assert m["trades"] == 3 and m["exposure"] == pytest.approx(6 / 8)


def test_no_losing_period_has_no_sortino_or_calmar():
    n = 4
    r = np.full(n, 0.01)
    sim = Simulation(np.arange(n), np.zeros(n, int), np.ones(n), np.full(n, 0.01), r, np.zeros(n), 1)
    m = performance(sim, periods_per_year=4)
    assert math.isnan(m["sortino"]) and math.isnan(m["calmar"]) and math.isnan(m["profit_factor"])
    assert m["sharpe"] == 0.0  # no variance


# ---- bad input -----------------------------------------------------------------------------------


def _prices(n=6):
    return pd.DataFrame({"ts": np.tile(np.arange(n // 2), 2), "symbol": ["A"] * (n // 2) + ["B"] * (n // 2),
                         "price": np.linspace(100, 105, n)})


def test_predictions_off_the_price_grid_name_column_and_rows():
    preds = pd.DataFrame({"ts": [0, 1, 7, 8], "symbol": ["A", "A", "A", "B"], "p": [0.6] * 4})
    with pytest.raises(BacktestInputError, match=r"column 'ts' does not align .* rows 2-3 \(2 rows\).*A at 7"):
        align(_prices(), preds)
    joined = align(_prices(), preds.iloc[:2])
    assert joined["p"].notna().sum() == 2 and len(joined) == 6


def test_nan_prices_strings_and_empty_windows_are_named():
    df = _prices()
    df.loc[[1, 2, 4], "price"] = np.nan
    with pytest.raises(BacktestInputError, match=r"column 'price' is NaN at rows 1-2, 4 \(3 rows\)"):
        simulate_frame(df.assign(p=0.6), "p", Rules())
    with pytest.raises(BacktestInputError, match=r"column 'p' is not numeric at rows 3 \(1 row\)"):
        simulate_frame(_prices().assign(p=[0.6, 0.6, 0.6, "high", 0.4, 0.4]), "p", Rules())
    with pytest.raises(BacktestInputError, match="window is empty"):
        simulate_frame(_prices().iloc[:0].assign(p=0.5), "p", Rules())
    backwards = _prices().iloc[[0, 2, 1, 3, 4, 5]].reset_index(drop=True)
    with pytest.raises(BacktestInputError, match=r"'ts' goes backwards within a symbol at rows 2 "):
        simulate_frame(backwards.assign(p=0.5), "p", Rules())


def test_fees_as_strings_and_unknown_keys_are_config_errors(tmp_path):
    cfg = tmp_path / "bt.yaml"
    cfg.write_text("costs:\n  fee_bps: {binance-usdm: '5'}\n")
    with pytest.raises(ConfigError, match=r"costs\.fee_bps\.binance-usdm: Input should be a valid number"):
        load_backtest_config(cfg)
    with pytest.raises(ConfigError, match="no entry for venue 'kraken'"):
        load_backtest_config(None, {"costs.venue": "kraken"})
    with pytest.raises(ConfigError, match="unknown key 'strategy.kelly'"):
        load_backtest_config(None, {"strategy.kelly": 1})
    with pytest.raises(ConfigError, match="not a whole number of 1h bars"):
        load_backtest_config(None, {"data.source": "bars", "data.timeframe": "1h", "train.data.horizons_s": [600]})


# ---- walk-forward --------------------------------------------------------------------------------

FAST_TRAIN = {"data": {"horizons_s": [10, 60], "train_every_s": 8}, "split": {"folds": 2},
              "models": {"xgboost": {"num_boost_round": 60, "early_stopping_rounds": 10}}}


@pytest.fixture(scope="module")
def synthetic_backtest(market_lake, tmp_path_factory):
    """The demo's models walk-forward over the session market, once for the module."""
    out = tmp_path_factory.mktemp("backtest")
    cfg = BacktestConfig.model_validate({"train": FAST_TRAIN, "walk_forward": {"windows": 2},
                                         "strategy": {"threshold": 0.05, "sizing": "confidence",
                                                      "full_size_confidence": 0.3, "cost_aware": True}})
    uri = f"sqlite:///{out / 'mlflow.db'}"
    report = run_backtest(cfg, market_lake, uri, str(out / "artifacts"), out / "report.html")
    return cfg, report, uri


def test_walk_forward_trains_on_the_past_only(market_lake, synthetic_backtest):
    cfg, _, _ = synthetic_backtest
    rows = backtest_rows(cfg, market_lake)
    plan = shards(rows, cfg)
    assert [s.window for s in plan] == [0, 1]
    for s in plan:
        # every training row's label window ends before the test window starts, with the embargo
        assert rows.ts[s.train].max() + max(rows.horizons) * 10**9 < rows.ts[s.test].min()
        # and the embargo between: at least the longer of that and the features' declared look-back
        lookback = max(FEATURES[f].lookback for f in rows.features)
        assert rows.ts[s.test].min() - rows.ts[s.train].max() > max(lookback, *rows.horizons) * 10**9
    assert rows.ts[plan[0].test].max() < rows.ts[plan[1].test].min()
    assert plan[1].train.size > plan[0].train.size  # expanding
    # no selection by the future: the test windows hold every row with its features defined from the first
    # window's start on, those whose move was flat or whose horizon runs past the data included; models
    # learn from labelled rows only
    defined = np.flatnonzero(~np.isnan(rows.x).any(axis=1))
    tested = np.concatenate([s.test for s in plan])
    assert sorted(tested) == sorted(defined[rows.ts[defined] >= rows.ts[plan[0].test].min()])
    unlabelled = np.isnan(rows.y).all(axis=1)
    assert unlabelled[tested].sum() >= 2 * 10  # at least each symbol's last 10 s, whose horizons end past the data
    assert not unlabelled[np.concatenate([s.train for s in plan])].any()


def test_synthetic_backtest_scores_report_and_mlflow(synthetic_backtest):
    _, report, uri = synthetic_backtest
    assert report.models == ["xgboost", "prior", "logistic", "ensemble",
                             "xgboost:cost", "prior:cost", "logistic:cost", "ensemble:cost"]
    # each window's cost-aware thresholds, one per model and horizon, chosen from the candidates
    for w in report.windows:
        assert set(w["thresholds"]) == {"xgboost", "prior", "logistic", "ensemble"}
        assert all(len(t) == 2 and set(t) <= set(THRESHOLDS) for t in w["thresholds"].values())
    assert "cost-aware thresholds chosen on each window's history" in "\n".join(report.lines())
    # the synthetic market has signal at 10 s; out of sample the models find it, the prior cannot
    assert report.scores["ensemble"][10]["auc"] > 0.6
    assert report.scores["prior"][10]["auc"] == pytest.approx(0.5, abs=0.03)
    for m in [*report.models, "buy_and_hold"]:
        for h in (10, 60):
            p = report.performance[m][h]
            assert p["periods"] == report.curves[h].shape[0] and np.isfinite(p["total_return"])
    # costs are paid on every trade: 6 bps per side of Binance USD-M taker fee plus slippage
    assert report.rules[10]["fee_bps"] + report.rules[10]["slippage_bps"] == 6.0
    assert report.performance["ensemble"][10]["costs"] > 0
    assert set(report.stability) == {"xgboost", "logistic", "ensemble"}
    assert 0 <= report.stability["ensemble"]["position_flips"] <= 1
    assert sum(report.importance["xgboost"].values()) == pytest.approx(1.0)
    html = report.report_path.read_text()
    assert html.count("data:image/png;base64,") == 7 and "Performance" in html
    pngs = sorted(p.name for p in (report.report_path.parent / "report_figures").glob("*.png"))
    assert pngs == sorted(f"{n}.png" for n in ("equity", "drawdown", "rolling_sharpe", "exposure", "calibration",
                                              "importance", "overfitting"))
    client = MlflowClient(uri)
    run = client.get_run(report.run_id)
    assert run.data.metrics["ensemble_auc_10s"] == pytest.approx(report.scores["ensemble"][10]["auc"])
    arts = [a.path for a in client.list_artifacts(report.run_id, "report")]
    assert "report/report.html" in arts and "report/figures" in arts


def test_gross_edge_is_positive_without_costs(market_lake, synthetic_backtest):
    """The same out-of-sample signal without costs or latency makes money: what costs take is the
    difference, not a bug in the signal's sign."""
    cfg, _, _ = synthetic_backtest
    free = cfg.model_copy(update={"costs": cfg.costs.model_copy(update={
        "fee_bps": {"binance-usdm": 0.0}, "slippage_bps": {"binance-usdm": 0.0}, "latency_ms": 0.0})})
    report = run_backtest(free, market_lake)
    assert report.performance["ensemble"][10]["total_return"] > 0
    assert report.performance["ensemble"][10]["hit_rate"] > 0.55
    assert report.performance["ensemble:cost"][10]["trades"] > 0  # with nothing to pay, it trades


def test_real_klines_backtest_from_the_cli(ray_cluster, shared_data, tmp_path, capsys):
    """`tickray backtest` with the shipped klines config on the real Binance 1m klines."""
    lake_root = tmp_path / "lake"
    ingest([shared_data / "binance" / "klines"], lake_root)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"state_dir: {tmp_path / 'state'}\nlake_root: {lake_root}\n")
    report_path = tmp_path / "klines.html"
    code = main(["--config", str(settings), "backtest", "--config", str(CONFIGS / "backtest-klines.yaml"),
                 "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "horizon 3600s: a decision every 3600 s, filled 0 ms later, flat across gaps over 900 s" in out
    assert "returns per 900 s, 35,040 periods a year" in out and "buy_and_hold" in out
    assert report_path.stat().st_size > 100_000  # seven inlined figures

    # labels on 15m bars agree with an independent pandas reading of the same klines
    cfg = load_backtest_config(CONFIGS / "backtest-klines.yaml")
    rows = backtest_rows(cfg, lake_root)  # the rows stage reads 15m bars from the lake
    sym = rows.symbol == "LINKUSDT"
    raw = pd.read_csv(shared_data / "binance" / "klines" / "LINKUSDT-1m-2026-02.zip", header=None)
    raw = raw[pd.to_numeric(raw[0], errors="coerce").notna()]  # a header line, if the file has one
    close = (pd.Series(raw[4].astype(float).to_numpy(), index=pd.to_datetime(raw[0].astype("int64"), unit="ms"))
             .resample("15min").last())
    r = np.log(close.shift(-4) / close)
    up = np.where(r > 0, 1.0, np.where(r < 0, 0.0, np.nan))  # a flat hour is neither up nor down
    np.testing.assert_array_equal(rows.y[sym, 0], up[: sym.sum()].astype(np.float32))
    # the rows name the kline files they came from: February 2026's, not the other months in the lake
    assert rows.sources()["inputs"] == [str((shared_data / "binance" / "klines" / f"{s}-1m-2026-02.zip").resolve())
                                        for s in ("DOTUSDT", "LINKUSDT", "LTCUSDT")]
    assert len(rows.sources()["partitions"]) == 3 * 28
    # selected by the files behind them: LINKUSDT's month only, though the config names three symbols
    train = cfg.train.model_copy(update={"data": cfg.train.data.model_copy(update={"sources": ["*/LINKUSDT-1m-*"]})})
    link = backtest_rows(cfg.model_copy(update={"train": train}), lake_root)
    assert set(link.symbol) == {"LINKUSDT"}
    np.testing.assert_array_equal(link.x, rows.x[sym])
    np.testing.assert_array_equal(link.y, rows.y[sym])
