"""The shared order book and the one feature definition: batch and stream agree exactly."""

import gzip

import numpy as np
import orjson
import pyarrow as pa
from tickray.features import (
    BOOK_LEVELS,
    FEATURE_NAMES,
    FEATURES,
    GRID_FIELDS,
    OnlineFeatures,
    compute_features,
    grid_from_events,
)
from tickray.features.labels import forward_labels
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
    assert [u.book_synced for u in updates] == (grid["book_synced"][idx] > 0).tolist()
    # the grid rows themselves, validity columns included
    online_rows = np.array([np.frombuffer(u.grid_row, np.float64) for u in updates])
    assert np.array_equal(online_rows, np.column_stack([grid[k][idx] for k in GRID_FIELDS[1:]]), equal_nan=True)
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


def test_a_snapshot_older_than_the_synced_book_leaves_it_as_it_is():
    sync = BookSync("X")
    sync.on_snapshot(100, [("10", "1")], [("11", "1")])
    assert sync.on_update(DepthUpdate(99, 110, 90, [("10", "2")], []))
    sync.on_snapshot(105, [("10", "7")], [("11", "7")])  # taken before diff 110, arriving after it
    assert sync.counters.old_snapshots == 1 and sync.book.bids == {10.0: 2.0}
    assert sync.on_update(DepthUpdate(111, 115, 110, [("9", "1")], [])) and sync.counters.gaps == 0


def test_a_book_exported_and_restored_goes_on_as_if_never_stopped():
    sync = BookSync("X")
    sync.on_snapshot(100, [("10", "1"), ("9", "2")], [("11", "1")])
    sync.on_update(DepthUpdate(99, 110, 90, [("10", "2")], []))
    sync.on_update(DepthUpdate(120, 130, 115, [("9", "5")], []))  # a gap: waits for a snapshot
    state = orjson.loads(orjson.dumps(sync.export()))
    later = BookSync("X")
    later.restore(state)
    assert not later.synced and later.book.bids == {10.0: 2.0, 9.0: 2.0} and later.book.last_update_id == 110
    later.on_snapshot(125, [("10", "3")], [("11", "1")])  # the diff waiting since before the export is replayed
    assert later.synced and later.book.bids == {10.0: 3.0, 9.0: 5.0} and later.book.last_update_id == 130


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
    grid["book_synced"], grid["new_session"] = np.ones(n), (np.arange(n) == 0).astype(float)
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
    # A NaN poisons the windows holding it, and no others (none in the last minute: the last row is defined)
    grid["asof_qty"][: n - 60][rng.random(n - 60) < 0.01] = np.nan
    grid["book_synced"], grid["new_session"] = np.ones(n), (np.arange(n) == 0).astype(float)
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


# --- validity: book_synced and sessions -----------------------------------------------------------------

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _book(states: list[tuple[float, float | None]]) -> pa.Table:
    """Book rows at (seconds after T0, best bid); None: the source lost its book there (NaN levels)."""
    ts = [T0 + round(t * S) for t, _ in states]
    bid = [np.nan if b is None else b for _, b in states]
    ask = [np.nan if b is None else b + 1 for _, b in states]
    return pa.table({"ts": pa.array(ts, pa.int64()), "bid_px_1": bid, "bid_sz_1": [1.0] * len(ts),
                     "ask_px_1": ask, "ask_sz_1": [2.0] * len(ts)})


def _trades(times: list[float]) -> pa.Table:
    return pa.table({"ts": pa.array([T0 + round(t * S) for t in times], pa.int64()), "price": [100.5] * len(times),
                     "qty": [1.0] * len(times), "side": pa.array([1] * len(times), pa.int8())})


def test_book_synced_and_sessions_follow_a_plain_reading_of_the_rule():
    """A book that updates every 0.4 s, is lost at 10.3 s and resynced at 12.6 s, falls silent from 20.2 s
    to 95.1 s (longer than the 60 s bound) and goes on; trades with a 40 s silence. The reference reads
    the rule literally, second by second."""
    states = [(0.2 + 0.4 * i, 100.0 + i) for i in range(26)]  # .. 10.2
    states += [(10.3, None)] + [(12.6 + 0.4 * i, 200.0 + i) for i in range(20)]  # .. 20.2
    states += [(95.1 + 0.5 * i, 300.0 + i) for i in range(20)]  # .. 104.6
    book = _book(states)
    trade_times = [0.5, 3.2, 11.0, 15.5, 56.0, 96.0, 99.9]
    grid = grid_from_events(_trades(trade_times), book, book_gap_s=60, trade_gap_s=30)
    secs = (grid["ts"] - T0) // S
    assert secs[0] == 0 and secs[-1] == 104

    want_synced, want_new = [], []
    for s in secs:
        end = (s + 1) * S
        before = [(round(t * S), b) for t, b in states if round(t * S) < end]
        last_t, last_b = before[-1]
        lost_inside = any(b is None and s * S <= t < end for t, b in before)
        synced = last_b is not None and not lost_inside and end - last_t <= 60 * S
        gap_trade = any(s * S <= round(t * S) < end and i > 0 and t - trade_times[i - 1] > 30
                        for i, t in enumerate(trade_times))
        want_new.append(synced and (not want_synced or not want_synced[-1] or gap_trade))
        want_synced.append(synced)
    assert (grid["book_synced"] > 0).tolist() == want_synced
    assert (grid["new_session"] > 0).tolist() == want_new
    # the rule's cases, as the reference found them: lost at 10.3 until the resync's second (12); silent
    # from 20.2 (unsynced once 60 s old, from second 80); the trades at 56 s and 96 s after 40 s without one
    unsynced = [int(s) for s, ok in zip(secs, want_synced) if not ok]
    assert unsynced == [10, 11, *range(80, 95)]
    assert [int(s) for s, new in zip(secs, want_new) if new] == [0, 12, 56, 95, 96]
    # an unsynced row carries no book
    assert np.isnan(grid["bid_px_1"][~np.array(want_synced)]).all()
    assert not np.isnan(grid["bid_px_1"][np.array(want_synced)]).any()


