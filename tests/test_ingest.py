"""Ray Data ingest into the lake: validation with quarantine, idempotence, unreadable inputs."""

import itertools
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from tickray import lake
from tickray.errors import DataFormatError
from tickray.features.job import build_features
from tickray.ingest.job import ingest
from tickray.sources.binance import byte_range_shards
from tickray.sources.parquet_rows import row_shards


def test_ingest_then_features(ray_cluster, market, tmp_path):
    out, files = market
    root = tmp_path / "lake"
    rep = ingest([out / "aggtrades", out / "depth", out / "klines"], root)
    assert rep.rows["trades"] == files.n_trades
    assert rep.rows["book"] == 2 * 86_400 and rep.rows["bars_1m"] == 2 * 1440
    assert sorted(lake.partitions(root, "trades")) == [("2024-01-01", "BTCUSDT"), ("2024-01-01", "ETHUSDT")]
    again = ingest([out / "aggtrades"], root)  # idempotent: partitions are replaced, not appended to
    assert again.rows["trades"] == files.n_trades == lake.dataset_rows(root, "trades")
    t = lake.read_partition(root, "trades", "2024-01-01", "BTCUSDT")
    assert t.column("ts").is_valid and t["ts"].type.unit == "ns" and str(t["ts"].type.tz) == "UTC"

    feats = build_features(root)
    assert feats.rows == {"features": 2 * 86_400, "bar_features": 2 * 1440}
    table = pq.read_table(root / "features")
    assert {"ofi_5s", "up_10s", "fwd_ret_60s", "symbol", "date"} <= set(table.column_names)


def test_bad_rows_are_quarantined_with_reasons(ray_cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "BADUSDT-aggTrades-2024-02-01.csv").write_text(
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
        "1,100.0,1.0,1,1,1706745600000,false\n"
        "2,-5.0,1.0,2,2,1706745600001,false\n"  # non-positive price
        "3,100.0,0.0,3,3,1706745600002,true\n"  # non-positive size
        "3,100.0,1.0,3,3,1706745600003,true\n"  # duplicate id
        "5,100.5,2.0,5,5,1706745500000,true\n"  # time going backwards
        "6,100.5,2.0,6,6,1706745600009,true\n"
    )
    (src / "notes.txt").write_text("not market data")
    root = tmp_path / "lake"
    rep = ingest([src], root)
    assert rep.skipped == [f"{src / 'notes.txt'} (no known format)"] and rep.lines()[-2] == f"skipped: {src / 'notes.txt'} (no known format)"
    assert rep.rows["trades"] == 2
    assert dict(rep.quarantined["trades"]) == {"non-positive price": 1, "non-positive size": 1,
                                               "duplicate trade id": 1, "timestamp going backwards": 1}
    q = pq.read_table(root / "quarantine" / "trades")
    assert q.num_rows == 4 and set(q["reason"].to_pylist()) == set(rep.quarantined["trades"])


