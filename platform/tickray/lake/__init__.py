"""The Parquet lake: ``<root>/<dataset>/date=YYYY-MM-DD/symbol=SYM/part-*.parquet``.

Each part file names, in its footer, the inputs its rows came from (``tickray.sources``: the files an
ingest read, the stream or venue a job took them from, or for derived datasets the inputs of the
partitions they were computed from), so any row can be traced to what it was made of.

Jobs write into a private staging folder, then each partition is swapped in with directory renames:
a reader sees the old partition or the new one, never a half-written one, and re-ingesting the same
input replaces its partitions instead of duplicating rows.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tickray.lake.schema import bar_minutes

QUARANTINE = "quarantine"
UNKNOWN = "unknown"
ROW_GROUP_ROWS = 65_536  # small enough that a reader filtering on time (a day's edge) skips most groups
SOURCES_KEY = b"tickray.sources"


def staging_dir(root: Path) -> Path:
    d = Path(root) / "_staging" / uuid.uuid4().hex
    d.mkdir(parents=True)
    return d


def _partition_dirs(dataset_dir: Path) -> list[Path]:
    return [dataset_dir / f"date={d}" / f"symbol={s}" for d, s in partitions(dataset_dir.parent, dataset_dir.name)]


def date_column(ts: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``YYYY-MM-DD`` (UTC) of each timestamp: the ``date=`` partition key (a date32 cast, an order of
    magnitude faster than strftime)."""
    return pc.cast(pc.cast(ts, pa.date32()), pa.string())


