"""The venue's messages as the stream reads them: stream names, typed events and the checks a payload must
pass before any of it is used.

Each message is decoded once, by msgspec, straight into the typed event its ``e`` names, the venue's
decimal strings parsed to floats in the same pass (:class:`Decoder`). A message that does not decode so
(bad JSON, a missing or malformed field, an event without ``e`` such as spot's @bookTicker) takes the
general path: parsed to a dict, judged field by field for the reason it cannot be used, and converted
to its event when it can. The fast path only ever accepts what the general one accepts, so both give
the same events and the same quarantine reasons.
"""

from __future__ import annotations

import msgspec
import orjson

DEFAULT_STREAMS = ("depth@0ms", "aggTrade", "bookTicker", "kline_1m")
KNOWN_EVENTS = {"depthUpdate", "aggTrade", "trade", "bookTicker", "kline", "markPriceUpdate"}

Level = tuple[float, float]


class Event(msgspec.Struct, tag_field="e", kw_only=True):
    s: str
    E: int = 0  # event time, ms (0: the payload has none)


class Depth(Event, tag="depthUpdate", kw_only=True):
    U: int
    u: int
    pu: int | None = None  # None on spot
    b: list[Level]
    a: list[Level]
    T: int = 0


class AggTrade(Event, tag="aggTrade", kw_only=True):
    a: int
    p: float
    q: float
    T: int
    m: bool

    @property
    def id(self) -> int:
        return self.a


class Trade(Event, tag="trade", kw_only=True):
    t: int
    p: float
    q: float
    T: int
    m: bool

    @property
    def id(self) -> int:
        return self.t


class BookTicker(Event, tag="bookTicker", kw_only=True):
    u: int
    b: float
    B: float
    a: float
    A: float
    T: int = 0


class KlineBody(msgspec.Struct):
    o: float
    h: float
    l: float
    c: float


class Kline(Event, tag="kline", kw_only=True):
    k: KlineBody


class MarkPrice(Event, tag="markPriceUpdate", kw_only=True):
    p: float


EVENTS = {c.__struct_config__.tag: c for c in (Depth, AggTrade, Trade, BookTicker, Kline, MarkPrice)}
EVENT_NAME = {c: e for e, c in EVENTS.items()}  # event class → the venue's ``e``
AnyEvent = Depth | AggTrade | Trade | BookTicker | Kline | MarkPrice


class Envelope(msgspec.Struct):
    stream: str
    data: AnyEvent


def stream_names(symbol: str, streams: tuple[str, ...] = DEFAULT_STREAMS) -> list[str]:
    return [f"{symbol.lower()}@{s}" for s in streams]


def event_type(data: dict) -> str | None:
    """The payload's event; spot @bookTicker carries no ``e``."""
    return data.get("e") or ("bookTicker" if {"u", "b", "a"} <= data.keys() else None)


def as_event(data: dict, e: str | None = None) -> AnyEvent:
    """A payload dict (a capture's, a REST trade in the stream's shape) as its typed event."""
    return msgspec.convert(data, EVENTS[e or event_type(data)], strict=False)


def event_ms(ev: AnyEvent) -> int:
    """The event's time on the venue's clock, ms (0: none)."""
    return ev.E or getattr(ev, "T", 0)


def value_problem(ev: AnyEvent) -> str | None:
    """A reason the decoded event's values cannot be used, or None."""
    if isinstance(ev, (AggTrade, Trade)):
        if not ev.p > 0:
            return "non-positive price"
        if not ev.q > 0:
            return "non-positive quantity"
    elif isinstance(ev, Depth):
        for side in (ev.b, ev.a):
            for p, q in side:
                if not (p > 0 and q >= 0):
                    return "non-positive price or negative quantity in depth"
    elif isinstance(ev, BookTicker):
        for k, v in (("b", ev.b), ("a", ev.a), ("B", ev.B), ("A", ev.A)):
            if not v > 0:
                return f"non-positive {k}"
    elif isinstance(ev, Kline):
        k = ev.k
        if not (k.o > 0 and k.h > 0 and k.l > 0 and k.c > 0) or k.h < k.l:
            return "kline with non-positive prices or high below low"
    elif isinstance(ev, MarkPrice) and not ev.p > 0:
        return "non-positive p"
    return None


def _field_problem(data: dict, e: str) -> str | None:
    """Why a payload that did not decode as its event cannot be used, field by field, or None."""
    try:
        if e in ("aggTrade", "trade"):
            int(data["T"]), int(data["a" if e == "aggTrade" else "t"]), bool(data["m"])
            float(data["p"]), float(data["q"])
        elif e == "depthUpdate":
            int(data["U"]), int(data["u"])
            [(float(p), float(q)) for p, q in data["b"]], [(float(p), float(q)) for p, q in data["a"]]
        elif e == "bookTicker":
            int(data["u"]), [float(data[k]) for k in "baBA"]
        elif e == "kline":
            [float(data["k"][f]) for f in "ohlc"]
        elif e == "markPriceUpdate":
            float(data["p"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed {e}: missing or bad {exc}"
    return None


class Decoder:
    """Raw message → what the stream does with it:

    - ``(stream, symbol, event)``: a payload of the stream's own symbol, decoded; ``event`` is a str
      instead when a field is missing or malformed (the reason; the raw message still belongs to the
      symbol);
    - a dict: the venue's answer to a request (it carries ``id``);
    - a str: why the message is no stream payload at all (the reason it is quarantined for).
    """

    def __init__(self) -> None:
        self._envelope = msgspec.json.Decoder(Envelope, strict=False)
        self._symbols: dict[str, str] = {}  # stream → its symbol, as seen

    def symbol_of(self, stream: str) -> str:
        sym = self._symbols.get(stream)
        if sym is None:
            sym = stream.split("@", 1)[0].upper()
            if len(self._symbols) < 4096:  # bounded whatever a venue sends
                self._symbols[stream] = sym
        return sym

    def decode(self, raw: str | bytes) -> tuple[str, str, AnyEvent | str] | dict | str:
        try:
            env = self._envelope.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._general(raw)
        symbol = self.symbol_of(env.stream)
        if env.data.s != symbol:
            if env.data.s.upper() != symbol:
                return f"symbol mismatch: stream {env.stream!r} carries {env.data.s.upper() or 'no symbol'}"
            env.data.s = symbol
        return env.stream, symbol, env.data

    def _general(self, raw: str | bytes) -> tuple[str, str, AnyEvent | str] | dict | str:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return f"unparsable JSON ({e})"
        if not isinstance(msg, dict):
            return "unknown message: not a JSON object"
        if "data" not in msg:
            return msg if "id" in msg else "unknown message: neither stream data nor a request's answer"
        data, stream = msg["data"], str(msg.get("stream", ""))
        e = event_type(data) if isinstance(data, dict) else None
        if e not in KNOWN_EVENTS:
            return f"unknown event type {e!r} on stream {stream!r}"
        symbol = str(data.get("s", "")).upper()
        if self.symbol_of(stream) != symbol:
            return f"symbol mismatch: stream {stream!r} carries {symbol or 'no symbol'}"
        reason = _field_problem(data, e)
        if reason:
            return stream, symbol, reason
        try:
            ev = as_event(data, e)
        except msgspec.ValidationError as exc:
            return stream, symbol, f"malformed {e}: {exc}"
        ev.s = symbol
        return stream, symbol, ev
