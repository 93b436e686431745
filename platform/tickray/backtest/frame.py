"""Backtest inputs as a table: prices and predictions checked and aligned before the core sees them.

Bad input is an :class:`BacktestInputError` naming the column and the rows (positions in the table as
given): a missing or non-numeric column, NaN or non-positive prices, times out of order or repeated
within a symbol, an empty window, predictions at times the prices do not have.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tickray.backtest.core import Rules, Simulation, simulate, targets
from tickray.errors import TickrayError


class BacktestInputError(TickrayError, ValueError):
    """The backtest's input cannot be simulated as it is."""


def row_ranges(mask: np.ndarray, limit: int = 5) -> str:
    """'rows 3-5, 9 (4 rows)' for the True positions of ``mask``."""
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return "no rows"
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    ends = np.concatenate([rows[breaks], [rows[-1]]])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts[:limit], ends[:limit])]
    more = ", …" if starts.size > limit else ""
    return f"rows {', '.join(parts)}{more} ({rows.size:,} row{'s' if rows.size != 1 else ''})"


def _numeric(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    if col not in df.columns:
        raise BacktestInputError(f"{where}: no column {col!r} (columns: {', '.join(map(str, df.columns))})")
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    bad = np.isnan(values) & df[col].notna().to_numpy()
    if bad.any():
        raise BacktestInputError(f"{where}: column {col!r} is not numeric at {row_ranges(bad)}")
    return values


def check_prices(df: pd.DataFrame, price: str, where: str) -> None:
    if len(df) == 0:
        raise BacktestInputError(f"{where}: the window is empty (zero rows)")
    for col in ("ts", "symbol"):
        if col not in df.columns:
            raise BacktestInputError(f"{where}: no column {col!r}")
    p = _numeric(df, price, where)
    if np.isnan(p).any():
        raise BacktestInputError(f"{where}: column {price!r} is NaN at {row_ranges(np.isnan(p))}")
    if (p <= 0).any():
        raise BacktestInputError(f"{where}: column {price!r} is not positive at {row_ranges(p <= 0)}")
    ts = pd.to_numeric(df["ts"]).to_numpy()
    sym = df["symbol"].to_numpy()
    same = sym[1:] == sym[:-1]
    back = np.concatenate([[False], same & (ts[1:] < ts[:-1])])
    if back.any():
        raise BacktestInputError(f"{where}: column 'ts' goes backwards within a symbol at {row_ranges(back)}; "
                                 "sort by (symbol, ts)")
    dup = np.concatenate([[False], same & (ts[1:] == ts[:-1])])
    if dup.any():
        raise BacktestInputError(f"{where}: column 'ts' repeats within a symbol at {row_ranges(dup)}")
    if pd.Series(sym).ne(pd.Series(sym).shift()).sum() != pd.Series(sym).nunique():
        raise BacktestInputError(f"{where}: rows of a symbol are not contiguous; sort by (symbol, ts)")


def align(prices: pd.DataFrame, predictions: pd.DataFrame, price: str = "price") -> pd.DataFrame:
    """Predictions joined onto the price grid by (symbol, ts). Every prediction must fall on a price row:
    one that does not is an error naming its rows (a model run on another grid, or a time-zone slip)."""
    check_prices(prices, price, "prices")
    for col in ("ts", "symbol"):
        if col not in predictions.columns:
            raise BacktestInputError(f"predictions: no column {col!r}")
    keys = pd.MultiIndex.from_frame(prices[["symbol", "ts"]])
    pred_keys = pd.MultiIndex.from_frame(predictions[["symbol", "ts"]])
    missing = ~pred_keys.isin(keys)
    if missing.any():
        first = predictions.loc[missing].iloc[0]
        raise BacktestInputError(f"predictions: column 'ts' does not align with the prices at "
                                 f"{row_ranges(missing)} (first: {first['symbol']} at {first['ts']})")
    if pred_keys.duplicated().any():
        raise BacktestInputError(f"predictions: (symbol, ts) repeats at {row_ranges(pred_keys.duplicated())}")
    return prices.merge(predictions, on=["symbol", "ts"], how="left", suffixes=("", "_pred"))


def simulate_frame(df: pd.DataFrame, prob: str, rules: Rules, price: str = "price", confidence: str | None = None,
                   where: str = "backtest") -> Simulation:
    """Simulate the signal in column ``prob`` over ``df`` (ts, symbol, price, ...), sorted by (symbol, ts);
    an integer column ``session`` (the market's sessions: features.grid) ends a session where it changes."""
    check_prices(df, price, where)
    p = _numeric(df, prob, where)
    conf = _numeric(df, confidence, where) if confidence else None
    codes = pd.factorize(df["symbol"])[0]
    session = df["session"].to_numpy() if "session" in df.columns else None
    return simulate(pd.to_numeric(df["ts"]).to_numpy(), codes, df[price].to_numpy(float), targets(p, conf, rules),
                    rules, n_symbols=int(codes.max()) + 1, session=session)
