"""The synthetic market: real formats (read by the same readers as the real files), chained ids,
determinism, and structure a model can learn."""

import zipfile

import numpy as np
import orjson
from tickray.features import FEATURE_NAMES, compute_features, grid_from_events
from tickray.features.labels import forward_labels
from tickray.sources import binance
from tickray.sources.binance import iter_capture


def _csv(path):
    with zipfile.ZipFile(path) as z:
        return z.read(z.namelist()[0]).decode()


def test_public_data_headers_match_the_real_archives(market, shared_data):
    _, files = market
    real_kline_header = _csv(next((shared_data / "binance" / "klines").glob("*.zip"))).splitlines()[0]
    assert _csv(files.klines[0]).splitlines()[0] == real_kline_header
    real_depth_header = (shared_data / "binance" / "depth" / "btcusdt-depth-snap.csv").read_text().splitlines()[0]
    assert _csv(files.book_depth[0]).splitlines()[0] == real_depth_header
    assert _csv(files.agg_trades[0]).splitlines()[0].split(",")[0] == "agg_trade_id"


def test_same_readers_read_real_and_synthetic_trades(market, shared_data):
    _, files = market
    real = binance.read_agg_trades(shared_data / "binance/aggtrades/XRPETH-aggTrades-2019-10-11_13.derived_from_REST.csv")
    synth = binance.read_agg_trades(files.agg_trades[0])
    assert real.schema == synth.schema
    assert real.num_rows == 12477 and synth.num_rows == files.n_trades // 2 or synth.num_rows > 10_000
    assert set(np.unique(synth["side"].to_numpy())) == {-1, 1}
    ts = synth["ts"].cast("int64").to_numpy()
    assert np.all(np.diff(ts) >= 0)


def test_klines_agree_with_the_trades(market):
    _, files = market
    trades = binance.read_agg_trades(files.agg_trades[0])
    bars = binance.read_klines(files.klines[0])
    assert bars.num_rows == 1440
    assert np.isclose(bars["volume"].to_numpy().sum(), trades["qty"].to_numpy().sum())
    assert bars["trades"].to_numpy().sum() == trades.num_rows
    assert np.all(bars["high"].to_numpy() >= bars["low"].to_numpy())


def test_depth_update_ids_chain_in_the_capture_and_the_bookdepth_file(market):
    _, files = market
    for path in files.ws_captures:
        prev_u, n, snapshots = None, 0, 0
        for _, msg in iter_capture(path):
            if "lastUpdateId" in msg:
                snapshots += 1
                continue
            d = msg["data"]
            if d.get("e") == "depthUpdate":
                assert d["U"] <= d["u"]
                if prev_u is not None:
                    assert d["pu"] == prev_u
                prev_u, n = d["u"], n + 1
        assert snapshots == 1 and n == 180
    rebuilt = binance.rebuild_book_depth(files.book_depth[0])
    assert rebuilt.gaps == 0 and rebuilt.unsynced_dropped == 0 and rebuilt.book.num_rows == 86_400


def test_capture_rebuilds_without_gaps_like_the_real_ones(market, shared_data):
    _, files = market
    for path in [files.ws_captures[0], shared_data / "binance/ws/usdm_btcusdt_20240718.gz"]:
        cap = binance.read_ws_capture(path)
        assert cap.book.gaps == 0 and cap.book.applied > 100 and not cap.quarantine
        b, a = cap.book.book["bid_px_1"].to_numpy(), cap.book.book["ask_px_1"].to_numpy()
        assert np.all(b < a)


def test_capture_lines_are_recv_ns_then_json(market):
    _, files = market
    import gzip

    with gzip.open(files.ws_captures[0]) as f:
        first = f.readline()
    ts, body = first.split(b" ", 1)
    assert len(ts) == 19 and orjson.loads(body)["stream"].startswith("btcusdt@")


def test_deterministic_for_a_seed(tmp_path):
    from tickray.sim.synth import generate

    a = generate(tmp_path / "a", ["SOLUSDT"], 1, seed=3, trades_per_day=5_000, capture_minutes=1)
    b = generate(tmp_path / "b", ["SOLUSDT"], 1, seed=3, trades_per_day=5_000, capture_minutes=1)
    c = generate(tmp_path / "c", ["SOLUSDT"], 1, seed=4, trades_per_day=5_000, capture_minutes=1)
    for fa, fb, fc in zip(a.all(), b.all(), c.all()):
        assert fa.read_bytes() == fb.read_bytes() != fc.read_bytes(), fa.name


def test_order_flow_imbalance_predicts_short_horizon_moves(market):
    """The OFI effect is in the data: weak, but clearly above chance."""
    _, files = market
    trades = binance.read_agg_trades(files.agg_trades[0])
    book = binance.rebuild_book_depth(files.book_depth[0]).book
    grid = grid_from_events(trades, book)
    feats = compute_features(grid)
    fwd = forward_labels((grid["bid_px_1"] + grid["ask_px_1"]) / 2)["fwd_ret_10s"]
    ok = ~np.isnan(feats["imb_l1"]) & ~np.isnan(fwd)
    corr = np.corrcoef(feats["imb_l1"][ok], fwd[ok])[0, 1]
    assert 0.05 < corr < 0.6
    assert set(FEATURE_NAMES) == set(feats)
