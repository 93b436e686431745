"""The venue's messages as the stream reads them: stream names, event types and the checks a payload must
pass before any of it is used (numbers parsed once, in place)."""

from __future__ import annotations

DEFAULT_STREAMS = ("depth@0ms", "aggTrade", "bookTicker", "kline_1m")
KNOWN_EVENTS = {"depthUpdate", "aggTrade", "trade", "bookTicker", "kline", "markPriceUpdate"}


def stream_names(symbol: str, streams: tuple[str, ...] = DEFAULT_STREAMS) -> list[str]:
    return [f"{symbol.lower()}@{s}" for s in streams]


def event_type(data: dict) -> str | None:
    """The payload's event; spot @bookTicker carries no ``e``."""
    return data.get("e") or ("bookTicker" if {"u", "b", "a"} <= data.keys() else None)


def _positive(data: dict, *keys: str) -> str | None:
    for k in keys:
        if not (v := float(data[k])) > 0:
            return f"non-positive {k}"
        data[k] = v
    return None


def validate(data: dict, e: str) -> str | None:
    """A reason the payload cannot be used, or None. The numbers it checks are parsed in place, once:
    the pipeline takes them as they are."""
    try:
        if e in ("aggTrade", "trade"):
            tid = "a" if e == "aggTrade" else "t"
            data["T"], data[tid], _ = int(data["T"]), int(data[tid]), bool(data["m"])
            if not (p := float(data["p"])) > 0:
                return "non-positive price"
            if not (q := float(data["q"])) > 0:
                return "non-positive quantity"
            data["p"], data["q"] = p, q
        elif e == "depthUpdate":
            int(data["U"]), int(data["u"])
            bids = [(float(p), float(q)) for p, q in data["b"]]
            asks = [(float(p), float(q)) for p, q in data["a"]]
            for p, q in bids + asks:
                if not (p > 0 and q >= 0):
                    return "non-positive price or negative quantity in depth"
            data["b"], data["a"] = bids, asks
        elif e == "bookTicker":
            data["u"] = int(data["u"])
            return _positive(data, "b", "a", "B", "A")
        elif e == "kline":
            k = data["k"]
            if not all(float(k[f]) > 0 for f in "ohlc") or float(k["h"]) < float(k["l"]):
                return "kline with non-positive prices or high below low"
        elif e == "markPriceUpdate":
            return _positive(data, "p")
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed {e}: missing or bad {exc}"
    return None
