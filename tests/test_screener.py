"""The screener over the real 2026-02 klines of DOT, LINK and LTC, through the bar cache."""

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
    ingest(sorted((shared_data / "binance" / "klines").glob("*-2026-02.zip")), root)
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
