"""The stream-ingest actor over a real WebSocket to a local exchange replaying real captures."""

import gzip
import json
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest
import ray
import redis
from conftest import free_port, start_synced
from tickray.bars.build import bars_from_trades
from tickray.cli import main
from tickray.features import FEATURE_NAMES, FEATURES, compute_features, grid_from_events
from tickray.lake import partitions, read_partition
from tickray.market.venues import BINANCE_STREAM_MARKETS
from tickray.ops.stack import redis_client
from tickray.sim.exchange import Faults, ReplayExchange
from tickray.sources.binance import read_ws_capture
from tickray.stream.actor import StreamIngestActor, wait_for_messages
from tickray.stream.context import ConnectorOptions
from tickray.stream.keys import (
    CHECKPOINT_KEY,
    CLOSED_BARS_STREAM,
    FEATURES_HISTORY,
    FEATURES_KEY,
    LIVE_BARS_KEY,
    QUARANTINE_STREAM,
    STATE_KEY,
    forget,
)
from tickray.stream.supervisor import SPECS_KEY, ConnectorSpec, StreamSupervisor

STREAMS = ("depth@0ms", "trade", "bookTicker")  # what the hftbacktest USD-M captures hold
# Paced like a live feed (3 minutes in 6 s): the REST snapshot is the book as of what has been streamed,
# so a replay that has finished before the client asks leaves nothing to sync onto.
SPEED = 30.0


@contextmanager
def connector(exchange: ReplayExchange, settings, symbols=("BTCUSDT",), streams=STREAMS, options=None):
    """A stream actor connected to the replay venue, started once its books are synced on the recorded
    snapshots (``start_synced``), the market then let go; both stopped afterwards."""
    forget(redis_client(settings), list(symbols))  # a replay is a session of its own: nothing to resume
    actor = start_synced(exchange, lambda: StreamIngestActor.remote(
        list(symbols), exchange.ws_url, exchange.rest_url, settings.redis_url, streams=streams, options=options),
        list(symbols), streams)
    try:
        exchange.hold_after(None)
        yield actor
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)
        exchange.stop()


def _run(exchange, settings, expect, options=None):
    with connector(exchange, settings, options=options) as actor:
        wait_for_messages(actor, expect, timeout_s=120)
        time.sleep(0.5)  # let a snapshot request in flight finish
        return ray.get(actor.stats.remote())


@pytest.fixture
def capture(shared_data):
    return shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz"


def test_live_features_equal_batch_features(ray_cluster, settings, capture, monkeypatch, capsys):
    r = redis_client(settings)
    r.delete(FEATURES_KEY.format(symbol="BTCUSDT"), CLOSED_BARS_STREAM.format(symbol="BTCUSDT"),
             LIVE_BARS_KEY.format(symbol="BTCUSDT"))
    exchange = ReplayExchange([capture], speed=SPEED)
    wanted = exchange.messages
    stats = _run(exchange, settings, expect=len(wanted), options=ConnectorOptions(clock_sync_s=1.0))
    assert stats["messages"]["received"] == len(wanted), stats["messages"]
    assert stats["book"]["BTCUSDT"]["gaps"] == 0 and not stats["quarantined"]
    assert stats["features_published"]["BTCUSDT"] > 100, stats
    # Lag is measured on the replayed market's clock (2024-07-18), which runs at the replay's pace: not years
    # (the bug was 75e9 ms), but the recorded transit plus our own delay times 30 (a loaded machine's 1 s: 30 s).
    clock = stats["clock"]
    assert clock["source"] and abs(clock["rate"] - SPEED) < 0.2 * SPEED, clock
    assert abs(clock["offset_ms"]) > 3e10, clock  # the market is more than a year behind our wall clock
    # The source clock is read between /time answers whose round trip, at 30x, is worth 30 times as much
    # market time: a few ms of scheduling on a loaded machine put it a fraction of a second either way.
    assert -5_000 < stats["lag_ms"]["BTCUSDT"] < 60_000, stats["lag_ms"]
    doc = orjson.loads(r.get(FEATURES_KEY.format(symbol="BTCUSDT")))
    cap = read_ws_capture(capture)
    grid = grid_from_events(cap.trades, cap.book.book)
    batch = compute_features(grid)
    i = int(np.searchsorted(grid["ts"], doc["ts_ns"]))
    assert grid["ts"][i] == doc["ts_ns"]
    live = dict(zip(FEATURE_NAMES, (np.nan if doc["features"][f] is None else doc["features"][f]
                                    for f in FEATURE_NAMES)))  # NaN travels as null
    exact = [f for f in FEATURE_NAMES if not FEATURES[f].from_start]
    diff = [(f, live[f], batch[f][i]) for f in exact if not np.array_equal(live[f], batch[f][i], equal_nan=True)]
    assert not diff, diff
    assert sum(np.isnan(live[f]) for f in exact) <= 3  # only the 300 s look-backs are open in a 3-minute capture
    # Baselines averaged from the start of the data begin where the actor connected: defined, not equal.
    assert all(np.isfinite(live[f]) for f in FEATURE_NAMES if FEATURES[f].from_start)

    # Live bars: the minutes the actor closed equal the batch 1m bars of the same trades.
    closed = [orjson.loads(f[b"bar"]) for _, f in r.xrange(CLOSED_BARS_STREAM.format(symbol="BTCUSDT"))]
    batch_bars = bars_from_trades(cap.trades).to_pylist()
    assert len(closed) == stats["messages"]["bars closed"] == len(batch_bars) - 1  # the last minute is open
    for got, want in zip(closed, batch_bars):
        assert got["ts"] == want["ts"].value
        assert all(got[k] == want[k] for k in ("open", "high", "low", "close", "trades")), (got, want)
        assert all(np.isclose(got[k], want[k], rtol=1e-12) for k in ("volume", "quote_volume", "buy_volume"))
    current = {tf: orjson.loads(v) for tf, v in r.hgetall(LIVE_BARS_KEY.format(symbol="BTCUSDT")).items()}
    assert set(current) == {b"1m", b"15m", b"1h", b"4h"}
    assert current[b"1m"]["ts"] == batch_bars[-1]["ts"].value and not current[b"1h"]["complete"]
    monkeypatch.setenv("TICKRAY_REDIS_PORT", str(settings.redis_port))
    assert main(["bars", "--live", "--symbols", "BTCUSDT,NOSUCHUSDT"]) == 0  # live monitoring from the command line
    printed = capsys.readouterr().out
    assert all(f"BTCUSDT {tf} " in " ".join(printed.split()) for tf in ("1m", "15m", "1h", "4h")), printed
    assert "no live bars in Redis for NOSUCHUSDT: is a stream actor running for them?" in printed


