"""Databento DBN on the real GLBX.MDP3 files: MBP-1 against the CSV decode beside it, the MBO book against a
plain order book written here over records decoded by Databento's own library, and bad files."""

import csv
import math

import databento_dbn as dbn
import pyarrow.parquet as pq
import pytest
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
    tables, dropped = databento.read_dbn(shared_data / MBP1)
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


def test_mbo_book_equals_a_plain_order_book(shared_data):
    records = _decoded(shared_data / MBO)[1:]
    tables, dropped = databento.read_dbn(shared_data / MBO, levels=10)
    want = _reference_books(records, 10)
    book = tables["book"].to_pylist()
    assert dropped == [] and len(book) == len(want) == 185
    assert [_levels(r, 10) for r in book] == want
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
    _, dropped = databento.read_dbn(path)
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
    tables, dropped = databento.read_dbn(path)
    assert [(ms, why) for ms, _, why in dropped] == [(records[target].ts_event // 1_000_000, "order without a side")]
    assert tables["book"].num_rows == databento.read_dbn(shared_data / MBO)[0]["book"].num_rows


def test_a_truncated_file_or_a_schema_not_read_is_one_line_naming_it(shared_data, tmp_path):
    raw = (shared_data / MBO).read_bytes()
    cut = tmp_path / "cut.mbo.dbn.zst"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=f"{cut}: truncated"):
        databento.read_dbn(cut)
    metadata = _decoded(shared_data / MBO)[0]
    stats = tmp_path / "glbx.statistics.dbn"
    stats.write_bytes(dbn.Metadata(dataset=metadata.dataset, schema=dbn.Schema.STATISTICS, start=metadata.start,
                                   stype_in=metadata.stype_in, stype_out=metadata.stype_out,
                                   symbols=metadata.symbols, end=metadata.end).encode())
    with pytest.raises(DataFormatError, match=f"{stats}: DBN schema 'statistics' is not read"):
        databento.read_dbn(stats)


def test_ingest_reads_the_databento_folder(ray_cluster, shared_data, tmp_path):
    report = ingest([shared_data / "cme" / "databento"], tmp_path / "lake")
    assert report.inputs_ok == 2 and report.failed == [] and report.skipped == []
    assert report.rows == {"trades": 120 + 5, "book": 2288 + 185}
    book = pq.read_table(tmp_path / "lake" / "book")
    assert set(book["symbol"].to_pylist()) == {"ESU4", "ESM4"}
