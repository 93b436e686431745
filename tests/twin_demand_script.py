"""Run by test_cluster.py against the autoscaling twin (`tickray up --autoscaling-config
infra/local-cluster.yaml`): asks for more CPUs than the head has and for a GPU, then watches the autoscaler
add worker nodes and take them away once they idle. Prints one JSON line."""

import json
import time

import ray
from tickray.config import load_settings
from tickray.ops.runtime import connect_ray

connect_ray(load_settings())


def alive() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


@ray.remote(num_cpus=1)
def busy(seconds: float) -> str:
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=1, num_gpus=1)
def on_a_gpu() -> str:
    return ray.get_runtime_context().get_node_id()


start = len(alive())
head_cpus = ray.cluster_resources()["CPU"]
refs = [busy.remote(6) for _ in range(5)]
gpu_ref = on_a_gpu.remote()
peak, t0 = start, time.monotonic()
while time.monotonic() - t0 < 180:
    peak = max(peak, len(alive()))
    done, _ = ray.wait([*refs, gpu_ref], num_returns=len(refs) + 1, timeout=1)
    if len(done) == len(refs) + 1:
        break
cpu_nodes = set(ray.get(refs, timeout=10))
gpu_node = ray.get(gpu_ref, timeout=10)
gpu_nodes = {n["NodeID"] for n in alive() if n["Resources"].get("GPU")}
idle_after = None
while time.monotonic() - t0 < 300:
    if len(alive()) == start:
        idle_after = round(time.monotonic() - t0, 1)
        break
    time.sleep(1)
print(json.dumps({"start": start, "head_cpus": head_cpus, "peak": peak, "cpu_task_nodes": len(cpu_nodes),
                  "gpu_task_on_gpu_node": gpu_node in gpu_nodes, "back_to_start_after_s": idle_after,
                  "end": len(alive())}))
