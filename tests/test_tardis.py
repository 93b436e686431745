"""Tardis.dev CSV: the real samples, files written here from Tardis.dev's documented format, and a real
Binance capture converted here to Tardis's incremental_book_L2, whose book must equal the capture's."""

import csv
import gzip
import re

import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tickray.errors import DataFormatError
from tickray.ingest.job import ingest
from tickray.sources import tardis
from tickray.sources.binance import read_ws_capture

HEAD = "exchange,symbol,timestamp,local_timestamp"
L2_HEAD = HEAD + ",is_snapshot,side,price,amount"


def _top(bids: dict, asks: dict, n: int) -> tuple[list, list]:
    """The reference: the best n levels of a plain dict book."""
    b = sorted(bids.items(), key=lambda kv: -kv[0])[:n]
    a = sorted(asks.items())[:n]
    return b, a


def _rows(book, n: int) -> list[tuple]:
    """(symbol, ts µs, bids, asks) per book row, the levels as (price, size) up to the first empty one."""
    out = []
    for r in book.to_pylist():
        levels = {}
        for side in ("bid", "ask"):
            levels[side] = [(r[f"{side}_px_{i}"], r[f"{side}_sz_{i}"]) for i in range(1, n + 1)
                            if r[f"{side}_px_{i}"] is not None and r[f"{side}_px_{i}"] == r[f"{side}_px_{i}"]]
        out.append((r["symbol"], r["ts"].timestamp() * 1e6, levels["bid"], levels["ask"]))
    return out


def test_the_real_samples_read_as_tardis_documents_them(shared_data):
    path = shared_data / "tardis" / "binance-futures_book_snapshot_5_BTCUSDT.csv"
    book = tardis.read_book_snapshots(path, "book_snapshot_5", levels=10)
    with open(path) as f:
        want = list(csv.DictReader(f))
    assert book.num_rows == len(want) == 10
    for got, w in zip(book.to_pylist(), want):
        assert round(got["ts"].timestamp() * 1e6) == int(w["timestamp"])
        assert got["symbol"] == "BTCUSDT"
        for i in range(5):
            assert got[f"bid_px_{i + 1}"] == float(w[f"bids[{i}].price"])
            assert got[f"ask_sz_{i + 1}"] == float(w[f"asks[{i}].amount"])
        assert got["bid_px_6"] is None  # a 5-level file leaves deeper levels empty
    deribit, dropped, days = tardis.rebuild_incremental_book(
        shared_data / "tardis" / "deribit_incremental_book_L2_BTC-PERPETUAL.csv", levels=10)
    # 15 snapshot rows with one receive time: one book state, asks only (the sample stops there)
    assert deribit.num_rows == 1 and dropped == [] and [(d.report["applied"], d.report["resyncs"]) for d in days] == [(1, 0)]
    row = deribit.to_pylist()[0]
    assert row["ask_px_1"] == 6421.5 and row["ask_sz_1"] == 18640 and row["bid_px_1"] is None


def _write(path, header: str, lines: list[str], gz: bool = False) -> None:
    text = header + "\n" + "\n".join(lines) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


