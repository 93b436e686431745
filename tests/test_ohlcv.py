"""Candles as users hold them: the real Binance 1m klines re-written here as plain OHLCV Parquet, ccxt CSV,
freqtrade JSON and Feather, ISO-timed CSV and gzipped JSON records; each must land as the klines' own rows
(read here with the csv module), the columns such files lack null."""

import csv
import gzip
import io
import json
import zipfile
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import feather
from tickray import lake
from tickray.ingest.job import ingest

OHLCV = ("open", "high", "low", "close", "volume")


def _klines(path) -> list[tuple]:
    """(open_time ms, open, high, low, close, volume) per row of a Binance kline zip."""
    with zipfile.ZipFile(path) as z:
        text = z.read(z.namelist()[0]).decode()
    rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].isdigit()]
    return [(int(r[0]), *(float(x) for x in r[1:6])) for r in rows]


def _ms_of(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_plain_candles_in_every_shape_land_as_the_klines_rows(ray_cluster, shared_data, tmp_path):
    k = shared_data / "binance" / "klines"
    dot24, link23 = _klines(k / "DOTUSDT-1m-2024-11.zip"), _klines(k / "LINKUSDT-1m-2023-02.zip")
    dot25, link26 = _klines(k / "DOTUSDT-1m-2025-11.zip"), _klines(k / "LINKUSDT-1m-2026-02.zip")
    dot26, ltc26 = _klines(k / "DOTUSDT-1m-2026-02.zip"), _klines(k / "LTCUSDT-1m-2026-02.zip")
    algo23 = _klines(shared_data / "binance" / "um_klines_1m" / "ALGOUSDT-1m-2023-02.zip")
    inp = tmp_path / "in"
    (inp / "binance").mkdir(parents=True)
    # one Parquet file of two symbols, times in ms, as most people keep candles
    both = [(r, "DOTUSDT") for r in dot24] + [(r, "LINKUSDT") for r in link23]
    pq.write_table(pa.table({"ts": [r[0] for r, _ in both], **{c: [r[i + 1] for r, _ in both] for i, c in enumerate(OHLCV)},
                             "symbol": [s for _, s in both]}), inp / "candles.parquet")
    # freqtrade: spot JSON, futures Feather with its `date` column
    (inp / "binance" / "DOT_USDT-1m.json").write_bytes(json.dumps([list(r) for r in dot25]).encode())
    feather.write_feather(pa.table({"date": pa.array([r[0] for r in ltc26], pa.timestamp("ms", tz="UTC")),
                                    **{c: [r[i + 1] for r in ltc26] for i, c in enumerate(OHLCV)}}),
                          inp / "binance" / "LTC_USDT_USDT-1m-futures.feather")
    # ccxt's CSV (seconds here), symbol from the file name; ISO times with a `pair` column
    (inp / "LINKUSDT_ccxt.csv.gz").write_bytes(gzip.compress(("timestamp,open,high,low,close,volume\n" + "".join(
        f"{r[0] // 1000},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}\n" for r in link26)).encode()))
    (inp / "export.csv").write_text("date,pair,open,high,low,close,volume\n" + "".join(
        f"{_iso(r[0])},DOT/USDT,{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}\n" for r in dot26))
    # JSON records, gzipped, with a `time` column and the pair named in each record
    (inp / "algo.json.gz").write_bytes(gzip.compress(json.dumps(
        [{"time": r[0], "pair": "ALGO/USDT", **dict(zip(OHLCV, r[1:]))} for r in algo23]).encode()))
    # refused, naming why: weekly candles (by name), candles 90 s apart, and a CSV that is not candles at all
    (inp / "BTCUSDT-1w.csv").write_text("timestamp,open,high,low,close,volume\n1700000000000,1,1,1,1,1\n")
    (inp / "ETHUSDT.csv").write_text("timestamp,open,high,low,close,volume\n" + "".join(
        f"{1700000000000 + i * 90_000},1,1,1,1,1\n" for i in range(5)))
    (inp / "notes.csv").write_text("who,what\nme,nothing\n")

    report = ingest([inp], tmp_path / "lake")
    assert report.rows == {"bars_1m": sum(map(len, (dot24, link23, dot25, ltc26, link26, dot26, algo23)))}
    assert not report.quarantined["bars_1m"]
    refused = sorted((f.input, f.reason) for f in report.failed)
    assert [i for i, _ in refused] == [str(inp / "BTCUSDT-1w.csv"), str(inp / "ETHUSDT.csv")]
    weekly = "1w candles: bars of 10080 minutes: the lake keeps bars whose length divides a day"
    for (i, reason), said in zip(refused, (weekly, "candles 90 s apart: the lake keeps bars of whole minutes")):
        assert reason.startswith(f"{i}: {said}"), reason
    assert any(s.endswith("notes.csv (no known format)") for s in report.skipped)

    for symbol, rows in (("DOTUSDT", dot24), ("LINKUSDT", link23), ("DOTUSDT", dot25), ("LTCUSDT", ltc26),
                         ("LINKUSDT", link26), ("DOTUSDT", dot26), ("ALGOUSDT", algo23)):
        by_day: dict[str, list] = {}
        for r in rows:
            by_day.setdefault(datetime.fromtimestamp(r[0] / 1000, UTC).date().isoformat(), []).append(r)
        for day, want in by_day.items():
            got = lake.read_partition(tmp_path / "lake", "bars_1m", day, symbol)
            assert [(int(t.timestamp() * 1000), *v)
                    for t, *v in zip(*(got[c].to_pylist() for c in ("ts", *OHLCV)))] == want, (symbol, day)
            for absent in ("quote_volume", "trades", "vwap", "buy_volume"):
                assert got[absent].null_count == got.num_rows  # not in such files: null, never invented


def _longer(rows: list[tuple], minutes: int) -> list[tuple]:
    """Candles of ``minutes`` from 1m ones, by hand: first open, highest high, lowest low, last close, summed
    volume, each starting on a multiple of its length (UTC)."""
    out: dict[int, list] = {}
    for t, o, h, lo, c, v in rows:
        start = t - t % (minutes * 60_000)
        if start not in out:
            out[start] = [start, o, h, lo, c, 0.0, 0]
        bar = out[start]
        bar[2], bar[3], bar[4], bar[5], bar[6] = max(bar[2], h), min(bar[3], lo), c, bar[5] + v, bar[6] + 1
    return [tuple(b[:6]) for b in out.values() if b[6] == minutes]  # whole ones only


def _as_table(bars) -> list[tuple]:
    return [(int(t.timestamp() * 1000), *v) for t, *v in zip(*(bars[c].to_pylist() for c in ("ts", *OHLCV)))]


def _same(got: list[tuple], want: list[tuple]) -> None:
    assert [g[:5] for g in got] == [w[:5] for w in want]
    assert all(abs(g[5] - w[5]) <= 1e-9 * max(1.0, abs(w[5])) for g, w in zip(got, want))  # sums: order differs


def test_longer_candles_land_as_bars_of_their_length_and_build_only_longer_ones(ray_cluster, shared_data, tmp_path,
                                                                              capsys):
    """Real 1m klines made into 1h freqtrade JSON, a Binance 1h kline zip and 15-minute Parquet (told by its
    spacing) by hand: they land in bars_1h and bars_15m, none in bars_1m; 1h and 4h bars read back from them
    equal the same bars made by hand from the minutes; 15m bars of an hourly-only symbol are refused, and the
    screener says why it leaves such a symbol out."""
    from tickray.bars.build import TimeframeError, read_lake_bars
    from tickray.bars.cache import BarCache
    from tickray.bars.screener import screen
    from tickray.cli import main

    k = shared_data / "binance" / "klines"
    dot, link, ltc = (_klines(k / f"{s}-1m-2026-02.zip") for s in ("DOTUSDT", "LINKUSDT", "LTCUSDT"))
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "DOT_USDT-1h.json").write_bytes(json.dumps([list(r) for r in _longer(dot, 60)]).encode())
    with zipfile.ZipFile(inp / "LINKUSDT-1h-2026-02.zip", "w") as z:  # Binance's kline CSV, 12 columns
        z.writestr("LINKUSDT-1h-2026-02.csv", "".join(f"{t},{o},{h},{lo},{c},{v},{t + 3_599_999},0,0,0,0,0\n"
                                                      for t, o, h, lo, c, v in _longer(link, 60)))
    quarter = _longer(ltc, 15)
    pq.write_table(pa.table({"open_time": [r[0] for r in quarter], **{c: [r[i + 1] for r in quarter]
                                                                       for i, c in enumerate(OHLCV)},
                             "symbol": ["LTCUSDT"] * len(quarter)}), inp / "ltc.parquet")
    lake_root = tmp_path / "lake"
    report = ingest([inp], lake_root)
    assert not report.failed
    assert report.rows == {"bars_1h": len(_longer(dot, 60)) + len(_longer(link, 60)), "bars_15m": len(quarter)}
    assert not (lake_root / "bars_1m").exists()

    start, end = _ms_of("2026-02-02") * 10**6, _ms_of("2026-02-20") * 10**6
    in_window = lambda rows: [r for r in rows if start <= r[0] * 10**6 < end]
    four = read_lake_bars(lake_root, ["DOTUSDT", "LTCUSDT"], "4h", start, end)
    for symbol, minutes in (("DOTUSDT", dot), ("LTCUSDT", ltc)):
        got = four.filter(pa.compute.equal(four["symbol"], symbol))
        complete = got.filter(got["complete"])
        _same(_as_table(complete), in_window(_longer(minutes, 240)))
        assert set(complete["minutes"].to_pylist()) == {240}
    cache = BarCache(lake_root, None)
    hourly = cache.get_bars(["LINKUSDT", "LTCUSDT"], "1h", start, end)
    for symbol, minutes in (("LINKUSDT", link), ("LTCUSDT", ltc)):
        _same(_as_table(hourly.filter(pa.compute.equal(hourly["symbol"], symbol))), in_window(_longer(minutes, 60)))
    with pytest.raises(TimeframeError, match=r"DOTUSDT: the lake holds bars_1h only: 15-minute bars"):
        cache.get_bars(["DOTUSDT"], "15m", start, end)

    table = screen(cache, ["DOTUSDT", "LINKUSDT", "LTCUSDT"], "15m", 3, "movers")
    assert list(table["symbol"]) == ["LTCUSDT"]
    assert set(table.attrs["left_out"]) == {"DOTUSDT", "LINKUSDT"}
    assert "bars_1h only" in table.attrs["left_out"]["DOTUSDT"]
    assert main(["bars", "--symbols", "DOTUSDT", "--timeframe", "15m", "--start", "2026-02-02", "--end", "2026-02-03",
                 "--lake", str(lake_root), "--no-redis"]) == 2
    assert "DOTUSDT: the lake holds bars_1h only" in capsys.readouterr().err