def test_the_source_clock_runs_at_the_pace_its_answers_show():
    from tickray.stream.clock import SourceClock
    clock = SourceClock()
    assert clock.now_ms(5_000.0) == 5_000.0 and not clock.describe()["source"]  # unanswered: our wall clock
    clock.failed("404")
    assert "404" in clock.describe()["note"]
    year = 365 * 86_400_000.0
    clock.observe(1_000.0, 50_000.0 - year, 1_010.0)  # answered in 10 ms: taken as of 1,005
    assert clock.now_ms(2_005.0) == 51_000.0 - year  # one answer: a live clock's pace
    clock.observe(3_000.0, 70_000.0 - year, 3_010.0)  # 20 s of market in 2 s of ours: a 10x replay
    assert clock.rate == 10.0 and clock.now_ms(3_505.0) == 75_000.0 - year
    clock.observe(4_000.0, 80_030.0 - year, 4_010.0)  # round-trip noise about a live pace stays 1
    clock.observe(6_000.0, 82_050.0 - year, 6_010.0)
    assert clock.rate == 1.0 and clock.offset_ms == 82_050.0 - year - 6_005.0


def test_rolling_trade_windows_keep_their_true_sums_through_a_day():
    """A day of trades every half second, small ones with a whale every 1,000th: the 1m and 5m windows'
    volume, quote volume and buy volume equal math.fsum over the trades in the window (found here by
    bisection) at every sampled trade, and are never negative. Plain add-and-subtract running sums, kept
    beside them here, drift by far more on the same day: the test can tell."""
    from bisect import bisect_right
    from math import fsum

    from tickray.stream.state import MINUTE_NS, RollingTrades

    rng = np.random.default_rng(3)
    n = 172_800
    ts = np.arange(n, dtype=np.int64) * 500_000_000
    qty = np.where(np.arange(n) % 1000 == 999, 1e10, rng.lognormal(-3, 1.5, n))
    price = 60_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    buy = rng.random(n) < 0.5
    windows = {w: RollingTrades(w * MINUTE_NS) for w in (1, 5)}
    naive = {w: 0.0 for w in windows}
    worst_naive = 0.0
    for i in range(n):
        for w, rt in windows.items():
            rt.add(int(ts[i]), float(price[i]), float(qty[i]), bool(buy[i]))
            lo = bisect_right(ts, ts[i] - w * MINUTE_NS, 0, i + 1)
            naive[w] += qty[i] - (qty[lo - 1] if lo > 0 and ts[lo - 1] > ts[i - 1] - w * MINUTE_NS else 0.0)
            assert rt.volume >= 0 and rt.buy >= 0
            if i % 97 == 0:
                sl = slice(lo, i + 1)
                true = (fsum(qty[sl]), fsum(price[sl] * qty[sl]), fsum(qty[sl][buy[sl]]))
                assert rt.count == i + 1 - lo
                assert rt.volume == pytest.approx(true[0], rel=1e-12) and rt.quote == pytest.approx(true[1], rel=1e-12)
                assert rt.buy == pytest.approx(true[2], rel=1e-12, abs=1e-12)
                worst_naive = max(worst_naive, abs(naive[w] - true[0]) / true[0])
    assert worst_naive > 1e-7, worst_naive


def test_a_held_market_sends_nothing_past_its_hold_until_moved_on(capture):
    """The local exchange's hold (how a test steps the market at its own pace): a client gets every trade
    up to the held time and none after it, then the next ones once the hold moves, then the rest."""
    from websockets.sync.client import connect

    exchange = ReplayExchange([capture], speed=0.0)
    trades = [(t + exchange.recorder_behind_ns, raw) for t, stream, raw in exchange.messages if stream == "btcusdt@trade"]
    first = trades[0][0]
    exchange.hold_after(first + 5 * 10**9)
    exchange.start()

    def received(until_quiet_s: float = 1.0) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(ws.recv(timeout=until_quiet_s).encode())
            except TimeoutError:
                return got

    try:
        with connect(f"{exchange.ws_url}/stream?streams=btcusdt@trade") as ws:
            held = received()
            assert held == [raw for t, raw in trades if t <= first + 5 * 10**9] and held
            assert exchange.market_now_ns() <= first + 5 * 10**9
            exchange.hold_after(first + 10 * 10**9)
            assert received() == [raw for t, raw in trades if first + 5 * 10**9 < t <= first + 10 * 10**9]
            exchange.hold_after(None)
            rest = received(2.0)
            assert rest == [raw for t, raw in trades if t > first + 10 * 10**9][:len(rest)] and exchange.finished.wait(30)
    finally:
        exchange.stop()


def _false_ticker(exchange: ReplayExchange, after: int) -> tuple[int, str, str]:
    """A bookTicker that names the book state after the first depth diff from index ``after`` whose id no
    real ticker carries, with a wrong best bid: the connector must notice and rebuild its book."""
    tickers = [(i, orjson.loads(m[2])["data"]["u"]) for i, m in enumerate(exchange.messages) if "@bookTicker" in m[1]]
    for i, (t, stream, raw) in enumerate(exchange.messages[after:], after):
        if "@depth" not in stream:
            continue
        d = orjson.loads(raw)["data"]
        before = [u for j, u in tickers if j < i][-1]
        later = next(u for j, u in tickers if j > i)
        if before < d["u"] < later:
            return t + 1, stream, orjson.dumps({"stream": "btcusdt@bookTicker", "data": {
                "e": "bookTicker", "u": d["u"], "s": "BTCUSDT", "b": "1.0", "B": "1", "a": "999999.0", "A": "1",
                "T": d["T"], "E": d["E"]}}).decode()
    raise AssertionError("no depth diff to contradict")


def _hold_until(exchange: ReplayExchange, actor, recv_ns: int, resyncs: int) -> None:
    """Hold the market before the message received at ``recv_ns`` until the actor has processed every
    message before it and its book is synced after ``resyncs`` rebuilds."""
    exchange.hold_after(recv_ns - 1 + exchange.recorder_behind_ns)
    passed = (sum(1 for i, m in enumerate(exchange.messages) if m[0] < recv_ns and i not in exchange.drop)
              + sum(1 for m in exchange.inject if m[0] < recv_ns))
    deadline = time.monotonic() + 60
    while True:
        stats = ray.get(actor.stats.remote())
        if (stats["messages"].get("received", 0) >= passed and stats["book"]["BTCUSDT"]["resyncs"] == resyncs
                and ray.get(actor.book.remote("BTCUSDT", 1))["synced"]):
            return
        assert time.monotonic() < deadline, (f"not caught up and synced after {resyncs} rebuilds", passed, stats)
        time.sleep(0.2)