def test_incremental_book_follows_the_documented_rules(tmp_path):
    """Two symbols in one file; rows before the first snapshot; updates of several rows; a level deleted
    by amount 0; a reset (snapshot after updates) that must not keep old levels; time going back."""
    rows = [
        # exchange, symbol, timestamp, local_timestamp, is_snapshot, side, price, amount
        ("X", 100, 101, "false", "bid", 9.0, 1),  # before any snapshot of X
        ("X", 200, 201, "true", "bid", 10.0, 1), ("X", 200, 201, "true", "bid", 9.5, 2),
        ("X", 200, 201, "true", "ask", 10.5, 3), ("X", 200, 201, "true", "ask", 11.0, 4),
        ("Y", 210, 211, "true", "bid", 50.0, 5), ("Y", 210, 211, "true", "ask", 51.0, 6),
        ("X", 300, 301, "false", "bid", 10.0, 0), ("X", 300, 301, "false", "bid", 9.8, 7),  # one update
        ("X", 310, 311, "false", "ask", 10.4, 8),
        ("X", 312, 313, "false", "middle", 10.2, 1),  # a side that is neither
        ("Y", 320, 321, "false", "ask", 51.0, 0), ("Y", 320, 321, "false", "ask", 52.0, 1),
        ("X", 250, 250, "false", "ask", 10.1, 1),  # received before the last one of X
        ("X", 400, 401, "true", "bid", 8.0, 1), ("X", 400, 401, "true", "ask", 12.0, 2),  # reset
        ("X", 410, 411, "false", "bid", 8.5, 3),
    ]
    _write(tmp_path / "deribit_incremental_book_L2_2020-04-01_MIX.csv.gz", L2_HEAD,
           [f"deribit,{s},{t},{lt},{snap},{side},{p},{a}" for s, t, lt, snap, side, p, a in rows], gz=True)
    book, dropped, days = tardis.rebuild_incremental_book(
        tmp_path / "deribit_incremental_book_L2_2020-04-01_MIX.csv.gz", levels=3)

    # the reference: a dict book per symbol, a state at the end of every receive time
    want, books, last_local = [], {}, {}
    for k, (s, t, lt, snap, side, p, a) in enumerate(rows):
        prev = next((r for r in reversed(rows[:k]) if r[0] == s), None)
        if lt < last_local.get(s, -1):
            continue
        last_local[s] = lt
        if side not in ("bid", "ask"):
            continue
        if snap == "true" and (prev is None or prev[3] != "true" or prev[2] != lt):
            if s in books:  # a reset: the book is unknown (a row without levels) until the new one
                want.append((s, t, [], []))
            books[s] = ({}, {})
        if s not in books:
            continue
        levels = books[s][0 if side == "bid" else 1]
        if a == 0:
            levels.pop(p, None)
        else:
            levels[p] = a
        following = next((r for r in rows[k + 1:] if r[0] == s and r[2] >= lt), None)
        if following is None or following[2] != lt:
            want.append((s, t, *_top(*books[s], 3)))
    got = [(s, round(t), b, a) for s, t, b, a in _rows(book, 3)]
    assert sorted(got) == sorted((s, t, [(float(p), float(q)) for p, q in b], [(float(p), float(q)) for p, q in a])
                                 for s, t, b, a in want)
    x_states = [g for g in got if g[0] == "X"]
    assert x_states[-2][2:] == ([(8.0, 1.0)], [(12.0, 2.0)])  # the reset kept none of the old levels
    assert sum(d.report["applied"] for d in days) == len(want) - 1 and sum(d.report["resyncs"] for d in days) == 1
    # each symbol's day ends with the whole book the reference holds, best first
    for d in days:
        bids, asks = books[d.symbol]
        assert d.state["bids"] == sorted(([float(p), float(q)] for p, q in bids.items()), reverse=True)
        assert d.state["asks"] == sorted([float(p), float(q)] for p, q in asks.items())
        assert (d.venue, d.day) == ("deribit", "1970-01-01")
    assert {d.symbol: d.report["start"] for d in days} == {
        "X": "nothing (its first rows waited for a snapshot)", "Y": "its own snapshot"}
    assert sorted(dropped) == sorted([(0, "X", tardis.TIME_BACKWARDS), (0, "X", tardis.BEFORE_SNAPSHOT),
                                      (0, "X", "side is neither bid nor ask")])


def test_trades_quotes_and_derivative_ticker(tmp_path):
    _write(tmp_path / "bitmex_trades_2020-01-01_XBTUSD.csv", HEAD + ",id,side,price,amount", [
        "bitmex,XBTUSD,1577836800000000,1577836800100000,c6e8b5a3-0a46-4c1b-8b52-9ad3b5e5c0d1,buy,7180.5,100",
        "bitmex,XBTUSD,1577836801000000,1577836801100000,0b5f3f0e-2a7e-4d8e-8a1b-1f2e3d4c5b6a,sell,7180,250",
        "bitmex,XBTUSD,1577836802000000,1577836802100000,5e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b,unknown,7181,10"])
    trades = tardis.read_trades(tmp_path / "bitmex_trades_2020-01-01_XBTUSD.csv")
    assert trades["side"].to_pylist() == [1, -1, None]  # unknown aggressor: null, quarantined by validation
    assert trades["trade_id"].null_count == 0 and len(set(trades["trade_id"].to_pylist())) == 3
    assert trades["price"].to_pylist() == [7180.5, 7180.0, 7181.0]
    _write(tmp_path / "binance_quotes_2020-01-01_BTCUSDT.csv", HEAD + ",ask_amount,ask_price,bid_price,bid_amount",
           ["binance,BTCUSDT,1577836800000000,1577836800001000,0.5,7200.1,7200,1.5"])
    quotes = tardis.read_quotes(tmp_path / "binance_quotes_2020-01-01_BTCUSDT.csv", levels=2)
    assert quotes.to_pylist()[0] | {"ts": None} == {
        "ts": None, "symbol": "BTCUSDT", "bid_px_1": 7200.0, "bid_px_2": None, "bid_sz_1": 1.5, "bid_sz_2": None,
        "ask_px_1": 7200.1, "ask_px_2": None, "ask_sz_1": 0.5, "ask_sz_2": None,
        "bid_ct_1": None, "bid_ct_2": None, "ask_ct_1": None, "ask_ct_2": None}
    _write(tmp_path / "binance-futures_derivative_ticker_2020-01-01_BTCUSDT.csv",
           HEAD + ",funding_timestamp,funding_rate,predicted_funding_rate,open_interest,last_price,index_price,mark_price",
           ["binance-futures,BTCUSDT,1577836800000000,1577836800001000,1577865600000000,0.0001,,,7200,7199,7200.5",
            "binance-futures,BTCUSDT,1577836801000000,1577836801001000,1577865600000000,0.0001,,12345.6,7200,7199,7200.5"])
    ticker = tardis.read_derivative_ticker(tmp_path / "binance-futures_derivative_ticker_2020-01-01_BTCUSDT.csv")
    assert ticker["open_interest"]["open_interest"].to_pylist() == [12345.6]  # the message without one is not a zero
    funding = ticker["funding"].to_pylist()
    assert [r["funding_ts"].timestamp() for r in funding] == [1577865600.0] * 2
    assert [(r["mark_price"], r["index_price"], r["funding_rate"]) for r in funding] == [(7200.5, 7199.0, 0.0001)] * 2
    assert [r["predicted_funding_rate"] for r in funding] == [None, None]  # not in the file: null, not 0


