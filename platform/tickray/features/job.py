"""Batch features on Ray Data: one task per (date, symbol) lake partition → ``<root>/features``."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from tickray import lake
from tickray.features.definitions import FEATURE_NAMES, compute_features
from tickray.features.grid import grid_from_events
from tickray.labels import forward_labels
from tickray.schema import TS


def features_for_partition(root: Path, date: str, symbol: str) -> pa.Table:
    trades = lake.read_partition(root, "trades", date, symbol)
    book = lake.read_partition(root, "book", date, symbol)
    grid = grid_from_events(trades, book)
    mid = (grid["bid_px"] + grid["ask_px"]) / 2
    cols: dict[str, pa.Array] = {
        "ts": pa.array(grid["ts"].astype(np.int64)).cast(TS),
        "symbol": pa.array([symbol] * mid.size, pa.string()),
        "date": pa.array([date] * mid.size, pa.string()),
        "mid": pa.array(mid),
    }
    cols.update({k: pa.array(v) for k, v in compute_features(grid).items()})
    cols.update({k: pa.array(v) for k, v in forward_labels(mid).items()})
    return pa.table(cols)


def _map(batch: pa.Table, root: str) -> pa.Table:
    return pa.concat_tables([features_for_partition(Path(root), d, s)
                             for d, s in zip(batch["date"].to_pylist(), batch["symbol"].to_pylist())])


@dataclass
class FeaturesReport:
    rows: int
    partitions: list[str]
    seconds: float

    def lines(self) -> list[str]:
        return [(f"features: {self.rows:,} rows x {len(FEATURE_NAMES)} features in "
                 f"{len(self.partitions)} partitions ({self.seconds:.1f}s)")]


def build_features(lake_root: Path) -> FeaturesReport:
    t0 = time.perf_counter()
    lake_root = Path(lake_root)
    parts = sorted(set(lake.partitions(lake_root, "trades")) & set(lake.partitions(lake_root, "book")))
    if not parts:
        raise FileNotFoundError(f"no (date, symbol) partition has both trades and book under {lake_root}; "
                                "run `tickray ingest` first")
    ds = ray.data.from_items([{"date": d, "symbol": s} for d, s in parts], override_num_blocks=len(parts))
    out = ds.map_batches(_map, batch_size=1, batch_format="pyarrow", fn_kwargs={"root": str(lake_root)})
    stage = lake.staging_dir(lake_root)
    out.write_parquet(str(stage / "features"), partition_cols=["date", "symbol"])
    committed = lake.commit(stage / "features", lake_root / "features")
    shutil.rmtree(stage, ignore_errors=True)
    return FeaturesReport(lake.dataset_rows(lake_root, "features"), committed, time.perf_counter() - t0)
