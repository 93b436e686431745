"""The sequence models on a GPU, against the same fits on this machine's CPUs in the same run.

Needs a CUDA device (exits with a message without one); CI never has one. It runs the platform's own
paths on windows with a planted signal (the last seconds of feature 0 decide the move):

- ``fit_sequence`` for the LSTM and the Transformer on the CPU and on CUDA (mixed precision): seconds
  per fit, the ratio, and the test AUC of both (same quality);
- ``train_sequence``: Ray Train's ``TorchTrainer`` with one GPU worker, checkpoints each epoch;
- ``tune_family``: Tune trials that ask for half a GPU each; every trial reports the device it ran on.

    python benchmarks/bench_gpu_training.py [--rows 200000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
import torch
from sklearn.metrics import roc_auc_score
from tickray.research.rows import NS, Rows
from tickray.training.config import SequenceConfig, parse_config
from tickray.training.models import fit_sequence
from tickray.training.trainers import train_sequence
from tickray.training.tune import tune_family

WINDOW = 30


def synthetic(rows: int, features: int = 8, seed: int = 0) -> Rows:
    """One symbol's seconds; the up-move over each horizon follows the last 10 s of feature 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    recent = np.convolve(x[:, 0], np.ones(10) / np.sqrt(10), mode="full")[:rows]
    y = np.column_stack([(recent + s * rng.normal(size=rows) > 0) for s in (1.0, 2.0)]).astype(np.float32)
    ok = np.arange(rows) >= WINDOW - 1
    y[~ok] = np.nan
    return Rows(x=x, y=y, fwd=np.zeros_like(y, dtype=np.float64), ts=np.arange(rows, dtype=np.int64) * NS,
                symbol=np.full(rows, "SYNTH", dtype=object), window_ok=ok,
                features=[f"f{i}" for i in range(features)], horizons=[10, 60], window=WINDOW)


def auc(model, rows: Rows, test: np.ndarray) -> float:
    return round(float(roc_auc_score(rows.y[test, 0], model.predict(rows.x, test)[:, 0])), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to compare (run this on a GPU node)")
        return
    rows = synthetic(args.rows)
    usable = np.flatnonzero(rows.window_ok)
    train, valid, test = np.split(usable, [int(usable.size * 0.7), int(usable.size * 0.85)])
    report: dict = {"device": torch.cuda.get_device_name(0), "rows": args.rows, "cpu_threads": torch.get_num_threads()}
    for family in ("lstm", "transformer"):
        cfg = SequenceConfig(window=WINDOW, hidden=64, layers=2, heads=4, epochs=args.epochs,
                             patience=args.epochs, batch_size=1024)
        out = {}
        for device in ("cpu", "cuda"):
            torch.cuda.reset_peak_memory_stats()  # after the CPU fit, the peak is the CUDA fit's
            t0 = time.perf_counter()
            model, history = fit_sequence(family, rows.x, rows.y, train, valid, cfg, device=device)
            out[device] = {"s": round(time.perf_counter() - t0, 2), "test_auc": auc(model, rows, test),
                           "epochs": len(history)}
        out["cuda"]["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["speedup"] = round(out["cpu"]["s"] / out["cuda"]["s"], 2)
        report[family] = out
        print(json.dumps({family: out}), flush=True)

    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            cfg = SequenceConfig(window=WINDOW, hidden=64, layers=2, heads=4, epochs=args.epochs,
                                 patience=args.epochs, batch_size=1024, resources={"cpu": 4, "gpu": 1})
            t0 = time.perf_counter()
            model, history = train_sequence("transformer", rows, train, valid, cfg, 7, Path(storage), "gpu-bench")
            report["torch_trainer"] = {"s": round(time.perf_counter() - t0, 2), "epochs": len(history),
                                       "test_auc": auc(model, rows, test)}
            print(json.dumps({"torch_trainer": report["torch_trainer"]}), flush=True)

            tcfg = parse_config({"data": {"horizons_s": [10, 60]},
                                 "models": {"lstm": {"window": WINDOW, "epochs": args.epochs, "batch_size": 1024}},
                                 "tune": {"family": "lstm", "num_samples": 4, "max_concurrent_trials": 2,
                                          "resources": {"cpu": 2, "gpu": 0.5},
                                          "space": {"hidden": {"type": "choice", "values": [32, 64]}}}})
            t0 = time.perf_counter()
            grid = tune_family(tcfg, rows.x, rows.y, train, valid, Path(storage))
            report["tune"] = {"s": round(time.perf_counter() - t0, 2), "trials": len(grid),
                              "devices": sorted({str(r.metrics.get("device")) for r in grid}),
                              "errors": [str(r.error) for r in grid if r.error]}
            print(json.dumps({"tune": report["tune"]}), flush=True)
    finally:
        ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
