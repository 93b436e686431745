"""The batch feature side: capture sessions across midnight, sharding without seams, the bar indicators
against an independent reference, labels, sequence windows and the as-of join."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ta
from test_book_and_features import gapped_capture
from tickray import lake
from tickray.features import FEATURE_NAMES, compute_features, grid_from_events
from tickray.features.grid import NS
from tickray.features.indicators import BAR_FEATURE_NAMES, OnlineIndicators, bar_features
from tickray.features.job import build_features
from tickray.features.labels import forward_labels, forward_labels_at_times, forward_labels_on_grid
from tickray.features.windows import complete_windows, gather_windows
from tickray.ingest.job import ingest
from tickray.research.rows import load_rows, observable
from tickray.sources.binance import read_klines, read_ws_capture
from tickray.training.config import parse_config


@pytest.fixture(scope="module")
def session_lake(ray_cluster, shared_data, tmp_path_factory):
    """The real USD-M BTCUSDT session 2024-07-18 23:57 → 07-19 00:05, ingested and featurised."""
    ws = shared_data / "binance" / "ws"
    files = [ws / "usdm_btcusdt_20240718.gz", ws / "usdm_btcusdt_20240719.gz"]
    root = tmp_path_factory.mktemp("session") / "lake"
    report = ingest(files, root)
    build_features(root)
    return files, root, report


def test_a_capture_session_across_midnight_keeps_one_book(session_lake):
    _, root, report = session_lake
    # The 0719 file has no snapshot of its own: its first diff chains (pu) onto the 0718 file's last.
    assert report.rows == {"trades": 10_701, "book": 9_018}  # the snapshot + 9,017 diffs, 0 gaps
    assert dict(report.quarantined["book"]) == {"diff older than the snapshot": 5}
    assert sorted(lake.partitions(root, "book")) == [("2024-07-18", "BTCUSDT"), ("2024-07-19", "BTCUSDT")]


def test_features_across_midnight_equal_an_unsharded_run(session_lake):
    files, root, _ = session_lake
    cap = read_ws_capture(files)
    grid = grid_from_events(cap.trades, cap.book.book)
    whole = compute_features(grid)
    sharded = pq.read_table(root / "features" / "date=2024-07-19")
    ts = pc.cast(sharded["ts"], pa.int64()).to_numpy()
    idx = np.searchsorted(grid["ts"], ts)
    assert np.array_equal(grid["ts"][idx], ts) and ts[0] == 1_721_347_200 * NS  # starts at 00:00:00
    for f in FEATURE_NAMES:
        assert np.array_equal(sharded[f].to_numpy(), whole[f][idx], equal_nan=True), f
    # The previous day's tail is what makes them equal: the 07-19 rows alone lack the look-back.
    alone = compute_features(grid_from_events(lake.read_partition(root, "trades", "2024-07-19", "BTCUSDT"),
                                              lake.read_partition(root, "book", "2024-07-19", "BTCUSDT")))
    assert np.isnan(alone["ret_60s"][:60]).all() and not np.isnan(sharded["ret_60s"].to_numpy()[:60]).any()
    # Labels of 07-18's last minute look into 07-19 instead of going missing at the partition's edge.
    last = pq.read_table(root / "features" / "date=2024-07-18")
    assert not np.isnan(last["fwd_ret_10s"].to_numpy()[-10:]).any()


def test_a_replayed_gap_is_unsynced_in_the_lake_and_no_model_reads_those_rows(ray_cluster, shared_data, tmp_path):
    """The real capture with one diff left out and a resync 300 diffs later, ingested and featurised: the
    seconds in between are unsynced in the lake (no book, no mid), a session starts at the resync, and
    the research rows leave the unsynced rows out and say how many."""
    src = shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz"
    (tmp_path / "in").mkdir()
    times = gapped_capture(src, tmp_path / "in" / src.name, drop=800, resync_after=300)
    gap_s, resync_s = times["gap_ms"] // 1000, times["snapshot_ms"] // 1000
    root = tmp_path / "lake"
    ingest([tmp_path / "in" / src.name], root)
    report = build_features(root)
    assert (report.unsynced, report.sessions) == (resync_s - gap_s, 2)
    assert f"{resync_s - gap_s} rows on an unsynced book, 2 session starts" in report.lines()[0]
    t = lake.read_partition(root, "features", "2024-07-18", "BTCUSDT")
    secs = pc.cast(t["ts"], pa.int64()).to_numpy() // NS
    synced, new = t["book_synced"].to_numpy(zero_copy_only=False), t["new_session"].to_numpy(zero_copy_only=False)
    assert secs[~synced].tolist() == list(range(gap_s, resync_s))
    assert secs[new].tolist() == [secs[0], resync_s]
    assert np.isnan(t["mid"].to_numpy()[~synced]).all()
    fwd = t["fwd_ret_10s"].to_numpy()
    assert np.isnan(fwd[(secs >= gap_s - 10) & (secs < resync_s)]).all()  # no label reaches into or across it
    assert not np.isnan(fwd[(secs >= resync_s) & (secs < resync_s + 10)]).any()

    rows = load_rows(parse_config({"data": {"horizons_s": [10]}}), root)
    assert (~rows.book_synced).sum() == resync_s - gap_s and not observable(rows)[~rows.book_synced].any()
    assert rows.validity() == f"{resync_s - gap_s} rows on an unsynced book left out, 2 session(s)"
    assert len(np.unique(rows.session[rows.ts // NS < gap_s])) == 1 and rows.session[-1] == 2


@pytest.fixture(scope="module")
def klines(shared_data):
    path = min((shared_data / "binance" / "klines").glob("*.zip"))
    b = read_klines(path)
    return {k: b[k].to_numpy() for k in ("high", "low", "close")}


def test_bar_indicators_match_the_ta_package_on_real_klines(klines):
    h, lo, c = klines["high"], klines["low"], klines["close"]
    ours = bar_features(h, lo, c)
    H, L, C = pd.Series(h), pd.Series(lo), pd.Series(c)
    m, bb = ta.trend.MACD(C), ta.volatility.BollingerBands(C, 20, 2)
    ref = {"rsi_14": ta.momentum.RSIIndicator(C, 14).rsi(), "macd": m.macd(), "macd_signal": m.macd_signal(),
           "macd_hist": m.macd_diff(), "bb_pctb_20": bb.bollinger_pband(), "bb_width_20": bb.bollinger_wband(),
           "atr_14_bps": ta.volatility.AverageTrueRange(H, L, C, 14).average_true_range() / C * 1e4}
    for name in BAR_FEATURE_NAMES:
        r = ref[name].to_numpy()
        defined = ~np.isnan(ours[name])
        assert defined.sum() > c.size - 40, name
        # pandas' rolling variance is an online algorithm good to ~1e-9; everything else agrees to ~1e-14
        np.testing.assert_allclose(ours[name][defined], r[defined], rtol=1e-6, atol=1e-7, err_msg=name)
    assert np.isnan(ours["rsi_14"][:13]).all() and np.isnan(ours["macd_signal"][:33]).all()


def test_bar_indicators_online_equal_batch(klines):
    h, lo, c = (klines[k][:5000] for k in ("high", "low", "close"))
    batch = bar_features(h, lo, c)
    online = OnlineIndicators()
    rows = [online.update(*bar) for bar in zip(h, lo, c)]
    for name in BAR_FEATURE_NAMES:
        np.testing.assert_allclose([r[name] for r in rows], batch[name], rtol=1e-9, atol=0, equal_nan=True,
                                   err_msg=name)


def test_bar_features_are_computed_per_symbol_over_its_whole_history(ray_cluster, shared_data, tmp_path):
    path = min((shared_data / "binance" / "klines").glob("*.zip"))
    root = tmp_path / "lake"
    ingest([path], root)
    report = build_features(root)
    assert set(report.rows) == {"bar_features"} and report.rows["bar_features"] == 43_200
    got = pq.read_table(root / "bar_features").sort_by("ts")
    ref = bar_features(*(read_klines(path)[k].to_numpy() for k in ("high", "low", "close")))
    # day 2's first RSI continues from day 1 (not restarted at midnight)
    assert np.array_equal(got["rsi_14"].to_numpy(), ref["rsi_14"], equal_nan=True)


def test_short_partitions_get_features_and_a_broken_one_fails_alone(ray_cluster, shared_data, tmp_path):
    """LOBSTER's AAPL (50 seconds against a 60 s horizon) and cryptofeed's short partitions get features with
    no labels where the horizon runs past them; a partition that cannot be read is one failure, named, and
    every other partition lands."""
    root = tmp_path / "lake"
    ingest([shared_data / "lobster", shared_data / "binance" / "ws_cryptofeed"], root)
    parts = sorted(set(lake.partitions(root, "trades")) & set(lake.partitions(root, "book")))
    report = build_features(root)
    assert report.failed == [] and len(report.partitions["features"]) == len(parts) >= 5
    aapl = pq.read_table(root / "features" / "date=2012-06-21" / "symbol=AAPL")
    assert aapl.num_rows >= 40 and pc.all(pc.is_nan(aapl["fwd_ret_60s"])).as_py()

    date, symbol = parts[-1]
    for f in (root / "book" / f"date={date}" / f"symbol={symbol}").glob("*.parquet"):
        f.write_bytes(b"not parquet")
    again = build_features(root)
    assert [(unit, why.split(":")[0]) for unit, why, _ in again.failed] == [
        (f"features date={date} symbol={symbol}", "ArrowInvalid")]
    assert len(again.partitions["features"]) == len(parts) - 1 and again.log.read_text().count("Traceback") == 1
    assert any(line.startswith(f"failed: features date={date} symbol={symbol}: ") for line in again.lines())


def test_labels_have_a_dead_band_and_no_label_past_the_data():
    mid = np.array([100.0, 100.0, 100.02, 100.0, 100.5, 100.5])
    lab = forward_labels(mid, horizons=(1,), dead_band_bps=3.0)  # moves: 0, +2, -2, +50, 0 bps, then none
    np.testing.assert_array_equal(lab["up_1s"], [np.nan, np.nan, np.nan, 1.0, np.nan, np.nan])
    np.testing.assert_array_equal(lab["dir_1s"], [0, 0, 0, 1, 0, np.nan])
    np.testing.assert_array_equal(forward_labels(mid, horizons=(1,))["up_1s"], [np.nan, 1, 0, 1, np.nan, np.nan])
    assert np.isnan(lab["fwd_ret_1s"][-1])
    ev = forward_labels(mid, horizons=(2,), unit="ev")
    assert list(ev) == ["fwd_ret_2ev", "up_2ev", "dir_2ev"] and np.isnan(ev["up_2ev"][-2:]).all()
    ts = np.array([0, 1, 2, 10, 11]) * NS
    at = forward_labels_at_times(ts, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), horizons_s=(1.5,))
    # the mid in force 1.5 s later: at t=0 that is the event at 1 s; at 2 s it is still that event's own
    np.testing.assert_allclose(at["fwd_ret_1.5s"][:3], np.log([2.0, 3 / 2, 1.0]) * 1e4)
    assert np.isnan(at["fwd_ret_1.5s"][3:]).all()  # 11.5 s and 12.5 s are past the last event
    short = forward_labels(mid, horizons=(10, 6, 5))  # a series no longer than the horizon: no labels at all
    assert all(np.isnan(v).all() and v.size == mid.size for k, v in short.items() if not k.endswith("5s"))
    assert np.isfinite(short["fwd_ret_5s"][0]) and np.isnan(short["fwd_ret_5s"][1:]).all()


def test_labels_on_bars_never_reach_across_a_hole():
    minute = 60 * NS
    ts = np.array([0, 15, 30, 45, 75, 90]) * minute  # 15m bars; the one at 60 is missing
    close = np.array([100.0, 101.0, 100.0, 100.0, 99.0, 98.0])
    got = forward_labels_on_grid(ts, close, (900, 1800), 900)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(got["fwd_ret_900s"], np.log([1.01, 100 / 101, 1.0, np.nan, 98 / 99, np.nan]) * 1e4)
    np.testing.assert_array_equal(got["up_900s"], [1.0, 0.0, np.nan, np.nan, 0.0, np.nan])  # flat: neither
    # two rows ahead is 30 minutes later only before the hole
    np.testing.assert_allclose(got["fwd_ret_1800s"], np.log([1.0, 100 / 101, np.nan, np.nan, np.nan, np.nan]) * 1e4)


def test_windows_are_contiguous_complete_and_of_one_symbol():
    """The sequence models' windows: rows i-T+1..i of one symbol, one second apart, every value defined."""
    n = 12
    ts = (1_000 + np.arange(n)) * NS
    ts[8:] += 5 * NS  # a gap in the grid after row 7
    f1 = np.arange(n, dtype=float)
    f1[3] = np.nan
    x = np.column_stack([f1, f1 * 10]).astype(np.float32)
    symbol = np.array(["A"] * 10 + ["B"] * 2)  # rows sorted by (symbol, ts); B starts at row 10
    ends = np.flatnonzero(complete_windows(x, ts, symbol, 3))
    # windows end at rows 2..11; those holding row 3, crossing the gap or two symbols go
    assert list(ends) == [2, 6, 7]
    w = gather_windows(x, ends, 3)
    assert w.shape == (3, 3, 2) and w.dtype == np.float32
    np.testing.assert_array_equal(w[1, :, 0], [4, 5, 6])


