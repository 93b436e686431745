"""The Parquet lake: ``<root>/<dataset>/date=YYYY-MM-DD/symbol=SYM/part-*.parquet``.

Jobs write into a private staging folder, then each partition is swapped in with directory renames:
a reader sees the old partition or the new one, never a half-written one, and re-ingesting the same
input replaces its partitions instead of duplicating rows.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

QUARANTINE = "quarantine"


def staging_dir(root: Path) -> Path:
    d = Path(root) / "_staging" / uuid.uuid4().hex
    d.mkdir(parents=True)
    return d


def _partition_dirs(dataset_dir: Path) -> list[Path]:
    return sorted(p for p in dataset_dir.glob("date=*/symbol=*") if p.is_dir())


def commit(staged_dataset: Path, final_dataset: Path) -> list[str]:
    """Swap every staged ``date=/symbol=`` partition into place; return the partitions committed."""
    done = []
    for part in _partition_dirs(staged_dataset):
        rel = part.relative_to(staged_dataset)
        target = final_dataset / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
        part.rename(target)
        if old is not None:
            shutil.rmtree(old)
        done.append(str(rel))
    return done


def partitions(root: Path, dataset: str) -> list[tuple[str, str]]:
    """(date, symbol) pairs present in a dataset."""
    return [(p.parent.name.split("=", 1)[1], p.name.split("=", 1)[1])
            for p in _partition_dirs(Path(root) / dataset)]


def read_partition(root: Path, dataset: str, date: str, symbol: str, sort_by: str = "ts") -> pa.Table:
    part = Path(root) / dataset / f"date={date}" / f"symbol={symbol}"
    files = sorted(part.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in partition {part}")
    t = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    if "symbol" not in t.column_names:
        t = t.append_column("symbol", pa.array([symbol] * t.num_rows, pa.string()))
    return t.sort_by(sort_by) if sort_by in t.column_names else t


def dataset_rows(root: Path, dataset: str) -> int:
    d = Path(root) / dataset
    return sum(pq.ParquetFile(f).metadata.num_rows for f in d.glob("date=*/symbol=*/*.parquet"))