def test_bad_messages_are_quarantined_and_a_gap_resyncs_from_rest(ray_cluster, settings, capture):
    r = redis_client(settings)
    r.delete(QUARANTINE_STREAM)
    exchange = ReplayExchange([capture], speed=SPEED)
    depth = [i for i, m in enumerate(exchange.messages) if "@depth" in m[1]]
    exchange.drop = {depth[1500]}  # lost on the wire, well after the first snapshot
    t0 = exchange.messages[depth[1600]][0]
    false_ticker = _false_ticker(exchange, after=depth[2000])
    exchange.inject = [
        (t0, "btcusdt@trade", "{not json"),
        (t0 + 1, "btcusdt@trade", orjson.dumps({"stream": "btcusdt@trade", "data": {
            "e": "trade", "E": 1, "t": 1, "s": "BTCUSDT", "p": "-1.0", "q": "1", "T": 1, "m": False}}).decode()),
        (t0 + 2, "btcusdt@trade", '{"stream":"nopeusdt@trade","data":{"e":"trade","s":"NOPEUSDT"}}'),
        (t0 + 3, "btcusdt@trade", '{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","s":"ETHUSDT"}}'),
        (t0 + 4, "btcusdt@trade", '{"stream":"btcusdt@trade","data":{"e":"liquidation","s":"BTCUSDT"}}'),
        false_ticker,
    ]
    with connector(exchange, settings) as actor:
        # A contradiction can only be noticed by a synced book, and a rebuild is exact only from a snapshot
        # of the market the actor has seen: the market waits at each step until the actor has caught up and
        # rebuilt its book, however busy the machine. The diff after the lost one shows the gap.
        _hold_until(exchange, actor, exchange.messages[depth[1502]][0], resyncs=1)
        _hold_until(exchange, actor, false_ticker[0], resyncs=1)
        _hold_until(exchange, actor, false_ticker[0] + 1, resyncs=2)
        exchange.hold_after(None)
        wait_for_messages(actor, len(exchange.messages) - 1 + len(exchange.inject), timeout_s=120)
        time.sleep(0.5)  # let a snapshot request in flight finish
        stats = ray.get(actor.stats.remote())
    assert stats["quarantined"] == {
        "unparsable JSON (unexpected character, expected a string key: line 1 column 2 (char 1))": 1,
        "non-positive price": 1,
        "unknown symbol NOPEUSDT: not subscribed": 1,
        "symbol mismatch: stream 'btcusdt@depth@0ms' carries ETHUSDT": 1,
        "unknown event type 'liquidation' on stream 'btcusdt@trade'": 1,
    }
    reasons = [f[b"reason"].decode() for _, f in r.xrange(QUARANTINE_STREAM)]
    assert sorted(reasons) == sorted(stats["quarantined"])
    book = stats["book"]["BTCUSDT"]
    assert book["gaps"] == 1 and book["contradicted"] == 1  # noticed, then rebuilt from a fresh REST snapshot
    # The first sync and each rebuild take a snapshot; one onto which the buffered diffs do not chain is
    # asked for again (the venue's rule), which a busy machine's timing may need.
    assert book["resyncs"] == 2 and stats["messages"]["snapshots"] >= 3
    assert stats["book_check"]["BTCUSDT"]["mismatched"] == 1
    assert stats["features_published"]["BTCUSDT"] > 100, stats


def test_the_venues_book_ticker_agrees_with_the_book_over_a_session(ray_cluster, settings, shared_data):
    """The real session across midnight (18 then 19 July), replayed at the live pace: at every
    bookTicker whose update id names a known book state, the rebuilt best bid and ask are the venue's.
    (An offline rebuild from the recorded snapshot finds 625 such tickers and matches all of them.)"""
    ws = shared_data / "binance" / "ws"
    exchange = ReplayExchange([ws / "usdm_btcusdt_20240718.gz", ws / "usdm_btcusdt_20240719.gz"], speed=SPEED)
    with connector(exchange, settings) as actor:
        stats = _settle(actor, exchange)
    check, book = stats["book_check"]["BTCUSDT"], stats["book"]["BTCUSDT"]
    assert book["gaps"] == 0 and book["contradicted"] == 0 and not stats["quarantined"], stats
    assert check["mismatched"] == 0 and check["matched"] == check["checked"] >= 600, (check, stats)
    assert sum(check[k] for k in ("checked", "unobservable", "unjudged", "waiting")) == stats["messages"]["bookTicker"]


def wait_for_checkpoint(r, symbol: str, timeout_s: float = 30.0) -> None:
    """Until the symbol's connector has written a checkpoint to resume from."""
    deadline = time.monotonic() + timeout_s
    while r.get(CHECKPOINT_KEY.format(symbol=symbol)) is None:
        assert time.monotonic() < deadline, f"no checkpoint of {symbol} within {timeout_s:.0f}s"
        time.sleep(0.1)


def _settle(actor, exchange, timeout_s: float = 120.0) -> dict:
    """Once the market has replayed everything, the actor's stats when it has nothing left to do."""
    assert exchange.finished.wait(timeout_s), "the replay did not finish"
    last, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = ray.get(actor.stats.remote())
        key = (stats["messages"], stats["trades"], stats["book"], stats["queued"])
        if stats["queued"] == 0 and key == last:
            return stats
        last = key
        time.sleep(0.5)
    raise AssertionError(f"the actor did not settle: {stats}")


def _replay(settings, capture, faults=None, options=None):
    exchange = ReplayExchange([capture], speed=SPEED, faults=faults or Faults())
    with connector(exchange, settings, options=options) as actor:
        stats = _settle(actor, exchange)
        return exchange, stats, ray.get(actor.book.remote("BTCUSDT")), ray.get(actor.state.remote("BTCUSDT"))