def test_as_of_join_takes_the_book_strictly_before_the_trade():
    """Book mids 100 from 0.5 s and 200 from exactly 1 s; trades at 0.7 s, at 1 s (with the second state)
    and at 1.5 s, each at price 100 (a distance of 0 bps from mid 100, 5,000 bps from mid 200)."""
    t0 = 1_700_000_000 * NS
    book = pa.table({"ts": pa.array([t0 + NS // 2, t0 + NS], pa.int64()), "bid_px_1": [99.0, 199.0],
                     "ask_px_1": [101.0, 201.0], "bid_sz_1": [1.0, 1.0], "ask_sz_1": [1.0, 1.0]})
    trades = pa.table({"ts": pa.array([t0 + 7 * NS // 10, t0 + NS, t0 + 3 * NS // 2], pa.int64()),
                       "price": [100.0, 100.0, 100.0], "qty": [2.0, 3.0, 5.0], "side": pa.array([1, -1, 1], pa.int8())})
    grid = grid_from_events(trades, book)
    # second 0: the trade at 0.7 s meets mid 100; second 1: the trade at 1 s still meets mid 100 (the state
    # stamped with it may already hold it), the one at 1.5 s meets mid 200
    np.testing.assert_array_equal(grid["asof_qty"], [2.0, 8.0])
    np.testing.assert_array_equal(grid["asof_cost_bps"], [0.0, 5 * 5_000.0])
    np.testing.assert_array_equal(grid["buy_qty"], [2.0, 5.0])
    np.testing.assert_array_equal(grid["sell_qty"], [0.0, 3.0])
    np.testing.assert_array_equal(grid["max_qty"], [2.0, 5.0])


def test_a_trade_before_the_first_book_state_has_no_as_of_mid():
    t0 = 1_700_000_000 * NS
    book = pa.table({"ts": pa.array([t0 + NS // 2], pa.int64()), "bid_px_1": [99.0], "ask_px_1": [101.0],
                     "bid_sz_1": [1.0], "ask_sz_1": [1.0]})
    trades = pa.table({"ts": pa.array([t0 + NS // 5, t0 + NS // 10 * 9], pa.int64()), "price": [100.0, 102.0],
                       "qty": [1.0, 4.0], "side": pa.array([1, 1], pa.int8())})
    grid = grid_from_events(trades, book)
    np.testing.assert_array_equal(grid["n_trades"], [2.0])  # both in the grid's first second
    np.testing.assert_array_equal(grid["asof_qty"], [4.0])  # only the second one has a book before it
    np.testing.assert_array_equal(grid["asof_cost_bps"], [4.0 * 2 / 100 * 1e4])
