"""The sequence models' final fit: in one Ray task when one worker is asked for (``distributed: auto``;
DDP would have nothing to share, and Ray Train's start and stop cost 10 s on 2 cores), else on Ray Train
with ``TorchTrainer``, as many workers as the config asks for, on GPUs when it asks for them (XGBoost's
is in :mod:`tickray.training.boosting`).

The workers share the feature matrix through the object store (one copy per node). Each gets a Ray Data
shard of the window-end indices and gathers windows batch by batch; DDP keeps their weights equal.
Every epoch is a checkpoint; the best one by validation loss is kept.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig
from ray.train.torch import TorchTrainer

from tickray.ops.runtime import local_device
from tickray.research.rows import Rows
from tickray.training.boosting import run_config, scaling
from tickray.training.config import SequenceConfig
from tickray.training.models import SequenceModel, build_net, fit_sequence, train_net, unwrapped


def _torch_worker(config: dict) -> None:
    x, y = ray.get(config["x"]), ray.get(config["y"])
    cfg = SequenceConfig.model_validate(config["cfg"])
    seed, family = config["seed"], config["family"]
    torch.manual_seed(seed)
    net = ray.train.torch.prepare_model(build_net(family, x, config["scale_rows"], y.shape[1], cfg))
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    rank0 = ray.train.get_context().get_world_rank() == 0

    def epochs_of(epoch: int):
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        local_shuffle_buffer_size=cfg.batch_size * 8,
                                        local_shuffle_seed=seed + epoch):
            yield batch["data"]

    history: list[dict] = []

    def on_epoch(epoch: int, metrics: dict, net) -> None:
        history.append(metrics)
        if not rank0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(unwrapped(net).state_dict(), Path(d) / "model.pt")
            (Path(d) / "history.json").write_text(json.dumps(history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    train_net(net, x, y, epochs_of, config["valid"], cfg, device, seed, on_epoch)


def train_sequence(family: str, rows: Rows, train: np.ndarray, valid: np.ndarray, cfg: SequenceConfig,
                   seed: int, storage_path: Path, name: str) -> tuple[SequenceModel, list[dict]]:
    order = np.random.default_rng(seed).permutation(train)  # blocks mix time periods
    trainer = TorchTrainer(
        _torch_worker,
        train_loop_config={"x": ray.put(rows.x), "y": ray.put(rows.y), "cfg": cfg.model_dump(), "seed": seed,
                           "family": family, "scale_rows": train, "valid": valid},
        scaling_config=scaling(cfg.num_workers, cfg.resources),
        run_config=run_config(name, storage_path,
                              checkpoint_config=CheckpointConfig(checkpoint_score_attribute="valid_loss",
                                                                 checkpoint_score_order="min")),
        datasets={"train": ray.data.from_numpy(order)},
    )
    result = trainer.fit()
    best = min(result.best_checkpoints, key=lambda cm: cm[1]["valid_loss"])[0]
    net = build_net(family, rows.x, train, rows.y.shape[1], cfg)
    with best.as_directory() as d:
        net.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu"))
    with result.checkpoint.as_directory() as d:  # the latest: its history has every epoch
        history = json.loads((Path(d) / "history.json").read_text())
    return SequenceModel(family, net.eval(), cfg.window), history


@ray.remote
def _fit_in_task(family: str, x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray, cfg: dict,
                 seed: int) -> tuple[SequenceModel, list[dict]]:
    return fit_sequence(family, x, y, train, valid, SequenceConfig.model_validate(cfg), seed, local_device())


def fit_sequence_where_cheapest(family: str, rows: Rows, train: np.ndarray, valid: np.ndarray, cfg: SequenceConfig,
                                seed: int, storage_path: Path, name: str) -> tuple[SequenceModel, list[dict], str]:
    """The final fit in one Ray task or on Ray Train (see the module), and where it ran, in words. Either
    way the best network and the history are checkpointed under ``storage_path/name``."""
    if cfg.distributed == "always" or (cfg.distributed == "auto" and cfg.num_workers > 1):
        model, history = train_sequence(family, rows, train, valid, cfg, seed, storage_path, name)
        return model, history, f"on Ray Train ({cfg.num_workers} worker(s))"
    task = _fit_in_task.options(num_cpus=cfg.resources.cpu, num_gpus=cfg.resources.gpu)
    model, history = ray.get(task.remote(family, rows.x, rows.y, train, valid, cfg.model_dump(), seed))
    ckpt = Path(storage_path) / name / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(model.net.state_dict(), ckpt / "model.pt")
    (ckpt / "history.json").write_text(json.dumps(history))
    return model, history, "in one Ray task"
