"""Trailing-window arithmetic whose result at a row depends only on the rows of its window.

The grid is indexed by absolute second. Windows of ``w`` rows are summed van Herk style: the time axis is
cut into blocks of ``w`` seconds aligned at multiples of ``w`` (absolute, not relative to the array), and
a window is the suffix of one block plus the prefix of the next, each summed in a fixed order. So any
slice of the grid that contains a row's window gives that row the same bits — a stream actor holding a
short buffer computes exactly what the batch job computes over a whole day, in O(n) and without the
drift of a running cumulative sum.
"""

from __future__ import annotations

import math
from collections import deque

import numba
import numpy as np


def window_sum(x: np.ndarray, w: int, origin: int) -> np.ndarray:
    """Sum over rows [t-w+1, t] for every row t, clipped at the first row of ``x``.

    ``origin`` is the absolute index (epoch second) of ``x[0]``. NaN inside a window makes that window NaN.
    """
    # one array type for the compiled kernel (a read-only view would compile, and cache, a second time)
    return _window_sum(np.require(x, np.float64, ["C", "W"]), int(w), int(origin))


@numba.njit(cache=True)
def _window_sum(x, w, origin):  # pragma: no cover (compiled)
    n = x.size
    pad = origin % w
    size = -(-(pad + n) // w) * w
    buf = np.zeros(size)
    buf[pad:pad + n] = x
    # each block's running sums from its start (prefix) and from its end (suffix), added in the order
    # RunningWindow adds them: the first value as it is, then one value at a time
    prefix, suffix = np.empty(size), np.empty(size)
    for a in range(0, size, w):
        prefix[a] = buf[a]
        for i in range(a + 1, a + w):
            prefix[i] = prefix[i - 1] + buf[i]
        suffix[a + w - 1] = buf[a + w - 1]
        for i in range(a + w - 2, a - 1, -1):
            suffix[i] = suffix[i + 1] + buf[i]
    out = np.empty(n)
    for k in range(n):
        pos = pad + k
        start = pos - w + 1
        out[k] = prefix[pos]
        # a window that starts inside the previous block: that block's suffix plus this block's prefix
        if start > 0 and start % w != 0:
            out[k] += suffix[start]
    return out


def rows_available(n: int, w: int) -> np.ndarray:
    """Rows inside each row's window when windows are clipped at the first row."""
    return np.minimum(np.arange(1, n + 1), w).astype(np.float64)


def window_mean(x: np.ndarray, w: int, origin: int, min_rows: int | None = None) -> np.ndarray:
    """Mean over the trailing window; with ``min_rows`` a window clipped at the start of the data counts
    once it holds that many rows (the mean is then over the rows it has), else it must be full."""
    count = rows_available(np.asarray(x).size, w)
    out = window_sum(x, w, origin) / count
    out[count < (w if min_rows is None else min_rows)] = np.nan
    return out


def full_window_sum(x: np.ndarray, w: int, origin: int) -> np.ndarray:
    """Sum over the trailing window, NaN until the window is full."""
    out = window_sum(x, w, origin)
    out[: min(w - 1, out.size)] = np.nan
    return out


def lag(x: np.ndarray, k: int) -> np.ndarray:
    """x shifted k rows later (NaN for the first k rows)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.size, np.nan)
    if k < x.size:
        out[k:] = x[: x.size - k]
    return out


class RunningWindow:
    """:func:`window_sum` one row at a time, with the same bits: the rows of the current block summed
    from its start, and the previous block's suffix sums (computed once, when the block ends).

    ``push(x, sec)`` takes the value of absolute second ``sec`` (one more than the last push) and returns
    the trailing ``w``-row sum at it, clipped at the first row pushed, like ``window_sum`` at the last row
    of every array that starts with that first row.
    """

    def __init__(self, w: int):
        self.w = w
        self.n = 0  # rows pushed
        self._first_block = self._block = 0
        self._values: list[float] = []  # the current block from its start (zeros before the first row)
        self._prefix = 0.0
        self._suffix: list[float] = []  # the previous block's suffix sums

    def push(self, x: float, sec: int) -> float:
        w = self.w
        block, pos = divmod(sec, w)
        if self.n == 0:
            self._first_block = self._block = block
            self._values = [0.0] * pos  # window_sum's zero padding before the first row
            self._prefix = 0.0
        elif block != self._block:
            s, suffix = 0.0, [0.0] * w
            for j in range(w - 1, -1, -1):  # cumsum of the reversed block
                s = self._values[j] if j == w - 1 else s + self._values[j]
                suffix[j] = s
            self._suffix, self._values, self._block = suffix, [], block
        self._prefix = x if not self._values else self._prefix + x  # cumsum: the first element as is
        self._values.append(x)
        self.n += 1
        start = sec - w + 1
        if start > self._first_block * w and start % w:  # the window starts inside the previous block
            return self._prefix + self._suffix[start % w]
        return self._prefix

    def full_sum(self, x: float, sec: int) -> float:
        """:func:`full_window_sum`: NaN until ``w`` rows have been pushed."""
        out = self.push(x, sec)
        return out if self.n >= self.w else math.nan

    def mean(self, x: float, sec: int, min_rows: int | None = None) -> float:
        """:func:`window_mean` at the row pushed."""
        out = self.push(x, sec)
        count = float(min(self.n, self.w))
        return out / count if count >= (self.w if min_rows is None else min_rows) else math.nan


class RunningLag:
    """:func:`lag` one row at a time: the value pushed ``k`` rows ago (NaN before ``k`` rows)."""

    def __init__(self, k: int):
        self._hist: deque[float] = deque(maxlen=k)

    def push(self, x: float) -> float:
        h = self._hist
        out = h[0] if len(h) == h.maxlen else math.nan
        h.append(x)
        return out
