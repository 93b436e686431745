"""The clock of the source a connector reads, so that lag is measured on it and not on ours.

Lag is exchange event time → features published. Event times are stamped by the source's clock: the
venue's for a live venue, the recorded market's for a replay (a 2024 capture replayed today is not two
years late). The venue answers its time at ``<rest prefix>/time`` (``{"serverTime": ms}``, weight 1); the
connector asks every few seconds and reads the source's clock between answers as running at the rate
the last two answers showed: 1 for a live venue, the pace of a replay (10 for ten times faster).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Two answers closer than this say little about the rate (the request's round trip dominates).
MIN_RATE_SPAN_MS = 1000.0
# A live clock runs at 1; a measured rate this close to 1 is the round trips' noise, not a replay's pace.
RATE_NOISE = 0.02


@dataclass
class SourceClock:
    offset_ms: float | None = None  # source time - our wall time, at the last answer
    rate: float = 1.0  # source milliseconds per wall millisecond
    _at_wall_ms: float = 0.0
    _at_source_ms: float = 0.0
    note: str = "wall clock: the source has not told its time yet"

    def observe(self, sent_wall_ms: float, server_ms: float, answered_wall_ms: float) -> None:
        """One answer of the time endpoint, asked at ``sent_wall_ms`` and answered at ``answered_wall_ms``:
        the source's time is taken as of the middle of the round trip."""
        wall = (sent_wall_ms + answered_wall_ms) / 2
        if self.offset_ms is not None and wall - self._at_wall_ms >= MIN_RATE_SPAN_MS:
            rate = (server_ms - self._at_source_ms) / (wall - self._at_wall_ms)
            self.rate = 1.0 if abs(rate - 1.0) < RATE_NOISE else max(rate, 0.0)
        self._at_wall_ms, self._at_source_ms = wall, server_ms
        self.offset_ms = server_ms - wall
        self.note = f"source clock: offset {self.offset_ms:+,.0f} ms, rate {self.rate:g}"

    def failed(self, why: str) -> None:
        if self.offset_ms is None:
            self.note = f"wall clock: the source's time is unknown ({why})"

    def now_ms(self, wall_ms: float | None = None) -> float:
        """The source's time now (our wall clock until the source has answered)."""
        wall = time.time() * 1e3 if wall_ms is None else wall_ms
        if self.offset_ms is None:
            return wall
        return self._at_source_ms + (wall - self._at_wall_ms) * self.rate

    def describe(self) -> dict:
        return {"source": self.offset_ms is not None, "offset_ms": self.offset_ms, "rate": self.rate,
                "note": self.note}