def test_a_faulty_wire_loses_and_doubles_nothing(ray_cluster, settings, capture):
    exchange, clean, clean_book, state = _replay(settings, capture)
    venue_book = exchange.books["BTCUSDT"].book
    bids, asks = venue_book.top(20)
    assert clean_book == {"synced": True, "last_update_id": venue_book.last_update_id, "bids": bids, "asks": asks}
    venue_trades = exchange.trades[("BTCUSDT", "trade")]
    assert clean["trades"]["BTCUSDT"] == len(venue_trades) == 974 and not clean["quarantined"]

    # The market state against the venue's own trades: the last minute ends at the last trade.
    t_end = venue_trades[-1]["T"]
    last_min = [d for d in venue_trades if d["T"] > t_end - 60_000]
    qty = np.array([float(d["q"]) for d in last_min])
    px = np.array([float(d["p"]) for d in last_min])
    assert state["trades_1m"] == len(last_min)
    assert np.isclose(state["volume_1m"], qty.sum()) and np.isclose(state["vwap_1m"], (px * qty).sum() / qty.sum())
    assert np.isclose(state["buy_volume_1m"], sum(q for q, d in zip(qty, last_min) if not d["m"]))
    assert np.isclose(state["momentum_1m_bps"], np.log(px[-1] / px[0]) * 1e4)
    assert np.isclose(state["cumulative_volume"], sum(float(d["q"]) for d in venue_trades))
    assert (state["best_bid"], state["best_ask"]) == (bids[0][0], asks[0][0])
    assert np.isclose(state["microprice"], (bids[0][0] * asks[0][1] + asks[0][0] * bids[0][1])
                      / (bids[0][1] + asks[0][1]))
    published = redis_client(settings).hgetall(STATE_KEY.format(symbol="BTCUSDT"))
    assert float(published[b"cumulative_volume"]) > 0 and b"spread_bps" in published

    faults = Faults(disconnect_every=2500, duplicate_every=7, reorder_every=11, corrupt_every=997,
                    drop_depth_every=700, stall_every=4000, stall_s=1.5)
    exchange, faulty, faulty_book, _ = _replay(settings, capture, faults,
                                               ConnectorOptions(read_timeout_s=1.0, backoff_s=0.05))
    m = faulty["messages"]
    assert faulty_book == clean_book, (faulty["book"], m)  # the same final book
    assert faulty["trades"]["BTCUSDT"] == 974  # every trade once: duplicates dropped, the lost ones fetched
    assert m["duplicate trades"] > 0 and m["trades backfilled"] > 0 and "trades lost" not in m
    assert m.get("reconnect: ConnectionClosedOK", 0) + m.get("reconnect: ConnectionClosedError", 0) >= 1
    assert m.get("reconnect: TimeoutError", 0) >= 1, {k: v for k, v in m.items() if "reconnect" in k}  # the stall: silence past the read timeout
    book = faulty["book"]["BTCUSDT"]
    assert book["gaps"] >= 3 and book["resyncs"] >= 3 and book["duplicates"] > 0
    check = faulty["book_check"]["BTCUSDT"]
    assert check["checked"] > 0 and check["mismatched"] == 0  # resynced books agree with the venue's tickers
    kinds = Counter(r.split(" (")[0] for r in faulty["quarantined"])
    assert set(kinds) == {"unparsable JSON", "bookTicker going backwards", "duplicate bookTicker update id"}, kinds


def test_many_symbols_and_streams_added_at_run_time(ray_cluster, settings, shared_data):
    """cryptofeed's capture: four USD-M symbols with @depth@100ms, @aggTrade, @kline_1m and @bookTicker, and
    the REST snapshots it fetched; two symbols at start, the others subscribed on the live connection."""
    folder = shared_data / "binance" / "ws_cryptofeed"
    exchange = ReplayExchange([folder / "BINANCE_FUTURES.ws.1.0.txt", folder / "BINANCE_FUTURES.http.0.0.txt"],
                              speed=3.0)
    streams = ("depth@100ms", "aggTrade", "kline_1m", "bookTicker")
    with connector(exchange, settings, ["SUSHIUSDT", "AKROUSDT"], streams) as actor:
        wait_for_messages(actor, 20, timeout_s=30)
        added = ["keepusdt@aggTrade", "keepusdt@depth@100ms", "ctkusdt@aggTrade"]
        # USD-M routes by path: the trades go to the /market WebSocket, the depth to /public (the local venue
        # refuses a stream on the wrong route), each acknowledged by its own answer
        answered = ray.get(actor.subscribe.remote(added))
        assert answered["routes"] == {"/market": {"result": None, "id": 1}, "/public": {"result": None, "id": 2}}
        listed = ray.get(actor.list_subscriptions.remote())["result"]
        assert set(listed) == {f"{s}@{n}" for s in ("sushiusdt", "akrousdt") for n in streams} | set(added)
        assert ray.get(actor.unsubscribe.remote(["akrousdt@bookTicker"]))["result"] is None
        stats = _settle(actor, exchange)
        keep_book = ray.get(actor.book.remote("KEEPUSDT"))
    assert not stats["quarantined"], stats["quarantined"]
    assert all(stats["messages"][e] > 0 for e in ("depthUpdate", "aggTrade", "kline", "bookTicker")), stats
    venue = {s: len(exchange.trades.get((s, "aggTrade"), [])) for s in ("SUSHIUSDT", "AKROUSDT")}
    assert {s: stats["trades"][s] for s in venue} == venue  # subscribed from the start: every trade
    assert stats["trades"]["KEEPUSDT"] > 0 and stats["trades"]["CTKUSDT"] > 0
    assert keep_book["synced"] and keep_book["last_update_id"] == exchange.books["KEEPUSDT"].book.last_update_id


