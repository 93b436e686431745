"""The baselines and the sequence models, and how one of them is fitted in one process (XGBoost has its
own module, :mod:`tickray.training.boosting`).

Every fitted model answers ``predict(x, idx) -> (len(idx), H)`` probabilities of an up-move, one column
per horizon, for rows ``idx`` of a feature matrix sorted by (symbol, ts): tabular models read the row,
sequence models the window of rows ending at it. The same fit code runs in a fold task, in a Tune
trial and (wrapped by :mod:`tickray.training.trainers`) on Ray Train workers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from tickray.features.windows import gather_windows
from tickray.research.rows import labelled
from tickray.training.boosting import XGBModel  # noqa: F401  (models registered before boosting.py name it here)
from tickray.training.config import SequenceConfig
from tickray.training.metrics import classification_metrics


@dataclass
class PriorModel:
    """Baseline: the training class rate, whatever the features."""
    rates: list[float]
    family: str = "prior"
    window: int = 1

    def predict(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.tile(np.asarray(self.rates, float), (idx.size, 1))


def fit_prior(y: np.ndarray, idx: np.ndarray) -> PriorModel:
    return PriorModel([float(np.nanmean(y[idx, j])) for j in range(y.shape[1])])


@dataclass
class LogisticModel:
    """Baseline: standardised logistic regression on the same features."""
    pipelines: list
    family: str = "logistic"
    window: int = 1

    def predict(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.column_stack([p.predict_proba(x[idx])[:, 1] for p in self.pipelines])


def fit_logistic(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> LogisticModel:
    pipes = []
    for j in range(y.shape[1]):
        rows = labelled(y, idx, j)
        pipes.append(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[rows], y[rows, j]))
    return LogisticModel(pipes)


# ---- sequence models ------------------------------------------------------------------------------


class Standardize(nn.Module):
    """Feature scaling fitted on the training rows, kept inside the network so a saved model is whole."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num((x - self.mean) / self.std, 0.0, 10.0, -10.0).clamp(-10, 10)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions (Vaswani et al.), so attention knows which second is the latest."""

    def __init__(self, width: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, width, 2) * (-math.log(10_000.0) / width))
        pe = torch.zeros(max_len, width)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : width // 2]
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.size(1)]


class LSTMNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, cfg: SequenceConfig, scale: Standardize):
        super().__init__()
        self.scale = scale
        self.lstm = nn.LSTM(n_features, cfg.hidden, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.scale(x))
        return self.head(out[:, -1])


class TransformerNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, cfg: SequenceConfig, scale: Standardize):
        super().__init__()
        self.scale = scale
        self.embed = nn.Linear(n_features, cfg.hidden)
        self.positions = PositionalEncoding(cfg.hidden, cfg.window)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 2 * cfg.hidden, cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.positions(self.embed(self.scale(x))))
        return self.head(h[:, -1])


NETS = {"lstm": LSTMNet, "transformer": TransformerNet}