def test_no_feature_or_label_reaches_across_a_session_start():
    """Whatever happened before a session start changes nothing after it: every row before the resync is
    perturbed and the features and labels of the rows after it stay the same bits."""
    rng = np.random.default_rng(3)
    n = 2_000
    t = np.arange(n) * 0.5 + 0.2
    qty, side = rng.uniform(0.1, 2, n), rng.choice([-1, 1], n)

    def grid_of(bids: np.ndarray) -> dict:
        states = [(float(ti), float(b)) for ti, b in zip(t, bids)]
        states.insert(1_200, (600.1, None))  # lost at 600.1 s; the next state (600.2) resyncs it
        trades = pa.table({"ts": pa.array(T0 + (t * S).astype(np.int64) + 1, pa.int64()),
                           "price": bids + 0.5, "qty": qty, "side": pa.array(side, pa.int8())})
        return grid_from_events(trades, _book(states))

    bids = 100 + np.cumsum(rng.normal(0, 0.05, n))
    g1 = grid_of(bids)
    changed = bids.copy()
    changed[t < 600] += rng.normal(0, 1, int((t < 600).sum()))
    g2 = grid_of(changed)
    start = int(np.flatnonzero(g1["new_session"])[1])  # the resync
    assert (g1["ts"][start] - T0) // S == 601 and g1["book_synced"][600] == 0
    f1, f2 = compute_features(g1), compute_features(g2)
    for f in FEATURE_NAMES:
        assert np.array_equal(f1[f][start:], f2[f][start:], equal_nan=True), f
    for f in ("ret_5s", "rv_30s", "vwap_dev_60s_bps"):  # the perturbation does reach them before the start
        assert not np.array_equal(f1[f][:start], f2[f][:start], equal_nan=True), f
    mid1 = (g1["bid_px_1"] + g1["ask_px_1"]) / 2
    labels = forward_labels(mid1, (10,), new_session=g1["new_session"])["fwd_ret_10s"]
    plain = [np.log(mid1[i + 10] / mid1[i]) * 1e4 if i + 10 < mid1.size and (i >= start or i + 10 < 600)
             else np.nan for i in range(mid1.size)]
    np.testing.assert_allclose(labels, plain, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert np.isnan(labels[start - 10:start]).all() and not np.isnan(labels[start:start + 10]).any()


def gapped_capture(src, dst, drop: int, resync_after: int) -> dict:
    """``src`` with its ``drop``-th diff left out and, ``resync_after`` diffs later, a REST snapshot of the
    book as the venue had it then (built from every diff): a gap and its resync in one capture. Returns
    the exchange times (ms) of the diff that shows the gap and of the snapshot."""
    sync, depth, out, snap, times = BookSync("BTCUSDT"), 0, [], None, {}
    with gzip.open(src) as f:
        lines = f.read().splitlines()
    for line in lines:
        recv, _, body = line.partition(b" ")
        msg = orjson.loads(body)
        d = msg.get("data", {})
        if "lastUpdateId" in msg:
            sync.on_rest_snapshot(msg)
        elif d.get("e") == "depthUpdate":
            depth += 1
            sync.on_update(DepthUpdate.from_message(d))
            if depth == drop:
                continue
            if depth == drop + 1:
                times["gap_ms"] = d["E"]
            if depth == drop + resync_after:
                times["snapshot_ms"] = d["T"]
                snap = {"lastUpdateId": sync.book.last_update_id, "E": d["E"], "T": d["T"],
                        "bids": [[repr(p), repr(q)] for p, q in sync.book.bids.items()],
                        "asks": [[repr(p), repr(q)] for p, q in sync.book.asks.items()]}
            if snap is not None and depth == drop + resync_after + 2:  # it arrives two diffs later
                out += [line, b"%d %s" % (int(recv) + 1, orjson.dumps(snap))]
                snap = None
                continue
        out.append(line)
    with gzip.open(dst, "wb") as f:
        f.write(b"\n".join(out) + b"\n")
    return times


def test_a_gap_and_its_resync_end_a_session_alike_in_batch_and_stream(shared_data, tmp_path):
    src = shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz"
    gapped = tmp_path / src.name
    times = gapped_capture(src, gapped, drop=800, resync_after=300)
    cap = read_ws_capture(gapped)
    assert cap.book.gaps == 1 and cap.book.resyncs == 1
    grid = grid_from_events(cap.trades, cap.book.book)
    secs = grid["ts"] // S
    gap_s, resync_s = times["gap_ms"] // 1000, times["snapshot_ms"] // 1000
    assert resync_s - gap_s > 10
    # unsynced from the second the gap showed until the resync's second; a session starts there
    assert secs[grid["book_synced"] == 0].tolist() == list(range(gap_s, resync_s))
    assert secs[grid["new_session"] > 0].tolist() == [secs[0], resync_s]
    # the stream computes the same features and flags (assert_stream_equals_batch compares them), and its
    # look-backs start again at the resync: a 30 s window is undefined for its first 29 rows
    assert assert_stream_equals_batch([gapped]) > 150
    _, updates = _replay([gapped])
    after = [u.features["rv_30s"] for u in updates if u.ts_ns // S >= resync_s][:32]
    assert np.isnan(after[:30]).all() and not np.isnan(after[30:]).any()
