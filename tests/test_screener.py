"""The screener over the real 2026-02 klines of DOT, LINK and LTC, through the bar cache."""

import csv
import io
import zipfile
from datetime import UTC, datetime

import numpy as np
import pytest
import ta
from tickray.bars.build import read_lake_bars
from tickray.bars.cache import BarCache
from tickray.bars.screener import screen
from tickray.cli import main


@pytest.fixture(scope="module")
def universe_lake(ray_cluster, shared_data, tmp_path_factory):
    from tickray.ingest.job import ingest

    root = tmp_path_factory.mktemp("screen") / "lake"
    # 2026-02 of three symbols; an older month of DOT (a past window); ALGO, whose data stops in 2024-09
    klines = shared_data / "binance" / "klines"
    ingest([*sorted(klines.glob("*-2026-02.zip")), klines / "DOTUSDT-1m-2024-11.zip",
            shared_data / "binance" / "um_klines_1m" / "ALGOUSDT-1m-2024-09.zip"], root)
    return root, ["DOTUSDT", "LINKUSDT", "LTCUSDT"]


def test_movers_rsi_and_volume_spikes_rank_like_a_direct_computation(universe_lake):
    root, symbols = universe_lake
    cache = BarCache(root, None)
    movers = screen(cache, symbols, "1h", 14, "movers")
    end, start = movers.attrs["end_ns"], movers.attrs["start_ns"]
    direct = {}
    for s in symbols:
        b = read_lake_bars(root, [s], "1h", start, end).to_pandas()
        direct[s] = (b["close"].iloc[-1] / b["open"].iloc[0] - 1,
                     ta.momentum.RSIIndicator(b["close"], 14).rsi().iloc[-1])
    assert list(movers["symbol"]) == sorted(symbols, key=lambda s: -abs(direct[s][0]))
    np.testing.assert_allclose(movers.set_index("symbol").loc[symbols, "return_pct"],
                               [direct[s][0] * 100 for s in symbols], rtol=1e-12)
    by_rsi = screen(cache, symbols, "1h", 14, "rsi")
    assert list(by_rsi["symbol"]) == sorted(symbols, key=lambda s: -abs(direct[s][1] - 50))
    np.testing.assert_allclose(by_rsi.set_index("symbol").loc[symbols, "rsi_14"], [direct[s][1] for s in symbols],
                               rtol=1e-9)
    spikes = screen(cache, symbols, "1h", 14, "volume_spike")
    assert (spikes["score"].diff().dropna() <= 0).all() and len(spikes) == 3
    # a repeated screener session is answered from memory
    before = cache.metrics()
    screen(cache, symbols, "1h", 14, "movers")
    after = cache.metrics()
    assert after["lake"] == before["lake"] and after["l1"] > before["l1"]


def test_screen_cli(universe_lake, capsys):
    root, _ = universe_lake
    assert main(["screen", "--lake", str(root), "--no-redis", "--timeframe", "4h", "--days", "10",
                 "--rule", "rsi"]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("DOTUSDT", "LINKUSDT", "LTCUSDT", "rsi_14", "bar cache:"))
    assert main(["screen", "--lake", str(root), "--no-redis", "--rule", "moon"]) != 0
    assert "unknown screener rule 'moon'" in capsys.readouterr().err


def _kline_rows(path) -> list[tuple[int, float, float]]:
    """(open time ms, open, close) of a Binance kline zip, read with the csv module."""
    with zipfile.ZipFile(path) as z:
        text = z.read(z.namelist()[0]).decode()
    return [(int(r[0]), float(r[1]), float(r[4])) for r in csv.reader(io.StringIO(text)) if r and r[0].isdigit()]


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def test_a_past_window_is_screened_and_symbols_outside_it_are_named(universe_lake, shared_data, capsys):
    """--end inside a lake that also holds later data; by default each symbol's own newest bar ends its window."""
    root, _ = universe_lake
    start, end = "2024-11-08", "2024-11-15"
    assert main(["screen", "--lake", str(root), "--no-redis", "--timeframe", "1h", "--start", start, "--end", end,
                 "--rule", "movers"]) == 0
    out = capsys.readouterr().out
    assert f"movers on 1h bars from {start} to {end}" in out
    assert "left out LINKUSDT: no bars in the window (the lake's 1m bars of LINKUSDT cover 2026-02-01 to " in out
    assert "left out ALGOUSDT: no bars in the window" in out and "left out LTCUSDT: no bars in the window" in out
    table = screen(BarCache(root, None), ["DOTUSDT"], "1h", 0, "movers", end_ns=_ms(end) * 10**6,
                   start_ns=_ms(start) * 10**6)
    rows = [r for r in _kline_rows(shared_data / "binance" / "klines" / "DOTUSDT-1m-2024-11.zip")
            if _ms(start) <= r[0] < _ms(end)]
    assert table["bars"].tolist() == [7 * 24]
    np.testing.assert_allclose(table["return_pct"], [(rows[-1][2] / rows[0][1] - 1) * 100], rtol=1e-12)

    assert main(["screen", "--lake", str(root), "--no-redis", "--timeframe", "1h", "--days", "3"]) == 0
    out = capsys.readouterr().out
    algo = _kline_rows(shared_data / "binance" / "um_klines_1m" / "ALGOUSDT-1m-2024-09.zip")
    algo_end = datetime.fromtimestamp(algo[-1][0] / 1000 + 60, UTC).strftime("%Y-%m-%d")
    assert "over each symbol's last 3 days" in out and "until" in out
    line = next(x for x in out.splitlines() if x.lstrip().startswith("ALGOUSDT"))
    assert algo_end in line  # screened over its own last days, not dropped
