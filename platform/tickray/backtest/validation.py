"""Model validation beside the money: over-fitting, stability under perturbed inputs, calibration, and
which features the models lean on.

- over-fitting: each window's AUC on the rows it was trained on against the AUC on its test window; a
  gap that grows or stays large across windows means the model memorises;
- stability: Gaussian noise of ``noise_std`` feature standard deviations (measured on the training
  rows) added to the test rows' features; reported as the mean |Δp| and the share of rows whose
  position (long / flat / short at the strategy's threshold) changes;
- calibration: the reliability curve (mean predicted against observed frequency in equal-width bins of
  the prediction) and the Brier score;
- importance: XGBoost's total gain per feature, the logistic baseline's |coefficient| on standardised
  features; each normalised to sum to 1.
"""

from __future__ import annotations

import numpy as np

from tickray.training.metrics import classification_metrics


def safe_auc(y: np.ndarray, p: np.ndarray) -> float:
    try:
        return classification_metrics(y, p)["auc"]
    except ValueError:  # one class in this slice: AUC is undefined, not 0.5
        return float("nan")


def sides(p: np.ndarray, threshold: float) -> np.ndarray:
    return np.sign(np.nan_to_num(p - 0.5)) * (np.abs(np.nan_to_num(p - 0.5)) > threshold)


def stability(model, x: np.ndarray, idx: np.ndarray, train: np.ndarray, noise_std: float, threshold: float,
              seed: int) -> dict[str, float]:
    """How much ``model``'s predictions on rows ``idx`` move when their features are jittered."""
    rng = np.random.default_rng(seed)
    scale = np.nanstd(x[train], axis=0).astype(np.float32)
    noisy = x.copy()
    lo, hi = max(0, int(idx.min()) - model.window + 1), int(idx.max()) + 1  # the rows a window may read
    noisy[lo:hi] += (noise_std * scale * rng.standard_normal((hi - lo, x.shape[1]))).astype(np.float32)
    p, q = model.predict(x, idx), model.predict(noisy, idx)
    return {"mean_abs_change": float(np.nanmean(np.abs(q - p))),
            "position_flips": float(np.mean(sides(p, threshold) != sides(q, threshold)))}


def reliability(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Per equal-width bin of p with rows in it: mean prediction, observed up-rate, row count."""
    ok = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[ok], p[ok]
    b = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    has = n > 0
    return {"predicted": (np.bincount(b, p, bins)[has] / n[has]).tolist(),
            "observed": (np.bincount(b, y, bins)[has] / n[has]).tolist(),
            "count": n[has].tolist()}


def importance(model, features: list[str]) -> dict[str, float] | None:
    """Normalised importance per feature, averaged over horizons (None for models without one)."""
    if model.family == "xgboost":
        total = np.zeros(len(features))
        for booster in model.boosters:
            for key, gain in booster.get_score(importance_type="total_gain").items():
                total[int(key[1:])] += gain
    elif model.family == "logistic":
        total = np.sum([np.abs(pipe[-1].coef_[0]) for pipe in model.pipelines], axis=0)
    else:
        return None
    s = total.sum()
    return dict(zip(features, (total / s if s > 0 else total).tolist()))
