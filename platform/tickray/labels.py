"""Labels look forward (features never do): did the mid-price rise over the next h seconds?"""

from __future__ import annotations

import numpy as np

HORIZONS_S = (10, 60)


def forward_labels(mid: np.ndarray, horizons: tuple[int, ...] = HORIZONS_S) -> dict[str, np.ndarray]:
    """``up_<h>s`` (1.0 / 0.0, NaN where the horizon runs past the data) and ``fwd_ret_<h>s`` in bps,
    for a one-second grid."""
    out: dict[str, np.ndarray] = {}
    logmid = np.log(np.asarray(mid, float))
    for h in horizons:
        fwd = np.full(logmid.size, np.nan)
        fwd[: logmid.size - h] = (logmid[h:] - logmid[: logmid.size - h]) * 1e4
        out[f"fwd_ret_{h}s"] = fwd
        out[f"up_{h}s"] = np.where(np.isnan(fwd), np.nan, (fwd > 0).astype(float))
    return out
