"""Historical ingestion on Ray Data: files → validated, normalised rows → the Parquet lake.

One Ray Data read task per file (blocking is controlled: a block never spans two files). Bad rows go
to ``<root>/quarantine/<dataset>/`` with a ``reason`` column and are counted; the job fails only for an
unreadable input, naming the file.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

from tickray import lake
from tickray.errors import DataFormatError
from tickray.schema import TS
from tickray.sources import binance, cme, lake_parquet, lobster
from tickray.validate import check_bars, check_book, check_trades

# lake dataset → its row validator
DATASETS = {"trades": check_trades, "book": check_book, "bars_1m": check_bars}


def classify(path: Path) -> str | None:
    name = path.name.lower()
    if "aggtrades" in name:
        return "agg_trades"
    if "-trades-" in name:
        return "trades"
    if "-bookticker-" in name:
        return "book_ticker"
    if name.endswith(".parquet"):
        return "lake_parquet"
    if "bookdepth" in name or "-depth-" in name:
        return "book_depth"
    if "-1m-" in name:
        return "klines"
    if name.endswith(".gz") and name.split("_")[0] in ("usdm", "spot", "cm"):
        return "ws_capture"
    if ".ws." in name and name.endswith((".txt", ".jsonl")):
        return "cryptofeed_ws"
    if ".http." in name and name.endswith(".txt"):
        return "cryptofeed_http"  # read with its .ws. twin
    if "_message_" in name and name.endswith(".csv"):
        return "lobster"
    if "_orderbook_" in name and name.endswith(".csv"):
        return "lobster_orderbook"  # read with its message twin
    if "mbp-1" in name and name.endswith((".csv", ".csv.gz")):
        return "databento_mbp1"
    if "_1min_bars_" in name and name.endswith((".csv", ".csv.gz")):
        return "bars_csv"
    return None


KIND_DATASETS = {
    "agg_trades": ["trades"], "book_depth": ["book"], "klines": ["bars_1m"], "ws_capture": ["trades", "book"],
    "cryptofeed_ws": ["trades", "book"], "lobster": ["trades", "book"], "databento_mbp1": ["trades", "book"],
    "bars_csv": ["bars_1m"], "trades": ["trades"], "book_ticker": ["book"],
}


def _cryptofeed_snapshots(ws_path: Path) -> Path | None:
    """BINANCE_FUTURES.ws.1.0.txt → BINANCE_FUTURES.http.0.0.txt beside it (its REST log)."""
    exchange = ws_path.name.split(".ws.")[0]
    found = sorted(ws_path.parent.glob(f"{exchange}.http.*.txt"))
    return found[0] if found else None


def _is_twin_of_consumed(f: Path, files: set[Path]) -> str | None:
    """Why a file is read through another one (so it is neither ingested twice nor 'unknown')."""
    kind = classify(f)
    if kind == "cryptofeed_ws" and f.suffix == ".jsonl" and f.with_suffix(".txt") in files:
        return f"same capture as {f.with_suffix('.txt').name}"
    if kind == "cryptofeed_http" and any(classify(g) == "cryptofeed_ws" and _cryptofeed_snapshots(g) == f
                                          for g in files):
        return "read with its WebSocket capture"
    if kind == "lobster_orderbook" and Path(str(f).replace("_orderbook_", "_message_")) in files:
        return "read with its message file"
    return None


def discover(inputs: list[Path], levels: int = 10) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """dataset → [(kind, path)] for every recognised file under the inputs (files or folders), and the
    files not ingested, each with the reason (reported, never silently passed over)."""
    out: dict[str, list[tuple[str, str]]] = {d: [] for d in DATASETS}
    skipped: list[str] = []
    files: list[Path] = []
    for inp in inputs:
        inp = Path(inp)
        if not inp.exists():
            raise DataFormatError(f"input {inp} does not exist")
        files += sorted(p for p in inp.rglob("*") if p.is_file()) if inp.is_dir() else [inp]
    present = set(files)
    for f in files:
        kind = classify(f)
        twin = _is_twin_of_consumed(f, present)
        if twin:
            skipped.append(f"{f} ({twin})")
        elif kind == "lake_parquet":
            out[lake_parquet.dataset_of(f, levels)].append((kind, str(f)))
        elif kind not in KIND_DATASETS:
            skipped.append(f"{f} (no known format)")
        else:
            for ds in KIND_DATASETS[kind]:
                out[ds].append((kind, str(f)))
    return out, skipped


def read_file(kind: str, path: Path, dataset: str, levels: int = 10) -> tuple[pa.Table, list]:
    """The file's rows for ``dataset``, and events that could not become rows: (ts ms, symbol, reason)."""
    if kind == "agg_trades":
        return binance.read_agg_trades(path), []
    if kind == "klines":
        return binance.read_klines(path), []
    if kind == "trades":
        return binance.read_trades(path), []
    if kind == "book_ticker":
        return binance.read_book_ticker(path, levels), []
    if kind == "lake_parquet":
        return lake_parquet.read_lake_parquet(path, dataset, levels), []
    if kind == "bars_csv":
        return cme.read_bars_csv(path), []
    if kind == "book_depth":
        rebuilt = binance.rebuild_book_depth(path, levels)
        return rebuilt.book, rebuilt.dropped
    if kind in ("ws_capture", "cryptofeed_ws"):
        snaps = _cryptofeed_snapshots(path) if kind == "cryptofeed_ws" else None
        if kind == "cryptofeed_ws" and snaps is None:
            raise DataFormatError(f"{path}: no REST snapshot log (<exchange>.http.*.txt) beside it")
        cap = binance.read_ws_capture(path, levels, snapshots=snaps)
        if dataset == "trades":  # unusable messages are counted once, with the trades
            return cap.trades, [(t // 1_000_000, sym, why) for t, sym, why, _ in cap.quarantine]
        return cap.book.book, cap.book.dropped
    if kind == "lobster":
        trades, book = lobster.read_lobster(path, levels)
        return (trades if dataset == "trades" else book), []
    if kind == "databento_mbp1":
        trades, book = cme.read_mbp1(path, levels)
        return (trades if dataset == "trades" else book), []
    raise DataFormatError(f"{path}: unknown file kind {kind!r}")


def _dropped_rows(dropped: list, schema: pa.Schema) -> pa.Table:
    """Events a reader could not turn into rows, as quarantine rows: time, symbol, reason, the rest null."""
    n = len(dropped)
    cols = {"ts": pa.array([d[0] * 1_000_000 for d in dropped], pa.int64()).cast(TS),
            "symbol": pa.array([d[1] for d in dropped], pa.string())}
    t = pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)
    return t.append_column("reason", pa.array([d[2] for d in dropped], pa.string()))


def _read_and_validate(batch: pa.Table, dataset: str, levels: int) -> pa.Table:
    """Ray Data map function: one input file → its rows, each with a quarantine reason or null."""
    tables = []
    for kind, path in zip(batch["kind"].to_pylist(), batch["path"].to_pylist()):
        t, dropped = read_file(kind, Path(path), dataset, levels)
        t = t.append_column("reason", DATASETS[dataset](t))
        if dropped:
            t = pa.concat_tables([t, _dropped_rows(dropped, t.schema.remove(t.schema.get_field_index("reason")))])
        date = pc.strftime(t["ts"], format="%Y-%m-%d")
        tables.append(t.append_column("date", date).append_column("source", pa.array([path] * t.num_rows)))
    return pa.concat_tables(tables)


def _good(t: pa.Table) -> pa.Table:
    return t.filter(pc.is_null(t["reason"])).drop_columns(["reason", "source"])


def _bad(t: pa.Table) -> pa.Table:
    return t.filter(pc.is_valid(t["reason"]))


@dataclass
class IngestReport:
    files: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, Counter] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = []
        for ds in self.rows:
            q = self.quarantined.get(ds, Counter())
            qs = ", ".join(f"{r}: {n}" for r, n in q.most_common()) or "none"
            out.append(f"{ds}: {self.rows[ds]:,} rows from {self.files[ds]} files into "
                       f"{len(self.partitions[ds])} partitions; quarantined {sum(q.values()):,} ({qs})")
        if self.skipped:
            shown = ", ".join(self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
            out.append(f"not ingested on their own: {len(self.skipped)} files: {shown}")
        return out


def ingest(inputs: list[Path], lake_root: Path, levels: int = 10) -> IngestReport:
    """Ingest every recognised file under ``inputs`` into the lake at ``lake_root``."""
    t0 = time.perf_counter()
    lake_root = Path(lake_root)
    found, skipped = discover(inputs, levels)
    report = IngestReport(skipped=skipped)
    for dataset, items in found.items():
        if not items:
            continue
        # One block per file: a read task never packs several files, and batches never cross files.
        ds = ray.data.from_items([{"kind": k, "path": p} for k, p in items], override_num_blocks=len(items))
        rows = ds.map_batches(_read_and_validate, batch_size=1, batch_format="pyarrow",
                              fn_kwargs={"dataset": dataset, "levels": levels}).materialize()
        stage = lake.staging_dir(lake_root)
        good = rows.map_batches(_good, batch_format="pyarrow", batch_size=None)
        good.write_parquet(str(stage / dataset), partition_cols=["date", "symbol"])
        bad = rows.map_batches(_bad, batch_format="pyarrow", batch_size=None)
        q = Counter()
        bad_rows = bad.materialize()
        if bad_rows.count():
            for r in bad_rows.groupby("reason").count().take_all():
                q[r["reason"]] = r["count()"]
            bad_rows.write_parquet(str(stage / lake.QUARANTINE / dataset), partition_cols=["date", "symbol"])
            lake.commit(stage / lake.QUARANTINE / dataset, lake_root / lake.QUARANTINE / dataset)
        report.partitions[dataset] = lake.commit(stage / dataset, lake_root / dataset)
        report.rows[dataset] = good.count()
        report.files[dataset] = len(items)
        report.quarantined[dataset] = q
        shutil.rmtree(stage, ignore_errors=True)
    report.seconds = time.perf_counter() - t0
    return report
