"""Technical indicators on bars (the ``bars-v1`` feature set): RSI, MACD, Bollinger bands, ATR.

Definitions follow the usual ones (Wilder's RSI and ATR, MACD 12/26/9 on EMAs seeded with the first
value, Bollinger on a population standard deviation) and are checked against the ``ta`` package. The
batch form runs the recursions as linear filters over whole series; :class:`OnlineIndicators` runs the
same recursions one bar at a time for live bars. EMAs have infinite memory, so bar features are computed
per symbol over its whole history (not per day).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

RSI_WINDOW, ATR_WINDOW, BB_WINDOW, BB_K = 14, 14, 20, 2.0
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BAR_FEATURE_SET = "bars-v1"
BAR_FEATURE_NAMES = ("rsi_14", "macd", "macd_signal", "macd_hist", "bb_pctb_20", "bb_width_20", "atr_14_bps")
# Bars before the current one that each value depends on, as the tick features declare theirs: a window's
# length, or a recursive average's span (its memory decays beyond it) and, for MACD's signal, its EMA's.
BAR_LOOKBACK = {"rsi_14": RSI_WINDOW, "macd": MACD_SLOW - 1, "macd_signal": MACD_SLOW + MACD_SIGNAL - 2,
                "macd_hist": MACD_SLOW + MACD_SIGNAL - 2, "bb_pctb_20": BB_WINDOW - 1, "bb_width_20": BB_WINDOW - 1,
                "atr_14_bps": ATR_WINDOW}


def _recursive(x: np.ndarray, keep: float, seed_at: int, seed: float) -> np.ndarray:
    """y[seed_at] = seed, then y[t] = keep·y[t-1] + (1-keep)·x[t]; NaN before seed_at."""
    out = np.full(x.size, np.nan)
    if seed_at < x.size:
        out[seed_at] = seed
        rest = x[seed_at + 1:]
        if rest.size:
            out[seed_at + 1:] = lfilter([1 - keep], [1, -keep], rest, zi=[keep * seed])[0]
    return out


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    """EMA (alpha 2/(span+1)) seeded with the first finite value, NaN until ``span`` values are in."""
    finite = np.flatnonzero(~np.isnan(x))
    if finite.size == 0:
        return np.full(x.size, np.nan)
    first = int(finite[0])
    out = _recursive(x, 1 - 2 / (span + 1), first, float(x[first]))
    out[: first + span - 1] = np.nan
    return out


def rsi(close: np.ndarray, window: int = RSI_WINDOW) -> np.ndarray:
    """Wilder's RSI: EMAs (alpha 1/window) of gains and losses, the first bar counting as no change;
    defined from the ``window``-th bar."""
    close = np.asarray(close, float)
    change = np.concatenate([[0.0], np.diff(close)])[: close.size]
    up = _recursive(np.maximum(change, 0), 1 - 1 / window, 0, 0.0)
    dn = _recursive(np.maximum(-change, 0), 1 - 1 / window, 0, 0.0)
    out = np.where(dn == 0, 100.0, 100 - 100 / (1 + up / np.where(dn == 0, 1.0, dn)))
    out[: window - 1] = np.nan
    return out


def macd(close: np.ndarray, fast: int = MACD_FAST, slow: int = MACD_SLOW, signal: int = MACD_SIGNAL
         ) -> dict[str, np.ndarray]:
    close = np.asarray(close, float)
    line = _ema(close, fast) - _ema(close, slow)
    sig = _ema(line, signal)
    return {"macd": line, "macd_signal": sig, "macd_hist": line - sig}


def bollinger(close: np.ndarray, window: int = BB_WINDOW, k: float = BB_K) -> dict[str, np.ndarray]:
    close = np.asarray(close, float)
    mean, sd = np.full(close.size, np.nan), np.full(close.size, np.nan)
    if close.size >= window:
        w = sliding_window_view(close, window)
        mean[window - 1:], sd[window - 1:] = w.mean(axis=1), w.std(axis=1)
    upper, lower = mean + k * sd, mean - k * sd
    return {"bb_mid": mean, "bb_upper": upper, "bb_lower": lower,
            "bb_pctb": (close - lower) / (upper - lower), "bb_width": (upper - lower) / mean * 100}


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    prev = np.concatenate([[np.nan], np.asarray(close, float)[:-1]])
    return np.fmax(np.asarray(high, float) - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int = ATR_WINDOW) -> np.ndarray:
    """Wilder's ATR: the mean of the first ``window`` true ranges, then (atr·(w-1) + tr) / w."""
    tr = true_range(high, low, close)
    if tr.size < window:
        return np.full(tr.size, np.nan)
    return _recursive(tr, (window - 1) / window, window - 1, float(tr[:window].mean()))