def test_one_bad_file_is_one_failure_and_everything_else_lands(ray_cluster, shared_data, tmp_path, capsys):
    import shutil

    from tickray.cli import main
    from tickray.errors import PARTIAL_EXIT

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "binance/aggtrades/XRPETH-aggTrades-2019-10-11_13.derived_from_REST.csv", src)
    shutil.copy(shared_data / "binance/klines/DOTUSDT-1m-2024-11.zip", src)
    capture = (shared_data / "binance/ws/spot_btcusdt_20240808.gz").read_bytes()
    (src / "spot_btcusdt_20240808.gz").write_bytes(capture[: len(capture) // 2])  # cut off in transfer
    (src / "LTCUSDT-aggTrades-2024-01-01.zip").write_bytes(bytes(range(256)) * 8)  # garbage
    (src / "LTCUSDT-1m-2024-01.csv").write_bytes(b"")  # empty
    name = "AAPL_2012-06-21_34200000_57600000_{}_10.csv"  # LOBSTER with a trailing empty column
    for kind in ("message", "orderbook"):
        lines = (shared_data / "lobster" / f"TRUNCATED_{name.format(kind)}").read_text().splitlines()
        (src / name.format(kind)).write_text("".join(f"{line},\n" for line in lines))

    root = tmp_path / "lake"
    rep = ingest([src], root)
    assert rep.rows == {"trades": 12_477 + 159, "book": 999, "bars_1m": 43_200}
    assert rep.files == {"trades": 2, "book": 1, "bars_1m": 1}
    assert sorted(Path(f.input).name for f in rep.failed) == ["LTCUSDT-aggTrades-2024-01-01.zip",
                                                             "spot_btcusdt_20240808.gz"]
    reasons = {Path(f.input).name: f.reason for f in rep.failed}
    assert f"unreadable (truncated: the compressed data ends at byte {len(capture) // 2:,}" in reasons[
        "spot_btcusdt_20240808.gz"]
    assert str(src / "spot_btcusdt_20240808.gz") in reasons["spot_btcusdt_20240808.gz"]
    assert f"{src / 'LTCUSDT-1m-2024-01.csv'} (empty file)" in rep.skipped
    lines = rep.lines()
    assert f"inputs: 3 landed, 2 failed, 2 skipped; tracebacks in {rep.log}" == lines[-1]
    assert sum(line.startswith("failed: ") for line in lines) == 2
    assert rep.log.parent == root / "_logs" and rep.log.read_text().count("Traceback") == 2
    assert sorted(lake.partitions(root, "trades")) == [("2012-06-21", "AAPL"), ("2019-10-11", "XRPETH"),
                                                       ("2019-10-12", "XRPETH"), ("2019-10-13", "XRPETH")]
    assert not list(root.glob("_staging/*"))  # the failed inputs left nothing behind

    # The command line: the same summary, no traceback on the terminal, its own exit status.
    assert main(["ingest", str(src), "--lake", str(tmp_path / "cli")]) == PARTIAL_EXIT
    out = capsys.readouterr()
    assert "inputs: 3 landed, 2 failed, 2 skipped" in out.out and "Traceback" not in out.out + out.err
    assert main(["ingest", str(src / "LTCUSDT-1m-2024-01.csv"), "--lake", str(tmp_path / "cli")]) == 0
    with pytest.raises(DataFormatError, match="does not exist"):
        ingest([tmp_path / "nope"], tmp_path / "lake")


def test_every_real_file_ingests_with_its_quarantine_counted(ray_cluster, shared_data, tmp_path):
    root = tmp_path / "lake"
    rep = ingest([shared_data], root)  # the folder grows: what is asserted below is pinned to named files
    print("\n".join(rep.lines()))  # the per-reason counts, shown with -s
    assert rep.failed == [] and not rep.quarantined["trades"] and not rep.quarantined["bars_1m"]
    not_market_data = {Path(s.split(" (")[0]).suffix for s in rep.skipped if s.endswith("(no known format)")}
    assert not_market_data <= {".md"}  # notes
    assert [ln for ln in rep.lines() if ln.startswith("skipped: ")] == [f"skipped: {s}" for s in rep.skipped]
    assert any(ln.startswith("skipped: ") and ln.endswith("PROVENANCE.md (no known format)") for ln in rep.lines())

    def rows(dataset, symbol, *dates):
        return sum(lake.read_partition(root, dataset, d, symbol).num_rows for d in dates)

    # usdm_btcusdt_20240719 continues the 0718 session (its snapshot is in the other file): read as one.
    assert rows("trades", "BTCUSDT", "2024-07-18", "2024-07-19") == 974 + 9_727
    assert rows("book", "BTCUSDT", "2024-07-18", "2024-07-19") == 3_320 + 5_698
    # COIN-M across midnight: the snapshot (it names its symbol) then every diff after it, both days.
    assert rows("trades", "ETHUSD_PERP", "2024-08-08", "2024-08-09") == 3_595
    assert rows("book", "ETHUSD_PERP", "2024-08-08") == 22_806 and rows("book", "ETHUSD_PERP", "2024-08-09") == 16_328
    assert rows("trades", "AAPL", "2012-06-21") == 159 and rows("book", "AAPL", "2012-06-21") == 999
    assert rows("trades", "XRPETH", "2019-10-11", "2019-10-12", "2019-10-13") == 12_477
    assert rows("trades", "ESU4", "2024-07-01", "2024-07-02") == 120  # the DBN file; its CSV decode is a twin
    assert rows("book", "ESM4", "2024-05-08") == 185 and rows("book", "BTCUSDT", "2020-09-01") == 10  # MBO, Tardis
    assert {("2021-07-22", s) for s in ("SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT")} <= set(
        lake.partitions(root, "book"))
    assert ("2024-01-02", "6EH4") in set(lake.partitions(root, "bars_1m"))

    q = pq.read_table(root / "quarantine" / "book").to_pandas()
    q["file"] = q.source.map(lambda p: Path(p.split("+")[0]).name)
    by_file = q.groupby(["file", "reason"]).size().to_dict()
    assert by_file[("btcusdt-depth-update.csv", "diff with no book to apply to (no snapshot after it, or after a gap)")] == 1
    assert by_file[("btcusdt-depth-snap.csv", "null field")] == 1  # the bookDepth snap sample holds bids only
    assert by_file[("cm_ethusd_perp_20240808.gz", "diff older than the snapshot")] == 22
    assert by_file[("usdm_btcusdt_20240718.gz", "diff older than the snapshot")] == 5
    reasons = {Path(s.split(" (")[0]).name: s.split(" (", 1)[1] for s in rep.skipped}
    assert reasons["BINANCE_FUTURES.ws.1.0.jsonl"] == "same capture as BINANCE_FUTURES.ws.1.0.txt)"
    assert reasons["BINANCE_FUTURES.http.0.0.txt"] == "read with its WebSocket capture)"
    assert reasons["TRUNCATED_AAPL_2012-06-21_34200000_57600000_orderbook_10.csv"] == "read with its message file)"
    assert reasons["futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv"] == (
        "same data as futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.dbn.zst)")
    assert any(line.startswith("note: COIN-M: trade qty in contracts") for line in rep.lines())
    # every book source leaves each (book, day)'s gap report (and end state) beside the lake
    days = {(r["venue"], r["symbol"], r["day"]): r for r in rep.books}
    assert days[("binance-usdm", "BTCUSDT", "2024-07-19")]["start"] == "the day before's book"
    assert days[("GLBX.MDP3", "ESM4", "2024-05-08")]["applied"] == 185  # DBN MBO
    assert days[("deribit", "BTC-PERPETUAL", "2020-04-01")]["start"] == "its own snapshot"  # Tardis
    assert {r["venue"] for r in rep.books} >= {"binance-usdm", "binance-cm", "binance-spot"}  # cryptofeed's too
    assert len(list((root / "_books").glob("*/*/*.state.json"))) == len(rep.books)


def test_lake_parquet_round_trips_and_a_foreign_parquet_is_refused(ray_cluster, market, tmp_path):
    out, files = market
    first = tmp_path / "a"
    ingest([out / "aggtrades", out / "depth"], first)
    again = ingest([first / "trades", first / "book"], tmp_path / "b")  # files already in the lake schema
    assert again.rows == {"trades": files.n_trades, "book": 2 * 86_400}
    assert lake.read_partition(tmp_path / "b", "trades", "2024-01-01", "ETHUSDT").equals(
        lake.read_partition(first, "trades", "2024-01-01", "ETHUSDT"))
    foreign = tmp_path / "in" / "foreign.parquet"
    foreign.parent.mkdir()
    pq.write_table(pa.table({"when": [1], "what": ["x"]}), foreign)
    refused = ingest([foreign.parent], tmp_path / "c")
    assert [(f.input, f.reason.split(": its columns")[0]) for f in refused.failed] == [(str(foreign), str(foreign))]


def test_a_large_parquet_file_is_read_by_several_tasks_a_range_of_rows_each(ray_cluster, market, tmp_path):
    out, _ = market
    trades = lake.read_partition(ingest_once(out, tmp_path / "a"), "trades", "2024-01-01", "BTCUSDT")
    big = tmp_path / "in" / "symbol=BTCUSDT" / "big.parquet"
    big.parent.mkdir(parents=True)
    pq.write_table(trades.drop_columns(["symbol"]), big, row_group_size=2_000)
    groups = pq.ParquetFile(big).metadata.num_row_groups
    shard = sum(pq.ParquetFile(big).metadata.row_group(i).total_byte_size for i in range(3))
    rep = ingest([big], tmp_path / "b", shard_bytes=shard)  # about 3 row groups per task
    assert rep.rows == {"trades": trades.num_rows} and rep.files == {"trades": 1}
    parts = list((tmp_path / "b" / "trades" / "date=2024-01-01" / "symbol=BTCUSDT").glob("*.parquet"))
    cpus = int(ray.cluster_resources()["CPU"])
    shards = row_shards(big, shard, cpus)
    assert len(parts) == len(shards) >= groups // 4 and len(shards) % min(cpus, len(shards)) == 0  # a file per shard
    # even ranges that cut row groups, covering every row once
    assert shards[0][0] == 0 and shards[-1][1] == trades.num_rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shards))
    assert max(b - a for a, b in shards) - min(b - a for a, b in shards) <= 1
    assert any(a % 2_000 for a, _ in shards)
    assert lake.read_partition(tmp_path / "b", "trades", "2024-01-01", "BTCUSDT").equals(trades)


