"""Joining Ray: the configured address, else RAY_ADDRESS, else the head `tickray up` started, else a local Ray."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from tickray.config import Settings
from tickray.errors import ConfigError
from tickray.ops import stack


def local_device() -> str:
    """Where this process's fits run: "cuda" when it sees a CUDA device, else "cpu". Asked of the CUDA
    driver, as ``torch.cuda.is_available()`` does, so that XGBoost's workers need not import torch (3 s
    here). Ray hides from a worker the GPUs it did not give it (CUDA_VISIBLE_DEVICES); a node that only
    advertises a GPU resource, as the tests' pretend GPU node does, has no driver to answer."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "cpu"
    count = ctypes.c_int(0)
    found = cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return "cuda" if found else "cpu"


def _job_driver_address() -> str | None:
    """RAY_ADDRESS when it names a cluster to join: how `ray job submit` tells a job's driver where its
    cluster is. An http:// value is the dashboard's job API, as Ray's docs have users export it for
    `ray job submit`; tickray then joins its own head, as it would without the variable."""
    address = os.environ.get("RAY_ADDRESS")
    return None if address is None or "://" in address else address


def connect_ray(settings: Settings) -> str | None:
    """Connect this process to Ray; return the dashboard URL when there is one."""
    # Ray Data logs every progress tick at INFO when stdout is not a terminal; keep its warnings only.
    # Imported first: its import configures the logger, which would undo a level set before it.
    import ray.data
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Serve's driver-side INFO ("Started Serve", "Application … is ready"): tickray prints where it serves.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if not ray.is_initialized():
        address = settings.ray_address or _job_driver_address() or stack.ray_head_address(settings)
        kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address:
            source = stack.ray_token_source()
            if source.file and not source.file.exists():
                raise ConfigError(f"joining Ray at {address} needs the token of its head, and there is none at "
                                  f"{source.file}: copy the head's ~/.ray/auth_token there or set "
                                  f"{stack.TOKEN_ENV} (RAY_AUTH_MODE=disabled if the cluster has no auth)")
            ray.init(address=address, **kwargs)
        else:
            stack.ensure_ray_token()
            os.environ.update(stack.serve_ingress_env(settings))  # the cluster inherits it
            ray.init(address="local", num_cpus=settings.ray_num_cpus, include_dashboard=True,
                     dashboard_host=settings.dashboard_host, dashboard_port=settings.dashboard_port, **kwargs)
    url = ray._private.worker.get_dashboard_url()  # no public API for it in Ray 2.60
    return f"http://{url}" if url and not url.startswith("http") else url or None


@contextmanager
def one_stage_execution() -> Iterator[None]:
    """For Ray Data jobs that are one map stage (each task reads, computes and writes): turn off the
    resources Ray Data otherwise reserves for operators downstream. There are none here, and with the
    reservation a 2-CPU node starts one task where it could run two (measured: 8 one-second tasks took
    5.5 s instead of 4.1 s)."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        ctx.op_resource_reservation_enabled = before


def require_resources(per_unit: dict[str, float], units: int, what: str) -> None:
    """Fail fast, naming ``what``, when no node of the cluster could hold one unit (a trial, a Train
    worker) or the cluster could not hold ``units`` of them: Ray would otherwise wait forever, warning
    once after a minute, for resources that will never come (no autoscaler adds a GPU here)."""
    need = {k: v for k, v in per_unit.items() if v > 0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        total = ray.cluster_resources()
        short = {k: v * units for k, v in need.items() if total.get(k, 0.0) < v * units}
        if not short:
            return
        raise ConfigError(f"{what}: {units} × {need} needs {short}, the cluster has "
                         f"{ {k: total.get(k, 0.0) for k in short} }")
    have = [{k: node.get(k, 0.0) for k in need} for node in nodes]
    raise ConfigError(f"{what}: one asks for {need}; no node has that (nodes: {have}); it would wait forever")
