"""Out-of-time classification metrics, one definition for training, tuning, promotion and reports."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, roc_auc_score

# Higher is better for these; lower for the others (logloss, brier).
HIGHER_IS_BETTER = {"auc", "accuracy", "balanced_accuracy", "f1"}


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log loss, accuracy, balanced accuracy, F1 (threshold 0.5), Brier; rows with a NaN label or
    prediction are left out. ``n`` is the number of rows scored."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    ok = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[ok].astype(int), np.clip(p[ok], 1e-7, 1 - 1e-7)
    if y.size == 0 or np.unique(y).size < 2:
        raise ValueError(f"cannot score {y.size} rows with {np.unique(y).size} class(es)")
    hard = (p > 0.5).astype(int)
    return {
        "auc": float(roc_auc_score(y, p)),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
        "accuracy": float(accuracy_score(y, hard)),
        "balanced_accuracy": float(balanced_accuracy_score(y, hard)),
        "f1": float(f1_score(y, hard, zero_division=0.0)),
        "brier": float(np.mean((p - y) ** 2)),
        "n": float(y.size),
    }


def better(metric: str, challenger: float, champion: float, margin: float) -> bool:
    """Whether the challenger beats the champion on ``metric``: strictly (a tie keeps the champion), and
    by at least ``margin`` (a gain equal to the margin, up to float rounding, is enough)."""
    gain = challenger - champion if metric in HIGHER_IS_BETTER else champion - challenger
    return gain > 0 and gain >= margin - 1e-12
