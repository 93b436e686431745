"""Batch features on Ray Data.

Tick features (``tick-v2``): one task per (date, symbol) partition of trades + book → ``<root>/features``.
A partition is computed with the tail of the previous day (enough rows for every look-back) and the
head of the next (enough for every label horizon) when those partitions exist, so a feature or label is
the same at 00:00:01 as in an unsharded run over both days; only the partition's own rows are written.

Bar features (``bars-v1``): one task per symbol over all its 1-minute bars → ``<root>/bar_features``
(EMA-based indicators remember the whole series, so they are not cut by day).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from tickray import lake
from tickray.features.definitions import FEATURE_NAMES, FEATURE_SET_VERSION, LOOKBACK, compute_features
from tickray.features.grid import NS, grid_from_events
from tickray.features.indicators import BAR_FEATURE_NAMES, BAR_FEATURE_SET, bar_features
from tickray.labels import HORIZONS_S, forward_labels
from tickray.schema import TS

DAY_NS = 86_400 * NS


def _ts(t: pa.Table) -> np.ndarray:
    return pc.cast(t["ts"], pa.int64()).to_numpy(zero_copy_only=False)


def _neighbour(root: Path, date: str, symbol: str, days: int) -> tuple[pa.Table, pa.Table] | None:
    day = (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()
    try:
        return (lake.read_partition(root, "trades", day, symbol), lake.read_partition(root, "book", day, symbol))
    except FileNotFoundError:
        return None


def partition_events(root: Path, date: str, symbol: str) -> tuple[pa.Table, pa.Table, int, int]:
    """Trades and book rows for one partition's features: its own, the previous day's last LOOKBACK
    seconds (with the book state in force at their start) and the next day's first seconds up to the
    longest label horizon. Returns them with the partition's [start, end) in ns."""
    trades = [lake.read_partition(root, "trades", date, symbol)]
    book = [lake.read_partition(root, "book", date, symbol)]
    start = int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp()) * NS
    end = start + DAY_NS
    prev = _neighbour(root, date, symbol, -1)
    if prev is not None:
        cutoff = start - LOOKBACK * NS
        pt, pb = prev
        bts = _ts(pb)
        first = int(np.searchsorted(bts, cutoff, side="left"))
        tail = pb.slice(first)
        if first > 0:  # the state in force at the cutoff, restamped just before it
            carried = pb.slice(first - 1, 1)
            carried = carried.set_column(0, "ts", pa.array([cutoff - 1], pa.int64()).cast(TS))
            tail = pa.concat_tables([carried, tail])
        book.insert(0, tail)
        trades.insert(0, pt.filter(pc.greater_equal(pc.cast(pt["ts"], pa.int64()), cutoff - 1)))
    nxt = _neighbour(root, date, symbol, +1)
    if nxt is not None:
        horizon_end = end + (max(HORIZONS_S) + 1) * NS
        for tables, t in ((trades, nxt[0]), (book, nxt[1])):
            tables.append(t.filter(pc.less(pc.cast(t["ts"], pa.int64()), horizon_end)))
    cat = lambda ts: pa.concat_tables(ts, promote_options="default")
    return cat(trades), cat(book), start, end


def features_for_partition(root: Path, date: str, symbol: str) -> pa.Table:
    trades, book, start, end = partition_events(root, date, symbol)
    grid = grid_from_events(trades, book)
    mid = (grid["bid_px_1"] + grid["ask_px_1"]) / 2
    own = (grid["ts"] >= start) & (grid["ts"] < end)
    n = int(own.sum())
    cols: dict[str, pa.Array] = {
        "ts": pa.array(grid["ts"][own].astype(np.int64)).cast(TS),
        "symbol": pa.array([symbol] * n, pa.string()),
        "date": pa.array([date] * n, pa.string()),
        "feature_set": pa.array([FEATURE_SET_VERSION] * n, pa.string()).dictionary_encode(),
        "mid": pa.array(mid[own]),
    }
    cols.update({k: pa.array(v[own]) for k, v in compute_features(grid).items()})
    cols.update({k: pa.array(v[own]) for k, v in forward_labels(mid).items()})
    return pa.table(cols)