def test_a_large_plain_csv_is_read_in_byte_ranges_of_whole_lines(ray_cluster, market, tmp_path):
    import zipfile

    out, _ = market
    src = min((out / "aggtrades").glob("*.zip"))
    plain = tmp_path / "in" / src.name.replace(".zip", ".csv")
    plain.parent.mkdir()
    with zipfile.ZipFile(src) as z:
        plain.write_bytes(z.read(z.namelist()[0]))  # with its header row
    whole = ingest([plain], tmp_path / "whole")
    shard = plain.stat().st_size // 7 + 13  # ranges that cut lines anywhere
    sharded = ingest([plain], tmp_path / "sharded", shard_bytes=shard)
    assert sharded.rows == whole.rows and not sharded.quarantined["trades"]
    date, symbol = lake.partitions(tmp_path / "whole", "trades")[0]
    parts = list((tmp_path / "sharded" / "trades" / f"date={date}" / f"symbol={symbol}").glob("*.parquet"))
    assert len(parts) == len(byte_range_shards(plain, shard)) == 7
    assert lake.read_partition(tmp_path / "sharded", "trades", date, symbol).equals(
        lake.read_partition(tmp_path / "whole", "trades", date, symbol))


def ingest_once(market_dir, root):
    ingest([market_dir / "aggtrades"], root)
    return root


