"""The screener: one timeframe over a window (the last N days of each symbol's bars, or any past window)
for a universe of symbols, through the bar cache, ranked by a rule.

Rules (each gives a ``score``; the table is sorted by it, largest first):

- ``movers``: return over the window, last close / first open - 1; score = |return|.
- ``rsi``: Wilder's RSI(14) of the last bar; score = |RSI - 50| (the most overbought or oversold first).
- ``volume_spike``: volume of the last complete bar / median volume of the window's bars.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from tickray.bars.build import MINUTE_NS, stored_bars, timeframe_minutes, why_not_built
from tickray.bars.cache import BarCache
from tickray.errors import TickrayError
from tickray.features.indicators import rsi

RULES = ("movers", "rsi", "volume_spike")
DAY_NS = 1440 * MINUTE_NS


def _score(rule: str, open_: np.ndarray, close: np.ndarray, volume: np.ndarray, complete: np.ndarray) -> dict:
    if rule == "movers":
        change = close[-1] / open_[0] - 1
        return {"return_pct": change * 100, "score": abs(change)}
    if rule == "rsi":
        value = rsi(close)[-1]
        return {"rsi_14": value, "score": abs(value - 50)}
    last = volume[complete][-1] if complete.any() else np.nan
    median = float(np.median(volume))
    return {"last_volume": last, "median_volume": median, "score": last / median if median > 0 else np.nan}


def screen(cache: BarCache, symbols: list[str], timeframe: str, days: float, rule: str,
           end_ns: int | None = None, start_ns: int | None = None) -> pd.DataFrame:
    """The ranked table: one row per symbol with enough bars, sorted by the rule's score. The window is
    [``start_ns`` or ``days`` before its end, ``end_ns``); without ``end_ns`` each symbol's window ends
    with its own newest bar, so a symbol whose data stops early is screened over its last days, not
    dropped. Symbols left out, and why, are in ``attrs["left_out"]``."""
    if rule not in RULES:
        raise TickrayError(f"unknown screener rule {rule!r}; rules: {', '.join(RULES)}")
    minutes = timeframe_minutes(timeframe)
    held = stored_bars(cache.lake_root)
    left_out = {s: why for s in (s.upper() for s in symbols) if (why := why_not_built(held.get(s, []), minutes))}
    symbols = [s for s in (s.upper() for s in symbols) if s not in left_out]
    ends = newest_ends(cache, {s: held[s] for s in symbols}) if end_ns is None else dict.fromkeys(symbols, end_ns)
    by_end: dict[int, list[str]] = {}
    for s, end in ends.items():
        by_end.setdefault(end, []).append(s)
    rows, windows = [], {}
    for end, group in sorted(by_end.items()):
        start = start_ns if start_ns is not None else end - int(days * DAY_NS)
        if start >= end:
            raise TickrayError("the screen's window is empty: its start is not before its end")
        bars = cache.get_bars(group, timeframe, start, end)  # sorted by symbol, then time
        cols = {c: bars[c].to_numpy() for c in ("open", "close", "volume", "complete")}
        sym = bars["symbol"].to_numpy(zero_copy_only=False)
        edges = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1], True]) if len(sym) else np.array([0])
        seen = set()
        for a, b in itertools.pairwise(edges):
            seen.add(sym[a])
            if b - a < 15:  # RSI(14) needs 14 changes; the other rules are meaningless on fewer bars too
                left_out[sym[a]] = f"{b - a} {timeframe} bars in the window, fewer than 15"
                continue
            close = cols["close"][a:b]
            windows[sym[a]] = (start, end)
            rows.append({"symbol": sym[a], "bars": int(b - a), "last_close": close[-1],
                         **_score(rule, cols["open"][a:b], close, cols["volume"][a:b], cols["complete"][a:b])})
        left_out |= {s: "no bars in the window" for s in group if s not in seen}
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values(["score", "symbol"], ascending=[False, True], kind="stable").reset_index(drop=True)
    starts, ends_ = [w[0] for w in windows.values()], [w[1] for w in windows.values()]
    out.attrs.update(timeframe=timeframe, minutes=minutes, rule=rule, left_out=left_out, windows=windows,
                     start_ns=min(starts, default=None), end_ns=max(ends_, default=None))
    return out


def newest_ends(cache: BarCache, held: dict[str, list[int]]) -> dict[str, int]:
    """Where each symbol's newest stored bar ends (ns), over the bar lengths ``held`` for it."""
    from tickray import lake
    from tickray.lake.schema import bars_dataset_name

    ends: dict[str, int] = {}
    for m in sorted({m for lengths in held.values() for m in lengths}):
        dataset = bars_dataset_name(m)
        newest_day: dict[str, str] = {}
        for d, s in lake.partitions(cache.lake_root, dataset):
            if m in held.get(s, ()) and d > newest_day.get(s, ""):
                newest_day[s] = d
        for s, d in newest_day.items():
            ts = pc.max(pc.cast(lake.read_partition(cache.lake_root, dataset, d, s, columns=["ts"])["ts"], "int64"))
            ends[s] = max(ends.get(s, 0), ts.as_py() + m * MINUTE_NS)
    return ends
