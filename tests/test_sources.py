"""Readers of the non-Binance venues and of cryptofeed's multi-symbol captures, on the real files."""

import numpy as np
import pyarrow.compute as pc
from tickray.sources.binance import read_ws_capture
from tickray.sources.cme import read_bars_csv
from tickray.sources.databento import read_mbp1_csv
from tickray.sources.lobster import read_lobster


def test_lobster_times_are_new_york_and_aggressor_is_opposite_the_resting_order(shared_data):
    trades, book, unknown = read_lobster(
        shared_data / "lobster" / "TRUNCATED_AAPL_2012-06-21_34200000_57600000_message_10.csv")
    assert book.num_rows == 999 and unknown == [] and trades.num_rows == 98 + 61  # executions: visible (4) and hidden (5)
    assert str(book["ts"][0]) == "2012-06-21 13:30:00.004241176+00:00"  # 09:30 in New York (EDT)
    first = trades.slice(0, 1).to_pylist()[0]
    assert first["price"] == 585.74 and first["side"] == 1  # a resting sell (-1) executed: a buy
    assert pc.all(pc.less(book["bid_px_1"], book["ask_px_1"])).as_py()
    assert book["bid_px_10"].null_count == 0 and book["bid_ct_1"].null_count == 999


def test_lobster_with_a_trailing_empty_column_or_without_its_orderbook(shared_data, tmp_path):
    name = "AAPL_2012-06-21_34200000_57600000_{}_10.csv"
    for kind in ("message", "orderbook"):  # the variant real downloads have: a trailing comma on every line
        lines = (shared_data / "lobster" / f"TRUNCATED_{name.format(kind)}").read_text().splitlines()
        (tmp_path / name.format(kind)).write_text("".join(f"{line},\n" for line in lines))
    trades, book, unknown = read_lobster(tmp_path / name.format("message"))
    assert trades.num_rows == 159 and book.num_rows == 999 and unknown == []
    assert book["ask_px_1"][0].as_py() == 585.94 and book["bid_sz_10"].null_count == 0
    (tmp_path / name.format("orderbook")).unlink()
    alone, no_book, unknown = read_lobster(tmp_path / name.format("message"))
    assert alone.equals(trades) and no_book.num_rows == 0
    reason = "no orderbook file: the book after this message is unknown"
    assert len(unknown) == 999 and {u[1:] for u in unknown} == {("AAPL", reason)}


def test_mbp1_keeps_every_fill_and_the_order_counts(shared_data):
    trades, book = read_mbp1_csv(shared_data / "cme" / "futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv")
    assert trades.num_rows == 120 and book.num_rows == 2288
    ids = trades["trade_id"].to_numpy()
    assert np.unique(ids).size == ids.size  # fills sharing a packet sequence stay distinct
    assert set(trades["side"].to_pylist()) == {-1, 1}
    assert book["bid_ct_1"].null_count == 0 and book["bid_px_2"].null_count == 2288


def test_cme_bars(shared_data):
    bars = read_bars_csv(shared_data / "cme" / "6EH4.XCME_1min_bars_20240101_20240131.csv.gz")
    assert bars.num_rows == 29_996 and set(bars["symbol"].to_pylist()) == {"6EH4"}
    assert bars["vwap"].null_count == bars.num_rows  # not given by the vendor: null, not invented


def test_cryptofeed_capture_rebuilds_four_books_from_the_rest_log(shared_data):
    d = shared_data / "binance" / "ws_cryptofeed"
    cap = read_ws_capture(d / "BINANCE_FUTURES.ws.1.0.txt", snapshots=d / "BINANCE_FUTURES.http.0.0.txt")
    assert set(cap.book.book["symbol"].to_pylist()) == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
    assert cap.book.gaps == 0 and cap.book.unsynced_dropped == 0 and cap.streams["snapshot"] == 4
    assert cap.trades.num_rows == 8 + 38 + 5 + 40
    jsonl = read_ws_capture(d / "BINANCE_FUTURES.ws.1.0.jsonl", snapshots=d / "BINANCE_FUTURES.http.0.0.txt")
    assert jsonl.trades.equals(cap.trades) and jsonl.book.book.equals(cap.book.book)