def _map(batch: pa.Table, root: str) -> pa.Table:
    return pa.concat_tables([features_for_partition(Path(root), d, s)
                             for d, s in zip(batch["date"].to_pylist(), batch["symbol"].to_pylist())])


def bar_features_for_symbol(root: Path, symbol: str) -> pa.Table:
    dates = sorted(d for d, s in lake.partitions(root, "bars_1m") if s == symbol)
    bars = pa.concat_tables([lake.read_partition(root, "bars_1m", d, symbol) for d in dates],
                            promote_options="default").sort_by("ts")
    feats = bar_features(*(bars[k].to_numpy(zero_copy_only=False) for k in ("high", "low", "close")))
    n = bars.num_rows
    cols = {"ts": bars["ts"], "symbol": pa.array([symbol] * n, pa.string()),
            "date": pc.strftime(bars["ts"], format="%Y-%m-%d"),
            "feature_set": pa.array([BAR_FEATURE_SET] * n, pa.string()).dictionary_encode(),
            "close": bars["close"]}
    cols.update({k: pa.array(feats[k]) for k in BAR_FEATURE_NAMES})
    return pa.table(cols)


def _map_symbols(batch: pa.Table, root: str) -> pa.Table:
    return pa.concat_tables([bar_features_for_symbol(Path(root), s) for s in batch["symbol"].to_pylist()])


@dataclass
class FeaturesReport:
    rows: dict[str, int]
    partitions: dict[str, list[str]]
    seconds: float

    def lines(self) -> list[str]:
        sets = {"features": (FEATURE_SET_VERSION, len(FEATURE_NAMES)),
                "bar_features": (BAR_FEATURE_SET, len(BAR_FEATURE_NAMES))}
        return [f"{ds}: {self.rows[ds]:,} rows x {sets[ds][1]} features ({sets[ds][0]}) in "
                f"{len(self.partitions[ds])} partitions" for ds in self.rows] + [f"({self.seconds:.1f}s)"]


def _run(lake_root: Path, dataset: str, items: list[dict], fn) -> list[str]:
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(fn, batch_size=1, batch_format="pyarrow", fn_kwargs={"root": str(lake_root)})
    stage = lake.staging_dir(lake_root)
    out.write_parquet(str(stage / dataset), partition_cols=["date", "symbol"])
    committed = lake.commit(stage / dataset, lake_root / dataset)
    shutil.rmtree(stage, ignore_errors=True)
    return committed


def build_features(lake_root: Path) -> FeaturesReport:
    """Tick features for every partition with trades and book, bar features for every symbol with bars."""
    t0 = time.perf_counter()
    lake_root = Path(lake_root)
    parts = sorted(set(lake.partitions(lake_root, "trades")) & set(lake.partitions(lake_root, "book")))
    bar_symbols = sorted({s for _, s in lake.partitions(lake_root, "bars_1m")})
    if not parts and not bar_symbols:
        raise FileNotFoundError(f"no (date, symbol) partition with both trades and book, and no 1m bars, under "
                                f"{lake_root}; run `tickray ingest` first")
    report = FeaturesReport({}, {}, 0.0)
    if parts:
        report.partitions["features"] = _run(lake_root, "features", [{"date": d, "symbol": s} for d, s in parts], _map)
    if bar_symbols:
        report.partitions["bar_features"] = _run(lake_root, "bar_features", [{"symbol": s} for s in bar_symbols],
                                                 _map_symbols)
    report.rows = {ds: lake.dataset_rows(lake_root, ds) for ds in report.partitions}
    report.seconds = time.perf_counter() - t0
    return report
