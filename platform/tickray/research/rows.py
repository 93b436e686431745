"""The rows every model consumer reads (training, tuning, backtests, monitoring), and how time is cut.

Tick rows come from the feature lake, read with Ray Data (one task per (date, symbol) partition); bar rows
from the lake's 1m bars at a timeframe (:func:`load_bar_rows`). Both are :class:`Rows`: a float32
feature matrix sorted by (symbol, ts), the labels of every horizon, and for each row whether the
``window`` seconds ending at it are contiguous and complete. Sequence models gather their N × T × F
windows from the matrix batch by batch (:func:`gather_windows`), so the windows are never materialised
whole: T times the data would not fit where the rows do.

Time is cut, never shuffled: [development | calibration | test] with an embargo between, and purged
k-fold inside development (de Prado): a training row is dropped when its label window reaches into the
validation block, or when it lies within the embargo after it (its features look back into the block).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from tickray import lake
from tickray.bars.build import read_lake_bars, source_minutes, stored_bars, timeframe_minutes, why_not_built
from tickray.errors import ConfigError
from tickray.features import FEATURE_SET_VERSION, FEATURES
from tickray.features.indicators import BAR_FEATURE_NAMES, BAR_FEATURE_SET, BAR_LOOKBACK, bar_features
from tickray.features.labels import forward_labels_on_grid, up_labels
from tickray.features.windows import complete_windows
from tickray.lake.schema import bars_dataset_name
from tickray.research.config import RowsConfig

NS = 1_000_000_000
VALIDITY = ("book_synced", "new_session")  # the feature rows' validity columns (features.grid)


@dataclass
class Rows:
    x: np.ndarray  # (n, F) float32, rows sorted by (symbol, ts)
    y: np.ndarray  # (n, H) float32: 1 up, 0 down, NaN undefined (labels.dead_band_bps, past the data)
    fwd: np.ndarray  # (n, H) float64: the forward log return in bps behind each label (for backtests)
    ts: np.ndarray  # (n,) int64 ns
    symbol: np.ndarray  # (n,) object
    window_ok: np.ndarray  # (n,) bool: the `window` rows ending here are one symbol's consecutive seconds, all defined
    features: list[str]
    horizons: list[int]
    window: int
    feature_set_version: str = FEATURE_SET_VERSION
    price: np.ndarray | None = None  # (n,) the mid (ticks) or close (bars) each row's features see: for backtests
    # each lake partition read ("<dataset>/date=…/symbol=…") → the inputs its rows came from
    provenance: dict[str, list[str]] = field(default_factory=dict)
    lookback_s: int = 0  # the longest look-back of the features, as they declare it
    period_s: int = 1  # seconds from one row to the next of a symbol (the grid's, or the bars')
    # (n,) whether the book behind each row was the venue's (features.grid); None: no book (bars)
    book_synced: np.ndarray | None = None
    # (n,) int: rows of one session share a number; rolling features, labels and windows never cross one
    session: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.ts.size

    def validity(self) -> str:
        """How many rows had no venue's book behind them (never learnt from, scored or traded) and how
        many sessions the rows fall into."""
        unsynced = int((~self.book_synced).sum()) if self.book_synced is not None else 0
        sessions = len(np.unique(self.session)) if self.session is not None else len(set(self.symbol.tolist()))
        return f"{unsynced:,} rows on an unsynced book left out, {sessions:,} session(s)"

    def labels(self) -> list[str]:
        return [f"up_{h}s" for h in self.horizons]

    def sources(self) -> dict:
        """What the rows were made of, for a run's record: every input behind them, and per partition read."""
        return {"inputs": sorted({i for found in self.provenance.values() for i in found}),
                "partitions": self.provenance}

    def data_range(self) -> dict[str, str]:
        def iso(ns: int) -> str:
            return dt.datetime.fromtimestamp(ns / NS, dt.UTC).isoformat()
        return {"start": iso(int(self.ts.min())), "end": iso(int(self.ts.max())),
                "symbols": ",".join(sorted(set(self.symbol.tolist()))), "rows": str(self.n)}


