"""A local stand-in for an exchange's REST kline endpoint, serving recorded 1m bars over real HTTP.

Two dialects on one port, as the venues speak them:

- Binance (``GET /fapi/v1/klines`` and spot's ``/api/v3/klines``): ``symbol``, ``interval`` (1m … 1d,
  resampled from the 1m bars), ``startTime``/``endTime`` in ms (inclusive), ``limit`` (default 500, at
  most 1500); rows of ``[open_time, "open", …, close_time, "quote_volume", trades, "taker_buy", …]``
  oldest first. Each request costs weight by its limit (1 / 2 / 5 / 10) and the weight used in the
  current window comes back in ``X-MBX-USED-WEIGHT-1M``.
- Upbit (``GET /v1/candles/minutes/{unit}``): ``market``, ``to`` (exclusive, ISO 8601 UTC), ``count``
  (at most 200); candles newest first. Each request costs 1; ``Remaining-Req``'s ``sec`` is what is left
  of the window.

Rate limiting as on the venues: past the window's budget a request gets ``429`` with ``Retry-After``;
a client that keeps sending while it should be waiting (``ban_after`` such requests) gets ``418`` and is
banned for ``ban_s``. ``fail_next`` makes the next N requests answer ``503`` (for retry tests). Every
request is logged in ``requests`` so tests can check what a client asked for.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickray.bars.build import resample
from tickray.market.venues import KLINE_ENDPOINTS, UPBIT_CANDLE_WEIGHT, binance_kline_weight

BINANCE_MAX_LIMIT, UPBIT_MAX_COUNT = KLINE_ENDPOINTS["binance-usdm"].limit, KLINE_ENDPOINTS["upbit"].limit
_INTERVALS = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
              "6h": 360, "8h": 480, "12h": 720, "1d": 1440}
MS = 1_000_000


@dataclass
class KlineVenue:
    bars: pa.Table  # the venue's 1m bars (BAR schema), any symbols
    weight_limit: int = KLINE_ENDPOINTS["binance-usdm"].weight_limit  # budget per window
    window_s: float = 60.0
    ban_after: int = 3
    ban_s: float = 120.0
    fail_next: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict] = field(default_factory=list, init=False)
    _data: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _window: tuple[int, int] = field(default=(-1, 0), init=False)  # (window index, weight used)
    _retry_until: float = field(default=0.0, init=False)
    _ignored_retry: int = field(default=0, init=False)
    _banned_until: float = field(default=0.0, init=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for symbol in pc.unique(self.bars["symbol"]).to_pylist():
            self._data[symbol] = self._columns(self.bars.filter(pc.equal(self.bars["symbol"], symbol)), 1)

    @staticmethod
    def _columns(t: pa.Table, minutes: int) -> dict[str, np.ndarray]:
        t = t.sort_by("ts")
        cols = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names if c != "symbol"}
        cols["ts"] = pc.cast(t["ts"], pa.int64()).to_numpy() // MS
        cols["minutes"] = np.full(t.num_rows, minutes)
        return cols

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> KlineVenue:
        venue = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, headers, body = venue._answer(self.path)
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json",
                             "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- requests --------------------------------------------------------------------------------
    def _answer(self, raw_path: str) -> tuple[int, dict, bytes]:
        url = urlparse(raw_path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in ("/fapi/v1/klines", "/api/v3/klines"):
            dialect, weight = "binance", binance_kline_weight(int(q.get("limit", 500) or 500))
        elif url.path.startswith("/v1/candles/minutes/"):
            dialect, weight = "upbit", UPBIT_CANDLE_WEIGHT
        else:
            return 404, {}, b'{"error": "not found"}'
        with self._lock:
            status, headers = self._admit(weight, dialect)
            entry = {"path": url.path, **q, "status": status}
            self.requests.append(entry)
        if status != 200:
            return status, headers, json.dumps({"code": status, "msg": _REASONS[status]}).encode()
        try:
            rows = self._binance(q) if dialect == "binance" else self._upbit(url.path, q)
        except ValueError as e:
            entry["status"] = 400
            return 400, headers, json.dumps({"code": -1100, "msg": str(e)}).encode()
        return 200, headers, json.dumps(rows).encode()

    def _admit(self, weight: int, dialect: str) -> tuple[int, dict]:
        now = time.time()  # windows are wall-clock, as the venues count them (a calendar minute)
        if now < self._banned_until:
            return 418, {"Retry-After": str(max(1, round(self._banned_until - now)))}
        if now < self._retry_until:  # told to wait and did not
            self._ignored_retry += 1
            if self._ignored_retry >= self.ban_after:
                self._banned_until = now + self.ban_s
                return 418, {"Retry-After": str(max(1, round(self.ban_s)))}
            return 429, {"Retry-After": str(max(1, round(self._retry_until - now)))}
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {}
        index = int(now // self.window_s)
        used = self._window[1] if self._window[0] == index else 0
        if used + weight > self.weight_limit:
            self._retry_until = (index + 1) * self.window_s
            return 429, {"Retry-After": str(max(1, round(self._retry_until - now)))}
        self._window = (index, used + weight)
        self._ignored_retry = 0
        if dialect == "binance":
            return 200, {"X-MBX-USED-WEIGHT-1M": str(used + weight)}
        return 200, {"Remaining-Req": f"group=candles; min=0; sec={self.weight_limit - used - weight}"}

    def _symbol(self, symbol: str | None, interval_minutes: int) -> dict[str, np.ndarray]:
        if not symbol or symbol not in self._data:
            raise ValueError("Invalid symbol.")
        if interval_minutes == 1:
            return self._data[symbol]
        key = f"{symbol}/{interval_minutes}"
        if key not in self._data:  # native higher intervals, built once
            one = self.bars.filter(pc.equal(self.bars["symbol"], symbol))
            self._data[key] = self._columns(resample(one, interval_minutes), interval_minutes)
        return self._data[key]

    def _binance(self, q: dict) -> list[list]:
        if q.get("interval") not in _INTERVALS:
            raise ValueError(f"Invalid interval {q.get('interval')!r}.")
        minutes = _INTERVALS[q["interval"]]
        limit = int(q.get("limit", 500))
        if not 1 <= limit <= BINANCE_MAX_LIMIT:
            raise ValueError(f"limit must be 1..{BINANCE_MAX_LIMIT}, got {limit}")
        d = self._symbol(q.get("symbol"), minutes)
        ts = d["ts"]
        if "startTime" in q:
            lo = np.searchsorted(ts, int(q["startTime"]))
            hi = min(lo + limit, np.searchsorted(ts, int(q.get("endTime", 2**62)), "right"))
        else:
            hi = np.searchsorted(ts, int(q.get("endTime", 2**62)), "right")
            lo = max(0, hi - limit)
        span = minutes * 60_000
        return [[int(ts[i]), _s(d["open"][i]), _s(d["high"][i]), _s(d["low"][i]), _s(d["close"][i]),
                 _s(d["volume"][i]), int(ts[i]) + span - 1, _s(d["quote_volume"][i]), int(d["trades"][i]),
                 _s(d["buy_volume"][i]), "0", "0"] for i in range(lo, hi)]

    def _upbit(self, path: str, q: dict) -> list[dict]:
        unit = int(path.rsplit("/", 1)[1])
        count = int(q.get("count", 200))
        if not 1 <= count <= UPBIT_MAX_COUNT:
            raise ValueError(f"count must be 1..{UPBIT_MAX_COUNT}, got {count}")
        d = self._symbol(q.get("market"), unit)
        to = q.get("to")
        end = (int(dt.datetime.fromisoformat(to).timestamp() * 1000)
               if to else 2**62)
        hi = np.searchsorted(d["ts"], end, "left")  # ``to`` is exclusive
        out = []
        for i in range(hi - 1, max(0, hi - count) - 1, -1):  # newest first
            start = dt.datetime.fromtimestamp(d["ts"][i] / 1000, dt.UTC)
            out.append({"market": q["market"], "candle_date_time_utc": start.strftime("%Y-%m-%dT%H:%M:%S"),
                        "opening_price": float(d["open"][i]), "high_price": float(d["high"][i]),
                        "low_price": float(d["low"][i]), "trade_price": float(d["close"][i]),
                        "timestamp": int(d["ts"][i]) + unit * 60_000 - 1,
                        "candle_acc_trade_price": float(d["quote_volume"][i]),
                        "candle_acc_trade_volume": float(d["volume"][i]), "unit": unit})
        return out


_REASONS = {429: "Too many requests; back off.", 418: "IP banned for ignoring 429.", 503: "Service unavailable."}


def _s(x: float) -> str:
    return repr(float(x))

