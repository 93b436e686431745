"""Databento DBN on the real GLBX.MDP3 files: MBP-1 against the CSV decode beside it, the MBO book against a
plain order book written here over records decoded by Databento's own library, and bad files."""

import csv
import datetime as dt
import math
from types import SimpleNamespace

import databento_dbn as dbn
import pyarrow.parquet as pq
import pytest
from tickray import lake
from tickray.errors import DataFormatError
from tickray.ingest.job import ingest
from tickray.sources import databento

MBP1 = "cme/databento/futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.dbn.zst"
MBP1_CSV = "cme/futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv"
MBO = "cme/databento/orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst"


def _decoded(path) -> list:
    """Metadata and records, by Databento's decoder alone."""
    dec = dbn.DBNDecoder(has_metadata=True, compression=dbn.Compression.ZSTD)
    dec.write(path.read_bytes())
    return dec.decode()


def test_mbp1_equals_the_csv_decode_beside_it(shared_data):
    tables, dropped = _tables_and_book_drops(databento.read_dbn(shared_data / MBP1))
    with open(shared_data / MBP1_CSV) as f:
        rows = list(csv.DictReader(f))
    book = tables["book"].to_pylist()
    assert dropped == [] and len(book) == len(rows) == 2288
    for got, want in zip(book, rows):
        assert got["ts"].value == int(want["ts_event_ns"]) and got["symbol"] == want["symbol"] == "ESU4"
        assert (got["bid_px_1"], got["ask_px_1"]) == (float(want["bid_px_00"]), float(want["ask_px_00"]))
        assert (got["bid_sz_1"], got["ask_sz_1"]) == (float(want["bid_sz_00"]), float(want["ask_sz_00"]))
        assert (got["bid_ct_1"], got["ask_ct_1"]) == (int(want["bid_ct_00"]), int(want["ask_ct_00"]))
    trades = tables["trades"].to_pylist()
    want = [r for r in rows if r["action"] == "T"]
    assert len(trades) == len(want) == 120
    assert [(t["ts"].value, t["price"], t["qty"], t["side"]) for t in trades] == [
        (int(r["ts_event_ns"]), float(r["price"]), float(r["size"]), {"B": 1, "A": -1}.get(r["side"])) for r in want]
    assert len({t["trade_id"] for t in trades}) == 120


def _reference_books(records, levels: int) -> list[tuple]:
    """A plain MBO book: orders by id; Add, Cancel (of part of the size), Modify, Clear; a state at every
    F_LAST record, each level summed from the orders afresh."""
    orders: dict[int, list] = {}
    out = []
    for r in records:
        a = r.action
        if a == "R":
            orders.clear()
        elif a == "A":
            orders[r.order_id] = [r.side, r.price, r.size]
        elif a == "C" and r.order_id in orders:
            orders[r.order_id][2] -= r.size
            if orders[r.order_id][2] <= 0:
                del orders[r.order_id]
        elif a == "M" and r.order_id in orders:
            orders[r.order_id] = [r.side, r.price, r.size]
        if int(r.flags) & dbn.F_LAST:
            state = []
            for side, best_first in (("B", True), ("A", False)):
                agg: dict[int, list] = {}
                for s, p, q in orders.values():
                    if s == side:
                        agg.setdefault(p, [0, 0])
                        agg[p][0] += q
                        agg[p][1] += 1
                state.append([(p / 1e9, float(agg[p][0]), agg[p][1]) for p in sorted(agg, reverse=best_first)[:levels]])
            out.append(tuple(state))
    return out


def _levels(row: dict, levels: int) -> tuple:
    return tuple([(row[f"{s}_px_{i}"], row[f"{s}_sz_{i}"], row[f"{s}_ct_{i}"]) for i in range(1, levels + 1)
                  if row[f"{s}_px_{i}"] is not None and not math.isnan(row[f"{s}_px_{i}"])] for s in ("bid", "ask"))


def _tables_and_book_drops(rows: dict) -> tuple[dict, list]:
    return {ds: t for ds, (t, _) in rows.items()}, rows["book"][1]