def _date_filter(cfg: RowsConfig, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    d = cfg.data
    wanted = {s.upper() for s in d.symbols}
    return [(date, sym) for date, sym in parts
            if (not wanted or sym in wanted) and (d.start is None or date >= d.start)
            and (d.end is None or date <= d.end)]


def _by_source(cfg: RowsConfig, root: Path, dataset: str, parts: list[tuple[str, str]]
               ) -> dict[tuple[str, str], list[str]]:
    """Each partition every input of which matches one of ``data.sources`` (all of them when it is empty;
    none whose inputs the lake does not record) → those inputs, read once from the files' footers."""
    globs = cfg.data.sources
    matches = lambda src: any(fnmatch.fnmatchcase(src, g) for g in globs)
    out = {}
    for d, s in parts:
        found = lake.partition_sources(root, dataset, d, s)
        if not globs or (found and all(map(matches, found))):
            out[(d, s)] = found
    return out


def _selection(cfg: RowsConfig) -> str:
    d = cfg.data
    said = f"symbols {d.symbols or 'any'} and dates {d.start or '…'}..{d.end or '…'}"
    return said + (f" from sources matching {d.sources} (partitions ingested before the lake recorded its "
                   "inputs match none: ingest them again)" if d.sources else "")


def check_lake(cfg: RowsConfig, lake_root: Path) -> dict[tuple[str, str], list[str]]:
    """The (date, symbol) partitions the config selects → the inputs behind each, after checking (without
    reading any data) that every feature and label is there: a one-line error otherwise."""
    root = Path(lake_root)
    parts = _by_source(cfg, root, "features", _date_filter(cfg, lake.partitions(root, "features")))
    if not parts:
        raise ConfigError(f"data: no feature partitions under {root / 'features'} for {_selection(cfg)}; "
                          "run `tickray features` first")
    date, sym = next(iter(parts))
    f = next((root / "features" / f"date={date}" / f"symbol={sym}").glob("*.parquet"))
    have = set(pq.read_schema(f).names)
    missing = [c for c in (*cfg.data.selected_features(), *VALIDITY) if c not in have]
    if missing:
        raise ConfigError(f"data: feature(s) {', '.join(missing)} missing from {f} (feature set "
                          f"{FEATURE_SET_VERSION}): recompute features with `tickray features`")
    labels = sorted(c for c in have if c.startswith("fwd_ret_"))
    for h in cfg.data.horizons_s:
        if f"fwd_ret_{h}s" not in have:
            raise ConfigError(f"data.horizons_s: no forward return fwd_ret_{h}s in {f} (have {', '.join(labels)}); add the "
                              "horizon to tickray.features.labels.HORIZONS_S and recompute features")
    return parts


def _provenance(dataset: str, parts: dict[tuple[str, str], list[str]]) -> dict[str, list[str]]:
    """Each partition read, named as in the lake → the inputs behind its rows."""
    return {f"{dataset}/date={d}/symbol={s}": found for (d, s), found in parts.items()}


def load_rows(cfg: RowsConfig, lake_root: Path) -> Rows:
    """Every selected row (Ray Data, a task per partition), with the canary's label shuffle applied."""
    root = Path(lake_root)
    parts = check_lake(cfg, root)
    returns = [f"fwd_ret_{h}s" for h in cfg.data.horizons_s]
    features = cfg.data.selected_features()
    cols = ["ts", "mid", *VALIDITY, *features, *returns]

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        date, sym = batch["date"][0], batch["symbol"][0]
        t = lake.read_partition(root, "features", date, sym, columns=cols)
        return t.append_column("symbol", pa.array([sym] * t.num_rows, pa.string()))

    items = [{"date": d, "symbol": s} for d, s in parts]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(read, batch_size=1,
                                                                              batch_format="numpy")
    t = pa.concat_tables(ray.get(ds.to_arrow_refs()), promote_options="default")
    t = t.sort_by([("symbol", "ascending"), ("ts", "ascending")])
    ts = pc.cast(t["ts"], pa.int64()).to_numpy()
    x = np.column_stack([t[c].to_numpy(zero_copy_only=False) for c in features]).astype(np.float32)
    fwd = np.column_stack([t[c].to_numpy(zero_copy_only=False) for c in returns]).astype(np.float64)
    y = up_labels(fwd, cfg.labels.dead_band_bps).astype(np.float32)
    symbol = t["symbol"].to_numpy(zero_copy_only=False)
    if cfg.labels.shuffle_within_s:
        y = shuffle_within_blocks(y, ts, cfg.labels.shuffle_within_s * NS, cfg.seed)
    window = cfg.longest_window
    new = t["new_session"].to_numpy(zero_copy_only=False).copy()
    new[1:] |= symbol[1:] != symbol[:-1]
    session = np.cumsum(new)  # from the first row read: a session begun before it is numbered from there
    ok = complete_windows(x, ts, symbol, window)
    if ts.size >= window:  # and within one session
        ok[window - 1:] &= session[window - 1:] == session[: ts.size - window + 1]
    return Rows(x, y, fwd, ts, symbol, ok, features, list(cfg.data.horizons_s), window,
                price=t["mid"].to_numpy(zero_copy_only=False).astype(np.float64),
                provenance=_provenance("features", parts), lookback_s=max(FEATURES[f].lookback for f in features),
                book_synced=t["book_synced"].to_numpy(zero_copy_only=False), session=session)


def load_bar_rows(cfg: RowsConfig, lake_root: Path, timeframe: str) -> Rows:
    """Bars of ``timeframe`` from the lake's stored bars (each symbol's shortest that divide it), bar
    indicators as features, forward labels from the close ``h`` seconds later (none across a hole)."""
    d = cfg.data
    minutes = timeframe_minutes(timeframe)
    held = stored_bars(lake_root)
    named = [s.upper() for s in d.symbols]
    why = {s: w for s in named or sorted(held) if (w := why_not_built(held.get(s, []), minutes))}
    if named and why:
        raise ConfigError(f"data.symbols: {'; '.join(f'{s}: {w}' for s, w in why.items())} ({lake_root})")
    symbols = [s for s in named or sorted(held) if s not in why]
    sources = {s: bars_dataset_name(source_minutes(held[s], minutes)) for s in symbols}
    have = [(date, s, ds) for ds in set(sources.values()) for date, s in lake.partitions(Path(lake_root), ds)
            if sources.get(s) == ds]
    dates = sorted(day for day, _, _ in have)
    if not dates:
        raise ConfigError(f"data: no bars in {lake_root} that {timeframe} bars can be built from; run `tickray ingest`")
    day = dt.timedelta(days=1)
    start = dt.date.fromisoformat(d.start or dates[0])
    end = dt.date.fromisoformat(d.end or dates[-1]) + day

    def ns(x: dt.date) -> int:
        return int(dt.datetime(x.year, x.month, x.day, tzinfo=dt.UTC).timestamp()) * NS

    kept_by = {ds: _by_source(cfg, Path(lake_root), ds, [(date, s) for date, s, of in have if of == ds
                                                         and start.isoformat() <= date < end.isoformat()])
               for ds in sorted(set(sources.values()))}
    kept = {k: found for by in kept_by.values() for k, found in by.items()}
    bars = read_lake_bars(lake_root, symbols, timeframe, ns(start), ns(end))
    read = sum(1 for date, _, _ in have if start.isoformat() <= date < end.isoformat())
    if len(kept) < read:  # the days of other sources left out (a bar never spans two UTC days)
        key = pc.binary_join_element_wise(lake.date_column(bars["ts"]), bars["symbol"], "/")
        bars = bars.filter(pc.is_in(key, pa.array([f"{date}/{s}" for date, s in kept], pa.string())))
    if bars.num_rows == 0:
        raise ConfigError(f"data: no bars under {lake_root} for {_selection(cfg)}")
    step_s = 60 * minutes
    xs, ys, fwds, tss, syms, prices = [], [], [], [], [], []
    for s in symbols:
        t = bars.filter(pc.equal(bars["symbol"], s))
        if t.num_rows == 0:
            continue
        ts = pc.cast(t["ts"], "int64").to_numpy()
        close = t["close"].to_numpy()
        feats = bar_features(t["high"].to_numpy(), t["low"].to_numpy(), close)
        xs.append(np.column_stack([feats[k] for k in BAR_FEATURE_NAMES]).astype(np.float32))
        labels = forward_labels_on_grid(ts, close, tuple(d.horizons_s), step_s)
        fwds.append(np.column_stack([labels[f"fwd_ret_{h}s"] for h in d.horizons_s]))
        ys.append(up_labels(fwds[-1], cfg.labels.dead_band_bps).astype(np.float32))
        tss.append(ts)
        syms.append(np.full(ts.size, s, object))
        prices.append(close.astype(np.float64))
    x = np.concatenate(xs)
    return Rows(x, np.concatenate(ys), np.concatenate(fwds), np.concatenate(tss), np.concatenate(syms),
                ~np.isnan(x).any(axis=1), list(BAR_FEATURE_NAMES), list(d.horizons_s), 1,
                f"{BAR_FEATURE_SET}@{timeframe}", np.concatenate(prices),
                {p: found for ds, by in kept_by.items() for p, found in _provenance(ds, by).items()},
                lookback_s=max(BAR_LOOKBACK.values()) * step_s, period_s=step_s)


def shuffle_within_blocks(y: np.ndarray, ts: np.ndarray, block_ns: int, seed: int) -> np.ndarray:
    """The leakage canary's noise labels: each label column permuted within time blocks, so the class
    balance over time is kept and any link between a row's features and its label is destroyed."""
    rng = np.random.default_rng(seed)
    out = y.copy()
    block = ts // block_ns
    order = np.argsort(block, kind="stable")
    bounds = np.flatnonzero(np.diff(block[order])) + 1
    for idx in np.split(order, bounds):
        for j in range(y.shape[1]):
            out[idx, j] = y[rng.permutation(idx), j]
    return out


@dataclass
class Windows:
    """Row indices of the out-of-time windows and of the purged folds inside development."""
    dev: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, validation) within dev
    cuts_ns: dict[str, int]