def test_unusable_capture_messages_are_quarantined_not_lost(ray_cluster, shared_data, tmp_path):
    import gzip

    src = tmp_path / "in" / "usdm_btcusdt_20240718.gz"
    src.parent.mkdir()
    lines = gzip.decompress((shared_data / "binance/ws/usdm_btcusdt_20240718.gz").read_bytes()).splitlines()
    lines.insert(100, b"1721347021500000000 {this is not json")
    lines.insert(200, b'1721347021600000000 {"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","T":1}}')
    src.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    rep = ingest([src.parent], tmp_path / "lake")
    assert rep.rows["trades"] == 974
    assert dict(rep.quarantined["trades"]) == {"unparsable line": 1, "malformed trade message (KeyError)": 1}
    q = pq.read_table(tmp_path / "lake" / "quarantine" / "trades")
    assert set(q["symbol"].to_pylist()) == {"BTCUSDT"} and q["ts"].null_count == 0


def test_partitions_hold_their_rows_sorted_by_time_whatever_the_input_order(tmp_path):
    """Rows of two symbols over two days interleaved, times out of order, a row with no symbol: each
    partition's file holds exactly its rows by time (equal times in input order), as a plain grouping says."""
    import random

    rnd = random.Random(5)
    rows = [{"ts": rnd.randrange(0, 2 * 86_400) * 10**9 + 1_704_067_200 * 10**9, "symbol": rnd.choice(["A", "B", None]),
             "price": float(i)} for i in range(3_000)]
    rows += [{"ts": rows[0]["ts"], "symbol": rows[0]["symbol"], "price": -1.0}]  # a tie, after its twin
    t = pa.Table.from_pylist(rows, pa.schema([("ts", pa.timestamp("ns", tz="UTC")), ("symbol", pa.string()),
                                              ("price", pa.float64())]))
    t = t.append_column("date", lake.date_column(t["ts"]))
    written = lake.write_partitions(t, tmp_path, "x")
    want: dict[tuple, list] = {}
    for r in rows:
        day = "2024-01-01" if r["ts"] < 1_704_153_600 * 10**9 else "2024-01-02"
        want.setdefault((day, r["symbol"] or lake.UNKNOWN), []).append((r["ts"], r["price"]))
    assert sorted((d, s, n) for d, s, n in written) == sorted((d, s, len(v)) for (d, s), v in want.items())
    for (day, symbol), expected in want.items():
        got = pq.read_table(tmp_path / f"date={day}" / f"symbol={symbol}" / "part-x.parquet")
        got_rows = list(zip(got["ts"].cast(pa.int64()).to_pylist(), got["price"].to_pylist()))
        assert got_rows == sorted(expected, key=lambda e: e[0])