def _exported(port: int, name: str, timeout_s: float = 60.0) -> list[str]:
    """The lines of metric ``name`` the head exports for Prometheus (and the dashboard's charts); Ray sends
    an actor's metrics there every few seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [x for x in text.splitlines() if name in x and not x.startswith("#")]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(1)


def test_replay_and_stream_from_the_command_line(ray_head, capture):
    """`tickray replay` stands in for the venue (sending every 50th message twice); `tickray stream --symbols
    ALL` plans the venue's one symbol onto one detached connector on the head that `tickray up` started;
    `--status` and `--stop` reach it."""
    cli, port = [sys.executable, "-m", "tickray.cli"], free_port()
    ray_head = {**ray_head, "TICKRAY_STREAM_FLUSH_S": "1"}

    def tickray(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], check=False, capture_output=True, text=True, env=ray_head, timeout=120)

    replay = subprocess.Popen([*cli, "replay", str(capture), "--port", str(port), "--speed", "30", "--once",
                               "--duplicate-every", "50"], stdout=subprocess.PIPE, text=True, env=ray_head)
    try:
        assert replay.stdout.readline().startswith("replaying 11,413 messages of 3 streams")
        url = f"127.0.0.1:{port}"
        started = tickray("stream", "--symbols", "ALL", "--streams", "depth@0ms,trade,bookTicker",
                          "--ws-url", f"ws://{url}", "--rest-url", f"http://{url}")
        assert started.returncode == 0 and "tickray-stream-default" in started.stdout, started.stderr
        assert replay.wait(timeout=120) == 0  # --once: the market is over
        deadline = time.monotonic() + 60
        while True:
            stats = json.loads(tickray("stream", "--status").stdout)["default"]
            if stats["trades"]["BTCUSDT"] == 974 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert stats["trades"]["BTCUSDT"] == 974 and stats["messages"]["duplicate trades"] > 0, stats
        assert stats["book"]["BTCUSDT"]["duplicates"] > 0 and stats["features_published"]["BTCUSDT"] > 100
        r = redis.Redis(port=int(ray_head["TICKRAY_REDIS_PORT"]))
        assert orjson.loads(r.get(FEATURES_KEY.format(symbol="BTCUSDT")))["symbol"] == "BTCUSDT"
        assert r.xlen(FEATURES_HISTORY.format(symbol="BTCUSDT")) == stats["features_published"]["BTCUSDT"]
        metrics = _exported(int(ray_head["TICKRAY_METRICS_PORT"]), "tickray_stream_messages")
        assert any('symbol="BTCUSDT"' in line and 'stream="trade"' in line for line in metrics), metrics
        status = tickray("status")
        # the venue is gone (--once): the connector says so, and keeps trying
        assert "stream default: disconnected, BTCUSDT," in status.stdout and "0 restarts" in status.stdout, status.stdout
        stopped = tickray("stream", "--stop")
        assert "connector 'default' stopped" in stopped.stdout, stopped.stderr
        lake_root = Path(ray_head["TICKRAY_STATE_DIR"]) / "lake"
        trades = pa.concat_tables(read_partition(lake_root, "trades", d, "BTCUSDT")
                                  for d, _ in partitions(lake_root, "trades"))
        assert sorted(trades["trade_id"].to_pylist()) == list(range(trades["trade_id"][0].as_py(),
                                                                    trades["trade_id"][0].as_py() + 974))
        again = tickray("stream", "--status")
        assert again.returncode == 2 and "no connector named 'default' (or default-N) is running" in again.stderr
    finally:
        replay.kill()


def test_spot_rules_and_payloads(ray_cluster, settings, shared_data):
    """Spot: depth without pu (U = previous u + 1), bookTicker without e or E, REST under /api/v3."""
    exchange = ReplayExchange([shared_data / "binance" / "ws" / "spot_btcusdt_20240808.gz"], speed=40.0)
    with connector(exchange, settings, streams=("depth@100ms", "trade", "bookTicker"),
                   options=ConnectorOptions(venue="spot")) as actor:
        stats = _settle(actor, exchange)
        book = ray.get(actor.book.remote("BTCUSDT"))
    venue = exchange.books["BTCUSDT"]
    assert venue.spot and book["synced"] and book["last_update_id"] == venue.book.last_update_id
    assert (book["bids"], book["asks"]) == venue.book.top(20)
    assert stats["trades"]["BTCUSDT"] == len(exchange.trades[("BTCUSDT", "trade")])
    assert stats["messages"]["bookTicker"] > 0 and not stats["quarantined"], stats


def test_coin_m_symbols_payloads_and_rest(ray_cluster, settings, capture, tmp_path):
    """COIN-M (dapi): contract symbols with an underscore (BTCUSD_PERP), a pair (``ps``) on every payload, a
    snapshot that names its symbol, REST under /dapi/v1. No COIN-M capture exists here, so the real USD-M
    capture is relabelled to COIN-M's shapes, byte for byte otherwise (sizes stay in BTC, not contracts:
    the pipeline takes sizes as they come)."""
    raw = gzip.decompress(capture.read_bytes())
    coinm = (raw.replace(b"btcusdt@", b"btcusd_perp@")
             .replace(b'"s":"BTCUSDT"', b'"s":"BTCUSD_PERP","ps":"BTCUSD"')
             .replace(b'{"lastUpdateId"', b'{"symbol":"BTCUSD_PERP","pair":"BTCUSD","lastUpdateId"'))
    path = tmp_path / "coinm_capture.gz"
    path.write_bytes(gzip.compress(coinm))
    exchange = ReplayExchange([path], speed=SPEED)
    with connector(exchange, settings, symbols=("BTCUSD_PERP",), options=ConnectorOptions(venue="coinm")) as actor:
        stats = _settle(actor, exchange)
        book = ray.get(actor.book.remote("BTCUSD_PERP"))
    venue = exchange.books["BTCUSD_PERP"]
    assert book["synced"] and book["last_update_id"] == venue.book.last_update_id
    assert (book["bids"], book["asks"]) == venue.book.top(20)
    assert stats["trades"]["BTCUSD_PERP"] == 974 and not stats["quarantined"], stats
    check = stats["book_check"]["BTCUSD_PERP"]
    assert check["checked"] > 0 and check["mismatched"] == 0, check
    assert stats["features_published"]["BTCUSD_PERP"] > 100
    assert set(exchange.rest_requests) == {"/dapi/v1/depth", "/dapi/v1/time"}, exchange.rest_requests


def test_one_coinm_session_streamed_and_read_from_its_files_gives_the_same_trades_and_books(ray_cluster, settings,
                                                                                           shared_data, tmp_path):
    """Parity of the two paths on one real capture: the COIN-M session (two files across midnight) replayed
    to a connector, whose cold path writes what it rebuilt to a lake, and the same files read by the batch
    reader. The connector joins a market already moving (it syncs from a later snapshot), so its book
    states are the tail of the batch's; every trade is in both."""
    files = [shared_data / "binance/ws/cm_ethusd_perp_20240808.gz", shared_data / "binance/ws/cm_ethusd_perp_20240809.gz"]
    exchange = ReplayExchange(files, speed=60)  # paced: the connector syncs near the recorded snapshot
    options = ConnectorOptions(venue="coinm", lake_root=str(tmp_path), name="parity")
    with connector(exchange, settings, symbols=("ETHUSD_PERP",), streams=("depth@0ms", "trade", "bookTicker"),
                   options=options) as actor:
        stats = _settle(actor, exchange)
    batch = read_ws_capture(files)
    assert not stats["quarantined"] and stats["book"]["ETHUSD_PERP"]["gaps"] == 0, stats
    check = stats["book_check"]["ETHUSD_PERP"]
    assert check["checked"] > 500 and check["mismatched"] == 0, check

    def lake(dataset: str) -> pa.Table:
        return pa.concat_tables(read_partition(tmp_path, dataset, d, "ETHUSD_PERP")
                                for d, _ in partitions(tmp_path, dataset))

    key = ["trade_id", "ts", "price", "qty", "side"]
    streamed = lake("trades").sort_by("trade_id").select(key).to_pylist()
    assert streamed == batch.trades.sort_by("trade_id").select(key).to_pylist() and len(streamed) == 3_595

    def states(t: pa.Table) -> list[tuple]:
        cols = [c for c in t.column_names if c.startswith(("bid_", "ask_"))]
        return [tuple(r.values()) for r in t.select(["ts", *cols]).to_pylist()]

    live, read = states(lake("book")), states(batch.book.book)
    assert len(live) > 0.95 * len(read), (len(live), len(read))
    # the first live state is the snapshot with the diffs buffered before it, applied at once
    assert live[1:] == read[len(read) - len(live) + 1:]


