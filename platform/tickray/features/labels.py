"""Labels look forward (features never do): how did the mid-price move over the next horizon?

``fwd_ret_<h>`` is the log return in bps; ``up_<h>`` is 1 above ``+dead_band_bps``, 0 below
``-dead_band_bps`` and NaN inside the band (a flat move is neither, and is left out of a binary fit);
``dir_<h>`` is the same as +1 / 0 / -1. A row whose horizon runs past the data gets NaN everywhere,
never a label computed from a shorter horizon.
"""

from __future__ import annotations

import numpy as np

HORIZONS_S = (10, 60)
DEAD_BAND_BPS = 0.0


def up_labels(fwd: np.ndarray, dead_band_bps: float = DEAD_BAND_BPS) -> np.ndarray:
    """The one label rule: 1 above ``+dead_band_bps``, 0 below ``-dead_band_bps``, NaN inside the band
    and where the forward return is unknown."""
    fwd = np.asarray(fwd, float)
    return np.where(fwd > dead_band_bps, 1.0, np.where(fwd < -dead_band_bps, 0.0, np.nan))


def _from_returns(fwd: np.ndarray, suffix: str, dead_band_bps: float) -> dict[str, np.ndarray]:
    direction = np.where(np.isnan(fwd), np.nan, np.sign(fwd) * (np.abs(fwd) > dead_band_bps))
    return {f"fwd_ret_{suffix}": fwd, f"up_{suffix}": up_labels(fwd, dead_band_bps), f"dir_{suffix}": direction}


def forward_labels(mid: np.ndarray, horizons: tuple[int, ...] = HORIZONS_S, dead_band_bps: float = DEAD_BAND_BPS,
                   unit: str = "s", new_session: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Labels at horizons counted in rows: seconds on the one-second grid (``unit="s"``), events on an
    event series (``unit="ev"``). With ``new_session`` (true on each session's first row), a horizon
    that ends in a later session gives no label."""
    out: dict[str, np.ndarray] = {}
    logmid = np.log(np.asarray(mid, float))
    n = logmid.size
    session = np.cumsum(new_session) if new_session is not None else np.zeros(n)
    for h in horizons:
        fwd = np.full(n, np.nan)
        if n > h:  # a series shorter than the horizon has no label at all
            fwd[: n - h] = np.where(session[h:] == session[: n - h], (logmid[h:] - logmid[: n - h]) * 1e4, np.nan)
        out.update(_from_returns(fwd, f"{h}{unit}", dead_band_bps))
    return out


def forward_labels_at_times(ts_ns: np.ndarray, mid: np.ndarray, horizons_s: tuple[float, ...] = HORIZONS_S,
                            dead_band_bps: float = DEAD_BAND_BPS) -> dict[str, np.ndarray]:
    """Labels for irregular events (e.g. every book update): the mid in force ``h`` seconds after each
    event (the last event at or before t + h) against the event's own mid."""
    ts_ns = np.asarray(ts_ns, np.int64)
    logmid = np.log(np.asarray(mid, float))
    out: dict[str, np.ndarray] = {}
    if ts_ns.size == 0:
        return {f"{k}_{h:g}s": np.zeros(0) for h in horizons_s for k in ("fwd_ret", "up", "dir")}
    for h in horizons_s:
        target = ts_ns + round(h * 1e9)
        j = np.searchsorted(ts_ns, target, side="right") - 1
        fwd = (logmid[j] - logmid) * 1e4
        fwd[target > ts_ns[-1]] = np.nan  # past the data: no label
        out.update(_from_returns(fwd, f"{h:g}s", dead_band_bps))
    return out


def forward_labels_on_grid(ts_ns: np.ndarray, price: np.ndarray, horizons_s: tuple[int, ...], step_s: float,
                           dead_band_bps: float = DEAD_BAND_BPS) -> dict[str, np.ndarray]:
    """Labels on a regular grid that may have holes (bars of one timeframe): the row ``h / step_s`` rows
    ahead is the price ``h`` seconds later only where it is exactly ``h`` later; across a hole, no label."""
    ts_ns = np.asarray(ts_ns, np.int64)
    logp = np.log(np.asarray(price, float))
    out: dict[str, np.ndarray] = {}
    for h in horizons_s:
        k = round(h / step_s)
        fwd = np.full(ts_ns.size, np.nan)
        if 0 < k < ts_ns.size:
            whole = ts_ns[k:] - ts_ns[:-k] == int(h * 1e9)
            fwd[:-k] = np.where(whole, (logp[k:] - logp[:-k]) * 1e4, np.nan)
        out.update(_from_returns(fwd, f"{h}s", dead_band_bps))
    return out