def test_mark_prices_and_forced_orders_in_a_capture_land_in_funding_and_liquidations(ray_cluster, shared_data,
                                                                                    tmp_path):
    """@markPrice and @forceOrder messages, written here as Binance documents them, interleaved with the
    real USD-M capture: `funding` and `liquidations` rows as the messages say (empty funding fields null,
    never 0), the capture's trades and book as without them, a forced order of no known side quarantined."""
    import gzip
    import json

    real = gzip.decompress((shared_data / "binance/ws/usdm_btcusdt_20240718.gz").read_bytes()).splitlines()
    e = 1_721_347_030_000  # 9 s into the capture
    marks = [{"e": "markPriceUpdate", "E": e + i * 1000, "s": "BTCUSDT", "p": f"{64000 + i}.5", "i": f"{63990 + i}.25",
              "P": "64001.10", "r": "0.00010000", "T": 1_721_376_000_000} for i in range(3)]
    marks.append({"e": "markPriceUpdate", "E": e + 5000, "s": "BTCUSDT", "p": "64010.0", "i": "", "P": "", "r": "",
                  "T": 0})  # what a delivery contract sends: no funding
    order = {"s": "BTCUSDT", "o": "LIMIT", "f": "IOC", "X": "FILLED"}
    forced = [{"e": "forceOrder", "E": e + 2500, "o": {**order, "S": "SELL", "q": "0.014", "p": "63900", "ap": "63950.5",
                                                     "l": "0.014", "z": "0.014", "T": e + 2499}},
              {"e": "forceOrder", "E": e + 3500, "o": {**order, "S": "BUY", "q": "0.5", "p": "64100", "ap": "0",
                                                     "X": "NEW", "l": "0", "z": "0", "T": e + 3499}},
              {"e": "forceOrder", "E": e + 4500, "o": {**order, "S": "UP", "q": "1", "p": "1", "ap": "1", "l": "1",
                                                     "z": "1", "T": e + 4499}}]
    extra = [(m["E"] * 1_000_000 + 1, {"stream": "btcusdt@markPrice@1s", "data": m}) for m in marks]
    extra += [(m["E"] * 1_000_000 + 1, {"stream": "btcusdt@forceOrder", "data": m}) for m in forced]
    lines = [(int(line.split(b" ", 1)[0]), line) for line in real]
    lines += [(t, f"{t} {json.dumps(m)}".encode()) for t, m in extra]
    lines.sort(key=lambda x: x[0])  # stable: the capture's own order is kept
    plain, mixed = tmp_path / "plain" / "usdm_btcusdt_20240718.gz", tmp_path / "mixed" / "usdm_btcusdt_20240718.gz"
    for path, content in ((plain, real), (mixed, [line for _, line in lines])):
        path.parent.mkdir()
        path.write_bytes(gzip.compress(b"\n".join(content) + b"\n"))

    before, rep = ingest([plain.parent], tmp_path / "lake1"), ingest([mixed.parent], tmp_path / "lake2")
    assert rep.rows == {**before.rows, "funding": 4, "liquidations": 2}
    assert dict(rep.quarantined["trades"]) == {"malformed forceOrder message (KeyError)": 1}
    funding = lake.read_partition(tmp_path / "lake2", "funding", "2024-07-18", "BTCUSDT")
    assert funding["mark_price"].to_pylist() == [64000.5, 64001.5, 64002.5, 64010.0]
    assert funding["index_price"].to_pylist() == [63990.25, 63991.25, 63992.25, None]
    assert funding["funding_rate"].to_pylist() == [0.0001] * 3 + [None]
    assert funding["funding_ts"].cast(pa.int64()).to_pylist() == [1_721_376_000_000 * 10**6] * 3 + [None]
    liq = lake.read_partition(tmp_path / "lake2", "liquidations", "2024-07-18", "BTCUSDT")
    assert liq["side"].to_pylist() == [-1, 1]  # SELL closes a long; BUY a short
    assert liq["price"].to_pylist() == [63950.5, 64100.0] and liq["qty"].to_pylist() == [0.014, 0.5]
    for ds in ("trades", "book"):
        assert lake.read_partition(tmp_path / "lake2", ds, "2024-07-18", "BTCUSDT").equals(
            lake.read_partition(tmp_path / "lake1", ds, "2024-07-18", "BTCUSDT"))


def _lake_rows(root: Path, dataset: str) -> pa.Table:
    return pa.concat_tables(lake.read_partition(root, dataset, d, s) for d, s in sorted(lake.partitions(root, dataset)))


def _as_in_lake(t: pa.Table, like: pa.Table) -> pa.Table:
    """``t`` sorted by time (stable: rows of equal time keep their order), in ``like``'s columns."""
    return t.sort_by([("ts", "ascending")]).select(like.column_names)