def day_partition(day: int) -> str:
    """The ``date=`` key of a UTC day counted from the epoch (day 0 is 1970-01-01)."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def write_partitions(t: pa.Table, dataset_dir: Path, name: str,
                     sources: list[str] | None = None) -> list[tuple[str, str, int]]:
    """Write rows into ``date=/symbol=`` folders (one file per partition, sorted by time, file order kept
    among equal times), each file naming ``sources`` in its footer; return (date, symbol, rows) per
    partition. The date is the UTC day of ``ts`` unless the table has a ``date`` column (``date_column``)."""
    out = []
    if "date" not in t.column_names:  # a date32 key: its string is made once per partition, not per row
        t = t.append_column("date", pc.cast(t["ts"], pa.date32()))
    for key in ("date", "symbol"):  # a row without a time or symbol (quarantined) still has a home
        if t[key].null_count:
            t = t.set_column(t.schema.get_field_index(key), key, pc.fill_null(t[key].cast(pa.string()), UNKNOWN))
    if t.num_rows == 0:
        return out
    # One pass: rows ordered by partition code, then time (a stable sort: file order kept among equal
    # times), and a slice per partition; filtering the table once per partition costs partitions x rows.
    dates, symbols = (pc.dictionary_encode(t[k].combine_chunks()) for k in ("date", "symbol"))
    d, s = dates.indices.to_numpy().astype(np.int64), symbols.indices.to_numpy().astype(np.int64)
    code = s * len(dates.dictionary) + d  # symbol-major: no reordering for a file written symbol by symbol
    ts = pc.fill_null(pc.cast(t["ts"], pa.int64()), np.iinfo(np.int64).max).to_numpy()
    same = code[1:] == code[:-1]
    if not ((code[1:] >= code[:-1]).all() and (ts[1:] >= ts[:-1])[same].all()):
        order = np.lexsort((ts, code))
        t, code, d, s = t.take(order), code[order], d[order], s[order]
    bounds = np.flatnonzero(np.r_[True, code[1:] != code[:-1], True])
    t = t.drop_columns(["date", "symbol"])
    if sources:
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), SOURCES_KEY: json.dumps(sorted(set(sources)))})
    # Dictionary encoding only where values repeat (strings): tried on float columns it triples the
    # write time of a feature partition for a larger file.
    text = [f.name for f in t.schema if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type)]
    date_keys, symbol_keys = [str(v) for v in dates.dictionary.to_pylist()], symbols.dictionary.to_pylist()
    for a, b in itertools.pairwise(bounds.tolist()):
        date, symbol = date_keys[d[a]], symbol_keys[s[a]]
        folder = os.path.join(dataset_dir, f"date={date}", f"symbol={symbol}")
        os.makedirs(folder, exist_ok=True)
        with pa.OSFile(os.path.join(folder, f"part-{name}.parquet"), "wb") as f:  # skips pyarrow's path resolving
            pq.write_table(t.slice(a, b - a), f, row_group_size=ROW_GROUP_ROWS, use_dictionary=text)
        out.append((date, symbol, b - a))
    return out


def append_partitions(t: pa.Table, root: Path, dataset: str, name: str,
                      sources: list[str] | None = None) -> list[tuple[str, str, int]]:
    """Add rows to a dataset as new files ``part-<name>.parquet`` beside what its partitions hold (a stream
    actor's periodic flush). Each file is written in staging and renamed into place, so a reader never
    sees half of one."""
    if "date" not in t.column_names:
        t = t.append_column("date", date_column(t["ts"]))
    stage = staging_dir(root)
    try:
        written = write_partitions(t, stage / dataset, name, sources)
        for date, symbol, _ in written:
            rel = Path(dataset) / f"date={date}" / f"symbol={symbol}" / f"part-{name}.parquet"
            (Path(root) / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, Path(root) / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def commit(staged_dataset: Path, final_dataset: Path, inputs: set[str] | None = None) -> list[str]:
    """Swap every staged ``date=/symbol=`` partition into place; return the partitions committed. A day the
    lake does not hold yet moves in whole, in one rename.

    With ``inputs`` (the files an ingest read), a partition the lake holds keeps the files other inputs
    wrote there (a capture day's first rows fall on the date before, whose own file landed earlier) and
    loses those that only these inputs wrote, now replaced. Without, each partition is replaced whole
    (a derived dataset, recomputed from all it is made of)."""
    staged = _partition_dirs(staged_dataset)
    moved = set()
    for day in sorted({p.parent for p in staged}):
        if not (final_dataset / day.name).exists():
            final_dataset.mkdir(parents=True, exist_ok=True)
            try:
                day.rename(final_dataset / day.name)
                moved.add(day)
            except OSError:  # another job made the day meanwhile: partition by partition, below
                pass
    for part in (p for p in staged if p.parent not in moved):
        target = final_dataset / part.relative_to(staged_dataset)
        target.parent.mkdir(parents=True, exist_ok=True)
        if inputs is not None and target.exists():
            new = {f.name for f in part.glob("*.parquet")}
            for f in sorted(part.glob("*.parquet")):  # the new files first: a reader never misses rows
                os.replace(f, target / f.name)
            for f in target.glob("*.parquet"):
                if f.name not in new and set(file_sources(f)) <= inputs:
                    f.unlink()
            continue
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
        part.rename(target)
        if old is not None:
            shutil.rmtree(old)
    return [str(p.relative_to(staged_dataset)) for p in staged]


def partitions(root: Path, dataset: str) -> list[tuple[str, str]]:
    """(date, symbol) pairs present in a dataset, sorted. Listed with ``os.scandir``: a screen of 200
    symbols over a month lists 6,000 folders, and globbing them into sorted Paths took 0.1 s a listing."""
    out: list[tuple[str, str]] = []
    try:
        dates = os.scandir(os.path.join(root, dataset))
    except FileNotFoundError:
        return out
    with dates:
        for d in dates:
            if d.name.startswith("date=") and d.is_dir():
                with os.scandir(d.path) as symbols:
                    out += [(d.name[5:], e.name[7:]) for e in symbols if e.name.startswith("symbol=") and e.is_dir()]
    return sorted(out)


def bar_datasets(root: Path) -> dict[int, str]:
    """The bar datasets the lake holds, by bar length in minutes, shortest first."""
    found = {m: p.name for p in Path(root).glob("bars_*") if p.is_dir() and (m := bar_minutes(p.name))}
    return dict(sorted(found.items()))


def partition_sources(root: Path, dataset: str, date: str, symbol: str) -> list[str]:
    """The inputs behind a partition's rows, from its files' footers (a file written before the lake
    recorded them names none)."""
    out: set[str] = set()
    for f in (Path(root) / dataset / f"date={date}" / f"symbol={symbol}").glob("*.parquet"):
        out.update(file_sources(f))
    return sorted(out)


def file_sources(f: Path) -> list[str]:
    """The inputs one part file's rows came from, from its footer (none for a file written before)."""
    meta = pq.read_schema(f).metadata or {}
    return json.loads(meta[SOURCES_KEY]) if SOURCES_KEY in meta else []


def read_partition(root: Path, dataset: str, date: str, symbol: str, sort_by: str = "ts",
                   columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """One partition's rows (with its ``symbol``), sorted by ``sort_by``. ``columns`` and ``filters``
    (pyarrow filter tuples, e.g. ``[("ts", ">=", t)]``) are pushed down to the Parquet reader, which
    skips row groups by their statistics."""
    part = Path(root) / dataset / f"date={date}" / f"symbol={symbol}"
    files = sorted(part.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in partition {part}")
    cols = None if columns is None else [c for c in columns if c != "symbol"]
    # ParquetFile.read skips the dataset machinery of read_table: half the cost on small partitions
    read = (lambda f: pq.read_table(f, columns=cols, filters=filters)) if filters else (
        lambda f: pq.ParquetFile(f).read(columns=cols))
    t = pa.concat_tables([read(f) for f in files], promote_options="default")
    if "symbol" not in t.column_names and (columns is None or "symbol" in columns):
        t = t.append_column("symbol", pa.array([symbol] * t.num_rows, pa.string()))
    if sort_by in t.column_names and (len(files) > 1 or not _is_sorted(t[sort_by])):
        t = t.sort_by(sort_by)  # jobs write each partition sorted: usually nothing to do
    return t


def _is_sorted(col: pa.ChunkedArray) -> bool:
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    a = col.to_numpy()
    return bool((a[1:] >= a[:-1]).all())


def dataset_rows(root: Path, dataset: str) -> int:
    d = Path(root) / dataset
    return sum(pq.ParquetFile(f).metadata.num_rows for f in d.glob("date=*/symbol=*/*.parquet"))
