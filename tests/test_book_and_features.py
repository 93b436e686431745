"""The shared order book and the one feature definition: batch and stream agree exactly."""

import numpy as np
from tickray.features import (
    BOOK_LEVELS,
    FEATURE_NAMES,
    FEATURES,
    GRID_FIELDS,
    OnlineFeatures,
    compute_features,
    grid_from_events,
)
from tickray.market.book import BookSync, DepthUpdate
from tickray.sources.binance import iter_capture, read_ws_capture
from tickray.stream.pipeline import SymbolPipeline


def _replay(paths, drop_index=None):
    """Feed capture files (one session) message by message to a stream pipeline, as an actor would."""
    paths = [paths] if not isinstance(paths, list) else paths
    pipe = SymbolPipeline("BTCUSDT", spot=paths[0].name.startswith("spot"))
    updates, depth_seen = [], 0
    for path in paths:
        for _, msg in iter_capture(path):
            if "lastUpdateId" in msg:
                updates += pipe.on_snapshot(msg)
                continue
            d = msg["data"]
            if d.get("e") == "depthUpdate":
                depth_seen += 1
                if depth_seen == drop_index:
                    continue
                updates += pipe.on_depth(d)
            elif d.get("e") in ("trade", "aggTrade"):
                updates += pipe.on_trade(d)
    return pipe, updates


def assert_stream_equals_batch(paths) -> int:
    """The online features of a replayed session equal the batch features of the same ticks at every
    feature (relative 1e-9; in fact bit for bit); returns how many rows were compared."""
    cap = read_ws_capture(paths)
    grid = grid_from_events(cap.trades, cap.book.book)
    batch = compute_features(grid)
    _pipe, updates = _replay(paths)
    idx = np.searchsorted(grid["ts"], [u.ts_ns for u in updates])
    assert np.array_equal(grid["ts"][idx], [u.ts_ns for u in updates])
    for f in FEATURE_NAMES:
        online = np.array([u.features[f] for u in updates])
        np.testing.assert_allclose(online, batch[f][idx], rtol=1e-9, atol=0, equal_nan=True, err_msg=f)
        assert np.array_equal(online, batch[f][idx], equal_nan=True), f
    return len(updates)


def test_stream_features_equal_batch_features_over_a_session_across_midnight(shared_data):
    ws = shared_data / "binance" / "ws"
    session = [ws / "usdm_btcusdt_20240718.gz", ws / "usdm_btcusdt_20240719.gz"]
    assert assert_stream_equals_batch(session) > 450
    _, updates = _replay(session)
    for f in FEATURE_NAMES:  # every feature is exercised, none is compared only as NaN == NaN
        assert sum(not np.isnan(u.features[f]) for u in updates) >= 100, f


def test_stream_features_equal_batch_features_on_the_spot_capture(shared_data):
    assert assert_stream_equals_batch([shared_data / "binance" / "ws" / "spot_btcusdt_20240808.gz"]) > 300


def test_stream_features_equal_batch_features_on_the_synthetic_capture(market):
    _, files = market
    assert assert_stream_equals_batch([files.ws_captures[0]]) > 150