def test_a_killed_connector_comes_back_by_itself_with_its_feature_look_backs(ray_cluster, settings, capture):
    """What `tickray stream` starts: Ray restarts the process, which resumes from its checkpoint and the grid
    rows it published, reconnects, fetches the trades it missed, resyncs and goes on, counting every trade
    once. Its features are defined from the first row after the restart (the look-backs did not start
    again), and those computed from trades alone equal the batch ones over the whole session: the grid
    lost and doubled no trade. The seconds it was away carry its last book, so book features differ."""
    r = redis_client(settings)
    exchange = ReplayExchange([capture], speed=SPEED).start()
    forget(r, ["BTCUSDT"])
    actor = StreamIngestActor.options(max_restarts=1, max_task_retries=-1).remote(
        ["BTCUSDT"], exchange.ws_url, exchange.rest_url, settings.redis_url, streams=STREAMS,
        options=ConnectorOptions(autostart=True, flush_s=0.5))
    try:
        first = wait_for_messages(actor, 4500, timeout_s=60)  # past the first minute: 60 s look-backs defined
        assert first["connected"] and first["trades"]["BTCUSDT"] > 0
        wait_for_checkpoint(r, "BTCUSDT")
        # The market goes on at its recorded pace while Ray restarts the process (seconds on a busy machine:
        # at speed 5 they could pass the 60 s the grid carries a book, and the look-backs would rightly
        # start again), then faster, so that the rest of the session still outlasts the reconnection.
        exchange.speed = 1.0
        killed_at = time.time()
        ray.kill(actor, no_restart=False)
        ray.get(actor.stats.remote())  # answered once the restarted actor is constructed
        exchange.speed = 5.0
        stats = _settle(actor, exchange)
        book = ray.get(actor.book.remote("BTCUSDT"))
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)
        exchange.stop()
    assert stats["messages"]["connections"] == 1 and stats["messages"]["received"] < len(exchange.messages)
    assert book["synced"] and book["last_update_id"] == exchange.books["BTCUSDT"].book.last_update_id
    assert stats["incarnation"] != first["incarnation"] and stats["messages"]["resumed from checkpoint"] == 1
    assert stats["trades"]["BTCUSDT"] == 974 and stats["messages"]["grid rows resumed"] > 60

    cap = read_ws_capture(capture)
    grid = grid_from_events(cap.trades, cap.book.book)
    batch = compute_features(grid)
    docs = [orjson.loads(f[b"doc"]) for _, f in r.xrange(FEATURES_HISTORY.format(symbol="BTCUSDT"))]
    after = [d for d in docs if d["published_at"] > killed_at]
    assert len(after) > 30 and np.all(np.diff([d["ts_ns"] for d in docs]) == 1_000_000_000)  # no second missed
    trades_only = ("tflow_5s", "tflow_30s", "tflow_60s", "signed_vol_60s", "vol_rate_60s", "trades_30s")
    windowed = [f for f in FEATURE_NAMES if not FEATURES[f].from_start and FEATURES[f].lookback <= 60]
    for d in docs[60:]:  # the actor's grid starts at its first book: windows from then on
        i = int(np.searchsorted(grid["ts"], d["ts_ns"]))
        live = {f: np.nan if v is None else v for f, v in d["features"].items()}
        assert all(np.array_equal(live[f], batch[f][i], equal_nan=True) for f in trades_only), (d, i)
        if d in after:  # where the batch look-back is covered, so is the resumed actor's
            assert not [f for f in windowed if np.isnan(live[f]) and np.isfinite(batch[f][i])], d


def test_a_checkpoint_is_resumed_only_from_its_own_source_and_a_market_that_continues_it(ray_cluster, settings,
                                                                                       capture):
    """A connector goes on from a checkpoint only when it was written from the same venue, URLs, symbols and
    streams, and the market's first message continues it in time; otherwise it starts fresh, says why in one
    line, and counts no trade as lost. Each checkpoint below is the real one, with one thing changed."""
    r = redis_client(settings)
    forget(r, ["BTCUSDT"])
    exchange = ReplayExchange([capture], speed=3.0).start()  # a minute of market: time for six connectors
    key = CHECKPOINT_KEY.format(symbol="BTCUSDT")

    def run() -> dict:
        actor = StreamIngestActor.remote(["BTCUSDT"], exchange.ws_url, exchange.rest_url, settings.redis_url,
                                         streams=STREAMS, options=ConnectorOptions(autostart=True, flush_s=0.3))
        try:
            stats = wait_for_messages(actor, 300, timeout_s=60)
            assert stats["messages"].get("received", 0) >= 300, stats
        finally:
            ray.get(actor.stop.remote())  # which checkpoints
            ray.kill(actor)
        return stats

    year_ms, hour_ms = 365.25 * 86_400_000, 3_600_000
    changes = {
        "checkpoint is from another source: ws://127.0.0.1:1 vs ": lambda c: c["source"].update(ws_url="ws://127.0.0.1:1"),
        "checkpoint is from another symbol set: BTCUSDT,ETHUSDT vs BTCUSDT": lambda c: c["source"].update(
            symbols=["BTCUSDT", "ETHUSDT"]),
        "checkpoint is from another stream set: btcusdt@aggTrade vs ": lambda c: c["source"].update(
            streams=["btcusdt@aggTrade"]),
        "market time jumped back 2.4 years": lambda c: c.update(event_ms=c["event_ms"] + int(2.4 * year_ms)),
        "market time jumped forward 3.0 h, beyond the 60.0 min": lambda c: c.update(event_ms=c["event_ms"] - 3 * hour_ms),
    }
    try:
        first = run()
        assert first["resume"] == {"BTCUSDT": "fresh: no checkpoint"}
        for why, change in changes.items():
            ck = orjson.loads(r.get(key))
            assert ck["source"]["ws_url"] == exchange.ws_url and ck["event_ms"] > 0
            change(ck)
            r.set(key, orjson.dumps(ck))
            stats = run()
            assert stats["resume"]["BTCUSDT"].startswith(f"fresh: {why}"), (why, stats["resume"])
            counts = stats["messages"]
            assert counts["checkpoints refused"] == 1 and "resumed from checkpoint" not in counts, counts
            assert "trades lost" not in counts and "trades backfilled" not in counts, counts
        stats = run()  # the checkpoint the last connector wrote, unchanged: the market continues it
        assert stats["resume"]["BTCUSDT"].startswith("resumed from checkpoint"), stats["resume"]
        assert stats["messages"]["resumed from checkpoint"] == 1 and "trades lost" not in stats["messages"]
    finally:
        exchange.stop()


