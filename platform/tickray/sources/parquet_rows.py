"""Large Parquet inputs read by several tasks, an even range of rows each (not of whole row groups, which
a writer may have made as large as a third of the file: the tasks would then end far apart)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def row_shards(path: Path, shard_bytes: int, cpus: int = 1) -> list[tuple[int, int] | None]:
    """[start, stop) row ranges of about ``shard_bytes`` (uncompressed) each, their count rounded up to a
    multiple of ``cpus`` once there are at least ``cpus`` of them, so that equal tasks end together; a
    small file is one shard, ``None``."""
    meta = pq.ParquetFile(path).metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size <= shard_bytes or meta.num_rows < 2:
        return [None]
    k = math.ceil(size / shard_bytes)
    k = min(math.ceil(k / min(k, cpus)) * min(k, cpus), meta.num_rows)
    edges = np.linspace(0, meta.num_rows, k + 1).round().astype(int).tolist()
    return list(itertools.pairwise(edges))


def read_rows(path: Path, rows: tuple[int, int] | None = None) -> pa.Table:
    """The file's rows [start, stop) (all of them for None), reading only the row groups that hold them."""
    f = pq.ParquetFile(path)
    if rows is None:
        return f.read()
    start, stop = rows
    first = np.r_[0, np.cumsum([f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)])]
    groups = [i for i in range(f.metadata.num_row_groups) if first[i] < stop and first[i + 1] > start]
    return f.read_row_groups(groups).slice(start - int(first[groups[0]]), stop - start)
