"""The layered bar cache against a real redis-server and a lake of real klines."""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
import redis
from tickray.bars.build import bars_dataset, read_lake_bars
from tickray.bars.cache import BarCache
from tickray.cli import main
from tickray.ops.stack import redis_client

DAY = 86_400 * 10**9


@pytest.fixture(scope="module")
def kline_lake(ray_cluster, shared_data, tmp_path_factory):
    from tickray.ingest.job import ingest

    files = sorted((shared_data / "binance" / "klines").glob("*.zip"))[:2]
    root = tmp_path_factory.mktemp("bars") / "lake"
    ingest(files, root)
    symbols = sorted({f.name.split("-")[0] for f in files})
    t = read_lake_bars(root, symbols, "1d", 0, 2**62)
    start = pc.min(pc.cast(t["ts"], "int64")).as_py()
    return root, symbols, start


def _fresh(settings, **kw):
    r = redis_client(settings)
    for k in r.scan_iter("tickray:bars:*"):
        r.delete(k)
    return r


def test_layers_fill_and_answer_in_turn(kline_lake, settings):
    root, symbols, start = kline_lake
    r = _fresh(settings)
    end = start + 10 * DAY
    want = read_lake_bars(root, symbols, "1h", start, end)
    a = BarCache(root, r)
    assert a.get_bars(symbols, "1h", start, end).equals(want)
    m = a.metrics()
    # cold: 1h from 1m from the lake (a day of minutes per 1h chunk)
    assert m["l1"] == m["l2"] == 0 and m["inputs_lake"] == m["resampled"] > 0
    assert a.get_bars(symbols, "1h", start, end).equals(want)
    assert a.metrics()["l1"] == m["resampled"]  # warm in this process
    b = BarCache(root, r)  # another process of the cluster: empty memory, shared Redis
    assert b.get_bars(symbols, "1h", start, end).equals(want)
    assert b.metrics()["l2"] == m["resampled"] and b.metrics()["lake"] == 0
    assert all(r.ttl(k) > 0 for k in r.scan_iter("tickray:bars:*"))


def test_higher_timeframes_come_from_cached_minutes(kline_lake, settings):
    root, symbols, start = kline_lake
    r = _fresh(settings)
    cache = BarCache(root, r)
    end = start + 3 * DAY
    cache.get_bars(symbols, "1m", start, end)
    from_lake = cache.metrics()["lake"]
    for tf in ("15m", "4h", "7m"):
        assert cache.get_bars(symbols, tf, start, end).equals(read_lake_bars(root, symbols, tf, start, end)), tf
    m = cache.metrics()  # built from the 1m chunks in memory: the lake was read once, for the 1m request
    assert m["resampled"] > 0 and m["lake"] == from_lake and m["inputs_l1"] > 0
    assert m["inputs_lake"] <= 2 * len(symbols)  # 7m chunks straddle days: a day past the range


def test_memory_is_bounded_in_bytes(kline_lake, settings):
    root, symbols, start = kline_lake
    cache = BarCache(root, None, l1_max_bytes=300_000)
    cache.get_bars(symbols, "1m", start, start + 5 * DAY)
    m = cache.metrics()
    assert m["l1_bytes"] <= 300_000 and m["l1_evictions"] > 0


def test_redis_down_falls_back_and_counts(kline_lake, caplog):
    root, symbols, start = kline_lake
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    cache = BarCache(root, dead)
    got = cache.get_bars(symbols, "1h", start, start + 2 * DAY)
    assert got.equals(read_lake_bars(root, symbols, "1h", start, start + 2 * DAY))
    assert cache.metrics()["l2_errors"] == 1  # then left alone for l2_retry_s, not retried per chunk
    assert "Redis read failed" in caplog.text


def test_a_chunk_still_being_written_is_cached_briefly(kline_lake, settings):
    root, symbols, _ = kline_lake
    r = _fresh(settings)
    last = read_lake_bars(root, symbols[:1], "1m", 0, 2**62)
    end = pc.max(pc.cast(last["ts"], "int64")).as_py()
    cache = BarCache(root, r, open_ttl_s=30)
    cache.get_bars(symbols[:1], "1h", end - DAY, end + 3600 * 10**9)  # the range reaches past the data
    ttls = sorted(r.ttl(k) for k in r.scan_iter(f"tickray:bars:{symbols[0]}:60m:*"))
    assert ttls[0] <= 30 < ttls[-1]  # the open chunk briefly, the closed one for the timeframe's TTL


def test_minutes_read_for_one_timeframe_build_the_next_from_memory(kline_lake):
    root, symbols, start = kline_lake
    cache = BarCache(root, None)
    cache.get_bars(symbols, "1h", start, start + 3 * DAY)
    read = cache.metrics()["inputs_lake"]
    assert cache.get_bars(symbols, "4h", start, start + 3 * DAY).equals(
        read_lake_bars(root, symbols, "4h", start, start + 3 * DAY))
    m = cache.metrics()
    assert m["inputs_lake"] == read > 0 and m["inputs_l1"] == read  # spare minutes, kept while there was room
    small = BarCache(root, None, l1_max_bytes=1)  # no room: nothing asked for is evicted for them
    small.get_bars(symbols, "1h", start, start + 3 * DAY)
    assert small.metrics()["l1_evictions"] == len(symbols) * 3 - 1


def test_big_ranges_resample_with_ray_data(kline_lake, tmp_path):
    root, symbols, start = kline_lake
    end = start + 45 * DAY  # more than one task's month per symbol
    ds = bars_dataset(root, symbols, "4h", start, end)
    got = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    want = read_lake_bars(root, symbols, "4h", start, end)
    assert ds.num_blocks() >= 2 * len(symbols)
    assert got.sort_by([("symbol", "ascending"), ("ts", "ascending")]).equals(want)
    code = main(["bars", "--symbols", ",".join(symbols), "--timeframe", "4h", "--lake", str(root), "--ray",
                 "--start", "2023-02-01", "--end", "2026-03-01", "--out", str(tmp_path / "out")])
    assert code == 0 and pq.read_table(tmp_path / "out").num_rows == read_lake_bars(
        root, symbols, "4h", 0, 2**62).num_rows
