"""Generic futures/options tick files mapped by a YAML tick schema."""

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tickray import lake
from tickray.ingest.job import ingest
from tickray.sources import databento

CME = "cme/futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv"


def test_a_mapped_csv_ingests_like_the_native_reader(ray_cluster, shared_data, tmp_path):
    """The real Databento MBP-1 file rewritten in another vendor's layout (renamed columns, microsecond
    times, trades in their own columns) and mapped by a schema gives the native reader's rows."""
    df = pd.read_csv(shared_data / CME)
    trade = df["action"] == "T"
    out = pd.DataFrame({
        "time_us": df["ts_event_ns"] // 1000, "contract": df["symbol"],
        "last_px": df["price"].where(trade), "last_qty": df["size"].where(trade),
        "aggr": df["side"].where(trade), "bid_px_1": df["bid_px_00"], "bid_sz_1": df["bid_sz_00"],
        "bid_n_1": df["bid_ct_00"], "ask_px_1": df["ask_px_00"], "ask_sz_1": df["ask_sz_00"],
        "ask_n_1": df["ask_ct_00"]})
    data = tmp_path / "vendor"
    data.mkdir()
    out.to_csv(data / "es_ticks.csv", index=False)
    (data / "es.tickschema.yaml").write_text("""
files: "es_*.csv"
timestamp: {column: time_us, unit: us}
symbol: {column: contract}
trade: {price: last_px, size: last_qty, side: {column: aggr, buy: B, sell: A}}
book: {levels: 1, bid_price: "bid_px_{level}", bid_size: "bid_sz_{level}", bid_orders: "bid_n_{level}",
       ask_price: "ask_px_{level}", ask_size: "ask_sz_{level}", ask_orders: "ask_n_{level}"}
""")
    report = ingest([data], tmp_path / "lake")
    native_trades, native_book = databento.read_mbp1_csv(shared_data / CME)
    # the native reader's event times are ns; the vendor copy has µs: compare at µs
    assert report.rows["book"] + sum(report.quarantined["book"].values()) == native_book.num_rows
    assert report.rows["trades"] + sum(report.quarantined["trades"].values()) == native_trades.num_rows
    got = pq.read_table(tmp_path / "lake" / "trades").sort_by([("ts", "ascending"), ("price", "ascending")])
    want = native_trades.filter(pc.is_valid(native_trades["side"]))
    assert got.num_rows == want.num_rows
    assert sorted(got["qty"].to_pylist()) == sorted(want["qty"].to_pylist())
    assert sorted(got["side"].to_pylist()) == sorted(want["side"].to_pylist())
    assert "tick schema: maps 1 files" in " ".join(report.skipped)


def test_options_with_open_interest_and_inferred_sides(ray_cluster, tmp_path):
    data = tmp_path / "opts"
    data.mkdir()
    # no header; no aggressor column: sides come from the quote, then the tick rule
    rows = [
        "2024-12-02T14:30:00,ES,2024-12-20,6000,C,10.00,10.50,10.50,2,100",   # at the ask: buy
        "2024-12-02T14:30:01,ES,2024-12-20,6000,C,10.00,10.50,10.00,1,101",   # at the bid: sell
        "2024-12-02T14:30:02,ES,2024-12-20,6000,C,10.00,10.50,10.25,3,",      # inside, an uptick: buy
        "2024-12-02T14:30:03,ES,2024-12-20,5900,P,4.00,4.25,,,55",            # quote and OI only
        "2024-12-02T14:30:04,ES,2024-12-20,5900,P,4.00,4.25,4.25,5,-1",       # negative OI: quarantined
    ]
    (data / "opt_ticks_1.csv").write_text("\n".join(rows) + "\n")
    (data / "opt.tickschema.yaml").write_text("""
files: "opt_ticks_*.csv"
header: false
columns: [ts, root, expiry, strike, cp, bid, ask, px, qty, oi]
timestamp: {column: ts, unit: iso}
symbol: {column: root}
option: {expiry: expiry, strike: strike, right: cp}
trade: {price: px, size: qty}
book: {levels: 1, bid_price: bid, bid_size: qty, ask_price: ask, ask_size: qty}
open_interest: oi
""")
    root = tmp_path / "lake"
    report = ingest([data], root)
    assert {s for _, s in lake.partitions(root, "trades")} == {"ES-20241220-6000-C", "ES-20241220-5900-P"}
    calls = lake.read_partition(root, "trades", "2024-12-02", "ES-20241220-6000-C")
    assert calls["side"].to_pylist() == [1, -1, 1]
    assert report.rows["open_interest"] == 3 and dict(report.quarantined["open_interest"]) == {
        "negative open interest": 1}
    oi = lake.read_partition(root, "open_interest", "2024-12-02", "ES-20241220-5900-P")
    assert oi["open_interest"].to_pylist() == [55.0]


def test_a_bad_schema_or_a_missing_column_names_the_cause(ray_cluster, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "x.csv").write_text("t,p\n1,2\n")
    (data / "x.tickschema.yaml").write_text("files: x.csv\ntimestamp: {column: t}\nsymbol: {value: X}\n"
                                            "trade: {price: p, size: q}\n")
    (failed,) = ingest([data], tmp_path / "lake").failed
    assert failed.input == str(data / "x.csv")
    assert "x.csv: schema key trade.size names column 'q', which the file lacks" in failed.reason
    (data / "x.tickschema.yaml").write_text("files: x.csv\ntimestamp: {column: t, unit: hours}\nsymbol: {value: X}\n")
    rep = ingest([data], tmp_path / "lake")
    assert [f.input for f in rep.failed] == [str(data / "x.tickschema.yaml")]
    assert "x.tickschema.yaml: bad tick schema at timestamp.unit" in rep.failed[0].reason