def test_capture_days_rebuilt_a_task_each_equal_one_sequential_rebuild(ray_cluster, shared_data, tmp_path, capsys):
    """A task per capture day, each day's books going on from the book the day before ended with, lands the
    rows one read of the whole session gives, row for row: on the real COIN-M session across midnight
    (its second day has no snapshot of its own) and on a generated three-day capture with a gap planted on
    day two. Each (book, day) has its gap report, and a day ingested on its own later goes on from the
    book the lake stored for the day before."""
    from tickray.lake import book_days
    from tickray.sim.synth import capture_days
    from tickray.sources.binance import read_ws_capture

    ws = shared_data / "binance" / "ws"
    coinm = [ws / "cm_ethusd_perp_20240808.gz", ws / "cm_ethusd_perp_20240809.gz"]
    generated = capture_days(tmp_path / "gen", "ETHUSDT", 3, seed=5, step_s=30, trades_per_day=3000, gap_day=1)
    reports = {}
    for files in (coinm, generated):
        root = tmp_path / files[0].name / "lake"
        rep = ingest(files, root)
        assert not rep.failed and rep.waves == len(files)  # each day waited for the day before
        whole = read_ws_capture(files)  # the sequential rebuild: one read, the books carried in memory
        for dataset, expected in (("book", whole.book.book), ("trades", whole.trades)):
            got = _lake_rows(root, dataset)
            assert got.num_rows > 1000 and got.equals(_as_in_lake(expected, got)), dataset
        assert rep.quarantined["book"] == Counter(why for *_, why in whole.book.dropped)
        reports[files[0].name] = {r["day"]: r for r in rep.books}
        assert book_days.reports(root) == rep.books

    cm = reports["cm_ethusd_perp_20240808.gz"]
    assert cm["2024-08-08"]["start"] == "nothing (its first diffs waited for a snapshot)"
    assert cm["2024-08-09"]["start"] == "the day before's book"
    assert cm["2024-08-09"]["first"] > cm["2024-08-08"]["last"]
    assert [(r["gaps"], r["resyncs"]) for r in cm.values()] == [(0, 0), (0, 0)]
    gen = reports["usdm_ethusdt_20240101.gz"]
    assert [r["start"] for r in gen.values()] == ["its own snapshot", "the day before's book", "the day before's book"]
    assert [(r["gaps"], r["resyncs"]) for r in gen.values()] == [(0, 0), (1, 1), (0, 0)]
    # the lost diff shows at the next one, 30 s later; the snapshot comes 14 diffs after that (receive clock)
    assert [r["unsynced_s"] for r in gen.values()] == [0.0, pytest.approx(14 * 30, abs=0.1), 0.0]

    # The COIN-M days ingested one at a time: the second goes on from the book the first stored.
    root = tmp_path / "one_by_one"
    ingest(coinm[:1], root)
    later = ingest(coinm[1:], root)
    assert later.books[0]["start"] == "the day before's book" and later.books[0]["gaps"] == 0
    both = tmp_path / "cm_ethusd_perp_20240808.gz" / "lake"
    for dataset in ("book", "trades"):
        assert _lake_rows(root, dataset).equals(_lake_rows(both, dataset)), dataset

    # The first day cut off in transfer: it fails alone, and the second lands without its book, saying so.
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / coinm[0].name).write_bytes(coinm[0].read_bytes()[: coinm[0].stat().st_size // 3])
    (cut / coinm[1].name).write_bytes(coinm[1].read_bytes())
    rep = ingest([cut], tmp_path / "cut_lake")
    assert [Path(f.input).name for f in rep.failed] == [coinm[0].name] and rep.inputs_ok == 1
    assert [n for _, n in rep.notes if "did not land" in n] == [
        f"the day before ({coinm[0].name}) did not land: its books start without it"]
    assert rep.books[0]["start"] == "nothing (its first diffs waited for a snapshot)" and rep.rows["book"] == 0

    from tickray.cli.ops import _book_days_status  # what `tickray status` says of the lake's book days

    _book_days_status(tmp_path / "usdm_ethusdt_20240101.gz" / "lake")
    assert capsys.readouterr().out.strip() == ("lake   books binance-usdm: 1 symbols, 3 (book, day)s, 2024-01-01 to "
                                               f"2024-01-03; 1 gaps, 1 resyncs, {gen['2024-01-02']['unsynced_s']:.1f} s unsynced")
