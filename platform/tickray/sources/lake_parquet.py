"""Parquet files already in a lake schema (tickray.lake.schema): checked, not trusted."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tickray.errors import DataFormatError
from tickray.lake.schema import BAR, FUNDING, LIQUIDATION, OPEN_INTEREST, TRADE, bar_minutes, book_schema
from tickray.sources import ohlcv
from tickray.sources.parquet_rows import read_rows

# Datasets of one fixed schema, in the order a file's columns are matched against them (the first whose
# columns it holds: open interest's few columns last); the book's depth varies, so it comes after.
FIXED = {"trades": TRADE, "bars_1m": BAR, "funding": FUNDING, "liquidations": LIQUIDATION,
         "open_interest": OPEN_INTEREST}


def expected_schema(dataset: str, levels: int) -> pa.Schema:
    return FIXED.get(dataset) or (BAR if bar_minutes(dataset) else book_schema(levels))


def _hive_values(path: Path) -> dict[str, str]:
    """``symbol=BTCUSDT`` folder names above a file (a partitioned lake keeps them out of the file)."""
    return dict(p.split("=", 1) for p in Path(path).parent.parts if "=" in p)


def dataset_of(path: Path, levels: int) -> str:
    """Which lake dataset a Parquet file's columns belong to."""
    try:
        names = set(pq.read_schema(path).names) | set(_hive_values(path))
    except (OSError, pa.ArrowInvalid) as e:
        raise DataFormatError(f"{path}: not a readable Parquet file ({e})") from None
    for dataset in (*FIXED, "book"):
        if set(expected_schema(dataset, levels).names) <= names:
            return _bars_dataset(path) if dataset == "bars_1m" else dataset
    raise DataFormatError(f"{path}: its columns {sorted(names)} match no lake schema ({', '.join(FIXED)}, book)")


def _bars_dataset(path: Path) -> str:
    """Bars' length: the ``bars_<tf>`` folder of a lake the file lies in, else the spacing of its rows."""
    named = next((p for p in reversed(Path(path).parent.parts) if bar_minutes(p)), None)
    if named:
        return named
    have = pq.read_schema(path).names
    t = pq.read_table(path, columns=[c for c in ("ts", "symbol") if c in have])
    symbol = (pc.dictionary_encode(t["symbol"].combine_chunks()) if "symbol" in have
              else pa.DictionaryArray.from_arrays(pa.array([0] * t.num_rows, pa.int32()), ["?"]))
    return ohlcv.candles_dataset(path, None, ohlcv.spacing_s(t["ts"].combine_chunks(), symbol))


def read_lake_parquet(path: Path, dataset: str, levels: int = 10, rows: tuple[int, int] | None = None) -> pa.Table:
    """The file's rows (or rows [start, stop)) in the dataset's schema: every field present and castable,
    or an error naming it."""
    schema = expected_schema(dataset, levels)
    t = read_rows(path, rows)
    for key, value in _hive_values(path).items():
        if key not in t.column_names:
            t = t.append_column(key, pa.array([value] * t.num_rows, pa.string()))
    try:
        return pa.Table.from_arrays([t[f.name].cast(f.type) for f in schema], schema=schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataFormatError(f"{path}: does not fit the {dataset} schema ({e})") from None