def _lake_table(root: Path, dataset: str) -> pa.Table:
    return pa.concat_tables(read_partition(root, dataset, d, s) for d, s in partitions(root, dataset))


def test_the_supervisor_replaces_a_lost_connector_which_resumes_from_its_checkpoint(ray_cluster, settings, capture,
                                                                                     tmp_path):
    """A connector gone for good mid-session (killed, no restart left) is created again by the supervisor and
    resumes from its Redis checkpoint: the trades after it come from REST, so the market state, the closed
    bars and the lake each hold every trade of the session exactly once."""
    r = redis_client(settings)
    forget(r, ["BTCUSDT"])
    r.delete(SPECS_KEY)
    # slower than SPEED: the replacement (a new process) must connect while the market still runs
    exchange = ReplayExchange([capture], speed=SPEED / 2.5).start()
    sup = StreamSupervisor.remote(settings.redis_url, check_s=0.5)
    lake_root = tmp_path / "lake"
    spec = ConnectorSpec("lost", ["BTCUSDT"], list(STREAMS), exchange.ws_url, exchange.rest_url, settings.redis_url,
                         {"lake_root": str(lake_root), "flush_s": 0.5})
    try:
        assert ray.get(sup.start_connector.remote(asdict(spec)))["actor"] == "tickray-stream-lost"
        with pytest.raises(ray.exceptions.RayTaskError, match="already running"):
            ray.get(sup.start_connector.remote(asdict(spec)))
        first = ray.get_actor("tickray-stream-lost", namespace="tickray")
        wait_for_messages(first, 2000, timeout_s=60)
        wait_for_checkpoint(r, "BTCUSDT")
        ray.kill(first, no_restart=True)
        time.sleep(1.0)  # the market goes on without it: what it missed must come back from REST
        exchange.hold_after(exchange.market_now_ns())  # then waits for the replacement, however slow its start
        deadline = time.monotonic() + 60
        while (health := ray.get(sup.health.remote())["lost"])["restarts"] < 1 or health["status"] != "ok":
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        exchange.hold_after(None)
        stats = _settle(ray.get_actor("tickray-stream-lost", namespace="tickray"), exchange)
        final = ray.get(sup.stop_connector.remote("lost"))
    finally:
        ray.kill(sup)
        exchange.stop()
    assert stats["messages"]["resumed from checkpoint"] == 1 and stats["messages"]["trades backfilled"] > 0
    venue = exchange.trades[("BTCUSDT", "trade")]
    assert final["trades"]["BTCUSDT"] == 974 and "trades lost" not in final["messages"]
    state = r.hgetall(STATE_KEY.format(symbol="BTCUSDT"))
    assert np.isclose(float(state[b"cumulative_volume"]), sum(float(d["q"]) for d in venue), rtol=1e-12)

    trades = _lake_table(lake_root, "trades")
    assert sorted(trades["trade_id"].to_pylist()) == [d["t"] for d in venue]  # each once
    assert _lake_table(lake_root, "book").num_rows > 1000 and _lake_table(lake_root, "ws_raw").num_rows > 4000

    closed = [orjson.loads(f[b"bar"]) for _, f in r.xrange(CLOSED_BARS_STREAM.format(symbol="BTCUSDT"))]
    batch = bars_from_trades(read_ws_capture(capture).trades).to_pylist()[:-1]  # the last minute is open
    assert [(b["ts"], b["trades"], b["close"]) for b in closed] == [(b["ts"].value, b["trades"], b["close"])
                                                                    for b in batch]