DERIV_HEAD = HEAD + ",funding_timestamp,funding_rate,predicted_funding_rate,open_interest,last_price,index_price,mark_price"


def test_liquidations_keep_the_forced_orders_side(tmp_path):
    path = tmp_path / "bybit_liquidations_2022-06-01_BTCUSDT.csv.gz"
    _write(path, HEAD + ",id,side,price,amount", [
        "bybit,BTCUSDT,1654041600123000,1654041600200000,,buy,31500.5,0.25",  # a short closed; no id
        "bybit,BTCUSDT,1654041601000000,1654041601100000,,sell,31490,1.5",
        "bybit,BTCUSDT,1654041602000000,1654041602100000,,unknown,31490,2"], gz=True)
    rows = tardis.read_liquidations(path).to_pylist()
    assert [(r["side"], r["price"], r["qty"], r["liquidation_id"]) for r in rows] == [
        (1, 31500.5, 0.25, None), (-1, 31490.0, 1.5, None), (None, 31490.0, 2.0, None)]
    assert rows[0]["ts"].timestamp() == 1654041600.123


def _tardis_from_capture(lines: list[bytes]) -> tuple[str, int]:
    """A USD-M capture (``<recv ns> <json>``) as Tardis.dev's incremental_book_L2 of it: the first REST
    snapshot as a snapshot block, then each depth diff that continues the book (its levels as rows with the
    diff's time); after a break in the diffs' chain, nothing until the next REST snapshot, which starts a
    new snapshot block (as Tardis.dev does on a reconnect). Returns the CSV and how many resets it holds."""
    out, last_u, snap_recv, resets, started = [L2_HEAD], None, 0, 0, False
    buffered: list[tuple[int, dict]] = []
    for line in lines:
        recv_s, _, body = line.partition(b" ")
        recv, msg = int(recv_s) // 1000, orjson.loads(body)
        if "lastUpdateId" in msg:
            if last_u is None:  # no live book: this snapshot (re)starts it
                resets += started
                started, last_u, snap_recv = True, msg["lastUpdateId"], recv
                for side, levels in (("bid", msg["bids"]), ("ask", msg["asks"])):
                    out += [f"binance-futures,BTCUSDT,{msg['T'] * 1000},{recv},true,{side},{p},{q}" for p, q in levels]
                pending, buffered = buffered, []
                for r, d in pending:
                    _diff(out, d, max(r, snap_recv), last_u)
                    last_u = d["u"] if d["u"] >= msg["lastUpdateId"] else last_u
            continue
        d = msg.get("data", {})
        if d.get("e") != "depthUpdate":
            continue
        if last_u is None:
            buffered.append((recv, d))
        elif d["u"] < last_u:
            continue
        elif d["pu"] == last_u or d["U"] <= last_u <= d["u"]:
            _diff(out, d, recv, last_u)
            last_u = d["u"]
        else:
            last_u, buffered = None, [(recv, d)]  # a gap: wait for the next snapshot
    return "\n".join(out) + "\n", resets


def _diff(out: list[str], d: dict, recv: int, last_u: int) -> None:
    if d["u"] < last_u:
        return
    for side, levels in (("bid", d["b"]), ("ask", d["a"])):
        out += [f"binance-futures,BTCUSDT,{d['T'] * 1000},{recv},false,{side},{p},{q}" for p, q in levels]