def test_a_missing_diff_is_a_gap_not_papered_over(shared_data):
    pipe, _ = _replay([shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz"], drop_index=200)
    assert pipe.sync.counters.gaps == 1
    assert not pipe.sync.synced  # waits for a new snapshot instead of applying diffs onto a wrong book


def test_resync_after_a_gap_with_a_new_snapshot():
    sync = BookSync("X")
    sync.on_snapshot(100, [("10", "1")], [("11", "1")])
    assert sync.on_update(DepthUpdate(95, 101, 90, [("10", "2")], []))  # straddles the snapshot
    assert not sync.on_update(DepthUpdate(110, 120, 105, [("10", "3")], []))  # pu 105 != 101: gap
    assert sync.counters.gaps == 1 and sync.needs_snapshot
    assert not sync.on_update(DepthUpdate(121, 130, 120, [("9", "1")], []))  # buffered
    sync.on_snapshot(125, [("10", "3")], [("11", "1")])
    assert sync.synced and sync.counters.resyncs == 1
    assert sync.book.bids == {10.0: 3.0, 9.0: 1.0}


def test_stale_diffs_before_the_snapshot_are_dropped():
    sync = BookSync("X")
    sync.on_update(DepthUpdate(1, 5, 0, [("10", "9")], []))
    sync.on_update(DepthUpdate(6, 12, 5, [("10", "2")], []))
    sync.on_snapshot(10, [("10", "1")], [("11", "1")])
    assert sync.counters.stale_dropped == 1 and sync.counters.applied == 1
    assert sync.book.bids[10.0] == 2.0


def test_spot_rule_is_u_plus_one():
    sync = BookSync("X", spot=True)
    sync.on_snapshot(10, [("10", "1")], [("11", "1")])
    assert sync.on_update(DepthUpdate(9, 12, None, [], []))
    assert sync.on_update(DepthUpdate(13, 14, None, [], []))
    assert not sync.on_update(DepthUpdate(16, 17, None, [], []))
    assert sync.counters.gaps == 1


def test_features_never_look_ahead():
    rng = np.random.default_rng(0)
    n = 1500
    grid = {k: rng.uniform(1, 2, n) for k in GRID_FIELDS}
    grid["ts"] = (1_700_000_000 + np.arange(n)) * 1_000_000_000
    for i in range(1, BOOK_LEVELS + 1):
        grid[f"bid_px_{i}"] = 100 + np.cumsum(rng.normal(0, 0.01, n)) - 0.01 * i
        grid[f"ask_px_{i}"] = grid["bid_px_1"] + 0.01 * i
    grid["n_trades"] = rng.integers(0, 5, n).astype(float)
    full = compute_features(grid)
    for cut in (120, 1000):
        part = compute_features({k: v[:cut] for k, v in grid.items()})
        for f in FEATURE_NAMES:
            assert np.array_equal(full[f][:cut], part[f], equal_nan=True), f
    for f in FEATURE_NAMES:
        assert not np.isnan(full[f][-1]), f"{f} undefined after {n} rows (look-back {FEATURES[f].lookback})"


def _random_grid(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A grid of ``n`` seconds with book levels that stay ordered, trades in some seconds and some NaN."""
    rng = np.random.default_rng(seed)
    grid = {k: rng.uniform(0.5, 2, n) for k in GRID_FIELDS}
    grid["ts"] = (1_700_000_123 + np.arange(n)) * 1_000_000_000  # not aligned to any window
    for i in range(1, BOOK_LEVELS + 1):
        grid[f"bid_px_{i}"] = 100 + np.cumsum(rng.normal(0, 0.01, n)) - 0.01 * i
        grid[f"ask_px_{i}"] = grid["bid_px_1"] + 0.01 * i
    grid["n_trades"] = rng.integers(0, 5, n).astype(float)
    for k in ("buy_qty", "sell_qty", "notional", "max_qty"):
        grid[k] = np.where(grid["n_trades"] > 0, grid[k], 0.0)
    grid["asof_qty"][rng.random(n) < 0.01] = np.nan  # a NaN poisons the windows holding it, and no others
    return grid


def test_online_features_equal_batch_over_full_windows_and_after_a_restore():
    """Past every look-back (the captures are shorter than the 16-minute ones): the running window sums
    give the batch bits at every row, across block boundaries and NaN, and after a restore from rows."""
    grid = _random_grid(2_600)
    batch = compute_features(grid)
    fields = [k for k in GRID_FIELDS if k != "ts"]
    rows = [{k: grid[k][i] for k in GRID_FIELDS} for i in range(grid["ts"].size)]
    online, packed = OnlineFeatures(), []
    cut = 1_700
    for i, row in enumerate(rows[:cut]):
        feats = online.update(row)
        packed.append(online.last_row())
        for f in FEATURE_NAMES:
            assert np.array_equal(feats[f], batch[f][i], equal_nan=True), (f, i)
    assert np.frombuffer(packed[-1], np.float64).tolist() == [grid[k][cut - 1] for k in fields]
    resumed = OnlineFeatures()
    resumed.restore([int(t) for t in grid["ts"][:cut]], packed)
    for i in range(cut, len(rows)):
        feats = resumed.update(rows[i])
        for f in FEATURE_NAMES:
            assert np.array_equal(feats[f], batch[f][i], equal_nan=True), (f, i)
    for f in FEATURE_NAMES:
        assert not np.isnan(batch[f][-1]), f