def test_planned_connectors_share_the_venues_symbols(ray_cluster, settings, shared_data):
    """Three of cryptofeed's four USD-M symbols, planned over two connectors by the venue's 24 h trade counts
    and started by the supervisor: each symbol is streamed by exactly one connector, each connector gets
    messages on both of USD-M's routes, syncs its books (REST weight counted) and answers for its symbols.
    The fourth is then added and one removed on the live connections: no connection is dropped."""
    from tickray.stream.plan import plan_connectors, venue_listing

    folder = shared_data / "binance" / "ws_cryptofeed"
    exchange = ReplayExchange([folder / "BINANCE_FUTURES.ws.1.0.txt", folder / "BINANCE_FUTURES.http.0.0.txt"],
                              speed=1.0).start()  # 30 s: both connectors start within it
    streams = ["depth@100ms", "aggTrade", "bookTicker"]
    r = redis_client(settings)
    r.delete(SPECS_KEY)
    sup = StreamSupervisor.remote(settings.redis_url, check_s=0.5)

    def until(ok, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            health = ray.get(sup.health.remote())
            if ok(health) or time.monotonic() > deadline:
                return health
            time.sleep(0.5)

    try:
        listed = venue_listing(exchange.rest_url, BINANCE_STREAM_MARKETS["usdm"])
        assert sorted(listed) == ["AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]
        forget(r, list(listed))
        first = {s: listed[s] for s in ("SUSHIUSDT", "CTKUSDT", "AKROUSDT")}
        plan = plan_connectors(first, streams, BINANCE_STREAM_MARKETS["usdm"], "many", min_connectors=2)
        assert [c.symbols for c in plan] == [["SUSHIUSDT"], ["AKROUSDT", "CTKUSDT"]]  # the busiest alone
        for c in plan:
            ray.get(sup.start_connector.remote(asdict(ConnectorSpec(
                c.name, c.symbols, streams, exchange.ws_url, exchange.rest_url, settings.redis_url))))
        health = until(lambda h: all(x["status"] == "ok" and x["received"] > 50 and not x["unsynced"]
                                     for x in h.values()))
        started = {n: ray.get(sup.stats.remote(n)) for n in health}
        added = ray.get(sup.add_symbols.remote("many", ["KEEPUSDT"]))
        removed = ray.get(sup.remove_symbols.remote("many", ["AKROUSDT"]))
        keep_on = next(iter(added))

        def keep_applied() -> int:
            return ray.get(sup.stats.remote(keep_on))["book"].get("KEEPUSDT", {}).get("applied", 0)

        after = until(lambda h: keep_applied() > 0 and not any(x["unsynced"] for x in h.values())
                      and all(x["status"] == "ok" for x in h.values()))
        stats = {n: ray.get(sup.stats.remote(n)) for n in after}
    finally:
        for c in ray.get(sup.health.remote()):
            ray.get(sup.stop_connector.remote(c))
        ray.kill(sup)
        exchange.stop()
    assert sorted(s for h in health.values() for s in h["symbols"]) == sorted(first), health
    for name, st in started.items():
        assert st["connected"] and st["messages"]["connections"] == 2, (name, st["messages"])  # /public and /market
        assert st["messages"]["aggTrade"] > 0 and st["messages"]["depthUpdate"] > 0, (name, st["messages"])
        assert health[name]["rest_weight"] >= 20 * len(health[name]["symbols"])  # a 1000-level snapshot each
        assert set(st["book"]) == set(health[name]["symbols"])
    assert len(added) == 1 and removed == {"many-2": ["AKROUSDT"]}
    assert sorted(s for h in after.values() for s in h["symbols"]) == ["CTKUSDT", "KEEPUSDT", "SUSHIUSDT"]
    assert all(st["messages"]["connections"] == 2 for st in stats.values()), stats  # none dropped
    keep = stats[next(iter(added))]
    assert keep["book"]["KEEPUSDT"]["applied"] > 0 and "akrousdt@bookTicker" not in stats["many-2"]["streams"]


def test_a_mass_resync_keeps_within_the_shared_rest_budget(ray_cluster, settings, shared_data):
    """Two connectors of cryptofeed's four USD-M symbols share one REST budget through Redis, against a
    local venue allowing 45 weight per 2 s (a depth snapshot weighs 20) that first answers 429 for 1.5 s
    (another client on the IP spent the weight). Every connection is then dropped at once: all four books
    resync again. The venue never bans the IP (no 418), no window is ever over its limit, only the
    requests already on their way when the 429 came were refused, and every book ends synced."""
    folder = shared_data / "binance" / "ws_cryptofeed"
    exchange = ReplayExchange([folder / "BINANCE_FUTURES.ws.1.0.txt", folder / "BINANCE_FUTURES.http.0.0.txt"],
                              speed=1.0, rest_weight_limit=45, rest_window_s=2.0).start()
    streams = ("depth@100ms", "aggTrade", "bookTicker")
    symbols = [["SUSHIUSDT", "KEEPUSDT"], ["CTKUSDT", "AKROUSDT"]]
    r = redis_client(settings)
    forget(r, [s for group in symbols for s in group])
    for key in r.scan_iter("tickray:rest:binance-usdm:budget-test:*"):
        r.delete(key)
    options = {"rest_weight_limit": 45, "rest_window_s": 2.0, "rest_budget_scope": "budget-test"}
    actors = [StreamIngestActor.remote(group, exchange.ws_url, exchange.rest_url, settings.redis_url, streams,
                                       ConnectorOptions(name=f"budget-{i}", **options))
              for i, group in enumerate(symbols)]

    def all_synced(snapshots: int, timeout_s: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = ray.get([a.stats.remote() for a in actors])
            done = sum(st["messages"].get("snapshots", 0) for st in stats) >= snapshots
            if (done and not any(st["unsynced"] for st in stats)) or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)

    try:
        exchange.refuse_for(1.5)
        ray.get([a.start.remote() for a in actors])
        first = all_synced(4)
        before = sum(st["messages"]["snapshots"] for st in first)
        exchange.disconnect_all()
        after = all_synced(before + 4)
    finally:
        for a in actors:
            ray.get(a.stop.remote())
            ray.kill(a)
        exchange.stop()
    assert all(not st["unsynced"] for st in first + after), [st["unsynced"] for st in first + after]
    assert sum(st["messages"]["snapshots"] for st in after) >= before + 4  # every book again
    # at most what was on its way at once: two clock syncs and four snapshots
    assert exchange.rest_refused[418] == 0 and 1 <= exchange.rest_refused[429] <= 6, exchange.rest_refused
    assert sum(st["messages"].get("rest 429", 0) for st in after) == exchange.rest_refused[429]
    assert max(exchange.rest_weight.values()) <= 45, exchange.rest_weight
    assert all(st["resync_all_s"] is not None for st in after)


def test_connectors_spread_over_nodes_and_come_back_from_a_lost_one(redis_settings, tmp_path):
    """Head + two workers (ray.cluster_utils.Cluster, in its own process): the planned connectors of a
    synthetic market (one busy symbol, two quiet ones) land on different nodes; a worker node crashes and
    its connector comes back on another node, resumes from its checkpoint, and its lake holds every trade
    of its symbols once, from its first on (the missed ones fetched from REST)."""
    script = Path(__file__).parent / "stream_nodes_script.py"
    run = subprocess.run([sys.executable, str(script), redis_settings.redis_url, str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
    print(seen)
    assert seen["plan"] == {"nodes-1": ["BIGUSDT"], "nodes-2": ["MIDUSDT", "SMLUSDT"]}  # balanced by activity
    assert len(set(seen["nodes_before"].values())) == 2  # spread
    assert seen["restarts"] >= 1 and seen["node_after"] != seen["lost_node"] and seen["finished"]
    assert seen["messages"]["resumed from checkpoint"] >= 1 and "trades lost" not in seen["messages"]
    assert seen["messages"]["trades backfilled"] > 0
    for sym, t in seen["trades"].items():
        assert t["lake"] == t["unique"] > 0 and t["venue_since_first"], (sym, t)