def build_net(family: str, x: np.ndarray, train: np.ndarray, n_outputs: int, cfg: SequenceConfig) -> nn.Module:
    sample = x[train[:: max(1, train.size // 50_000)]].astype(np.float64)
    return NETS[family](x.shape[1], n_outputs, cfg, Standardize(sample.mean(0), sample.std(0)))


@dataclass
class SequenceModel:
    family: str
    net: nn.Module = field(repr=False)
    window: int = 30
    batch_size: int = 1024
    device: str = "cpu"

    def to(self, device: str) -> SequenceModel:
        """The model on ``device`` (a serving replica with a GPU moves it there once)."""
        self.net, self.device = self.net.to(device), device
        return self

    def predict(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return predict_net(self.net, x, idx, self.window, torch.device(self.device), self.batch_size)


def predict_net(net: nn.Module, x: np.ndarray, idx: np.ndarray, window: int, device: torch.device,
                batch_size: int = 1024) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, idx.size, batch_size):
            xb = torch.from_numpy(gather_windows(x, idx[s: s + batch_size], window)).to(device)
            out.append(torch.sigmoid(net(xb).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.head[-1].out_features))


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the defined labels only (a horizon may be undefined for a row)."""
    mask = ~torch.isnan(y)
    if not mask.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[mask].float(), y[mask])


def evaluate(net: nn.Module, x: np.ndarray, y: np.ndarray, valid: np.ndarray, window: int,
             device: torch.device) -> dict[str, float]:
    """Validation loss (mean masked BCE) and per-horizon AUC and log loss of the first horizon."""
    p = predict_net(net, x, valid, window, device)
    yv = y[valid]
    eps = 1e-7
    ok = ~np.isnan(yv)
    pc = np.clip(p, eps, 1 - eps)
    loss = float(-(yv[ok] * np.log(pc[ok]) + (1 - yv[ok]) * np.log(1 - pc[ok])).mean())
    try:
        first = classification_metrics(yv[:, 0], p[:, 0])
    except ValueError:  # one class in a short validation tail: the loss still decides early stopping
        first = {"auc": float("nan"), "logloss": float("nan")}
    return {"valid_loss": loss, "valid_auc": first["auc"], "valid_logloss": first["logloss"]}


def train_net(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs_of: Callable[[int], Iterable[np.ndarray]],
              valid: np.ndarray, cfg: SequenceConfig, device: torch.device, seed: int,
              on_epoch: Callable[[int, dict, nn.Module], bool | None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Adam on masked BCE, mixed precision on CUDA, early stopping on the validation loss; returns the
    best epoch's network (on the CPU) and the per-epoch history. ``epochs_of(epoch)`` yields batches of
    window-end row indices; ``on_epoch`` may checkpoint and report, and stop training by returning True."""
    torch.manual_seed(seed)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    best, best_loss, stale, history = None, math.inf, 0, []
    for epoch in range(cfg.epochs):
        net.train()
        total, batches = torch.zeros((), device=device), 0
        for ends in epochs_of(epoch):
            xb = torch.from_numpy(gather_windows(x, ends, cfg.window)).to(device, non_blocking=True)
            yb = torch.from_numpy(y[ends]).to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = masked_bce(net(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total, batches = total + loss.detach(), batches + 1  # summed on the device: no sync per batch
        metrics = {"epoch": epoch + 1, "train_loss": float(total) / max(batches, 1),
                   **evaluate(net, x, y, valid, cfg.window, device)}
        history.append(metrics)
        if metrics["valid_loss"] < best_loss:
            best_loss, stale = metrics["valid_loss"], 0
            best = copy.deepcopy(unwrapped(net)).cpu()
        else:
            stale += 1
        if (on_epoch and on_epoch(epoch + 1, metrics, net)) or stale >= cfg.patience:
            break
    return best, history


def unwrapped(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def shuffled_batches(train: np.ndarray, batch_size: int, seed: int) -> Callable[[int], Iterable[np.ndarray]]:
    def epochs_of(epoch: int) -> Iterable[np.ndarray]:
        order = train[np.random.default_rng(seed + epoch).permutation(train.size)]
        return (order[s: s + batch_size] for s in range(0, order.size, batch_size))
    return epochs_of


def fit_sequence(family: str, x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray,
                 cfg: SequenceConfig, seed: int = 7, device: str = "cpu",
                 on_epoch: Callable[[int, dict, nn.Module], bool | None] | None = None
                 ) -> tuple[SequenceModel, list[dict]]:
    torch.manual_seed(seed)
    net = build_net(family, x, train, y.shape[1], cfg)
    best, history = train_net(net, x, y, shuffled_batches(train, cfg.batch_size, seed), valid, cfg,
                              torch.device(device), seed, on_epoch)
    return SequenceModel(family, best, cfg.window), history
