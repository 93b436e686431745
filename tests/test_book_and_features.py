"""The shared order book and the one feature definition: batch and stream agree exactly."""

import numpy as np
import pytest
from tickray.book import BookSync, DepthUpdate
from tickray.features import FEATURE_NAMES, compute_features, grid_from_events
from tickray.sources.binance import iter_capture, read_ws_capture
from tickray.stream.pipeline import SymbolPipeline


def _replay(path, drop_index=None):
    pipe = SymbolPipeline("BTCUSDT", spot=path.name.startswith("spot"))
    updates, depth_seen = [], 0
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


@pytest.mark.parametrize("name", ["usdm_btcusdt_20240718.gz", "spot_btcusdt_20240808.gz"])
def test_stream_features_equal_batch_features_on_real_captures(shared_data, name):
    path = shared_data / "binance" / "ws" / name
    cap = read_ws_capture(path)
    grid = grid_from_events(cap.trades, cap.book.book)
    batch = compute_features(grid)
    _pipe, updates = _replay(path)
    assert len(updates) > 100
    idx = np.searchsorted(grid["ts"], [u.ts_ns for u in updates])
    online = np.array([[u.features[f] for f in FEATURE_NAMES] for u in updates])
    offline = np.column_stack([batch[f][idx] for f in FEATURE_NAMES])
    assert np.array_equal(online, offline)  # the same numbers, not merely close ones


def test_stream_features_equal_batch_features_on_the_synthetic_capture(market):
    _, files = market
    path = files.ws_captures[0]
    cap = read_ws_capture(path)
    batch = compute_features(grid_from_events(cap.trades, cap.book.book))
    _, updates = _replay(path)
    grid_ts = grid_from_events(cap.trades, cap.book.book)["ts"]
    idx = np.searchsorted(grid_ts, [u.ts_ns for u in updates])
    assert np.array_equal(np.array([[u.features[f] for f in FEATURE_NAMES] for u in updates]),
                          np.column_stack([batch[f][idx] for f in FEATURE_NAMES]))


def test_a_missing_diff_is_a_gap_not_papered_over(shared_data):
    pipe, _ = _replay(shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz", drop_index=200)
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
    n = 200
    grid = {"bid_px": 100 + np.cumsum(rng.normal(0, 0.01, n)), "bid_sz": rng.uniform(1, 2, n),
            "buy_qty": rng.uniform(0, 1, n), "sell_qty": rng.uniform(0, 1, n), "n_trades": rng.integers(0, 5, n)}
    grid["ask_px"] = grid["bid_px"] + 0.01
    grid["ask_sz"] = rng.uniform(1, 2, n)
    full = compute_features(grid)
    cut = compute_features({k: v[:120] for k, v in grid.items()})
    for f in FEATURE_NAMES:
        assert np.array_equal(full[f][:120], cut[f], equal_nan=True), f