def observable(rows: Rows) -> np.ndarray:
    """Rows a live system could have predicted: the venue's book behind them, features defined and the
    longest window complete. What happened after a row never decides whether it is there (a backtest
    simulates every one of these)."""
    ok = rows.window_ok if rows.window > 1 else ~np.isnan(rows.x).any(axis=1)
    return ok & rows.book_synced if rows.book_synced is not None else ok


def usable(rows: Rows) -> np.ndarray:
    """Rows a model may learn from or be scored on: observable, with some label defined."""
    return observable(rows) & ~np.isnan(rows.y).all(axis=1)


def labelled(y: np.ndarray, idx: np.ndarray, j: int) -> np.ndarray:
    """The rows of ``idx`` whose label for horizon ``j`` is known."""
    return idx[~np.isnan(y[idx, j])]


def purged_kfold(ts: np.ndarray, idx: np.ndarray, k: int, purge_ns: int, embargo_ns: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """k contiguous time blocks of ``idx``; for block [a, b) the training rows are those with
    ts < a - purge_ns (their labels end before the block) or ts >= b + embargo_ns."""
    t = ts[idx]
    edges = np.quantile(t, np.linspace(0, 1, k + 1), method="lower")  # row times: see walk_forward
    edges[-1] = t.max() + 1
    folds = []
    for a, b in itertools.pairwise(edges):
        valid = idx[(t >= a) & (t < b)]
        train = idx[(t < a - purge_ns) | (t >= b + embargo_ns)]
        folds.append((train, valid))
    return folds


def walk_forward(ts: np.ndarray, idx: np.ndarray, n_windows: int, gap_ns: int, min_train_fraction: float = 0.3
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window walk-forward: train on everything before each test window (less a gap). The test
    windows split the rows after the first ``min_train_fraction`` into equal shares (by rows, not clock
    time, so a lake with gaps between sessions still gets even windows)."""
    t = ts[idx]
    # edges are row times (int64): float edges round nanosecond times, and left the last second out
    edges = np.quantile(t, np.linspace(min_train_fraction, 1, n_windows + 1), method="lower")
    edges[-1] = t.max() + 1
    return [(idx[t < a - gap_ns], idx[(t >= a) & (t < b)]) for a, b in itertools.pairwise(edges)]


def embargo_s(rows: Rows, cfg: RowsConfig) -> int:
    """Seconds of rows dropped after a held-out block (a validation fold, a cut): the longer of the
    longest label horizon and the features' longest declared look-back, plus the longest sequence
    window, so that no kept row's features, window or label reach into the block. A shorter
    ``split.embargo_s`` is refused; a longer one is kept."""
    need = max(*rows.horizons, rows.lookback_s) + cfg.longest_window * rows.period_s
    said = cfg.split.embargo_s
    if said is not None and said < need:
        raise ConfigError(f"split.embargo_s: {said}s is shorter than the rows reach (the longer of horizon "
                          f"{max(rows.horizons)}s and feature look-back {rows.lookback_s}s, plus a window of "
                          f"{cfg.longest_window} row(s)): at least {need}s, or leave it unset")
    return need if said is None else said


def split_windows(rows: Rows, cfg: RowsConfig) -> Windows:
    idx = np.flatnonzero(usable(rows))
    if idx.size == 0:
        raise ConfigError("data: no usable rows (every row lacks a feature, a complete window or a label)")
    t = rows.ts[idx]
    lo, hi = int(t.min()), int(t.max()) + 1
    # Cut by rows, not by clock time: a lake with gaps (separate capture sessions) still gets its shares.
    c_test = int(np.quantile(t, 1 - cfg.split.test_fraction))
    test = idx[t >= c_test]
    gap_s = embargo_s(rows, cfg)
    history = idx[t < c_test - gap_s * NS]
    cal_share = cfg.split.calibration_fraction / (1 - cfg.split.test_fraction)
    dev, cal, folds, c_cal = split_history(rows, history, cfg, cal_share) if history.size else (
        history, history, [], c_test)
    where = (f"({idx.size:,} usable rows from {_iso(lo)} to {_iso(hi)}, embargo {gap_s}s): use more data "
             "or smaller fractions")
    check_windows(rows, {"development": dev, "calibration": cal, "test": test}, folds, cfg, where)
    return Windows(dev, cal, test, folds, {"calibration_start": c_cal, "test_start": c_test, "end": hi})


def split_history(rows: Rows, history: np.ndarray, cfg: RowsConfig, calibration_share: float
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]], int]:
    """The rows a model may learn from, cut into [development | calibration] with an embargo between,
    and purged k-fold inside development: (development, calibration, folds, calibration start)."""
    t = rows.ts[history]
    gap = embargo_s(rows, cfg) * NS
    c_cal = int(np.quantile(t, 1 - calibration_share))
    dev = history[t < c_cal - gap]
    cal = history[t >= c_cal]
    folds = purged_kfold(rows.ts, dev, cfg.split.folds, max(rows.horizons) * NS, gap) if dev.size else []
    return dev, cal, folds, c_cal


def check_windows(rows: Rows, parts: dict[str, np.ndarray], folds: list, cfg: RowsConfig, where: str) -> None:
    """Every window has rows, every fold both sides, every label both classes in every window."""
    for name, part in parts.items():
        if part.size == 0:
            raise ConfigError(f"split: the {name} window is empty {where}")
    for i, (tr, va) in enumerate(folds):
        if tr.size == 0 or va.size == 0:
            raise ConfigError(f"split.folds: fold {i} of {cfg.split.folds} is empty; use fewer folds")
    for j, h in enumerate(rows.horizons):
        for name, part in parts.items():
            classes = np.unique(rows.y[part, j][~np.isnan(rows.y[part, j])])
            if classes.size < 2:
                raise ConfigError(f"labels: up_{h}s has {'one class' if classes.size else 'no values'} "
                                  f"in the {name} window; a binary model cannot be fitted or judged")


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / NS, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def inner_split(ts: np.ndarray, idx: np.ndarray, gap_ns: int, fraction: float = 0.15
                ) -> tuple[np.ndarray, np.ndarray]:
    """(fit, stop): the latest ``fraction`` of ``idx`` by time decides early stopping; the rest, less a
    gap before it, is fitted on."""
    t = ts[idx]
    cut = np.quantile(t, 1 - fraction)
    return idx[t < cut - gap_ns], idx[t >= cut]


def thin(rows: Rows, idx: np.ndarray, every_s: int) -> np.ndarray:
    """Every Nth second of ``idx`` (by timestamp, so all symbols keep the same seconds)."""
    if every_s <= 1:
        return idx
    return idx[(rows.ts[idx] // NS) % every_s == 0]
