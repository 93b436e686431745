"""Row validation: every rejected row gets a reason, so it can be quarantined and counted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _first_reason(t: pa.Table, checks: list[tuple[str, np.ndarray]]) -> pa.Array:
    """Each row's first failed check's name, null where none failed (as codes: no Python object per row)."""
    code = np.full(t.num_rows, -1, np.int32)
    for i in reversed(range(len(checks))):  # the first check's name wins: written last
        code[checks[i][1]] = i
    return pc.take(pa.array([name for name, _ in checks], pa.string()), pa.array(code, mask=code < 0))


def _null(t: pa.Table, cols: list[str]) -> np.ndarray:
    bad = np.zeros(t.num_rows, bool)
    for c in cols:
        bad |= pc.is_null(t[c], nan_is_null=True).to_numpy(zero_copy_only=False)
    return bad


def _le0(col: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.less_equal(col, 0), False).to_numpy(zero_copy_only=False)


def check_trades(t: pa.Table) -> pa.Array:
    """Reasons for trade rows (None = valid): nulls, non-positive price/size, time going backwards
    within a symbol's stream, duplicate trade ids within a symbol. Rows in file order."""
    df = pd.DataFrame({"ts": pc.cast(t["ts"], pa.int64()).to_numpy(zero_copy_only=False),
                       "symbol": t["symbol"].to_numpy(zero_copy_only=False),
                       "id": t["trade_id"].to_numpy(zero_copy_only=False)})
    by_symbol = df.groupby("symbol", sort=False)["ts"]
    back = (df["ts"] < by_symbol.cummax().groupby(df["symbol"], sort=False).shift()).to_numpy()
    dup = df.duplicated(["symbol", "id"]).to_numpy()
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "price", "qty", "side", "trade_id"])),
        ("non-positive price", _le0(t["price"])),
        ("non-positive size", _le0(t["qty"])),
        ("duplicate trade id", dup),
        ("timestamp going backwards", back),
    ])


def check_book(t: pa.Table) -> pa.Array:
    """Reasons for book rows. A row without any level-1 price or size is valid: it says the book became
    unknown there (its source lost sync: sources.book_rows)."""
    bid, ask = t["bid_px_1"], t["ask_px_1"]
    crossed = pc.fill_null(pc.greater_equal(bid, ask), False).to_numpy(zero_copy_only=False)
    level1 = ["bid_px_1", "ask_px_1", "bid_sz_1", "ask_sz_1"]
    unknown = np.logical_and.reduce([_null(t, [c]) for c in level1])
    return _first_reason(t, [
        ("null field", _null(t, ["ts"]) | (_null(t, level1) & ~unknown)),
        ("non-positive price", _le0(bid) | _le0(ask)),
        ("crossed book", crossed),
    ])


def check_bars(t: pa.Table, minutes: int = 1) -> pa.Array:
    """Bars ``minutes`` long: each must start on a multiple of its length (UTC), as every longer bar built
    from it assumes."""
    hl = pc.fill_null(pc.less(t["high"], t["low"]), False).to_numpy(zero_copy_only=False)
    ts = pc.fill_null(pc.cast(t["ts"], pa.int64()), 0).to_numpy(zero_copy_only=False)
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "open", "high", "low", "close", "volume"])),
        (f"start not on a {minutes}-minute boundary", ts % (minutes * 60_000_000_000) != 0),
        ("non-positive price", _le0(t["open"]) | _le0(t["close"]) | _le0(t["low"])),
        ("high below low", hl),
    ])


def check_open_interest(t: pa.Table) -> pa.Array:
    negative = pc.fill_null(pc.less(t["open_interest"], 0), False).to_numpy(zero_copy_only=False)
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "symbol", "open_interest"])),
        ("negative open interest", negative),
    ])


def check_funding(t: pa.Table) -> pa.Array:
    values = ["mark_price", "index_price", "funding_rate", "predicted_funding_rate"]
    empty = np.logical_and.reduce([pc.is_null(t[c], nan_is_null=True).to_numpy(zero_copy_only=False) for c in values])
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "symbol"])),
        ("no price or rate", empty),
        ("non-positive price", _le0(t["mark_price"]) | _le0(t["index_price"])),
    ])


def check_liquidations(t: pa.Table) -> pa.Array:
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "symbol", "side", "price", "qty"])),
        ("non-positive price", _le0(t["price"])),
        ("non-positive size", _le0(t["qty"])),
    ])


def check_instruments(t: pa.Table) -> pa.Array:
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "symbol", "raw_symbol"])),
        ("non-positive tick size", _le0(t["tick_size"])),
    ])


def check_settlements(t: pa.Table) -> pa.Array:
    return _first_reason(t, [
        ("null field", _null(t, ["ts", "symbol", "price"])),
    ])