def test_binance_trades_and_book_ticker_files(tmp_path):
    from tickray.sources.binance import read_book_ticker, read_trades

    futures = tmp_path / "BTCUSDT-trades-2024-01-01.csv"
    futures.write_text("id,price,qty,quote_qty,time,is_buyer_maker\n"
                       "1,42000.1,0.5,21000.05,1704067200001,true\n2,42000.2,0.1,4200.02,1704067200002,false\n")
    spot = tmp_path / "ETHBTC-trades-2025-01-01.csv"  # spot: no header, is_best_match, µs since 2025
    spot.write_text("7,0.05,1.0,0.05,1735689600000001,False,True\n")
    t = read_trades(futures)
    assert t["side"].to_pylist() == [-1, 1] and t["trade_id"].to_pylist() == [1, 2]
    s = read_trades(spot).to_pylist()[0]
    assert s["symbol"] == "ETHBTC" and str(s["ts"]) == "2025-01-01 00:00:00.000001+00:00" and s["side"] == 1
    ticker = tmp_path / "BTCUSDT-bookTicker-2024-01-01.csv"
    ticker.write_text("update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time\n"
                      "10,42000.0,1.5,42000.1,2.0,1704067200005,1704067200006\n")
    b = read_book_ticker(ticker).to_pylist()[0]
    assert (b["bid_px_1"], b["ask_sz_1"], b["bid_px_2"]) == (42000.0, 2.0, None)


# ---------------------------------------------------------------- Binance futures captures against an oracle
# A plain book written from Binance's documented procedure for USD-M and COIN-M ("How to manage a local
# order book correctly"): buffer diffs, take the snapshot, drop diffs with u < lastUpdateId, the first one
# applied has U <= lastUpdateId <= u, each later one's pu equals the previous u; sizes are absolute, 0
# removes the level. Nothing of tickray's is used.

def _capture_lines(*paths):
    import gzip

    import orjson

    for path in paths:
        for line in gzip.decompress(path.read_bytes()).splitlines():
            head, _, body = line.partition(b" ")
            yield int(head), orjson.loads(body)