def test_a_binance_capture_converted_to_tardis_gives_the_same_book(shared_data, tmp_path):
    capture = shared_data / "binance" / "ws" / "usdm_btcusdt_20240718.gz"
    text, resets = _tardis_from_capture(gzip.decompress(capture.read_bytes()).splitlines())
    path = tmp_path / "binance-futures_incremental_book_L2_2024-07-18_BTCUSDT.csv"
    path.write_text(text)
    ours, dropped, (day,) = tardis.rebuild_incremental_book(path, levels=10)
    theirs = read_ws_capture(capture, levels=10).book.book
    assert dropped == [] and day.report["resyncs"] == resets and day.venue == "binance-usdm"

    def per_second(book) -> dict:
        """The book at the end of every second with a state (the last row in it)."""
        secs = pc.floor_temporal(book["ts"], unit="second").to_pylist()
        rows = _rows(book, 10)
        return {s: r[2:] for s, r in zip(secs, rows)}

    a, b = per_second(ours), per_second(theirs)
    both = sorted(set(a) & set(b))
    print(f"{len(both)} seconds compared, {len(b)} with a book from the capture, {resets} resets")
    assert len(both) > 100 and len(both) >= 0.9 * len(b)
    assert [s for s in both if a[s] != b[s]] == []


def test_ingest_reads_tardis_files_and_names_a_bad_one(ray_cluster, shared_data, tmp_path):
    """The real samples, a derivative ticker, liquidations and a Binance monthly fundingRate file land in
    their datasets; a bad row of each is quarantined with its reason; a file of unknown columns fails alone."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = inputs / "okex-swap_trades_2021-01-01_BTC-USD-SWAP.csv"
    _write(bad, HEAD + ",id,side,price,amount,fee", ["okex-swap,BTC-USD-SWAP,1,2,3,buy,1,1,0"])
    _write(inputs / "deribit_derivative_ticker_2021-01-01_BTC-PERPETUAL.csv", DERIV_HEAD, [
        "deribit,BTC-PERPETUAL,1609459200000000,1609459200001000,,0.00012,,1500,29000,29001,29002",
        "deribit,BTC-PERPETUAL,1609459201000000,1609459201001000,,,,,,,",  # carries nothing
        "deribit,BTC-PERPETUAL,1609459202000000,1609459202001000,,0.00011,,,29000,-1,29003"])  # bad index price
    _write(inputs / "bybit_liquidations_2021-01-01_BTCUSDT.csv", HEAD + ",id,side,price,amount", [
        "bybit,BTCUSDT,1609459200000000,1609459200100000,,buy,29000,0.5",
        "bybit,BTCUSDT,1609459201000000,1609459201100000,,sell,29000,0"])  # no size
    # data.binance.vision's monthly fundingRate file (with its header row), settled every 8 hours
    (inputs / "BTCUSDT-fundingRate-2021-01.csv").write_text(
        "calc_time,funding_interval_hours,last_funding_rate\n1609459200000,8,0.00010000\n1609488000000,8,0.00020000\n")
    report = ingest([shared_data / "tardis", inputs], tmp_path / "lake")
    assert report.inputs_ok == 5 and len(report.failed) == 1
    assert report.failed[0].input == str(bad) and "unknown ['fee']" in report.failed[0].reason
    assert report.rows == {"book": 10, "open_interest": 1, "funding": 3, "liquidations": 1}
    assert {ds: dict(q) for ds, q in report.quarantined.items() if q} == {
        "book": {"null field": 1}, "funding": {"non-positive price": 1}, "liquidations": {"non-positive size": 1}}
    book = pq.read_table(tmp_path / "lake" / "book")
    assert book.num_rows == 10 and set(book["symbol"].to_pylist()) == {"BTCUSDT"}
    funding = sorted(pq.read_table(tmp_path / "lake" / "funding").to_pylist(), key=lambda r: (r["ts"], r["symbol"]))
    assert [(r["symbol"], r["funding_rate"], r["mark_price"]) for r in funding] == [
        ("BTC-PERPETUAL", 0.00012, 29002.0), ("BTCUSDT", 0.0001, None), ("BTCUSDT", 0.0002, None)]
    assert funding[1]["funding_ts"] == funding[1]["ts"]  # a settled rate belongs to its own time
    assert funding[0]["funding_ts"] is None  # the ticker gave no funding time
    lake = tmp_path / "lake"  # the new datasets' files are read back as Parquet in a lake schema
    again = ingest([lake / "funding", lake / "liquidations", lake / "open_interest"], tmp_path / "again")
    assert again.rows == {"funding": 3, "liquidations": 1, "open_interest": 1} and not again.failed


@pytest.mark.parametrize("header, why", [(HEAD + ",is_snapshot,side,price", "missing ['amount']")])
def test_a_file_without_the_documented_columns_is_refused_naming_it(tmp_path, header, why):
    path = tmp_path / "deribit_incremental_book_L2_2020-04-01_BTC-PERPETUAL.csv"
    _write(path, header, ["deribit,BTC-PERPETUAL,1,2,true,bid,1"])
    with pytest.raises(DataFormatError, match=f"{re.escape(str(path))}.*{re.escape(why)}"):
        tardis.rebuild_incremental_book(path, levels=5)
