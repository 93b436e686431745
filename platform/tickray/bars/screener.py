"""The screener: one timeframe over the last N days for a universe of symbols, through the bar cache,
ranked by a rule.

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

from tickray.bars.build import MINUTE_NS, timeframe_minutes
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
           end_ns: int | None = None) -> pd.DataFrame:
    """The ranked table: one row per symbol with enough bars, sorted by the rule's score."""
    if rule not in RULES:
        raise TickrayError(f"unknown screener rule {rule!r}; rules: {', '.join(RULES)}")
    minutes = timeframe_minutes(timeframe)
    if end_ns is None:  # historical data: the window ends with the newest bar in the lake
        end_ns = latest_minute(cache, symbols) + MINUTE_NS
    start_ns = end_ns - int(days * DAY_NS)
    bars = cache.get_bars(symbols, timeframe, start_ns, end_ns)  # sorted by symbol, then time
    cols = {c: bars[c].to_numpy() for c in ("open", "close", "volume", "complete")}
    sym = bars["symbol"].to_numpy(zero_copy_only=False)
    edges = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1], True]) if len(sym) else np.array([0])
    rows = []
    for a, b in itertools.pairwise(edges):
        if b - a < 15:  # RSI(14) needs 14 changes; the other rules are meaningless on fewer bars too
            continue
        close = cols["close"][a:b]
        rows.append({"symbol": sym[a], "bars": int(b - a), "last_close": close[-1],
                     **_score(rule, cols["open"][a:b], close, cols["volume"][a:b], cols["complete"][a:b])})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out = out.sort_values(["score", "symbol"], ascending=[False, True], kind="stable").reset_index(drop=True)
    out.attrs.update(timeframe=timeframe, minutes=minutes, start_ns=start_ns, end_ns=end_ns, rule=rule)
    return out


def latest_minute(cache: BarCache, symbols: list[str]) -> int:
    """The newest 1m bar in the lake among ``symbols`` (ns)."""
    from tickray import lake

    present = lake.partitions(cache.lake_root, "bars_1m")
    wanted = {s.upper() for s in symbols}
    days = sorted({d for d, s in present if s in wanted})
    if not days:
        raise FileNotFoundError(f"no 1m bars in the lake at {cache.lake_root} for {sorted(wanted)}")
    newest = [lake.read_partition(cache.lake_root, "bars_1m", days[-1], s, columns=["ts"])
              for d, s in present if d == days[-1] and s in wanted]
    return max(pc.max(pc.cast(t["ts"], "int64")).as_py() for t in newest)
