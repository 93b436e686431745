"""The stream's message decoder against a plain reference written here (``json`` and ``float``), on every
message of the real captures, and the reasons it gives for bad ones."""

from __future__ import annotations

import gzip
import json

import pytest
from tickray.stream.messages import AggTrade, BookTicker, Decoder, Depth, Kline, Trade, value_problem

CAPTURES = ["usdm_btcusdt_20240718.gz", "spot_btcusdt_20240808.gz", "cm_ethusd_perp_20240808.gz"]


def _reference(data: dict) -> tuple:
    """What a payload says, parsed by hand: (class, fields) in the venue's names."""
    e = data.get("e", "bookTicker")
    if e == "depthUpdate":
        levels = [[(float(p), float(q)) for p, q in data[k]] for k in ("b", "a")]
        return Depth, (int(data["U"]), int(data["u"]), data.get("pu"), *levels, int(data.get("T") or data["E"]))
    if e in ("aggTrade", "trade"):
        return (AggTrade if e == "aggTrade" else Trade), (int(data["a" if e == "aggTrade" else "t"]), float(data["p"]),
                                                          float(data["q"]), int(data["T"]), bool(data["m"]))
    if e == "bookTicker":
        return BookTicker, (int(data["u"]), *(float(data[k]) for k in "bBaA"))
    assert e == "kline", e
    return Kline, tuple(float(data["k"][f]) for f in "ohlc")


def _fields(ev) -> tuple:
    if isinstance(ev, Depth):
        return ev.U, ev.u, ev.pu, ev.b, ev.a, ev.T or ev.E
    if isinstance(ev, (AggTrade, Trade)):
        return ev.id, ev.p, ev.q, ev.T, ev.m
    if isinstance(ev, BookTicker):
        return ev.u, ev.b, ev.B, ev.a, ev.A
    return ev.k.o, ev.k.h, ev.k.l, ev.k.c


@pytest.mark.parametrize("name", CAPTURES)
def test_every_captured_message_decodes_to_what_it_says(shared_data, name):
    """Spot's @bookTicker carries no ``e`` (the general path); every other payload takes the fast one."""
    decoder, kinds = Decoder(), set()
    with gzip.open(shared_data / "binance" / "ws" / name, "rt") as f:
        for line in f:
            body = line.split(" ", 1)[1]
            msg = json.loads(body)
            if "data" not in msg:
                continue  # the REST snapshots recorded in the capture
            stream, symbol, ev = decoder.decode(body)
            cls, fields = _reference(msg["data"])
            assert (stream, symbol) == (msg["stream"], msg["data"]["s"]) and type(ev) is cls
            assert _fields(ev) == fields and value_problem(ev) is None, body
            kinds.add(cls.__name__)
    assert {"Depth", "BookTicker"} <= kinds and kinds & {"AggTrade", "Trade"}


def test_bad_messages_get_the_reason_and_the_symbol_they_belong_to():
    d = Decoder()
    trade = {"e": "trade", "E": 1, "t": 7, "s": "BTCUSDT", "p": "100.5", "q": "2", "T": 1, "m": True}

    def body(**change) -> str:
        return json.dumps({"stream": "btcusdt@trade", "data": {**trade, **change}})

    assert _fields(d.decode(body())[2]) == (7, 100.5, 2.0, 1, True)
    assert value_problem(d.decode(body(p="-1"))[2]) == "non-positive price"
    assert value_problem(d.decode(body(q="0"))[2]) == "non-positive quantity"
    assert d.decode(body(p="abc")) == ("btcusdt@trade", "BTCUSDT",
                                        "malformed trade: missing or bad could not convert string to float: 'abc'")
    no_price = {k: v for k, v in trade.items() if k != "p"}
    assert d.decode(json.dumps({"stream": "btcusdt@trade", "data": no_price}))[2] == "malformed trade: missing or bad 'p'"
    assert d.decode(body(s="ETHUSDT")) == "symbol mismatch: stream 'btcusdt@trade' carries ETHUSDT"
    assert d.decode(body(e="liquidation")) == "unknown event type 'liquidation' on stream 'btcusdt@trade'"
    assert d.decode("{not json").startswith("unparsable JSON (")
    assert d.decode("[1]") == "unknown message: not a JSON object"
    assert d.decode('{"result": null, "id": 3}') == {"result": None, "id": 3}
    assert d.decode('{"hello": 1}') == "unknown message: neither stream data nor a request's answer"
    depth = {"e": "depthUpdate", "E": 5, "s": "BTCUSDT", "U": 1, "u": 2, "pu": 0, "b": [["10", "1"]], "a": [["11", "-1"]]}
    ev = d.decode(json.dumps({"stream": "btcusdt@depth", "data": depth}))[2]
    assert value_problem(ev) == "non-positive price or negative quantity in depth"
    depth["b"] = [["10", "1", "x"]]
    assert d.decode(json.dumps({"stream": "btcusdt@depth", "data": depth}))[2].startswith("malformed depthUpdate")


def test_the_connection_joins_fragments_holds_back_when_full_and_says_how_it_ended():
    """A local server sends a fragmented message, then 50 more while nobody takes them, then closes
    normally: the fragments arrive as one message, reading pauses once the buffer is full (and resumes as
    it is taken: nothing lost, all in order), and the end is counted as the venue's normal close."""
    import asyncio

    import websockets
    from tickray.market.venues import BINANCE_STREAM_MARKETS
    from tickray.stream.connection import Connection
    from tickray.stream.context import ConnectorContext, ConnectorOptions
    from tickray.stream.telemetry import StreamMetrics

    async def venue(ws) -> None:
        await ws.send(['{"n": ', "-1}"])  # one message in two frames
        for i in range(50):
            await ws.send(json.dumps({"n": i}))
        await asyncio.sleep(0.5)  # taken by then
        await ws.close(1000, "bye")

    async def main() -> tuple[list, bool, dict]:
        async with websockets.serve(venue, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            ctx = ConnectorContext(ConnectorOptions(buffer=8, backoff_s=30), f"ws://127.0.0.1:{port}",
                                   "http://127.0.0.1:9", BINANCE_STREAM_MARKETS["usdm"], streams=["btcusdt@trade"])
            ctx.metrics = StreamMetrics()
            conn = Connection(ctx)
            reader = asyncio.get_running_loop().create_task(conn.read())
            while conn.queued() < 8:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            paused = conn.paused
            got = [json.loads((await conn.take())[0])["n"] for _ in range(51)]
            while not any(k.startswith("reconnect") for k in ctx.counts):
                await asyncio.sleep(0.01)
            reader.cancel()
            return got, paused, dict(ctx.counts)

    got, paused, counts = asyncio.run(main())
    assert got == list(range(-1, 50)) and paused
    assert counts["connections"] == 1 and counts["reconnect: ConnectionClosedOK"] == 1, counts
