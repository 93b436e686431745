"""The compiled (numba) kernels of the Tardis.dev incremental_book_L2 replay, by the rules in tardis.py.
A module of their own so that importing the readers does not import numba: only a process that rebuilds
a book pays for it (about 0.2 s)."""

from __future__ import annotations

import numba
import numpy as np

APPLY, RESET_APPLY = -1, -2  # _row_actions: the row is applied (after a reset of the book); else a tardis.DROP_REASONS index


@numba.njit(cache=True)
def _row_actions(rows, local, snap, bad_side):
    """Per row of one symbol (indices in file order) what the module's rules do with it, and how many
    book states that makes (one per update, one without levels before each reset). No book is needed."""
    n = rows.size
    action = np.empty(n, np.int8)
    states = 0
    synced = False
    newest = -1
    for k in range(n):
        i = rows[k]
        if local[i] < newest:
            action[k] = 0
            continue
        newest = local[i]
        if bad_side[i]:
            action[k] = 1
            continue
        prev = rows[k - 1] if k else -1
        reset = snap[i] and (prev < 0 or not snap[prev] or local[prev] != local[i])  # a snapshot: a fresh book
        if reset:
            states += 1 if synced else 0  # the book before it is not carried past it
            synced = True
        if not synced:
            action[k] = 2
            continue
        action[k] = RESET_APPLY if reset else APPLY
        if k + 1 == n or local[rows[k + 1]] != local[i]:  # the update's last row
            states += 1
    return action, states


@numba.njit(cache=True)
def _set_level(px, sz, n, key, amount):
    """Set one level of a side kept with its best last (``key`` ascending: the price for bids, minus the
    price for asks; ``n`` in use), so that the busy levels near the touch move few others. Size 0 removes
    the level. Returns the new n."""
    i = np.searchsorted(px[:n], key)
    if i < n and px[i] == key:
        if amount == 0.0:
            for j in range(i, n - 1):
                px[j], sz[j] = px[j + 1], sz[j + 1]
            return n - 1
        sz[i] = amount
        return n
    if amount == 0.0:
        return n
    for j in range(n, i, -1):
        px[j], sz[j] = px[j - 1], sz[j - 1]
    px[i], sz[i] = key, amount
    return n + 1


@numba.njit(cache=True)
def replay_l2(rows, ts, local, snap, is_bid, bad_side, price, amount, levels):
    """One symbol's rows (indices in file order) replayed by tardis.py's rules: the states after every
    update (ts ns; per field a row: bid prices, bid sizes, ask prices, ask sizes, best first, NaN-padded), a
    state without levels just before each reset, the rows not applied with their DROP_REASONS index, the
    counts of updates and resets, and the book at the end (each side's keys and sizes, best last)."""
    action, states = _row_actions(rows, local, snap, bad_side)
    n = rows.size
    out_ts = np.empty(states, np.int64)
    out_lv = np.full((4 * levels, states), np.nan)  # a row per field: contiguous columns for Arrow
    keys = [np.empty(256), np.empty(256)]  # per side (bids, asks): levels' keys, best last
    sizes = [np.empty(256), np.empty(256)]
    used = [0, 0]
    m = updates = resyncs = 0
    for k in range(n):
        i = rows[k]
        if action[k] >= 0:
            continue
        if action[k] == RESET_APPLY:
            if m or updates:  # not the first snapshot: unknown just before the new book
                out_ts[m] = ts[i] * 1000 - 1
                m += 1
                resyncs += 1
            used[0] = used[1] = 0
        s = 0 if is_bid[i] else 1
        if used[s] + 1 >= keys[s].size:
            keys[s], sizes[s] = _double(keys[s]), _double(sizes[s])
        used[s] = _set_level(keys[s], sizes[s], used[s], price[i] if s == 0 else -price[i], amount[i])
        if k + 1 == n or local[rows[k + 1]] != local[i]:  # the update's last row
            out_ts[m] = ts[i] * 1000
            for side in range(2):
                for j in range(min(levels, used[side])):
                    key = keys[side][used[side] - 1 - j]
                    out_lv[2 * side * levels + j, m] = key if side == 0 else -key
                    out_lv[(2 * side + 1) * levels + j, m] = sizes[side][used[side] - 1 - j]
            m += 1
            updates += 1
    dropped = np.flatnonzero(action >= 0)
    end = (keys[0][:used[0]].copy(), sizes[0][:used[0]].copy(), keys[1][:used[1]].copy(), sizes[1][:used[1]].copy())
    return out_ts, out_lv, rows[dropped], action[dropped], updates, resyncs, end


@numba.njit(cache=True)
def _double(a):
    out = np.empty(2 * a.size)
    out[:a.size] = a
    return out