def test_mbo_book_equals_a_plain_order_book(shared_data):
    records = _decoded(shared_data / MBO)[1:]
    days = []
    tables, dropped = _tables_and_book_drops(databento.read_dbn(shared_data / MBO, levels=10, days=days))
    want = _reference_books(records, 10)
    book = tables["book"].to_pylist()
    assert dropped == [] and len(book) == len(want) == 185
    assert [_levels(r, 10) for r in book] == want
    # the day's end state is the whole book (every level, with its order count) as the file ends
    (day,) = days
    assert int(records[-1].flags) & dbn.F_LAST
    bids, asks = _reference_books(records, 10**6)[-1]
    assert [tuple(lv) for lv in day.state["bids"]] == [(p, int(q), c) for p, q, c in bids] and len(bids) > 100
    assert [tuple(lv) for lv in day.state["asks"]] == [(p, int(q), c) for p, q, c in asks]
    assert (day.venue, day.symbol, day.day) == ("GLBX.MDP3", "ESM4", "2024-05-08")
    assert (day.report["start"], day.report["applied"], day.report["resyncs"]) == ("its own snapshot", 185, 0)
    # the snapshot is one state at its receive time (its orders' own times are days earlier)
    assert book[0]["ts"].value == 1715126400000000000 and len(want[0][0]) == 10
    trades = tables["trades"].to_pylist()
    assert [(t["price"], t["qty"], t["side"]) for t in trades] == [
        (r.price / 1e9, float(r.size), {"B": 1, "A": -1}.get(r.side.value)) for r in records if r.action == "T"]


def test_cancels_of_unknown_orders_are_quarantined_and_counted(shared_data, tmp_path):
    """The real MBO file without the Add records of the orders later cancelled or modified: those cancels
    and modifies cannot be applied and are quarantined, each with the reason; nothing fails."""
    metadata, *records = _decoded(shared_data / MBO)
    touched = {r.order_id for r in records if r.action in ("C", "M") and not int(r.flags) & dbn.F_SNAPSHOT}
    kept = [r for r in records if not (r.action == "A" and r.order_id in touched)]
    path = tmp_path / "glbx-mdp3-20240508.mbo.dbn"
    path.write_bytes(metadata.encode() + b"".join(bytes(r) for r in kept))
    dropped = databento.read_dbn(path)["book"][1]
    unknown = [r for r in kept if r.action in ("C", "M") and r.order_id in touched]
    assert len(touched) > 10 and len(dropped) == len(unknown)
    assert {(sym, why) for _, sym, why in dropped} == {("ESM4", databento.UNKNOWN_ORDER)}


