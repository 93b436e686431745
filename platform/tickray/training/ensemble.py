"""The stacked ensemble: a meta-learner over the base models' out-of-fold predictions, calibrated on a
later window, with a shock detector that lowers confidence when the market looks like nothing seen in
training.

Confidence is ``|2p - 1| × normality``: how far the calibrated probability is from a coin toss, times
how ordinary the current features look to an isolation forest fitted on the development rows (1 for
ordinary rows, falling linearly to 0 at the ``contamination`` quantile of their scores and below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


class ForestScorer:
    """``IsolationForest.score_samples`` with the trees walked together in numpy: the same scores, in
    about 0.1 ms for a few rows instead of sklearn's ~10 ms (a Python call per tree), which would be
    most of a served prediction's time."""

    def __init__(self, forest: IsolationForest):
        trees = [e.tree_ for e in forest.estimators_]
        n = max(t.node_count for t in trees)

        def pad(values, fill):
            return np.stack([np.pad(v, (0, n - v.size), constant_values=fill) for v in values])

        self.left = pad([t.children_left for t in trees], -1)
        self.right = pad([t.children_right for t in trees], -1)
        self.threshold = pad([t.threshold for t in trees], 0.0)
        columns = [t.feature for t in trees]
        if forest._max_features != forest.n_features_in_:  # each tree saw a subset of the columns
            columns = [np.where(t.feature >= 0, f[np.maximum(t.feature, 0)], -1)
                       for t, f in zip(trees, forest.estimators_features_)]
        self.feature = np.maximum(pad(columns, -1), 0)
        self.leaf_depth = pad([d + a - 1.0 for d, a in zip(forest._decision_path_lengths,
                                                             forest._average_path_length_per_tree)], 0.0)
        self.max_depth = max(t.max_depth for t in trees)
        self.denominator = len(trees) * float(_average_path_length([forest._max_samples])[0])
        self.rows = np.arange(len(trees))[None, :]

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        node = np.zeros((x.shape[0], self.left.shape[0]), np.intp)  # (rows, trees)
        at = np.arange(x.shape[0])[:, None]
        for _ in range(self.max_depth):
            go_left = x[at, self.feature[self.rows, node]] <= self.threshold[self.rows, node]
            nxt = np.where(go_left, self.left[self.rows, node], self.right[self.rows, node])
            node = np.where(nxt >= 0, nxt, node)  # a leaf stays where it is
        depths = self.leaf_depth[self.rows, node].sum(axis=1)
        return -(2.0 ** (-depths / self.denominator)) if self.denominator else -np.ones(x.shape[0])


@dataclass
class ShockDetector:
    forest: IsolationForest = field(repr=False)
    low: float  # score at the contamination quantile: normality 0 at and below
    high: float  # score at twice that quantile: normality 1 at and above

    def normality(self, x: np.ndarray) -> np.ndarray:
        scorer = self.__dict__.get("_scorer")
        if scorer is None:  # built on first use (models pickled before it existed have none)
            scorer = self.__dict__["_scorer"] = ForestScorer(self.forest)
        s = scorer.score_samples(np.nan_to_num(x))
        return np.clip((s - self.low) / max(self.high - self.low, 1e-12), 0.0, 1.0)


def fit_shock(x: np.ndarray, idx: np.ndarray, contamination: float, seed: int, max_rows: int = 20_000) -> ShockDetector:
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(idx, size=min(max_rows, idx.size), replace=False)]
    forest = IsolationForest(n_estimators=100, random_state=seed).fit(np.nan_to_num(sample))
    s = forest.score_samples(np.nan_to_num(sample))
    return ShockDetector(forest, float(np.quantile(s, contamination)), float(np.quantile(s, 2 * contamination)))


class Calibrator:
    """Isotonic regression or Platt scaling of a probability, fitted on a held-out window."""

    def __init__(self, method: str):
        self.method = method
        self.model = (IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip") if method == "isotonic"
                      else LogisticRegression())

    def fit(self, p: np.ndarray, y: np.ndarray) -> Calibrator:
        if self.method == "isotonic":
            self.model.fit(p, y)
        else:
            self.model.fit(logit(p)[:, None], y)
        return self

    def __call__(self, p: np.ndarray) -> np.ndarray:
        if self.method == "isotonic":
            return self.model.predict(p)
        return self.model.predict_proba(logit(p)[:, None])[:, 1]


@dataclass
class Ensemble:
    """Base models → per-horizon logistic meta-learner on their logits → calibration → confidence."""
    bases: dict  # family → fitted model with predict(x, idx) -> (n, H)
    meta: list[LogisticRegression]
    calibrators: list[Calibrator]
    shock: ShockDetector | None
    family: str = "ensemble"

    @property
    def window(self) -> int:
        return max(m.window for m in self.bases.values())

    def base_predictions(self, x: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {f: m.predict(x, idx) for f, m in self.bases.items()}

    def combine(self, base: dict[str, np.ndarray]) -> np.ndarray:
        """Uncalibrated meta-learner probabilities from base predictions. A base prediction that is NaN
        or absent (a model that failed when serving) enters as logit 0, a coin toss: no evidence."""
        return np.column_stack([
            meta.predict_proba(np.column_stack([np.nan_to_num(logit(base[f][:, j])) if f in base
                                                else np.zeros(len(next(iter(base.values()))))
                                                for f in self.bases]))[:, 1]
            for j, meta in enumerate(self.meta)])

    def coverage(self, base: dict[str, np.ndarray]) -> np.ndarray:
        """(n, H): the share of the meta-learner's weight (|coefficient|) whose base prediction is
        present; 1 when every base model answered. Serving multiplies confidence by it."""
        present = np.stack([~np.isnan(base[f]) if f in base else np.zeros_like(next(iter(base.values())), bool)
                            for f in self.bases])  # (families, n, H)
        weight = np.stack([np.abs(m.coef_[0]) for m in self.meta], axis=1)  # (families, H)
        return (present * weight[:, None, :]).sum(axis=0) / np.maximum(weight.sum(axis=0), 1e-12)

    def predict(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        raw = self.combine(self.base_predictions(x, idx))
        return np.column_stack([c(raw[:, j]) for j, c in enumerate(self.calibrators)])

    def confidence(self, x: np.ndarray, idx: np.ndarray, p: np.ndarray) -> np.ndarray:
        conf = np.abs(2 * p - 1)
        if self.shock is not None:
            conf = conf * self.shock.normality(x[idx])[:, None]
        return conf


def fit_meta(oof: dict[str, np.ndarray], y: np.ndarray) -> list[LogisticRegression]:
    """One logistic meta-learner per horizon on the logits of the out-of-fold predictions."""
    metas = []
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j])
        z = np.column_stack([logit(oof[f][ok, j]) for f in oof])
        metas.append(LogisticRegression().fit(z, y[ok, j]))
    return metas


def fit_calibrators(raw: np.ndarray, y: np.ndarray, method: str) -> list[Calibrator]:
    out = []
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j])
        out.append(Calibrator(method).fit(raw[ok, j], y[ok, j]))
    return out
