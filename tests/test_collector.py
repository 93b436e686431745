"""The REST kline collector against a local venue that serves the real kline files over HTTP."""

import asyncio

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tickray import lake
from tickray.bars.build import MINUTE_NS, lake_bars, resample
from tickray.bars.cache import BarCache
from tickray.bars.collector import Collector, VenueBanned, venue
from tickray.cli import main
from tickray.sim.klines import KlineVenue
from tickray.sources.binance import read_klines

DAY = 1440 * MINUTE_NS


@pytest.fixture(scope="module")
def klines(shared_data):
    t = read_klines(shared_data / "binance" / "klines" / "LINKUSDT-1m-2026-02.zip")
    return t, pc.min(pc.cast(t["ts"], pa.int64())).as_py()


def _venue_rows(bars: pa.Table, lo: int, hi: int) -> pa.Table:
    ts = pc.cast(bars["ts"], pa.int64())
    return bars.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))


def _asked(v: KlineVenue) -> list[tuple[int, int]]:
    """Minute ranges of the Binance requests the venue answered."""
    return [(int(r["startTime"]) // 60_000, int(r["endTime"]) // 60_000 + 1) for r in v.requests if r["status"] == 200]


def test_only_missing_minutes_are_asked_for_in_limit_sized_requests_and_never_twice(klines, tmp_path):
    bars, t0 = klines
    with KlineVenue(bars) as v:
        c = Collector(tmp_path, venue("binance-usdm", v.url))
        c.fill([("LINKUSDT", t0 + 600 * MINUTE_NS, t0 + 900 * MINUTE_NS)])  # a piece of day 1 first
        first = len(v.requests)
        report = c.fill([("LINKUSDT", t0, t0 + 3 * DAY)])
        again = c.fill([("LINKUSDT", t0, t0 + 3 * DAY), ("linkusdt", t0 + DAY, t0 + 2 * DAY)])
        asked = _asked(v)
    assert first == 1 and report.requests == 4 and again.requests == 0  # 600 before, 3,420 after: 1 + 3
    assert all(int(r["limit"]) <= 1500 for r in v.requests)
    minutes = np.concatenate([np.arange(a, b) for a, b in asked])
    assert np.unique(minutes).size == minutes.size == 3 * 1440  # every minute asked once, none twice
    got = lake_bars(tmp_path, ["LINKUSDT"], t0, t0 + 3 * DAY)
    assert got.equals(_venue_rows(bars, t0, t0 + 3 * DAY))  # to the last digit, in the lake's layout
    assert [p for p in lake.partitions(tmp_path, "bars_1m")] == [
        ("2026-02-01", "LINKUSDT"), ("2026-02-02", "LINKUSDT"), ("2026-02-03", "LINKUSDT")]


def test_upbit_dialect_pages_200_backwards_and_leaves_what_it_lacks_null(klines, tmp_path):
    bars, t0 = klines
    with KlineVenue(bars, weight_limit=10, window_s=1.0) as v:
        report = Collector(tmp_path, venue("upbit", v.url)).fill([("LINKUSDT", t0, t0 + DAY)])
    assert report.requests == 8 and all(int(r["count"]) <= 200 for r in v.requests)
    got = lake_bars(tmp_path, ["LINKUSDT"], t0, t0 + DAY)
    want = _venue_rows(bars, t0, t0 + DAY)
    for col in ("ts", "open", "high", "low", "close", "volume", "quote_volume"):
        assert got[col].equals(want[col]), col
    assert got["trades"].null_count == got["buy_volume"].null_count == got.num_rows  # not invented


def test_rate_limits_are_kept_and_429_pauses_everyone(klines, tmp_path):
    bars, t0 = klines
    wants = [("LINKUSDT", t0, t0 + 4 * DAY)]  # 4 requests of weight 10
    with KlineVenue(bars, weight_limit=20, window_s=1.0) as v:  # a client that knows the budget: no 429
        polite = Collector(tmp_path / "a", venue("binance-usdm", v.url, weight_limit=20, window_s=1.0)).fill(wants)
    assert polite.rate_limited == 0 and {r["status"] for r in v.requests} == {200}
    with KlineVenue(bars, weight_limit=20, window_s=1.0) as v:  # one that does not: told by 429s, no ban
        told = Collector(tmp_path / "b", venue("binance-usdm", v.url, window_s=1.0)).fill(wants)
    assert told.rate_limited > 0 and 418 not in {r["status"] for r in v.requests}
    assert told.rows == polite.rows == 4 * 1440


def test_collectors_share_the_venues_budget_through_redis(klines, tmp_path, redis_settings):
    """Two collectors (two lakes, as two processes would) fill at once against a venue allowing 20 a
    second, each asking 4 requests of weight 10: through the budget they share in Redis, the venue never
    answers 429, where each alone within its own budget would together send twice the limit."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    bars, t0 = klines
    wants = [("LINKUSDT", t0, t0 + 4 * DAY)]
    with KlineVenue(bars, weight_limit=20, window_s=1.0) as v:
        own = dataclasses.replace(venue("binance-usdm", v.url, weight_limit=20, window_s=1.0),
                                  name=f"binance-usdm-{tmp_path.name}")  # a budget of its own in the session's Redis
        collectors = [Collector(tmp_path / lake_dir, own, redis_url=redis_settings.redis_url) for lake_dir in ("a", "b")]
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda c: c.fill(wants), collectors))
    assert [r.rows for r in reports] == [4 * 1440] * 2
    assert {r["status"] for r in v.requests} == {200} and len(v.requests) == 8


def test_weight_sent_at_a_window_edge_counts_in_the_next_window_too(monkeypatch):
    """A request sent 50 ms before a 1-s window ends may reach the venue in the next window, where the venue
    counts it; one sent mid-window does not."""
    from tickray.market import budget as budgets

    now = [100.95]
    monkeypatch.setattr(budgets.time, "time", lambda: now[0])
    budget = budgets.LocalBudget(20, window_s=1.0)
    asyncio.run(budget.take(10))
    now[0] = 101.5
    asyncio.run(budget.take(5))
    assert budget.used == 15  # the edge request's 10, counted here too, and this one's 5
    now[0] = 102.2
    asyncio.run(budget.take(1))
    assert budget.used == 1  # nothing from mid-window 101 carried


def test_a_ban_stops_the_collector_and_keeps_the_ledger_clean(klines, tmp_path):
    bars, t0 = klines
    with KlineVenue(bars, weight_limit=1, window_s=60.0, ban_after=2) as v:
        for _ in range(4):  # someone on this IP ignores the 429s
            httpx.get(f"{v.url}/fapi/v1/klines", params={"symbol": "LINKUSDT", "interval": "1m", "limit": 1})
        c = Collector(tmp_path, venue("binance-usdm", v.url))
        with pytest.raises(VenueBanned, match=r"binance-usdm banned this client \(HTTP 418\)"):
            c.fill([("LINKUSDT", t0, t0 + DAY)])
        assert c.total.requests == 1  # stopped at the first 418
    assert not (tmp_path / "bars_1m").exists()
    assert (tmp_path / "_collector" / "binance-usdm.json").read_text() == "{}"  # nothing marked as asked


def test_server_errors_are_retried_with_backoff(klines, tmp_path):
    bars, t0 = klines
    with KlineVenue(bars, fail_next=3) as v:
        report = Collector(tmp_path, venue("binance-usdm", v.url, backoff_s=0.01)).fill([("LINKUSDT", t0, t0 + DAY)])
    assert report.retries == 3 and report.rows == 1440
    assert [r["status"] for r in v.requests] == [503, 503, 503, 200]


def test_venue_gaps_duplicates_and_bad_rows_are_reported_not_hidden(klines, tmp_path):
    bars, t0 = klines
    day = _venue_rows(bars, t0, t0 + DAY)
    keep = np.ones(day.num_rows, bool)
    keep[100:110] = False  # the venue lost ten minutes...
    high = day["high"].to_numpy().copy()
    high[200] = 0.5  # ...serves one bar with a high below its low...
    served = day.set_column(day.schema.get_field_index("high"), "high", pa.array(high)).filter(pa.array(keep))
    served = pa.concat_tables([served, day.slice(300, 2)])  # ...and two bars twice
    with KlineVenue(served) as v:
        c = Collector(tmp_path, venue("binance-usdm", v.url))
        report = c.fill([("LINKUSDT", t0, t0 + DAY)])
        assert c.fill([("LINKUSDT", t0, t0 + DAY)]).requests == 0  # the gap is not asked for again
    assert report.gaps == [("LINKUSDT", t0 + 100 * MINUTE_NS, t0 + 109 * MINUTE_NS)]
    assert report.duplicates == 2 and report.quarantined == {"high below low": 1}
    got = lake_bars(tmp_path, ["LINKUSDT"], t0, t0 + DAY)
    assert got.num_rows == 1440 - 10 - 1  # never interpolated
    q = lake.read_partition(tmp_path, "quarantine/bars_1m", "2026-02-01", "LINKUSDT")
    assert q["reason"].to_pylist() == ["high below low"] and q["source"][0].as_py() == "binance-usdm REST"


def test_the_minute_still_running_is_not_asked_for(klines, tmp_path):
    bars, t0 = klines
    now_s = (t0 + 100 * MINUTE_NS) / 1e9 + 30  # half way through minute 100
    with KlineVenue(bars) as v:
        report = Collector(tmp_path, venue("binance-usdm", v.url), clock=lambda: now_s).fill(
            [("LINKUSDT", t0, t0 + DAY)])
    assert report.rows == 100 and _asked(v) == [(t0 // MINUTE_NS, t0 // MINUTE_NS + 100)]


def test_the_bar_cache_falls_through_to_the_venue(klines, tmp_path, settings):
    bars, t0 = klines
    with KlineVenue(bars) as v:
        cache = BarCache(tmp_path, None, collector=Collector(tmp_path, venue("binance-usdm", v.url)))
        got = cache.get_bars(["LINKUSDT"], "4h", t0, t0 + 5 * DAY)
        assert got.equals(resample(_venue_rows(bars, t0, t0 + 5 * DAY), 240))
        assert cache.metrics()["venue_requests"] == 5  # one request per day of minutes, in one batch
        BarCache(tmp_path, None, collector=cache.collector).get_bars(["LINKUSDT"], "1h", t0, t0 + 5 * DAY)
        assert cache.metrics()["venue_requests"] == 5  # the lake has them now
        code = main(["bars", "--symbols", "LINKUSDT", "--timeframe", "1d", "--start", "2026-02-01",
                     "--end", "2026-02-11", "--lake", str(tmp_path), "--no-redis", "--venue", "binance-usdm",
                     "--venue-url", v.url, "--out", str(tmp_path / "d.parquet")])
    assert code == 0 and pa.parquet.read_table(tmp_path / "d.parquet").num_rows == 10
