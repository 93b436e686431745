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
from tickray.sources import binance
from tickray.validate import check_bars, check_book, check_trades

# lake dataset → its row validator
DATASETS = {"trades": check_trades, "book": check_book, "bars_1m": check_bars}


def classify(path: Path) -> str | None:
    name = path.name.lower()
    if "aggtrades" in name:
        return "agg_trades"
    if "bookdepth" in name or "-depth-" in name:
        return "book_depth"
    if "-1m-" in name:
        return "klines"
    if name.endswith(".gz") and name.split("_")[0] in ("usdm", "spot", "cm"):
        return "ws_capture"
    return None


KIND_DATASETS = {
    "agg_trades": ["trades"], "book_depth": ["book"], "klines": ["bars_1m"], "ws_capture": ["trades", "book"],
}


def discover(inputs: list[Path]) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """dataset → [(kind, path)] for every recognised file under the inputs (files or folders), and the
    files that were not recognised (reported, never silently passed over)."""
    out: dict[str, list[tuple[str, str]]] = {d: [] for d in DATASETS}
    skipped: list[str] = []
    for inp in inputs:
        inp = Path(inp)
        if not inp.exists():
            raise DataFormatError(f"input {inp} does not exist")
        files = sorted(p for p in inp.rglob("*") if p.is_file()) if inp.is_dir() else [inp]
        for f in files:
            kind = classify(f)
            if kind is None:
                skipped.append(str(f))
            for ds in KIND_DATASETS.get(kind, []):
                out[ds].append((kind, str(f)))
    return out, skipped


def read_file(kind: str, path: Path, dataset: str, levels: int = 10) -> pa.Table:
    if kind == "agg_trades":
        return binance.read_agg_trades(path)
    if kind == "klines":
        return binance.read_klines(path)
    if kind == "book_depth":
        return binance.rebuild_book_depth(path, levels).book
    if kind == "ws_capture":
        cap = binance.read_ws_capture(path, levels)
        return cap.trades if dataset == "trades" else cap.book.book
    raise DataFormatError(f"{path}: unknown file kind {kind!r}")


def _read_and_validate(batch: pa.Table, dataset: str, levels: int) -> pa.Table:
    """Ray Data map function: one input file → its rows, each with a quarantine reason or null."""
    tables = []
    for kind, path in zip(batch["kind"].to_pylist(), batch["path"].to_pylist()):
        t = read_file(kind, Path(path), dataset, levels)
        reason = DATASETS[dataset](t)
        t = t.append_column("reason", reason)
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
            out.append(f"skipped {len(self.skipped)} files of no known format: {shown}")
        return out


def ingest(inputs: list[Path], lake_root: Path, levels: int = 10) -> IngestReport:
    """Ingest every recognised file under ``inputs`` into the lake at ``lake_root``."""
    t0 = time.perf_counter()
    lake_root = Path(lake_root)
    found, skipped = discover(inputs)
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
