"""Run by test_tune.py in its own process (a second Ray cluster cannot join the session's): Tune trials
that ask for half a GPU, on a cluster of a CPU-only head, a CPU worker and a node advertising one GPU."""

import json
import sys

import numpy as np
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from ray.cluster_utils import Cluster
from tickray.ops.stack import ensure_ray_token
from tickray.training.config import parse_config
from tickray.training.tune import tune_family

NS = 1_000_000_000

ensure_ray_token()  # a Cluster's head, like `ray start --head`, needs one
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cpu_node = cluster.add_node(num_cpus=2)
gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
try:
    cfg = parse_config({"data": {"horizons_s": [10]}, "models": {"xgboost": {"num_boost_round": 50}},
                        "tune": {"family": "xgboost", "num_samples": 4, "max_concurrent_trials": 4,
                                 "resources": {"cpu": 0.5, "gpu": 0.5},
                                 "space": {"max_depth": {"type": "int", "low": 2, "high": 4}}}})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 5)).astype(np.float32)
    y = (x[:, :1] + rng.normal(size=(4000, 1)) > 0).astype(np.float32)
    grid = tune_family(cfg, x, y, np.arange(3000), np.arange(3000, 4000), sys.argv[1])
    nodes = sorted({r.metrics["node"] for r in grid})
    print(json.dumps({"nodes": nodes, "gpu_node": gpu_node.node_id, "cpu_node": cpu_node.node_id,
                      "errors": [str(r.error) for r in grid if r.error], "trials": len(grid)}))
finally:
    ray.shutdown()
    cluster.shutdown()
