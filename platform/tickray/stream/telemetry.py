"""What a stream actor tells the outside: Ray metrics (the dashboard, Prometheus) and JSON event lines."""

from __future__ import annotations

import logging
import time
from collections import Counter

import orjson
from ray.util import metrics

log = logging.getLogger("tickray.stream")


class StreamMetrics:
    """Counts kept in the actor and handed to Ray's metrics (the dashboard, Prometheus) once a second,
    so the per-message cost is a dict increment."""

    def __init__(self) -> None:
        self.messages = metrics.Counter("tickray_stream_messages", "messages processed",
                                        tag_keys=("symbol", "stream"))
        self.errors = metrics.Counter("tickray_stream_quarantined", "invalid messages, by reason",
                                      tag_keys=("reason",))
        self.events = metrics.Counter("tickray_stream_events", "reconnects, resyncs, gaps, duplicates, backfills",
                                      tag_keys=("event",))
        self.latency = metrics.Histogram("tickray_stream_pipeline_ms", "receive to features published, ms",
                                         boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100])
        self.lag = metrics.Gauge("tickray_stream_lag_ms", "exchange event time to features published, ms",
                                 tag_keys=("symbol",))
        self.pending: Counter = Counter()

    def flush(self, samples: list[float], lags: dict[str, float]) -> None:
        for (kind, *tags), n in self.pending.items():
            if kind == "msg":
                self.messages.inc(n, {"symbol": tags[0], "stream": tags[1]})
            elif kind == "err":
                self.errors.inc(n, {"reason": tags[0]})
            else:
                self.events.inc(n, {"event": tags[0]})
        self.pending.clear()
        for ms in samples:
            self.latency.observe(ms)
        for sym, ms in lags.items():
            self.lag.set(ms, {"symbol": sym})


def log_event(event: str, **fields) -> None:
    """Connection events as one JSON object per line (what log shippers parse)."""
    log.warning(orjson.dumps({"event": event, "ts": time.time(), **fields}).decode())


def span(seconds: float) -> str:
    """A duration as people say it: 45 s, 3.2 min, 5.1 h, 12 days, 2.4 years."""
    for unit, size in (("years", 365.25 * 86_400), ("days", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"