def _oracle_futures_book(lines, depth=10):
    """(states, bookTickers): a state per applied diff (and the snapshot) as (U, u, top `depth` bids,
    top `depth` asks); bookTickers as (u, bid, bid qty, ask, ask qty)."""
    bids, asks, buffered, states, tickers = {}, {}, [], [], []
    last_u = None

    def top():
        return (sorted(bids.items(), reverse=True)[:depth], sorted(asks.items())[:depth])

    def apply(d):
        nonlocal last_u
        if last_u is None:
            buffered.append(d)
            return
        if d["u"] < snapshot_id:
            return
        if not states[1:]:  # the first diff after the snapshot
            assert d["U"] <= snapshot_id <= d["u"]
        else:
            assert d["pu"] == last_u, "a gap: the capture has none"
        for side, book in (("b", bids), ("a", asks)):
            for p, q in d[side]:
                if float(q) == 0:
                    book.pop(float(p), None)
                else:
                    book[float(p)] = float(q)
        last_u = d["u"]
        states.append((d["U"], d["u"], *top()))

    snapshot_id = None
    for _, msg in lines:
        if "lastUpdateId" in msg:
            snapshot_id = last_u = msg["lastUpdateId"]
            bids.update((float(p), float(q)) for p, q in msg["bids"])
            asks.update((float(p), float(q)) for p, q in msg["asks"])
            states.append((snapshot_id, snapshot_id, *top()))
            for d in buffered:
                apply(d)
            continue
        d = msg["data"]
        if d["e"] == "depthUpdate":
            apply(d)
        elif d["e"] == "bookTicker":
            tickers.append((d["u"], float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"])))
    return states, tickers


def _book_rows(table, depth=10):
    cols = {c: table[c].to_pylist() for c in table.column_names}
    return [([(cols[f"bid_px_{i}"][r], cols[f"bid_sz_{i}"][r]) for i in range(1, depth + 1)],
             [(cols[f"ask_px_{i}"][r], cols[f"ask_sz_{i}"][r]) for i in range(1, depth + 1)])
            for r in range(table.num_rows)]


def test_coinm_session_across_midnight_rebuilds_the_venues_book(shared_data):
    files = [shared_data / "binance/ws/cm_ethusd_perp_20240808.gz", shared_data / "binance/ws/cm_ethusd_perp_20240809.gz"]
    cap = read_ws_capture(files)
    states, tickers = _oracle_futures_book(_capture_lines(*files))
    diffs = cap.streams["depthUpdate"]
    assert diffs == 39_155 and len(states) - 1 >= 0.95 * diffs  # applied after the sync
    assert cap.book.applied == len(states) - 1 and cap.book.gaps == 0
    assert _book_rows(cap.book.book) == [(b, a) for *_, b, a in states]  # every state, ten levels a side
    days = cap.book.book["ts"].cast("int64").to_numpy() // (86_400 * 10**9)
    assert (days == days[0] + 1).sum() > 15_000  # the book carried across midnight without a new snapshot
    # The venue's own bookTicker: where its update id names a rebuilt state (a diff's u, or between one
    # diff's u and the next one's U), the rebuilt best bid and ask must be what it shows.
    import bisect

    us = [s[1] for s in states]
    matched = compared = 0
    for u, bid, bid_qty, ask, ask_qty in tickers:
        i = bisect.bisect_right(us, u) - 1
        if i < 0 or not (us[i] == u or i + 1 < len(states) and u < states[i + 1][0]):
            continue
        compared += 1
        (*_, bids, asks) = states[i]
        matched += (bids[0], asks[0]) == ((bid, bid_qty), (ask, ask_qty))
    assert compared > 2_000 and matched >= 0.99 * compared, (matched, compared)
    assert cap.trades.num_rows == cap.streams["trade"] == 3_595
    assert set(cap.trades["symbol"].to_pylist()) == {"ETHUSD_PERP"}
    assert any("trade qty in contracts" in n for n in cap.notes())


def test_a_capture_stamped_in_microseconds_reads_like_the_ns_one(shared_data, tmp_path):
    import gzip

    import orjson

    ns_file = shared_data / "binance/ws/usdm_btcusdt_20240718.gz"
    lines = list(_capture_lines(ns_file))
    out = []
    for i, (recv, msg) in enumerate(lines):
        out.append(f"{recv // 1000} ".encode() + orjson.dumps(msg))
        if i % 50 == 0 and "data" in msg and msg["data"].get("e") == "trade":  # as older captures carry
            d = msg["data"]
            mark = {"e": "markPriceUpdate", "E": d["E"], "s": "BTCUSDT", "p": d["p"], "i": d["p"],
                    "P": d["p"], "r": "0.00010000", "T": 1721376000000}
            out.append(f"{recv // 1000} ".encode() + orjson.dumps({"stream": "btcusdt@markPrice@1s", "data": mark}))
    us_file = tmp_path / "usdm_btcusdt_20240718.gz"
    us_file.write_bytes(gzip.compress(b"\n".join(out) + b"\n"))

    ns, us = read_ws_capture(ns_file), read_ws_capture(us_file)
    assert us.recv_units == {str(us_file): "µs"} and ns.recv_units == {str(ns_file): "ns"}
    assert us.trades.equals(ns.trades) and us.book.book.equals(ns.book.book)
    assert not us.quarantine and us.streams["markPriceUpdate"] == sum(1 for line in out if b"markPrice" in line) > 0
    assert "receive times in µs (told by their magnitude)" in us.notes()
    marks = [orjson.loads(line.split(b" ", 1)[1])["data"] for line in out if b"markPrice" in line]
    assert us.funding["mark_price"].to_pylist() == [float(m["p"]) for m in marks]  # they land in `funding`
    states, _ = _oracle_futures_book(lines)
    assert _book_rows(us.book.book) == [(b, a) for *_, b, a in states]
