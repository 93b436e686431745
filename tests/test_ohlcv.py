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
    # refused, naming why: 5-minute candles (by name; by spacing), and a CSV that is not candles at all
    (inp / "BTCUSDT-5m.csv").write_text("timestamp,open,high,low,close,volume\n1700000000000,1,1,1,1,1\n")
    (inp / "ETHUSDT.csv").write_text("timestamp,open,high,low,close,volume\n" + "".join(
        f"{1700000000000 + i * 300_000},1,1,1,1,1\n" for i in range(5)))
    (inp / "notes.csv").write_text("who,what\nme,nothing\n")

    report = ingest([inp], tmp_path / "lake")
    assert report.rows == {"bars_1m": sum(map(len, (dot24, link23, dot25, ltc26, link26, dot26, algo23)))}
    assert not report.quarantined["bars_1m"]
    refused = sorted((f.input, f.reason) for f in report.failed)
    assert [i for i, _ in refused] == [str(inp / "BTCUSDT-5m.csv"), str(inp / "ETHUSDT.csv")]
    for (i, reason), said in zip(refused, ("5m", "300 s apart")):
        assert reason.startswith(f"{i}: {said} candles: the lake keeps 1-minute bars"), reason
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