def bar_features(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> dict[str, np.ndarray]:
    """The bars-v1 feature set for one symbol's bars in time order."""
    close = np.asarray(close, float)
    bb = bollinger(close)
    return {"rsi_14": rsi(close), **macd(close), "bb_pctb_20": bb["bb_pctb"], "bb_width_20": bb["bb_width"],
            "atr_14_bps": atr(high, low, close) / close * 1e4}


class _Ema:
    def __init__(self, keep: float, warmup: int):
        self.keep, self.warmup, self.n, self.value = keep, warmup, 0, math.nan

    def update(self, x: float) -> float:
        self.value = x if self.n == 0 else self.keep * self.value + (1 - self.keep) * x
        self.n += 1
        return self.value if self.n >= self.warmup else math.nan


class OnlineIndicators:
    """bars-v1 for one symbol, one closed bar at a time (the live bar layer calls this)."""

    def __init__(self):
        self.prev_close = math.nan
        self.gain = _Ema(1 - 1 / RSI_WINDOW, RSI_WINDOW)
        self.loss = _Ema(1 - 1 / RSI_WINDOW, RSI_WINDOW)
        self.fast = _Ema(1 - 2 / (MACD_FAST + 1), MACD_FAST)
        self.slow = _Ema(1 - 2 / (MACD_SLOW + 1), MACD_SLOW)
        self.signal = _Ema(1 - 2 / (MACD_SIGNAL + 1), MACD_SIGNAL)
        self.closes: deque[float] = deque(maxlen=BB_WINDOW)
        self.trs: list[float] = []
        self.atr = math.nan

    def update(self, high: float, low: float, close: float) -> dict[str, float]:
        out = dict.fromkeys(BAR_FEATURE_NAMES, math.nan)
        d = 0.0 if math.isnan(self.prev_close) else close - self.prev_close
        up, dn = self.gain.update(max(d, 0.0)), self.loss.update(max(-d, 0.0))
        if not math.isnan(dn):
            out["rsi_14"] = 100.0 if dn == 0 else 100 - 100 / (1 + up / dn)
        fast, slow = self.fast.update(close), self.slow.update(close)
        if not math.isnan(slow):
            out["macd"] = fast - slow
            sig = self.signal.update(out["macd"])
            out["macd_signal"], out["macd_hist"] = sig, out["macd"] - sig
        self.closes.append(close)
        if len(self.closes) == BB_WINDOW:
            w = np.array(self.closes)
            mean, sd = w.mean(), w.std()
            upper, lower = mean + BB_K * sd, mean - BB_K * sd
            out["bb_pctb_20"], out["bb_width_20"] = (close - lower) / (upper - lower), (upper - lower) / mean * 100
        tr = max(high - low, abs(high - self.prev_close), abs(low - self.prev_close)) \
            if not math.isnan(self.prev_close) else high - low
        if len(self.trs) < ATR_WINDOW:
            self.trs.append(tr)
            if len(self.trs) == ATR_WINDOW:
                self.atr = float(np.mean(self.trs))
        else:
            self.atr = (ATR_WINDOW - 1) / ATR_WINDOW * self.atr + (1 - (ATR_WINDOW - 1) / ATR_WINDOW) * tr
        out["atr_14_bps"] = self.atr / close * 1e4
        self.prev_close = close
        return out
