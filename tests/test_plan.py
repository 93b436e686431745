"""Planning connectors for many symbols (tickray.stream.plan) within the venue's rules, and the request pace
a connection keeps. The oracles are the venue's documented numbers and rates written here, not the planner's."""

from __future__ import annotations

import asyncio
import time

import pytest
from tickray.errors import ConfigError
from tickray.market.venues import BINANCE_STREAM_MARKETS, StreamMarket
from tickray.stream.plan import plan_connectors

# USD-M's routing as its change notice of 2026 lists it: the book streams on /public, the others on /market
PUBLIC = {"depth@0ms", "depth@100ms", "bookTicker", "trade"}
MARKET = {"aggTrade", "kline_1m", "markPrice@1s", "forceOrder"}


def test_usdm_routes_streams_as_the_venue_documents():
    usdm = BINANCE_STREAM_MARKETS["usdm"]
    assert {usdm.route(f"btcusdt@{s}") for s in PUBLIC} == {"/public"}
    assert {usdm.route(f"btcusdt@{s}") for s in MARKET} == {"/market"}
    assert usdm.route("!bookTicker") == "/public" and usdm.route("!markPrice@arr") == "/market"
    assert BINANCE_STREAM_MARKETS["spot"].route("btcusdt@depth@100ms") == ""  # spot does not route
    assert all(m.max_streams == 1024 and m.connection_life_s == 86_400 for m in BINANCE_STREAM_MARKETS.values())
    assert BINANCE_STREAM_MARKETS["spot"].requests_per_s == 5 and usdm.requests_per_s == 10


def test_no_connection_carries_more_streams_than_the_venue_allows():
    """40 symbols × 2 book streams and 2 others, at 12 streams a connection: 6 symbols a connector at most
    (each route takes 2 of each symbol's streams), every symbol planned exactly once."""
    market = StreamMarket("/fapi/v1", max_streams=12, routed=True)
    symbols = {f"S{i:02d}USDT": 1.0 for i in range(40)}
    plan = plan_connectors(symbols, ["depth@0ms", "bookTicker", "aggTrade", "kline_1m"], market, "all")
    assert len(plan) == 7  # ceil(40 / 6)
    for c in plan:
        assert len(c.symbols) <= 6 and c.streams_per_route == {"/public": 2 * len(c.symbols),
                                                              "/market": 2 * len(c.symbols)}
    assert sorted(s for c in plan for s in c.symbols) == sorted(symbols)
    assert [c.name for c in plan] == [f"all-{i}" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="allows 1 a connection"):
        plan_connectors(symbols, ["depth@0ms", "bookTicker"], StreamMarket("/x", max_streams=1, routed=True), "x")


def test_symbols_are_balanced_by_message_rate_not_by_count():
    """One symbol trading 240/s, three at 200/s and 96 at 1/s over 4 connectors (aggTrade: one message per
    trade): the busy symbols get connectors of their own, each connector's rate is within 10% of the
    mean, where a split by count (25 symbols each, in name order) puts the four busy ones on one."""
    rates = {"BTCUSDT": 240.0, **{f"BIG{i}USDT": 200.0 for i in range(3)}, **{f"S{i:02d}USDT": 1.0 for i in range(96)}}
    plan = plan_connectors(rates, ["aggTrade"], BINANCE_STREAM_MARKETS["usdm"], "p", min_connectors=4)
    loads = [sum(rates[s] for s in c.symbols) for c in plan]
    mean = sum(rates.values()) / 4
    assert len(plan) == 4 and max(loads) <= 1.1 * mean, loads
    assert [len(c.symbols) for c in plan if "BTCUSDT" in c.symbols] == [1]
    names = sorted(rates)
    by_count = [names[i:i + 25] for i in range(0, 100, 25)]
    assert max(sum(rates[s] for s in chunk) for chunk in by_count) > 3.5 * mean


def test_a_connector_takes_a_bounded_rate():
    rates = {f"S{i}USDT": 3000.0 for i in range(10)}  # 30,000 trades/s in all, 3 symbols a connector at most
    plan = plan_connectors(rates, ["aggTrade"], BINANCE_STREAM_MARKETS["usdm"], "r", rate_per_connector=10_000)
    assert len(plan) == 4 and all(sum(rates[s] for s in c.symbols) <= 10_000 for c in plan)
    with pytest.raises(ConfigError, match="alone is expected"):
        plan_connectors({"HOTUSDT": 50_000.0}, ["aggTrade"], BINANCE_STREAM_MARKETS["usdm"], "h")


def test_requests_keep_the_venues_pace_on_each_route():
    """12 SUBSCRIBE requests on a spot connection (5 a second allowed) reach a local venue that answers
    each; sent at the venue's pace they take at least 11/5 s, and every one is answered."""
    import orjson
    import websockets
    from tickray.stream.connection import Connection
    from tickray.stream.context import ConnectorContext, ConnectorOptions
    from tickray.stream.telemetry import StreamMetrics

    got: list[dict] = []

    async def venue(ws) -> None:
        async for text in ws:
            req = orjson.loads(text)
            got.append(req)
            await ws.send(orjson.dumps({"result": None, "id": req["id"]}).decode())

    async def main() -> tuple[list, float]:
        async with websockets.serve(venue, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            ctx = ConnectorContext(ConnectorOptions(venue="spot"), f"ws://127.0.0.1:{port}", "http://127.0.0.1:9",
                                   BINANCE_STREAM_MARKETS["spot"], streams=["btcusdt@trade"])
            ctx.metrics = StreamMetrics()
            conn = Connection(ctx)
            reader = asyncio.get_running_loop().create_task(conn.read())

            async def hand_answers() -> None:  # the dispatcher's part: answers go back to their request
                while True:
                    conn.answered(orjson.loads((await conn.take())[0]))

            answering = asyncio.get_running_loop().create_task(hand_answers())
            while not conn.connected:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            answers = await asyncio.gather(*(conn.request("SUBSCRIBE", [f"s{i}usdt@trade"]) for i in range(12)))
            took = time.monotonic() - t0
            reader.cancel()
            answering.cancel()
            return answers, took

    answers, took = asyncio.run(main())
    assert sorted(a["id"] for a in answers) == list(range(1, 13)) and len(got) == 12
    assert took >= 11 / 5 - 0.01, took
