"""Readers of the non-Binance venues and of cryptofeed's multi-symbol captures, on the real files."""

import numpy as np
import pyarrow.compute as pc
from tickray.sources.binance import read_ws_capture
from tickray.sources.cme import read_bars_csv, read_mbp1
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
    trades, book = read_mbp1(shared_data / "cme" / "futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv")
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
