"""Ensemble weights that follow realised accuracy (``realised_weights`` in the serve config).

Every live prediction a replica computes is kept with each family's probabilities and the mid of its
feature row. Once a horizon has passed, it is scored against the mid the stream actor published then,
by the training labels' rule (up when the log return is above zero; a flat move is neither and is not
scored). A family's weight for a horizon is its information gain over a coin toss in its last ``window``
scored predictions, ln 2 minus its mean log loss, floored at zero and normalised over the families; the
answer is their weighted log-linear pool. Until every family has ``min_scored`` scores for a horizon, or
when none beats a coin, the stacked meta-learner answers for that horizon, as it does without this.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable

import numpy as np

from tickray.features.grid import NS
from tickray.training.ensemble import EPS, logit

LN2 = math.log(2)


class RealisedAccuracy:
    """The scored record of one model version's families, per horizon (seconds)."""

    def __init__(self, families: list[str], horizons: list[int], window: int, min_scored: int,
                 max_pending: int = 10_000):
        self.families, self.horizons = list(families), list(horizons)
        self.window, self.min_scored, self.max_pending = window, min_scored, max_pending
        # symbol → ts_ns → (mid, (families, horizons) probabilities, NaN where a family did not answer)
        self.pending: dict[str, dict[int, tuple[float, np.ndarray]]] = defaultdict(dict)
        self.scores = {(f, h): deque(maxlen=window) for f in self.families for h in self.horizons}  # (loss, hit)
        self.flat = 0  # horizons that ended where they began: not scored
        self.expired = 0  # predictions whose outcome was never seen (the history had moved past it)
        self._weights: np.ndarray | None = None  # as of the last scores: every prediction reads them

    def record(self, symbol: str, ts_ns: int, mid: float, probs: np.ndarray) -> None:
        """One live prediction: ``probs`` is (families, horizons)."""
        pending = self.pending[symbol]
        if len(pending) >= self.max_pending:
            pending.pop(next(iter(pending)))
            self.expired += 1
        pending[ts_ns] = (mid, probs)

    def score(self, symbol: str, ts_ns: np.ndarray, mid: np.ndarray) -> int:
        """Score the symbol's predictions whose horizons end inside this run of published rows (ts_ns
        ascending): the mid in force h seconds later is the last row at or before t + h."""
        pending = self.pending.get(symbol)
        if not pending or ts_ns.size == 0:
            return 0
        scored, last = 0, int(ts_ns[-1])
        for t in [t for t in pending if t + max(self.horizons) * NS <= last]:
            mid0, probs = pending.pop(t)
            if t < ts_ns[0]:  # the rows it needs are no longer in the run read
                self.expired += 1
                continue
            for j, h in enumerate(self.horizons):
                k = int(np.searchsorted(ts_ns, t + h * NS, side="right")) - 1
                ret = math.log(mid[k] / mid0)
                if ret == 0:
                    self.flat += 1
                    continue
                up = ret > 0
                for i, f in enumerate(self.families):
                    p = probs[i, j]
                    if not math.isnan(p):
                        p = min(max(p, EPS), 1 - EPS)
                        self.scores[(f, h)].append((-math.log(p if up else 1 - p), (p > 0.5) == up))
            scored += 1
        if scored:
            self._weights = None
        return scored

    def weights(self) -> np.ndarray:
        """(families, horizons) pool weights; a column of NaN where the stacked meta-learner answers."""
        if self._weights is not None:
            return self._weights
        w = np.full((len(self.families), len(self.horizons)), np.nan)
        for j, h in enumerate(self.horizons):
            if all(len(self.scores[(f, h)]) >= self.min_scored for f in self.families):
                gain = np.array([max(LN2 - np.mean([s[0] for s in self.scores[(f, h)]]), 0.0) for f in self.families])
                if gain.sum() > 0:
                    w[:, j] = gain / gain.sum()
        self._weights = w
        return w

    def summary(self) -> dict:
        """What /v1/models shows: per horizon and family the scored count, log loss, hit rate and weight."""
        w = self.weights()
        out = {}
        for j, h in enumerate(self.horizons):
            fams = {}
            for i, f in enumerate(self.families):
                s = self.scores[(f, h)]
                fams[f] = {"scored": len(s), "log_loss": round(float(np.mean([x[0] for x in s])), 5) if s else None,
                           "hit_rate": round(float(np.mean([x[1] for x in s])), 4) if s else None,
                           "weight": None if np.isnan(w[i, j]) else round(float(w[i, j]), 4)}
            out[f"{h}s"] = {"combined_by": "stacked" if np.isnan(w[0, j]) else "realised", "families": fams}
        return {"window": self.window, "min_scored": self.min_scored, "flat": self.flat, "expired": self.expired,
                "pending": sum(len(p) for p in self.pending.values()), "horizons": out}


def pool(base: dict[str, np.ndarray], families: list[str], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, coverage), each (rows, horizons): the weighted log-linear pool of the families that
    answered (weights renormalised over them) and the share of the weight that answered."""
    n, hcount = next(iter(base.values())).shape
    z, cover = np.zeros((n, hcount)), np.zeros((n, hcount))
    for i, f in enumerate(families):
        if f not in base:
            continue
        ok = ~np.isnan(base[f])
        wf = np.where(ok, weights[i], 0.0)
        z += wf * np.nan_to_num(logit(base[f]))
        cover += wf
    p = 1 / (1 + np.exp(-z / np.maximum(cover, 1e-12)))
    return p, cover


class RecentMids:
    """Each symbol's latest published rows as (ts_ns, mid), ascending, ``keep`` at most: what the scoring
    reads. Rows come from the feature history newest first, each read once whatever the pace."""

    def __init__(self, keep: int):
        self.rows: dict[str, deque] = defaultdict(lambda: deque(maxlen=keep))

    def newest(self, symbol: str) -> int:
        rows = self.rows.get(symbol)
        return rows[-1][0] if rows else -1

    def add(self, symbol: str, newest_first: Iterable[tuple[int, float]]) -> None:
        self.rows[symbol].extend(reversed(list(newest_first)))

    def series(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows.get(symbol) or ()
        return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], float)
