"""The compiled (numba) kernel of the Databento MBO replay, by the rules in databento.py. A module of its
own so that importing the readers does not import numba: only a process that replays MBO pays for it."""

from __future__ import annotations

import databento_dbn as dbn
import numba
import numpy as np

_B, _A, _ADD, _CANCEL, _MODIFY, _CLEAR = ord("B"), ord("A"), ord("A"), ord("C"), ord("M"), ord("R")
_F_LAST = int(dbn.F_LAST)  # the record that ends an event: a book state
_ORDER_KEY, _ORDER = numba.types.UniTuple(numba.types.int64, 2), numba.types.UniTuple(numba.types.int64, 3)


@numba.njit(cache=True)
def _level(keys, sizes, counts, used, b, key, size, count):
    """Add ``size`` and ``count`` orders at ``key`` on book side ``b`` (keys ascending, best last: the price
    for bids, minus the price for asks); a level left without orders goes."""
    n = used[b]
    i = np.searchsorted(keys[b, :n], key)
    if i < n and keys[b, i] == key:
        sizes[b, i] += size
        counts[b, i] += count
        if counts[b, i] <= 0:
            for j in range(i, n - 1):
                keys[b, j], sizes[b, j], counts[b, j] = keys[b, j + 1], sizes[b, j + 1], counts[b, j + 1]
            used[b] = n - 1
        return
    if count <= 0:
        return
    for j in range(n, i, -1):
        keys[b, j], sizes[b, j], counts[b, j] = keys[b, j - 1], sizes[b, j - 1], counts[b, j - 1]
    keys[b, i], sizes[b, i], counts[b, i] = key, size, count
    used[b] = n + 1


@numba.njit(cache=True)
def replay_mbo(inst, n_inst, action, side, order_id, price, size, flags, levels):
    """The MBO book of every instrument (see databento.py's rules) replayed over the records: per state (a
    record with F_LAST) its record, the top ``levels`` per side (a row per field: bid prices, bid sizes,
    ask prices, ask sizes, best first, NaN-padded) and order counts (bids then asks, -1 where none); the
    records that could not be applied with their MBO_DROPS index; and the levels at the end (keys, sizes,
    counts and how many are used, per book side)."""
    n = inst.size
    cap = 64
    keys = np.empty((2 * n_inst, cap), np.int64)  # book side b = 2 * instrument + (0 bids, 1 asks)
    sizes = np.zeros((2 * n_inst, cap), np.int64)
    counts = np.zeros((2 * n_inst, cap), np.int64)
    used = np.zeros(2 * n_inst, np.int64)
    orders = numba.typed.Dict.empty(_ORDER_KEY, _ORDER)  # (instrument, order id) → (book side, key, size left)
    last = np.flatnonzero(flags & _F_LAST)
    state_rec = last
    lv = np.full((4 * levels, last.size), np.nan)
    ct = np.full((2 * levels, last.size), -1, np.int64)
    drop_rec = np.empty(n, np.int64)
    drop_code = np.empty(n, np.int64)
    d = m = 0
    for r in range(n):
        a, g = action[r], inst[r]
        if used.max() + 2 >= keys.shape[1]:
            keys, sizes, counts = _wider(keys), _wider(sizes), _wider(counts)
        if a == _CLEAR:
            stale = [k for k in orders if k[0] == g]
            for k in stale:
                del orders[k]
            used[2 * g] = used[2 * g + 1] = 0
        elif a == _ADD or a == _CANCEL or a == _MODIFY:
            k = (g, order_id[r])
            known = k in orders
            if a != _ADD and not known:
                drop_rec[d], drop_code[d] = r, 0
                d += 1
            elif a != _CANCEL and side[r] != _B and side[r] != _A:
                drop_rec[d], drop_code[d] = r, 1
                d += 1
            else:
                if known and a != _CANCEL:  # an add of a known id replaces it; a modify moves it: out first
                    b, key, left = orders[k]
                    del orders[k]
                    _level(keys, sizes, counts, used, b, key, -left, -1)
                if a == _CANCEL:
                    b, key, left = orders[k]
                    gone = min(size[r], left)
                    if gone >= left:
                        del orders[k]
                        _level(keys, sizes, counts, used, b, key, -left, -1)
                    else:
                        orders[k] = (b, key, left - gone)
                        _level(keys, sizes, counts, used, b, key, -gone, 0)
                else:
                    b = 2 * g + (0 if side[r] == _B else 1)
                    key = price[r] if side[r] == _B else -price[r]
                    orders[k] = (b, key, size[r])
                    _level(keys, sizes, counts, used, b, key, size[r], 1)
        if flags[r] & _F_LAST:
            for s in range(2):
                b = 2 * g + s
                for j in range(min(levels, used[b])):
                    key = keys[b, used[b] - 1 - j]
                    lv[2 * s * levels + j, m] = (key if s == 0 else -key) / 1e9
                    lv[(2 * s + 1) * levels + j, m] = sizes[b, used[b] - 1 - j]
                    ct[s * levels + j, m] = counts[b, used[b] - 1 - j]
            m += 1
    return state_rec, lv, ct, drop_rec[:d], drop_code[:d], (keys, sizes, counts, used)


@numba.njit(cache=True)
def _wider(a):
    out = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    out[:, :a.shape[1]] = a
    return out