def test_an_order_added_without_a_side_is_quarantined(shared_data, tmp_path):
    """One resting order's Add rewritten with side N (none) in the real file: that record is quarantined
    with its reason, and the other records are read as before."""
    metadata, *records = _decoded(shared_data / MBO)
    cancelled = {r.order_id for r in records if r.action in ("C", "M")}
    target = next(i for i, r in enumerate(records) if r.action == "A" and r.order_id not in cancelled)
    raw = [bytearray(bytes(r)) for r in records]
    raw[target][39] = ord("N")  # the side byte of an MBO record (databento.MBO_RECORD)
    path = tmp_path / "glbx-mdp3-20240508.mbo.dbn"
    path.write_bytes(metadata.encode() + b"".join(raw))
    tables, dropped = _tables_and_book_drops(databento.read_dbn(path))
    assert [(ms, why) for ms, _, why in dropped] == [(records[target].ts_event // 1_000_000, "order without a side")]
    assert tables["book"].num_rows == databento.read_dbn(shared_data / MBO)["book"][0].num_rows


def test_a_truncated_file_or_a_schema_not_read_is_one_line_naming_it(shared_data, tmp_path):
    raw = (shared_data / MBO).read_bytes()
    cut = tmp_path / "cut.mbo.dbn.zst"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=f"{cut}: truncated"):
        databento.read_dbn(cut)
    metadata = _decoded(shared_data / MBO)[0]
    other = tmp_path / "glbx.imbalance.dbn"
    other.write_bytes(dbn.Metadata(dataset=metadata.dataset, schema=dbn.Schema.IMBALANCE, start=metadata.start,
                                   stype_in=metadata.stype_in, stype_out=metadata.stype_out,
                                   symbols=metadata.symbols, end=metadata.end).encode())
    with pytest.raises(DataFormatError, match=f"{other}: DBN schema 'imbalance' is not read"):
        databento.read_dbn(other)


def test_ingest_reads_the_databento_folder(ray_cluster, shared_data, tmp_path):
    report = ingest([shared_data / "cme" / "databento"], tmp_path / "lake")
    assert report.inputs_ok == 2 and report.failed == [] and report.skipped == []
    assert report.rows == {"trades": 120 + 5, "book": 2288 + 185}
    book = pq.read_table(tmp_path / "lake" / "book")
    assert set(book["symbol"].to_pylist()) == {"ESU4", "ESM4"}


T0 = 1_715_126_400_000_000_000  # 2024-05-08 00:00 UTC


def _write_dbn(path, schema, records, symbols=("ESM4",), ids=(5602,)):
    """A DBN file as Databento writes one: its metadata (symbol mappings for 2024-05-08) and records, each
    encoded by databento-dbn itself."""
    day = [dt.date(2024, 5, 8), dt.date(2024, 5, 9)]
    mappings = [SimpleNamespace(raw_symbol=s, intervals=[SimpleNamespace(start_date=day[0], end_date=day[1], symbol=str(i))])
                for s, i in zip(symbols, ids)]
    md = dbn.Metadata(dataset="GLBX.MDP3", start=T0, stype_in=dbn.SType.RAW_SYMBOL, stype_out=dbn.SType.INSTRUMENT_ID,
                      schema=schema, symbols=list(symbols), end=T0 + 86_400 * 10**9, mappings=mappings)
    path.write_bytes(md.encode() + b"".join(bytes(r) for r in records))
    return path


def _bar(rtype, t, o, h, lo, c, v):
    return dbn.OHLCVMsg(rtype, 1, 5602, t, *(int(x * 1e9) for x in (o, h, lo, c)), v)


def test_bars_definitions_and_statistics_land_in_their_datasets(ray_cluster, tmp_path):
    """ohlcv-1s summed up to minutes (as a plain loop sums them here), ohlcv-1h and ohlcv-1d at their own
    length; an option's definition named as the generic CSV reader names options; open interest and
    settlement prices from statistics, a deleted settlement quarantined with its reason."""
    d = tmp_path / "dbn"
    d.mkdir()
    secs = [(0, 5200.0, 5201.5, 5199.75, 5201.0, 2), (30, 5201.0, 5203.0, 5200.5, 5202.25, 5),
            (59, 5202.25, 5202.5, 5198.0, 5199.0, 1), (61, 5199.0, 5199.25, 5198.75, 5199.25, 4)]
    _write_dbn(d / "glbx-mdp3-20240508.ohlcv-1s.dbn", dbn.Schema.OHLCV_1S,
               [_bar(dbn.RType.OHLCV_1S, T0 + s * 10**9, *rest) for s, *rest in secs])
    _write_dbn(d / "glbx-mdp3-20240508.ohlcv-1h.dbn", dbn.Schema.OHLCV_1H,
               [_bar(dbn.RType.OHLCV_1H, T0 + h * 3600 * 10**9, 5200 + h, 5205 + h, 5195 + h, 5201 + h, 100) for h in range(3)])
    _write_dbn(d / "glbx-mdp3-20240508.ohlcv-1d.dbn", dbn.Schema.OHLCV_1D,
               [_bar(dbn.RType.OHLCV_1D, T0, 5200, 5230, 5180, 5210, 1_000_000)])
    _write_dbn(d / "glbx-mdp3-20240508.definition.dbn", dbn.Schema.DEFINITION, [
        dbn.InstrumentDefMsg(1, 42, T0, T0 + 5, 250_000_000, 1_000_000_000, "ESM4 C5300", "ES", "OOF",
                             dbn.InstrumentClass.CALL, dbn.SecurityUpdateAction.ADD, expiration=1_718_928_000 * 10**9,
                             strike_price=5300 * 10**9, unit_of_measure_qty=50 * 10**9, underlying="ESM4",
                             currency="USD", exchange="XCME"),
        dbn.InstrumentDefMsg(1, 5602, T0, T0 + 6, 250_000_000, 1_000_000_000, "ESM4", "ES", "FUT",
                             dbn.InstrumentClass.FUTURE, dbn.SecurityUpdateAction.ADD, expiration=1_718_928_000 * 10**9,
                             unit_of_measure_qty=50 * 10**9, currency="USD", exchange="XCME")],
        symbols=("ESM4 C5300", "ESM4"), ids=(42, 5602))
    new, delete = dbn.StatUpdateAction.NEW, dbn.StatUpdateAction.DELETE
    _write_dbn(d / "glbx-mdp3-20240508.statistics.dbn", dbn.Schema.STATISTICS, [
        dbn.StatMsg(1, 5602, T0 + 10**9, T0 + 2 * 10**9, T0, dbn.UNDEF_PRICE, 2_345_678, dbn.StatType.OPEN_INTEREST,
                    update_action=new),
        dbn.StatMsg(1, 5602, T0 + 3 * 10**9, T0 + 4 * 10**9, T0, 5210_250_000_000, dbn.UNDEF_STAT_QUANTITY,
                    dbn.StatType.SETTLEMENT_PRICE, update_action=new),
        dbn.StatMsg(1, 5602, T0 + 5 * 10**9, T0 + 6 * 10**9, T0, 5210_250_000_000, dbn.UNDEF_STAT_QUANTITY,
                    dbn.StatType.SETTLEMENT_PRICE, update_action=delete),
        dbn.StatMsg(1, 5602, T0 + 7 * 10**9, T0 + 8 * 10**9, T0, 5230 * 10**9, dbn.UNDEF_STAT_QUANTITY,
                    dbn.StatType.TRADING_SESSION_HIGH_PRICE, update_action=new)])
    root = tmp_path / "lake"
    rep = ingest([d], root)
    assert rep.failed == [] and rep.inputs_ok == 5
    assert rep.rows == {"open_interest": 1, "bars_1m": 2, "bars_1h": 3, "bars_1d": 1, "instruments": 2, "settlements": 1}
    assert dict(rep.quarantined["settlements"]) == {"settlement_price deleted by the venue": 1}

    minutes = {}  # the plain sum: per minute first open, highest high, lowest low, last close, volume
    for s, o, h, lo, c, v in secs:
        m = minutes.setdefault(s // 60, [o, h, lo, c, 0])
        m[1], m[2], m[3], m[4] = max(m[1], h), min(m[2], lo), c, m[4] + v
    bars = pq.read_table(root / "bars_1m").sort_by("ts")
    assert [(r["ts"].value, r["open"], r["high"], r["low"], r["close"], r["volume"]) for r in bars.to_pylist()] == [
        (T0 + k * 60 * 10**9, *vals) for k, vals in sorted(minutes.items())]
    assert pq.read_table(root / "bars_1h")["close"].to_pylist() == [5201.0, 5202.0, 5203.0]
    assert pq.read_table(root / "bars_1d")["volume"].to_pylist() == [1_000_000.0]
    inst = {r["raw_symbol"]: r for r in lake.read_partition(root, "instruments", "2024-05-08", "ES-20240621-5300-C").to_pylist()
            + lake.read_partition(root, "instruments", "2024-05-08", "ESM4").to_pylist()}
    assert (inst["ESM4 C5300"]["strike"], inst["ESM4 C5300"]["right"], inst["ESM4 C5300"]["tick_size"],
            inst["ESM4 C5300"]["multiplier"], inst["ESM4 C5300"]["instrument_class"]) == (5300.0, "C", 0.25, 50.0, "call")
    assert (inst["ESM4"]["strike"], inst["ESM4"]["right"], inst["ESM4"]["instrument_class"]) == (None, None, "future")
    assert pq.read_table(root / "open_interest")["open_interest"].to_pylist() == [2_345_678.0]
    assert pq.read_table(root / "settlements")["price"].to_pylist() == [5210.25]
