"""Closed-loop HTTP load from a process of its own: ``--clients`` connections, each sending its next
request when the last one is answered, for ``--duration-s`` after ``--warmup-s``. Prints one JSON line:
requests, the answers that were not 2xx by status (or transport error), throughput and latency
percentiles (ms) of the 2xx answers alone, so that fast refusals never pass for throughput.

    python benchmarks/http_load.py URL --body '{"symbols": ["BTCUSDT"]}' --header X-API-Key=KEY --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import aiohttp
import numpy as np


async def _client(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict, until: float,
                  record_from: float, lat: list[float], codes: Counter) -> None:
    while (t0 := time.perf_counter()) < until:
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                code = r.status
        except aiohttp.ClientError as e:
            code = type(e).__name__
        if t0 >= record_from:
            codes[code] += 1
            if isinstance(code, int) and 200 <= code < 300:
                lat.append((time.perf_counter() - t0) * 1e3)


async def load(url: str, body: bytes, headers: dict, clients: int, duration_s: float, warmup_s: float) -> dict:
    lat: list[float] = []
    codes: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        start = time.perf_counter()
        record_from, until = start + warmup_s, start + warmup_s + duration_s
        await asyncio.gather(*(_client(session, url, body, headers, until, record_from, lat, codes)
                               for _ in range(clients)))
        elapsed = time.perf_counter() - record_from
    a = np.array(lat) if lat else np.array([np.nan])
    return {"clients": clients, "requests": sum(codes.values()), "ok": len(lat),
            "non_2xx": {str(k): v for k, v in codes.items() if not (isinstance(k, int) and 200 <= k < 300)},
            "rps": len(lat) / elapsed, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--body", required=True)
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    args = ap.parse_args()
    headers = {"content-type": "application/json", **dict(h.split("=", 1) for h in args.header)}
    out = asyncio.run(load(args.url, args.body.encode(), headers, args.clients, args.duration_s, args.warmup_s))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
