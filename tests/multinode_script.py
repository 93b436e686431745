"""Run by test_cluster.py in its own process (a second Ray cluster cannot join the session's): a head and
two workers (one advertising a GPU) from ray.cluster_utils.Cluster. Ingest and features spread their Ray
Data tasks over the nodes; the serving deployment's replicas spread; a worker removed in the middle of
an ingest leaves it complete. Prints one JSON line.

argv: market folder, MLflow tracking URI (with a champion tickray-xgboost), Redis URL, work folder."""

import json
import sys
import threading
import time
from pathlib import Path

import httpx
import ray
import tickray  # noqa: F401  (sets RAY_AUTH_MODE before Ray starts)
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks
from tickray import lake
from tickray.features.job import build_features
from tickray.ingest.job import ingest
from tickray.ops.stack import ensure_ray_token, free_port
from tickray.serving.app import build
from tickray.serving.config import Replicas, ServeConfig

market, tracking_uri, redis_url, work = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
inputs = [market / "aggtrades", market / "depth", market / "klines"]
SHARD = 256 * 1024  # many small tasks: enough of them to spread, and to be caught running

ensure_ray_token()  # a Cluster's head, like `ray start --head`, needs one
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                        "dashboard_port": free_port()})
cpu_node = cluster.add_node(num_cpus=2)
gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
out = {"head": cluster.head_node.node_id, "cpu_node": cpu_node.node_id, "gpu_node": gpu_node.node_id}
try:
    first = ingest(inputs, work / "lake", shard_bytes=SHARD)
    feats = build_features(work / "lake")
    out |= {"ingest_tasks": first.tasks, "ingest_nodes": sorted(first.nodes), "rows": first.rows,
            "feature_nodes": sorted(feats.nodes), "feature_rows": feats.rows}

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    serve.run(build(ServeConfig(model="tickray-xgboost", tracking_uri=tracking_uri, redis_url=redis_url,
                                split_families=False, gateway=Replicas(min_replicas=2, max_replicas=2))),
              name="tickray", route_prefix="/")
    replicas = list_actors(filters=[("class_name", "=", "ServeReplica:tickray:Gateway"), ("state", "=", "ALIVE")])
    health = httpx.get(f"http://127.0.0.1:{serve.context._global_client.http_config.port}/v1/health", timeout=30)
    out |= {"replica_nodes": sorted(a.node_id for a in replicas), "health": health.status_code}
    serve.shutdown()

    # The same ingest again; the CPU worker goes away while one of its tasks runs.
    second: dict = {}
    job = threading.Thread(target=lambda: second.update(r=ingest(inputs, work / "lake2", shard_bytes=SHARD)))
    job.start()
    caught = None
    while job.is_alive() and caught is None:
        running = list_tasks(filters=[("node_id", "=", cpu_node.node_id), ("state", "=", "RUNNING")])
        caught = next((t.name for t in running if "MapBatches" in t.name), None)
        time.sleep(0.05)
    cluster.remove_node(cpu_node)
    job.join()
    again = second["r"]
    out |= {"removed_while_running": caught, "rows_after_removal": again.rows,
            "quarantined_equal": again.quarantined == first.quarantined,
            "lake_rows": {ds: lake.dataset_rows(work / "lake", ds) for ds in first.rows},
            "lake2_rows": {ds: lake.dataset_rows(work / "lake2", ds) for ds in first.rows}}
finally:
    print(json.dumps(out))
    ray.shutdown()
    cluster.shutdown()
