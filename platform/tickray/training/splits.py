"""Time-ordered splits with an embargo: no training row's label window reaches into later splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class TimeSplit:
    train_end: int  # ns, exclusive
    valid_start: int
    valid_end: int
    test_start: int

    def label(self, ts_ns: np.ndarray) -> np.ndarray:
        """'train' / 'valid' / 'test', or '' for rows inside an embargo gap."""
        out = np.full(ts_ns.size, "", dtype=object)
        out[ts_ns < self.train_end] = "train"
        out[(ts_ns >= self.valid_start) & (ts_ns < self.valid_end)] = "valid"
        out[ts_ns >= self.test_start] = "test"
        return out


def time_split(t_min: int, t_max: int, embargo_ns: int, train: float = 0.7, valid: float = 0.15) -> TimeSplit:
    span = t_max - t_min
    c1 = t_min + int(span * train)
    c2 = t_min + int(span * (train + valid))
    # A row at t carries a label over (t, t + horizon]: drop a horizon's worth after each cut.
    return TimeSplit(train_end=c1 - embargo_ns, valid_start=c1, valid_end=c2 - embargo_ns, test_start=c2)


def select(t: pa.Table, split: TimeSplit, which: str) -> pa.Table:
    ts = pc.cast(t["ts"], pa.int64()).to_numpy(zero_copy_only=False)
    return t.filter(pa.array(split.label(ts) == which))
