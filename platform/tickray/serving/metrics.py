"""The gateway's metrics, made once per replica and shared by its parts (Ray exports them to Prometheus)."""

from __future__ import annotations

import time

from ray.util import metrics


class ServeMetrics:
    def __init__(self):
        self.requests = metrics.Counter("tickray_serve_requests", "API requests by route and status code",
                                        tag_keys=("route", "code"))
        self.stage_ms = metrics.Histogram("tickray_serve_stage_ms", "time in one stage of a prediction, ms",
                                          boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500],
                                          tag_keys=("stage",))
        self.latency = metrics.Histogram("tickray_serve_predict_ms", "a prediction request in the replica, ms",
                                         boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                                         tag_keys=("model", "model_version"))
        self.cache = metrics.Counter("tickray_serve_live_predictions", "live predictions answered from the "
                                     "replica's recent ones (hit) or computed (miss)", tag_keys=("result",))

    def stage(self, name: str, since: float) -> float:
        """Observe the stage that began at ``since`` (perf_counter); returns now, where the next begins."""
        now = time.perf_counter()
        self.stage_ms.observe((now - since) * 1e3, tags={"stage": name})
        return now
