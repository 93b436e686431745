"""Batch features on Ray Data.

Tick features (``tick-v2``): one task per (date, symbol) partition of trades + book → ``<root>/features``.
A partition is computed with the tail of the previous day (enough rows for every look-back) and the
head of the next (enough for every label horizon) when those partitions exist, so a feature or label is
the same at 00:00:01 as in an unsharded run over both days; only the partition's own rows are written.

Bar features (``bars-v1``): one task per symbol over all its 1-minute bars → ``<root>/bar_features``
(EMA-based indicators remember the whole series, so they are not cut by day).

Each partition (or symbol) is its own unit of failure, as in the ingest: one that cannot be computed is
reported in one line naming it (its traceback in ``<lake>/_logs/features-<time>.log``), leaves nothing
behind, and the others land.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from tickray import lake
from tickray.errors import ConfigError, failure_line
from tickray.features.definitions import FEATURE_NAMES, FEATURE_SET_VERSION, LOOKBACK, compute_features
from tickray.features.grid import BOOK_GAP_S, LEVEL_FIELDS, NS, grid_from_events
from tickray.features.indicators import BAR_FEATURE_NAMES, BAR_FEATURE_SET, bar_features
from tickray.features.labels import HORIZONS_S, forward_labels
from tickray.lake.schema import TS
from tickray.ops.runtime import one_stage_execution

DAY_NS = 86_400 * NS


def _ts(t: pa.Table) -> np.ndarray:
    return pc.cast(t["ts"], pa.int64()).to_numpy(zero_copy_only=False)


TRADE_COLUMNS = ["ts", "price", "qty", "side"]
BOOK_COLUMNS = ["ts", *LEVEL_FIELDS]


def _ts_scalar(ns: int) -> pa.Scalar:
    return pa.scalar(int(ns), pa.int64()).cast(TS)


def _read(root: Path, date: str, symbol: str, filters: list | None = None) -> tuple[pa.Table, pa.Table]:
    return (lake.read_partition(root, "trades", date, symbol, columns=TRADE_COLUMNS, filters=filters),
            lake.read_partition(root, "book", date, symbol, columns=BOOK_COLUMNS, filters=filters))


def _day(date: str, days: int) -> str:
    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


def _exists(root: Path, date: str, symbol: str) -> bool:
    return all((root / ds / f"date={date}" / f"symbol={symbol}").is_dir() for ds in ("trades", "book"))


def partition_events(root: Path, date: str, symbol: str, book_gap_s: float = BOOK_GAP_S
                     ) -> tuple[pa.Table, pa.Table, int, int]:
    """Trades and book rows for one partition's features: its own, the previous day's last LOOKBACK
    seconds (with the book state in force at their start) and the next day's first seconds up to the
    longest label horizon. Returns them with the partition's [start, end) in ns. Only the needed columns,
    and of the next day only the needed row groups, are read."""
    own_trades, own_book = _read(root, date, symbol)
    trades, book = [own_trades], [own_book]
    start = int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp()) * NS
    end = start + DAY_NS
    prev = _day(date, -1)
    if _exists(root, prev, symbol):
        cutoff = start - LOOKBACK * NS
        # the book state in force at the cutoff is the last one before it: find its time first
        bts = _ts(lake.read_partition(root, "book", prev, symbol, columns=["ts"]))
        first = int(np.searchsorted(bts, cutoff, side="left"))
        since = _ts_scalar(bts[first - 1] if first > 0 else cutoff)
        pt, pb = _read(root, prev, symbol, filters=[("ts", ">=", since)])
        k = int(np.searchsorted(_ts(pb), cutoff, side="left"))
        tail = pb.slice(k)
        if k > 0:  # that state, restamped just before the cutoff (as unknown when it is older than a gap)
            carried = pb.slice(k - 1, 1).set_column(0, "ts", pa.array([cutoff - 1], pa.int64()).cast(TS))
            if _ts(pb)[k - 1] < cutoff - book_gap_s * NS:
                carried = pa.table({c: pa.array([None], carried.schema.field(c).type) if c in LEVEL_FIELDS
                                    else carried[c] for c in carried.column_names})
            tail = pa.concat_tables([carried, tail])
        book.insert(0, tail)
        trades.insert(0, pt.slice(int(np.searchsorted(_ts(pt), cutoff - 1, side="left"))))
    nxt = _day(date, +1)
    if _exists(root, nxt, symbol):
        nt, nb = _read(root, nxt, symbol, filters=[("ts", "<", _ts_scalar(end + (max(HORIZONS_S) + 1) * NS))])
        trades.append(nt)
        book.append(nb)
    return pa.concat_tables(trades), pa.concat_tables(book), start, end


def features_for_partition(root: Path, date: str, symbol: str, book_gap_s: float = BOOK_GAP_S,
                           trade_gap_s: float | None = None) -> pa.Table:
    trades, book, start, end = partition_events(root, date, symbol, book_gap_s)
    grid = grid_from_events(trades, book, book_gap_s, trade_gap_s)
    mid = (grid["bid_px_1"] + grid["ask_px_1"]) / 2
    own = (grid["ts"] >= start) & (grid["ts"] < end)
    n = int(own.sum())
    cols: dict[str, pa.Array] = {
        "ts": pa.array(grid["ts"][own].astype(np.int64)).cast(TS),
        "symbol": pa.array([symbol] * n, pa.string()),
        "date": pa.array([date] * n, pa.string()),
        "feature_set": pa.array([FEATURE_SET_VERSION] * n, pa.string()).dictionary_encode(),
        "mid": pa.array(mid[own]),
        "book_synced": pa.array(grid["book_synced"][own] > 0),
        "new_session": pa.array(grid["new_session"][own] > 0),
    }
    cols.update({k: pa.array(v[own]) for k, v in compute_features(grid).items()})
    cols.update({k: pa.array(v[own]) for k, v in forward_labels(mid, new_session=grid["new_session"]).items()})
    return pa.table(cols)


def bar_features_for_symbol(root: Path, symbol: str) -> pa.Table:
    dates = sorted(d for d, s in lake.partitions(root, "bars_1m") if s == symbol)
    bars = pa.concat_tables([lake.read_partition(root, "bars_1m", d, symbol) for d in dates],
                            promote_options="default").sort_by("ts")
    feats = bar_features(*(bars[k].to_numpy(zero_copy_only=False) for k in ("high", "low", "close")))
    n = bars.num_rows
    cols = {"ts": bars["ts"], "symbol": pa.array([symbol] * n, pa.string()),
            "date": lake.date_column(bars["ts"]),
            "feature_set": pa.array([BAR_FEATURE_SET] * n, pa.string()).dictionary_encode(),
            "close": bars["close"]}
    cols.update({k: pa.array(feats[k]) for k in BAR_FEATURE_NAMES})
    return pa.table(cols)


def _sources(root: Path, datasets: tuple[str, ...], symbol: str, dates: list[str] | None) -> list[str]:
    """The inputs behind the partitions a derived one is computed from (``dates`` None: all of them)."""
    return sorted({src for ds in datasets
                   for d in (dates if dates is not None else [d for d, s in lake.partitions(root, ds) if s == symbol])
                   for src in lake.partition_sources(root, ds, d, symbol)})


def _compute_and_write(batch: dict, root: str, stage: str, dataset: str, gaps: dict) -> dict:
    """Ray Data map function: compute one unit ((date, symbol) or a symbol) and write it into the staged
    dataset from the task itself; only its row count goes back, or its one-line error and traceback
    (whatever it had staged is removed: it lands whole or not at all)."""
    (item,) = (dict(zip(batch, values)) for values in zip(*batch.values()))
    unit = f"date={item['date']} symbol={item['symbol']}" if "date" in item else f"symbol={item['symbol']}"
    name = f"{item.get('date', 'all')}-{item['symbol']}"
    rows, unsynced, sessions, error, trace = 0, 0, 0, "", ""
    try:
        if dataset == "features":
            t = features_for_partition(Path(root), item["date"], item["symbol"], **gaps)
            unsynced = t.num_rows - (pc.sum(t["book_synced"]).as_py() or 0)  # the sum of no rows is null
            sessions = pc.sum(t["new_session"]).as_py() or 0
            sources = _sources(Path(root), ("trades", "book"), item["symbol"],
                               [_day(item["date"], d) for d in (-1, 0, 1)])  # the days partition_events reads
        else:
            t = bar_features_for_symbol(Path(root), item["symbol"])
            sources = _sources(Path(root), ("bars_1m",), item["symbol"], None)
        rows = sum(n for *_, n in lake.write_partitions(t, Path(stage) / dataset, name, sources))
    except Exception as e:  # noqa: BLE001 (one bad partition is one failure, never the whole job's)
        for f in (Path(stage) / dataset).rglob(f"part-{name}.parquet"):
            f.unlink()
        rows, error, trace = 0, failure_line(e), traceback.format_exc()
    return {"rows": np.array([rows]), "unsynced": np.array([unsynced]), "sessions": np.array([sessions]),
            "node": np.array([ray.get_runtime_context().get_node_id()], dtype=object),
            "unit": np.array([f"{dataset} {unit}"], dtype=object), "error": np.array([error], dtype=object),
            "trace": np.array([trace], dtype=object)}


@dataclass
class FeaturesReport:
    rows: dict[str, int]
    partitions: dict[str, list[str]]
    seconds: float
    tasks: int = 0
    nodes: set[str] = field(default_factory=set)  # where the tasks whose results were kept ran
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (unit, one line, traceback)
    log: Path | None = None
    unsynced: int = 0  # tick rows whose book was not the venue's (see features.grid)
    sessions: int = 0  # session starts among the tick rows

    def lines(self) -> list[str]:
        sets = {"features": (FEATURE_SET_VERSION, len(FEATURE_NAMES)),
                "bar_features": (BAR_FEATURE_SET, len(BAR_FEATURE_NAMES))}
        return [f"failed: {unit}: {why}" for unit, why, _ in self.failed] + [
                f"{ds}: {self.rows[ds]:,} rows x {sets[ds][1]} features ({sets[ds][0]}) in "
                f"{len(self.partitions[ds])} partitions"
                + (f"; {self.unsynced:,} rows on an unsynced book, {self.sessions:,} session starts"
                   if ds == "features" else "") for ds in self.rows] + [
                f"({self.seconds:.1f}s, {self.tasks} tasks on {len(self.nodes)} node(s)"
                + (f"; {len(self.failed)} failed, tracebacks in {self.log}" if self.failed else "") + ")"]


def _run(lake_root: Path, dataset: str, items: list[dict], report: FeaturesReport, gaps: dict) -> None:
    stage = lake.staging_dir(lake_root)
    try:
        with one_stage_execution():
            counts = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _compute_and_write, batch_size=1,
                fn_kwargs={"root": str(lake_root), "stage": str(stage), "dataset": dataset, "gaps": gaps}).take_all()
        report.partitions[dataset] = lake.commit(stage / dataset, lake_root / dataset)
        report.rows[dataset] = sum(int(c["rows"]) for c in counts)
        report.unsynced += sum(int(c["unsynced"]) for c in counts)
        report.sessions += sum(int(c["sessions"]) for c in counts)
        report.tasks += len(counts)
        report.nodes.update(c["node"] for c in counts)
        report.failed += [(c["unit"], c["error"], c["trace"]) for c in counts if c["error"]]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def build_features(lake_root: Path, book_gap_s: float = BOOK_GAP_S, trade_gap_s: float | None = None
                   ) -> FeaturesReport:
    """Tick features for every partition with trades and book, bar features for every symbol with bars.
    ``book_gap_s`` and ``trade_gap_s`` bound the silences that end a session (``features.grid``)."""
    if book_gap_s <= 0 or (trade_gap_s is not None and trade_gap_s <= 0):
        raise ConfigError(f"the book gap ({book_gap_s}) and trade gap ({trade_gap_s}) must be > 0 seconds")
    gaps = {"book_gap_s": book_gap_s, "trade_gap_s": trade_gap_s}
    t0 = time.perf_counter()
    lake_root = Path(lake_root)
    parts = sorted(set(lake.partitions(lake_root, "trades")) & set(lake.partitions(lake_root, "book")))
    bar_symbols = sorted({s for _, s in lake.partitions(lake_root, "bars_1m")})
    if not parts and not bar_symbols:
        raise FileNotFoundError(f"no (date, symbol) partition with both trades and book, and no 1m bars, under "
                                f"{lake_root}; run `tickray ingest` first")
    report = FeaturesReport({}, {}, 0.0)
    if parts:
        _run(lake_root, "features", [{"date": d, "symbol": s} for d, s in parts], report, gaps)
    if bar_symbols:
        _run(lake_root, "bar_features", [{"symbol": s} for s in bar_symbols], report, gaps)
    if report.failed:
        logs = lake_root / "_logs"
        logs.mkdir(parents=True, exist_ok=True)
        report.log = logs / f"features-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}.log"
        report.log.write_text("".join(f"== {unit}\n{why}\n{trace}\n" for unit, why, trace in report.failed))
    report.seconds = time.perf_counter() - t0
    return report
