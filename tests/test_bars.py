"""1m bars as the one source of truth, and every timeframe resampled from them."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tickray.bars.build import (
    MINUTE_NS,
    TimeframeError,
    bars_from_trades,
    clean_minutes,
    find_gaps,
    resample,
    timeframe_minutes,
)
from tickray.cli import main
from tickray.lake.schema import BAR, TRADE
from tickray.sources.binance import read_agg_trades, read_klines


def test_timeframes_are_whole_minutes():
    assert [timeframe_minutes(t) for t in ("1m", "5m", "7m", "15m", "1h", "4h", "1d")] == [1, 5, 7, 15, 60, 240, 1440]
    for bad in ("90s", "1.5m", "0m", "1w", "h"):
        with pytest.raises(TimeframeError, match="not a whole, positive number of minutes"):
            timeframe_minutes(bad)


def _pandas_resample(df: pd.DataFrame, minutes: int) -> pd.DataFrame:
    """The independent reference: pandas resampling on epoch-aligned bins."""
    r = df.set_index("ts").resample(f"{minutes}min", origin="epoch", label="left", closed="left")
    out = r.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum",
                 "quote_volume": "sum", "trades": "sum", "buy_volume": "sum"})
    out["n"] = r["close"].count()
    return out[out["n"] > 0]


@pytest.mark.parametrize("timeframe", ["5m", "7m", "15m", "1h", "4h", "1d"])
def test_resampled_real_klines_equal_pandas_to_the_last_digit(shared_data, timeframe):
    minutes = timeframe_minutes(timeframe)
    files = sorted((shared_data / "binance" / "klines").glob("*.zip"))[:3]
    one = pa.concat_tables([read_klines(f) for f in files])
    ours = resample(one, minutes).to_pandas()
    for symbol, got in ours.groupby("symbol"):
        ref = _pandas_resample(one.filter(pa.compute.equal(one["symbol"], symbol)).to_pandas(), minutes)
        assert len(got) == len(ref)
        assert (got["ts"].to_numpy() == ref.index.to_numpy()).all()
        for col in ("open", "high", "low", "close", "volume", "quote_volume", "trades", "buy_volume"):
            assert np.array_equal(got[col].to_numpy(), ref[col].to_numpy()), (symbol, col)
        assert np.array_equal(got["vwap"].to_numpy(), (ref["quote_volume"] / ref["volume"]).to_numpy())
        assert np.array_equal(got["complete"].to_numpy(), (ref["n"] == minutes).to_numpy())


def test_1m_bars_from_trades_match_the_klines_of_the_same_trades(market):
    _, files = market
    trades = read_agg_trades(files.agg_trades[0])
    ours = bars_from_trades(trades)
    klines = read_klines(files.klines[0])
    assert ours["ts"].equals(klines["ts"])
    for col in ("open", "high", "low", "close"):
        assert np.array_equal(ours[col].to_numpy(), klines[col].to_numpy()), col
    assert np.array_equal(ours["trades"].to_numpy(), klines["trades"].to_numpy())
    for col in ("volume", "buy_volume"):  # the kline CSV prints quantities rounded to the lot size
        np.testing.assert_allclose(ours[col].to_numpy(), klines[col].to_numpy(), rtol=1e-9, err_msg=col)


def _trades(rows):
    ts, price, qty, side = zip(*rows)
    return pa.table({"ts": pa.array(ts, pa.int64()).cast(TRADE.field("ts").type), "symbol": ["X"] * len(rows),
                     "price": price, "qty": qty, "side": pa.array(side, pa.int8()),
                     "trade_id": list(range(len(rows)))}, schema=TRADE)


def test_a_minute_without_trades_is_a_flat_bar_and_a_missing_row_is_a_gap():
    m = MINUTE_NS
    bars = bars_from_trades(_trades([(0, 10.0, 1.0, 1), (30 * 10**9, 12.0, 1.0, -1), (2 * m + 5, 11.0, 2.0, 1)]))
    t = bars.to_pydict()
    assert t["open"] == [10.0, 12.0, 11.0] and t["high"] == [12.0, 12.0, 11.0] and t["close"] == [12.0, 12.0, 11.0]
    assert t["volume"] == [2.0, 0.0, 2.0] and t["trades"] == [2, 0, 1] and t["vwap"] == [11.0, 12.0, 11.0]
    assert t["buy_volume"] == [1.0, 0.0, 2.0]
    holed = bars.filter(pa.array([True, False, True]))
    assert find_gaps(holed) == [("X", m, m)]  # reported, not filled
    five = resample(holed, 5).to_pydict()
    assert five["minutes"] == [2] and five["complete"] == [False]


def test_duplicated_and_out_of_order_klines_are_kept_once_and_counted(shared_data):
    k = read_klines(min((shared_data / "binance" / "klines").glob("*.zip"))).slice(0, 600)
    messy = pa.concat_tables([k.slice(300), k.slice(0, 320)])  # overlap of 20 minutes, halves swapped
    clean, dropped = clean_minutes(messy)
    assert dropped == 20 and clean.equals(k)
    assert resample(messy, 60).equals(resample(k, 60))


def test_bars_cli_prints_and_writes(ray_cluster, shared_data, tmp_path, capsys):
    from tickray.ingest.job import ingest

    f = min((shared_data / "binance" / "klines").glob("*.zip"))
    symbol = f.name.split("-")[0]
    root = tmp_path / "lake"
    ingest([f], root)
    out = tmp_path / "bars.parquet"
    month = f.name.split("-1m-")[1][:7]
    assert main(["bars", "--lake", str(root), "--no-redis", "--symbols", symbol, "--timeframe", "4h",
                 "--start", f"{month}-03", "--end", f"{month}-05", "--out", str(out)]) == 0
    got = pq.read_table(out)
    assert got.num_rows == 12 and got["complete"].to_pylist() == [True] * 12
    assert set(BAR.names) <= set(got.column_names)
    assert main(["bars", "--lake", str(root), "--symbols", symbol, "--timeframe", "90s",
                 "--start", f"{month}-03", "--end", f"{month}-05"]) != 0
    assert "not a whole, positive number of minutes" in capsys.readouterr().err
    # an empty answer says why: the days the lake holds (a symbol it lacks altogether is an error)
    assert main(["bars", "--lake", str(root), "--no-redis", "--symbols", symbol, "--timeframe", "1h",
                 "--start", "2019-01-01", "--end", "2019-01-02"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"no 1h bars for {symbol} from 2019-01-01 to 2019-01-02: the lake's 1m bars of "
                              f"{symbol} cover {month}-01 to {month}-"), said


def test_live_bars_equal_the_batch_bars_of_the_same_trades(market):
    from tickray.bars.live import LiveBars

    _, files = market
    trades = read_agg_trades(files.agg_trades[0]).slice(0, 12_000)  # a few hours
    batch = bars_from_trades(trades)
    live = LiveBars("BTCUSDT", timeframes=("15m", "1h"))
    closed = []
    t = trades.to_pydict()
    for ts, price, qty, side in zip(pa.compute.cast(trades["ts"], "int64").to_pylist(), t["price"], t["qty"],
                                    t["side"]):
        closed += live.on_trade(ts, price, qty, side)
    want = batch.set_column(0, "ts", pa.compute.cast(batch["ts"], "int64")).to_pylist()
    assert closed == want[:-1]  # every minute but the one still open, flat minutes included
    assert {k: v for k, v in live.current("1m").items() if k != "complete"} == want[-1]
    for tf, minutes in (("15m", 15), ("1h", 60)):
        bars = resample(batch, minutes)
        last = bars.set_column(0, "ts", pa.compute.cast(bars["ts"], "int64")).to_pylist()[-1]
        cur = live.current(tf)
        assert cur["ts"] == last["ts"] and cur["complete"] is False
        for col in ("open", "high", "low", "close", "trades"):
            assert cur[col] == last[col], (tf, col)
        for col in ("volume", "quote_volume", "buy_volume", "vwap"):  # summed minute by minute vs pairwise
            assert cur[col] == pytest.approx(last[col], rel=1e-12), (tf, col)
    assert live.on_trade(0, 1.0, 1.0, 1) == [] and live.late == 1  # an old trade is counted, not applied
