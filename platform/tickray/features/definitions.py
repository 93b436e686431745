"""The feature library: pure functions over the one-second grid, each with a name, a look-back and a
version, grouped in named feature sets. Batch jobs and stream actors call the same functions.

A feature at row t reads rows t-lookback .. t only (never ahead). Window sums come from
``rolling.window_sum``, whose result depends only on the rows of the window, and the streaming form
(:class:`OnlineFeatures`) evaluates the same functions on one row at a time, with the window sums and lags
kept running (``rolling.RunningWindow``): the same bits as over a whole day, in O(1) per row. Windowed
features are NaN until their window is full, except those marked
``from_start`` (volume rates over 5 and 15 min, and what is measured against the 15-minute activity
baseline), which start once 60 rows exist and average the rows they have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tickray.features import rolling
from tickray.features.grid import BOOK_LEVELS, GRID_FIELDS, NS

BASELINE_S = 900  # the "normal activity" window that rates and thresholds are measured against
BASELINE_MIN_ROWS = 60
LARGE_TRADE_Z = 3.0  # a trade is large above exp(mean + 3 sd) of log trade size: robust to fat tails


@dataclass(frozen=True)
class Feature:
    name: str
    lookback: int  # rows before the current one that the value depends on
    version: int
    fn: Callable[[Grid], np.ndarray]
    doc: str
    # Averages over the rows there are until its window fills, so until then its value depends on where
    # the data starts (a stream actor's data starts when it connects).
    from_start: bool = False


FEATURES: dict[str, Feature] = {}


def _register(name: str, lookback: int, doc: str, version: int = 1, from_start: bool = False):
    def wrap(fn: Callable[[Grid], np.ndarray]) -> Callable[[Grid], np.ndarray]:
        FEATURES[name] = Feature(name, lookback, version, fn, doc, from_start)
        return fn
    return wrap


def _ratio(num: np.ndarray, den: np.ndarray, empty: np.ndarray | float) -> np.ndarray:
    """num/den where den > 0, ``empty`` where den == 0, NaN where either is NaN."""
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


class Grid:
    """The grid columns of one symbol plus shared intermediate series, computed once per call."""

    def __init__(self, grid: dict[str, np.ndarray]):
        self.cols = {k: np.asarray(grid[k], dtype=np.float64) for k in GRID_FIELDS if k != "ts"}
        self.ts = np.asarray(grid["ts"], dtype=np.int64)
        self.n = self.ts.size
        self.origin = int(self.ts[0] // NS) if self.n else 0  # absolute second of row 0: window alignment

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    def level_sum(self, side: str, fn: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
        """Sum over the top levels of ``fn(i)`` (default: the size at level i), added level by level so
        the result does not depend on how many rows are computed at once (a BLAS dot product might)."""
        fn = fn or (lambda i: self.cols[f"{side}_sz_{i}"])
        out = fn(1)
        for i in range(2, BOOK_LEVELS + 1):
            out = out + fn(i)
        return out

    # Every operation across rows goes through these three methods: the online form
    # (:class:`OnlineFeatures`) serves them from running state instead of from the columns.
    def wsum(self, x: np.ndarray, w: int) -> np.ndarray:
        """Sum over the trailing ``w`` rows, NaN until the window is full."""
        return rolling.full_window_sum(x, w, self.origin)

    def wmean(self, x: np.ndarray, w: int, min_rows: int | None = None) -> np.ndarray:
        """Mean over the trailing ``w`` rows (see ``rolling.window_mean``)."""
        return rolling.window_mean(x, w, self.origin, min_rows)

    def lag(self, x: np.ndarray, k: int) -> np.ndarray:
        """``x`` as it was ``k`` rows earlier (NaN for the first ``k`` rows)."""
        return rolling.lag(x, k)

    def baseline(self, x: np.ndarray) -> np.ndarray:
        return self.wmean(x, BASELINE_S, BASELINE_MIN_ROWS)

    @cached_property
    def mid(self) -> np.ndarray:
        return (self["bid_px_1"] + self["ask_px_1"]) / 2

    @cached_property
    def logmid(self) -> np.ndarray:
        return np.log(self.mid)

    @cached_property
    def ret1(self) -> np.ndarray:
        return (self.logmid - self.lag(self.logmid, 1)) * 1e4

    @cached_property
    def qty(self) -> np.ndarray:
        return self["buy_qty"] + self["sell_qty"]

    @cached_property
    def depth_bid(self) -> np.ndarray:
        return self.level_sum("bid")

    @cached_property
    def depth_ask(self) -> np.ndarray:
        return self.level_sum("ask")

    @cached_property
    def ofi_event(self) -> np.ndarray:
        """Cont-Kukanov-Stoikov order-flow imbalance of the best quotes between consecutive rows."""
        b, a, qb, qa = self["bid_px_1"], self["ask_px_1"], self["bid_sz_1"], self["ask_sz_1"]
        pb, pa, pqb, pqa = self.lag(b, 1), self.lag(a, 1), self.lag(qb, 1), self.lag(qa, 1)
        e = (np.where(b >= pb, qb, 0.0) - np.where(b <= pb, pqb, 0.0)
             - np.where(a <= pa, qa, 0.0) + np.where(a >= pa, pqa, 0.0))
        e[np.isnan(pb) | np.isnan(b)] = np.nan
        return e

    @cached_property
    def day_fraction(self) -> np.ndarray:
        """Time of day (UTC) as a fraction of the day."""
        return (self.ts // NS % 86_400) / 86_400

    @cached_property
    def day_hours(self) -> np.ndarray:
        return self.day_fraction * 24

    @cached_property
    def trade_baseline(self) -> np.ndarray:
        return self.baseline(self.qty)


# --- order book (this row only) ---------------------------------------------------------------------

@_register("spread_bps", 0, "best ask minus best bid, in bps of the mid")
def _spread_bps(g: Grid) -> np.ndarray:
    return (g["ask_px_1"] - g["bid_px_1"]) / g.mid * 1e4


@_register("spread_ticks", 0, "spread in units of the smallest gap between adjacent levels (the tick "
                              "where the book is dense; NaN with one level)")
def _spread_ticks(g: Grid) -> np.ndarray:
    tick = np.full(g.n, np.nan)
    for i in range(1, BOOK_LEVELS):
        for gap in (g[f"bid_px_{i}"] - g[f"bid_px_{i + 1}"], g[f"ask_px_{i + 1}"] - g[f"ask_px_{i}"]):
            tick = np.fmin(tick, np.where(gap > 0, gap, np.nan))  # fmin skips NaN: NaN only without any
    return (g["ask_px_1"] - g["bid_px_1"]) / tick


@_register("imb_l1", 0, "(bid size - ask size) / (bid size + ask size) at the best level")
def _imb_l1(g: Grid) -> np.ndarray:
    return (g["bid_sz_1"] - g["ask_sz_1"]) / (g["bid_sz_1"] + g["ask_sz_1"])


@_register(f"imb_l{BOOK_LEVELS}", 0, "depth-weighted imbalance over the top levels, level i weighted 1/i")
def _imb_depth(g: Grid) -> np.ndarray:
    qb = g.level_sum("bid", lambda i: g[f"bid_sz_{i}"] / i)
    qa = g.level_sum("ask", lambda i: g[f"ask_sz_{i}"] / i)
    return (qb - qa) / (qb + qa)


@_register(f"pressure_l{BOOK_LEVELS}", 0, "log of bid depth over ask depth in the top levels")
def _pressure(g: Grid) -> np.ndarray:
    return np.log(g.depth_bid / g.depth_ask)


@_register(f"depth_l{BOOK_LEVELS}", 0, "log(1 + size resting in the top levels of both sides)")
def _depth(g: Grid) -> np.ndarray:
    return np.log1p(g.depth_bid + g.depth_ask)


@_register("microprice_bps", 0, "size-weighted mid of the best level (leans to the thinner side), bps "
                                "from the mid")
def _microprice(g: Grid) -> np.ndarray:
    qb, qa = g["bid_sz_1"], g["ask_sz_1"]
    micro = (g["bid_px_1"] * qa + g["ask_px_1"] * qb) / (qb + qa)
    return (micro - g.mid) / g.mid * 1e4


@_register(f"wmid_l{BOOK_LEVELS}_bps", 0, "depth-weighted mid of the top levels, bps from the mid")
def _wmid(g: Grid) -> np.ndarray:
    vb = g.level_sum("bid", lambda i: g[f"bid_px_{i}"] * g[f"bid_sz_{i}"]) / g.depth_bid
    va = g.level_sum("ask", lambda i: g[f"ask_px_{i}"] * g[f"ask_sz_{i}"]) / g.depth_ask
    wmid = (vb * g.depth_ask + va * g.depth_bid) / (g.depth_bid + g.depth_ask)
    return (wmid - g.mid) / g.mid * 1e4


def _slope(g: Grid, side: str) -> np.ndarray:
    far = g[f"{side}_px_{BOOK_LEVELS}"]
    dist_bps = np.abs(g.mid - far) / g.mid * 1e4
    depth = g.depth_bid if side == "bid" else g.depth_ask
    return np.log1p(depth / dist_bps)


for _side in ("bid", "ask"):
    _register(f"slope_{_side}_l{BOOK_LEVELS}", 0, f"book slope: log(1 + {_side} depth per bps of distance to "
              f"the level-{BOOK_LEVELS} price)")(lambda g, s=_side: _slope(g, s))


# --- returns, order flow and volatility (full windows) ---------------------------------------------

_register("ret_1s", 1, "log mid return over 1 s, bps")(lambda g: g.ret1)
for _k in (5, 30, 60, 300):
    _register(f"ret_{_k}s", _k, f"log mid return (momentum) over {_k} s, bps")(
        lambda g, k=_k: (g.logmid - g.lag(g.logmid, k)) * 1e4)

for _w in (5, 30, 60, 300):
    _register(f"ofi_{_w}s", _w, f"order-flow imbalance of the best quotes over {_w} s, per unit of mean "
              "best-level depth")(
        lambda g, w=_w: g.wsum(g.ofi_event, w) / (g.wsum((g["bid_sz_1"] + g["ask_sz_1"]) / 2, w) / w))

for _w in (5, 30, 60):
    _register(f"tflow_{_w}s", _w - 1, f"trade imbalance over {_w} s: signed / total traded quantity "
              "(0 without trades)")(
        lambda g, w=_w: _ratio(g.wsum(g["buy_qty"] - g["sell_qty"], w), g.wsum(g.qty, w), 0.0))

for _w in (30, 300):
    _register(f"rv_{_w}s", _w, f"realised volatility: root of summed squared 1 s returns over {_w} s, bps")(
        lambda g, w=_w: np.sqrt(g.wsum(np.square(g.ret1), w)))


# --- trades ------------------------------------------------------------------------------------------

@_register("signed_vol_60s", 59, "asinh of the signed traded quantity over 60 s")
def _signed_vol(g: Grid) -> np.ndarray:
    return np.arcsinh(g.wsum(g["buy_qty"] - g["sell_qty"], 60))


@_register("vwap_dev_60s_bps", 59, "60 s VWAP minus the mid, bps (0 without trades)")
def _vwap_dev(g: Grid) -> np.ndarray:
    vwap = _ratio(g.wsum(g["notional"], 60), g.wsum(g.qty, 60), g.mid)
    return (vwap - g.mid) / g.mid * 1e4


@_register("eff_spread_60s_bps", 59, "effective spread over 60 s: twice the quantity-weighted distance of "
                                     "trade prices from the mid prevailing before each trade, bps (the "
                                     "quoted spread without trades)")
def _eff_spread(g: Grid) -> np.ndarray:
    quoted = (g["ask_px_1"] - g["bid_px_1"]) / g.mid * 1e4
    return _ratio(2 * g.wsum(g["asof_cost_bps"], 60), g.wsum(g["asof_qty"], 60), quoted)


_register("vol_rate_60s", 59, "log(1 + traded quantity per second) over 60 s")(
    lambda g: np.log1p(g.wsum(g.qty, 60) / 60))
for _w in (300, BASELINE_S):
    _register(f"vol_rate_{_w}s", _w - 1, f"log(1 + traded quantity per second) over {_w} s "
              f"(from {BASELINE_MIN_ROWS} rows on, over the rows there are)", from_start=True)(
        lambda g, w=_w: np.log1p(g.wmean(g.qty, w, BASELINE_MIN_ROWS)))

for _side in ("buy", "sell"):
    _register(f"{_side}_pressure_60s", BASELINE_S - 1, f"{_side} quantity over 60 s relative to the normal "
              f"total per 60 s ({BASELINE_S} s baseline)", from_start=True)(
        lambda g, s=_side: _ratio(g.wsum(g[f"{s}_qty"], 60), 60 * g.trade_baseline, 0.0))


@_register("trades_30s", 29, "number of trades in 30 s")
def _trades(g: Grid) -> np.ndarray:
    return g.wsum(g["n_trades"], 30)


@_register("intensity_30s", BASELINE_S - 1, "log trade rate over 30 s minus log trade rate over the "
                                            f"{BASELINE_S} s baseline", from_start=True)
def _intensity(g: Grid) -> np.ndarray:
    return np.log1p(g.wsum(g["n_trades"], 30) / 30) - np.log1p(g.baseline(g["n_trades"]))


@_register("large_trades_60s", 59 + BASELINE_S, "seconds of the last 60 with a trade larger than exp(mean + "
                                                f"{LARGE_TRADE_Z:g} sd) of the log mean trade size over the "
                                                f"previous {BASELINE_S} s", from_start=True)
def _large_trades(g: Grid) -> np.ndarray:
    has = g["n_trades"] > 0
    logsize = np.where(has, np.log(_ratio(g.qty, g["n_trades"], 1.0)), 0.0)
    n = g.baseline(has.astype(float))
    m1 = g.baseline(logsize)
    m2 = g.baseline(np.square(logsize))
    mean = _ratio(m1, n, np.nan)
    sd = np.sqrt(np.maximum(_ratio(m2, n, np.nan) - np.square(mean), 0.0))
    threshold = g.lag(np.exp(mean + LARGE_TRADE_Z * sd), 1)  # from earlier rows only
    flag = np.where(np.isnan(threshold), np.nan, (g["max_qty"] > threshold).astype(float))
    return g.wsum(flag, 60)


# --- time of day (UTC) -------------------------------------------------------------------------------

_register("tod_sin", 0, "time of day (UTC) on the unit circle, sine")(
    lambda g: np.sin(2 * np.pi * g.day_fraction))
_register("tod_cos", 0, "time of day (UTC) on the unit circle, cosine")(
    lambda g: np.cos(2 * np.pi * g.day_fraction))
for _name, (_h0, _h1) in {"asia": (0, 8), "europe": (7, 16), "us": (13, 21)}.items():
    _register(f"session_{_name}", 0, f"1 inside the {_name} trading session, {_h0:02d}:00-{_h1:02d}:00 UTC")(
        lambda g, h0=_h0, h1=_h1: ((g.day_hours >= h0) & (g.day_hours < h1)).astype(float))


FEATURE_SETS: dict[str, tuple[str, ...]] = {"tick-v2": tuple(FEATURES)}
FEATURE_SET_VERSION = "tick-v2"  # the default set: what the jobs write, the models train on and stream
FEATURE_NAMES = FEATURE_SETS[FEATURE_SET_VERSION]
LOOKBACK = max(FEATURES[n].lookback for n in FEATURE_NAMES) + 1  # grid rows one feature row needs


def compute_features(grid: dict[str, np.ndarray], names: tuple[str, ...] = FEATURE_NAMES) -> dict[str, np.ndarray]:
    """Feature columns for every grid row (NaN where a look-back is not yet covered). Each session
    (from a row with ``new_session`` to the next) is computed alone: no window reaches across its start."""
    n = len(grid["ts"])
    cuts = [0, *(i for i in np.flatnonzero(grid["new_session"]).tolist() if i > 0), n]
    out = {name: np.empty(n) for name in names}
    for a, b in itertools.pairwise(cuts):
        g = Grid({k: v[a:b] for k, v in grid.items()})
        for name in names:
            out[name][a:b] = FEATURES[name].fn(g)
    return out


class _OnlineGrid(Grid):
    """One grid row (columns of length 1) whose operations across rows are served, in the order the
    definitions call them, by the running state kept on ``tape``: one entry per call site of
    ``wsum``/``wmean``/``lag`` in one evaluation of the feature set, created on the first row."""

    def __init__(self, cols: dict[str, np.ndarray], ts: np.ndarray, tape: list):
        self.cols, self.ts, self.n = cols, ts, 1
        self.origin = int(ts[0] // NS)
        self._tape, self._next = tape, 0

    def _op(self, kind: type, arg: int):
        if self._next == len(self._tape):
            self._tape.append(((kind, arg), kind(arg)))
        key, op = self._tape[self._next]
        self._next += 1
        if key != (kind, arg):
            raise RuntimeError("the feature definitions called their window operations in another order "
                               "than on the first row: an online feature must not branch on the data")
        return op

    def wsum(self, x: np.ndarray, w: int) -> np.ndarray:
        return np.array([self._op(rolling.RunningWindow, w).full_sum(float(x[-1]), self.origin)])

    def wmean(self, x: np.ndarray, w: int, min_rows: int | None = None) -> np.ndarray:
        return np.array([self._op(rolling.RunningWindow, w).mean(float(x[-1]), self.origin, min_rows)])

    def lag(self, x: np.ndarray, k: int) -> np.ndarray:
        return np.array([self._op(rolling.RunningLag, k).push(float(x[-1]))])


class OnlineFeatures:
    """The streaming form: add one grid row, read the features of that row.

    The definitions run on that row alone; their window sums and lags come from running state that has
    seen every row since the first (``rolling.RunningWindow``, ``RunningLag``), so the values are the
    batch values bit for bit at a cost that does not grow with the look-back.
    """

    def __init__(self, names: tuple[str, ...] = FEATURE_NAMES):
        self.names = names
        self.lookback = max(FEATURES[n].lookback for n in names) + 1
        self._fields = [k for k in GRID_FIELDS if k != "ts"]
        self._tape: list = []
        self._sec: int | None = None  # the absolute second of the last row
        self._last = np.full(len(self._fields), np.nan)

    def update(self, row: dict) -> dict[str, float]:
        sec = int(row["ts"]) // NS
        if (self._sec is not None and sec != self._sec + 1) or row["new_session"]:
            self._tape = []  # a new session, or not the next second: the look-backs start again
        self._sec = sec
        self._last = np.array([row[k] for k in self._fields], dtype=np.float64)
        g = _OnlineGrid({k: self._last[i:i + 1] for i, k in enumerate(self._fields)},
                        np.array([row["ts"]], dtype=np.int64), self._tape)
        return {name: float(FEATURES[name].fn(g)[-1]) for name in self.names}

    def last_row(self) -> bytes:
        """The newest grid row's values (GRID_FIELDS after ts), packed: what :meth:`restore` takes back."""
        return self._last.tobytes()

    def restore(self, ts: list[int], rows: list[bytes]) -> None:
        """Start again from consecutive seconds of rows from :meth:`last_row`, oldest first: the next
        :meth:`update` then computes what it would have without the interruption (only the last
        ``lookback - 1`` rows matter)."""
        keep = min(len(ts), self.lookback - 1)
        if keep and np.any(np.diff(ts[-keep:]) != NS):
            raise ValueError("grid rows to restore must be consecutive seconds")
        self._tape, self._sec = [], None
        for t, raw in zip(ts[len(ts) - keep:], rows[len(rows) - keep:]):
            self.update({"ts": t, **dict(zip(self._fields, np.frombuffer(raw, np.float64)))})
