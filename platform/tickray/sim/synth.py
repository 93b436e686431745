"""A synthetic futures market written in the same formats as Binance's real files.

The latent state lives on a one-second grid:
- ``ofi``: an AR(1) order-flow imbalance. It tilts trade signs and top-of-book sizes (what a model can
  observe) and drifts the next seconds' mid-price (what it should predict): the OFI effect of
  Cont, Kukanov and Stoikov (2014), weak on purpose.
- ``vol``: log-volatility with clustering (AR(1) in log space), bumped by rare shocks (price jumps).
- trade intensity follows an intraday seasonality (peak at 14:00 UTC) and the volatility.

Trades are generated vectorised (>= 1M trades/s, see benchmarks/bench_generate.py). The order book is a
persistent price ladder whose top levels breathe with ``ofi``; its diffs carry Binance USD-M update ids
(U, u, pu) that chain exactly, so the same book code that rebuilds real captures rebuilds these.

Outputs under ``--out`` follow Binance's public-data layout: zips for aggTrades, 1m klines and
bookDepth (snap/set rows), and a WebSocket capture (``<recv_ts_ns> <json>`` lines, gzip) that carries one
REST depth snapshot line, like the hftbacktest captures.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv
from scipy.signal import lfilter

SECONDS_PER_DAY = 86_400
MS_PER_DAY = SECONDS_PER_DAY * 1000


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    price0: float
    tick: float
    price_decimals: int
    qty_decimals: int
    median_qty: float
    daily_vol: float


KNOWN_SPECS = {
    "BTCUSDT": SymbolSpec("BTCUSDT", 60_000.0, 0.5, 1, 3, 0.02, 0.02),
    "ETHUSDT": SymbolSpec("ETHUSDT", 3_000.0, 0.05, 2, 3, 0.3, 0.025),
    "SOLUSDT": SymbolSpec("SOLUSDT", 150.0, 0.01, 2, 0, 5.0, 0.03),
}


def spec_for(symbol: str) -> SymbolSpec:
    return KNOWN_SPECS.get(symbol.upper(), SymbolSpec(symbol.upper(), 100.0, 0.01, 2, 1, 10.0, 0.03))


@dataclass
class DayMarket:
    """One symbol-day: the latent one-second grid and the trades."""

    spec: SymbolSpec
    day_start_ms: int
    ofi: np.ndarray  # per second
    bid_tick: np.ndarray  # best bid in ticks, per second
    spread_ticks: np.ndarray  # per second
    # trades
    t_ms: np.ndarray
    price_tick: np.ndarray
    qty: np.ndarray
    is_buyer_maker: np.ndarray
    agg_id: np.ndarray
    first_id: np.ndarray
    last_id: np.ndarray


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary AR(1) with unit variance."""
    return lfilter([np.sqrt(1 - phi * phi)], [1.0, -phi], rng.standard_normal(n))


# How much of each second's return the lagged imbalance explains (weak on purpose); 0 makes a market that
# no model can predict, the null a leakage check needs.
SIGNAL = 0.2


def simulate_day(spec: SymbolSpec, day_start_ms: int, trades_per_day: int, rng: np.random.Generator,
                 id_base: int = 1_000_000_000, signal: float = SIGNAL) -> DayMarket:
    n = SECONDS_PER_DAY
    secs = np.arange(n)
    ofi = _ar1(rng, n, 0.9)
    logvol = 0.35 * _ar1(rng, n, 0.999)
    # Rare shocks: a jump and a volatility burst that decays over ~10 minutes.
    n_shocks = rng.poisson(2)
    shock_at = rng.integers(0, n, n_shocks)
    burst = np.zeros(n)
    burst[shock_at] = 1.5
    logvol += lfilter([1.0], [1.0, -0.998], burst)
    vol = np.exp(logvol)
    sigma = spec.daily_vol / np.sqrt(n) * vol
    if not 0 <= signal < 1:
        raise ValueError(f"signal must be in [0, 1), got {signal}")
    ret = sigma * (signal * np.roll(ofi, 1) + np.sqrt(1 - signal * signal) * rng.standard_normal(n))
    ret[shock_at] += rng.choice([-1.0, 1.0], n_shocks) * 25 * sigma[shock_at]
    mid = spec.price0 * np.exp(np.cumsum(ret))
    bid_tick = np.floor(mid / spec.tick).astype(np.int64)
    spread_ticks = 1 + (rng.random(n) < 0.05 * vol).astype(np.int64)

    # Trade counts: intraday seasonality (peak 14:00 UTC) times volatility.
    season = 1.0 + 0.6 * np.cos(2 * np.pi * (secs / n - 14 / 24))
    lam = season * np.sqrt(vol)
    lam *= trades_per_day / lam.sum()
    counts = rng.poisson(lam)
    sec_of_trade = np.repeat(secs, counts)
    m = sec_of_trade.size
    t_ms = day_start_ms + np.sort(sec_of_trade * 1000 + rng.integers(0, 1000, m))
    buy = rng.random(m) < 1.0 / (1.0 + np.exp(-1.2 * ofi[sec_of_trade]))
    large = rng.random(m) < 0.002
    qty = spec.median_qty * np.exp(rng.standard_normal(m) * 0.9) * np.where(large, 30.0, 1.0)
    lot = 10.0 ** -spec.qty_decimals
    qty = np.maximum(np.round(qty / lot) * lot, lot)
    # Buys lift the ask, sells hit the bid; large trades walk one or two levels further.
    walk = np.where(large, rng.integers(1, 3, m), 0)
    bid = bid_tick[sec_of_trade]
    price_tick = np.where(buy, bid + spread_ticks[sec_of_trade] + walk, bid - walk)
    fills = rng.integers(1, 4, m)
    last_id = id_base * 3 + np.cumsum(fills)
    return DayMarket(
        spec=spec, day_start_ms=day_start_ms, ofi=ofi, bid_tick=bid_tick, spread_ticks=spread_ticks,
        t_ms=t_ms, price_tick=price_tick, qty=qty, is_buyer_maker=~buy,
        agg_id=id_base + np.arange(m), first_id=last_id - fills + 1, last_id=last_id,
    )


# ------------------------------------------------------------------------------------------ order book


def _base_lots(price_ticks: np.ndarray, median_lots: float) -> np.ndarray:
    """Resting size at a price: stable over time (a hash of the price), so diffs stay small."""
    h = (price_ticks * 2654435761) % 1000
    return median_lots * (2.0 + h / 200.0)


@dataclass
class DepthEvent:
    E: int  # event time, ms
    U: int
    u: int
    pu: int
    bids: list[tuple[int, int]]  # (price in ticks, size in lots); size 0 removes the level
    asks: list[tuple[int, int]]


class BookSimulator:
    """Walks the one-second grid and emits Binance USD-M depth diffs with chained update ids.

    Sizes are whole lots. The book of every second is computed up front, vectorised; the walk only
    diffs consecutive books.
    """

    def __init__(self, market: DayMarket, levels: int, rng: np.random.Generator, first_update_id: int):
        self.m = market
        self.last_u = first_update_id
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        n = market.bid_tick.size
        depth = np.arange(levels)
        self.bid_px = market.bid_tick[:, None] - depth
        self.ask_px = (market.bid_tick + market.spread_ticks)[:, None] + depth
        median_lots = market.spec.median_qty * 10**market.spec.qty_decimals
        # The top three levels lean with the order flow: that is what makes the book informative.
        lean = np.zeros((n, levels))
        lean[:, :3] = 0.6 * market.ofi[:, None] + 0.25 * rng.standard_normal((n, 3))
        lean_ask = np.zeros((n, levels))
        lean_ask[:, :3] = -0.6 * market.ofi[:, None] + 0.25 * rng.standard_normal((n, 3))
        self.bid_lots = np.maximum(np.rint(_base_lots(self.bid_px, median_lots) * np.exp(lean)), 1).astype(np.int64)
        self.ask_lots = np.maximum(np.rint(_base_lots(self.ask_px, median_lots) * np.exp(lean_ask)), 1).astype(np.int64)
        self.id_steps = rng.integers(0, 40, n)
        self.delays = rng.integers(0, 50, n)

    @staticmethod
    def _diff(old: dict[int, int], new: dict[int, int]) -> list[tuple[int, int]]:
        out = [(p, q) for p, q in new.items() if old.get(p) != q]
        out += [(p, 0) for p in old if p not in new]
        return out

    def step(self, t: int) -> DepthEvent:
        bids = dict(zip(self.bid_px[t].tolist(), self.bid_lots[t].tolist()))
        asks = dict(zip(self.ask_px[t].tolist(), self.ask_lots[t].tolist()))
        db, da = self._diff(self.bids, bids), self._diff(self.asks, asks)
        self.bids, self.asks = bids, asks
        # Each event covers a run of exchange-internal update ids; pu is the previous event's u.
        U = self.last_u + 1
        u = U + int(self.id_steps[t])
        pu, self.last_u = self.last_u, u
        E = self.m.day_start_ms + t * 1000 + int(self.delays[t]) + 1  # T = E - 1 stays in second t
        return DepthEvent(E, U, u, pu, db, da)

    def top(self) -> tuple[tuple[int, int], tuple[int, int]]:
        b = max(self.bids)
        a = min(self.asks)
        return (b, self.bids[b]), (a, self.asks[a])


class _Formatter:
    """Price ticks and size lots to the venue's decimal strings, memoised (the same levels recur)."""

    def __init__(self, spec: SymbolSpec):
        self.spec = spec
        self._px: dict[int, str] = {}
        self._qty: dict[int, str] = {}

    def px(self, ticks: int) -> str:
        s = self._px.get(ticks)
        if s is None:
            s = self._px[ticks] = f"{ticks * self.spec.tick:.{self.spec.price_decimals}f}"
        return s

    def qty(self, lots: int) -> str:
        s = self._qty.get(lots)
        if s is None:
            s = self._qty[lots] = f"{lots / 10**self.spec.qty_decimals:.{self.spec.qty_decimals}f}"
        return s

    def levels(self, levels) -> list[list[str]]:
        return [[self.px(p), self.qty(q)] for p, q in levels]


# ------------------------------------------------------------------------------------------ writers


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def _zip_entry(inner_name: str) -> zipfile.ZipInfo:
    # A fixed entry time keeps the bytes identical for a seed.
    info = zipfile.ZipInfo(inner_name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    # Fast deflate. ZipFile applies its own level only to entries it names itself, and writing a
    # ZipInfo through ZipFile.open reads only this (CPython) attribute.
    info._compresslevel = 1
    return info


def _zip_csv(path: Path, inner_name: str, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr(_zip_entry(inner_name), content)
    tmp.replace(path)


def _fixed_decimal(units: np.ndarray, decimals: int) -> pa.Array:
    """Integers counted in 10**-decimals → fixed-decimal strings ("60001.50"), in Arrow's kernels."""
    if decimals == 0:
        return pc.cast(pa.array(units), pa.string())
    scale = 10**decimals
    whole = pc.cast(pa.array(units // scale), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(units % scale), pa.string()), decimals, "0")
    return pc.binary_join_element_wise(whole, frac, ".")


AGG_TRADES_HEADER = b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"


def _agg_trades_rows(m: DayMarket, rows: slice) -> bytes:
    s = m.spec
    price_units = np.rint(m.price_tick[rows] * s.tick * 10**s.price_decimals).astype(np.int64)
    qty_units = np.rint(m.qty[rows] * 10**s.qty_decimals).astype(np.int64)
    table = pa.table({
        "a": pa.array(m.agg_id[rows]), "p": _fixed_decimal(price_units, s.price_decimals),
        "q": _fixed_decimal(qty_units, s.qty_decimals), "f": pa.array(m.first_id[rows]),
        "l": pa.array(m.last_id[rows]), "T": pa.array(m.t_ms[rows]),
        "m": pc.if_else(pa.array(m.is_buyer_maker[rows]), "true", "false"),
    })
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue()


def write_agg_trades(m: DayMarket, path: Path, chunk: int = 262_144) -> None:
    """USD-M public-data aggTrades zip: header row, ms timestamps, is_buyer_maker as true/false.

    Rows are formatted in Arrow's kernels chunk by chunk while a second thread deflates the previous
    chunk: both release the GIL, so on two cores the file costs about the slower of the two.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    info = _zip_entry(path.with_suffix(".csv").name)
    with zipfile.ZipFile(tmp, "w") as z, z.open(info, "w", force_zip64=True) as f, \
            ThreadPoolExecutor(1) as deflate:
        pending = deflate.submit(f.write, AGG_TRADES_HEADER)
        for start in range(0, m.t_ms.size, chunk):
            rows = _agg_trades_rows(m, slice(start, start + chunk))
            pending.result()
            pending = deflate.submit(f.write, rows)
        pending.result()
    tmp.replace(path)


def klines_1m(m: DayMarket) -> dict[str, np.ndarray]:
    """1m OHLCV from the trades. A minute with no trade is a flat bar at the last close with zero
    volume, as Binance publishes it."""
    s = m.spec
    n_min = SECONDS_PER_DAY // 60
    minute = (m.t_ms - m.day_start_ms) // 60_000
    price = m.price_tick * s.tick
    counts = np.bincount(minute, minlength=n_min)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    idx = starts[has]
    o = np.full(n_min, np.nan)
    h = np.full(n_min, np.nan)
    lo = np.full(n_min, np.nan)
    c = np.full(n_min, np.nan)
    o[has] = price[idx]
    c[has] = price[idx + counts[has] - 1]
    h[has] = np.maximum.reduceat(price, idx)
    lo[has] = np.minimum.reduceat(price, idx)
    # Carry the last close into empty minutes (the first minute always opens at the first trade).
    last = np.maximum.accumulate(np.where(has, np.arange(n_min), -1))
    first_price = price[0] if price.size else s.price0
    carried = np.where(last >= 0, c[np.maximum(last, 0)], first_price)
    for arr in (o, h, lo, c):
        np.copyto(arr, carried, where=~has)
    buy = ~m.is_buyer_maker
    open_time = m.day_start_ms + np.arange(n_min) * 60_000
    return {
        "open_time": open_time, "open": o, "high": h, "low": lo, "close": c,
        "volume": np.bincount(minute, weights=m.qty, minlength=n_min),
        "close_time": open_time + 59_999,
        "quote_volume": np.bincount(minute, weights=m.qty * price, minlength=n_min),
        "count": counts,
        "taker_buy_volume": np.bincount(minute, weights=m.qty * buy, minlength=n_min),
        "taker_buy_quote_volume": np.bincount(minute, weights=m.qty * price * buy, minlength=n_min),
    }


def klines_csv(m: DayMarket) -> str:
    k = klines_1m(m)
    pd_, qd = m.spec.price_decimals, m.spec.qty_decimals
    lines = [("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
             "taker_buy_volume,taker_buy_quote_volume,ignore")]
    for i in range(k["open_time"].size):
        lines.append(
            f"{k['open_time'][i]},{k['open'][i]:.{pd_}f},{k['high'][i]:.{pd_}f},{k['low'][i]:.{pd_}f},"
            f"{k['close'][i]:.{pd_}f},{k['volume'][i]:.{qd}f},{k['close_time'][i]},"
            f"{k['quote_volume'][i]:.4f},{k['count'][i]},{k['taker_buy_volume'][i]:.{qd}f},"
            f"{k['taker_buy_quote_volume'][i]:.4f},0"
        )
    return "\n".join(lines) + "\n"


@dataclass
class GeneratedFiles:
    agg_trades: list[Path]
    klines: list[Path]
    book_depth: list[Path]
    ws_captures: list[Path]
    n_trades: int
    n_depth_events: int

    def all(self) -> list[Path]:
        return self.agg_trades + self.klines + self.book_depth + self.ws_captures


def generate(out: Path, symbols: list[str], days: int, seed: int, start: date = date(2024, 1, 1),
             trades_per_day: int = 200_000, levels: int = 10, capture_minutes: int = 10,
             snapshot_every_s: int = 3600, signal: float = SIGNAL) -> GeneratedFiles:
    """Write ``days`` days of a synthetic market for ``symbols`` under ``out``; deterministic for a seed
    (``signal``: see SIGNAL)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if not symbols:
        raise ValueError("at least one symbol is needed")
    out = Path(out)
    files = GeneratedFiles([], [], [], [], 0, 0)
    for si, symbol in enumerate(s.upper() for s in symbols):
        spec = spec_for(symbol)
        rng = np.random.default_rng([seed, si])
        update_id = 4_000_000_000_000 + si * 10**11
        price0 = spec.price0
        for d in range(days):
            day = start + timedelta(days=d)
            day_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
            spec_d = SymbolSpec(**{**spec.__dict__, "price0": price0})
            m = simulate_day(spec_d, day_ms, trades_per_day, rng, id_base=1_000_000_000 + d * 10**8, signal=signal)
            price0 = float(m.bid_tick[-1] * spec.tick)  # the next day continues from here
            tag = day.isoformat()
            p = out / "aggtrades" / f"{symbol}-aggTrades-{tag}.zip"
            write_agg_trades(m, p)
            files.agg_trades.append(p)
            p = out / "klines" / f"{symbol}-1m-{tag}.zip"
            _zip_csv(p, p.with_suffix(".csv").name, klines_csv(m))
            files.klines.append(p)
            depth_path, capture_path, update_id, n_ev = _write_book(
                out, m, rng, levels, update_id, capture_minutes if d == days - 1 else 0, snapshot_every_s)
            files.book_depth.append(depth_path)
            if capture_path:
                files.ws_captures.append(capture_path)
            files.n_trades += int(m.t_ms.size)
            files.n_depth_events += n_ev
    return files


def _write_book(out: Path, m: DayMarket, rng: np.random.Generator, levels: int, update_id: int,
                capture_minutes: int, snapshot_every_s: int) -> tuple[Path, Path | None, int, int]:
    """Walk the day's book; write the bookDepth zip and, for the last ``capture_minutes``, the capture."""
    s = m.spec
    sym = s.symbol
    book = BookSimulator(m, levels, rng, update_id)
    fmt = _Formatter(s)
    rows = ["symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu"]
    cap_start = SECONDS_PER_DAY - capture_minutes * 60 if capture_minutes else SECONDS_PER_DAY
    capture: list[tuple[int, bytes]] = []
    snapshot_after = cap_start + 3  # the REST snapshot is taken a few events into the capture
    for t in range(SECONDS_PER_DAY):
        ev = book.step(t)
        if t % snapshot_every_s == 0:
            head = f"{sym},{ev.E - 1},{ev.u},{ev.u},"
            for side, lv in (("b,snap,", book.bids.items()), ("a,snap,", book.asks.items())):
                rows.extend(f"{head}{side}{fmt.px(p)},{fmt.qty(q)},-1" for p, q in lv)
        else:
            head, tail = f"{sym},{ev.E - 1},{ev.U},{ev.u},", f",{ev.pu}"
            for side, lv in (("b,set,", ev.bids), ("a,set,", ev.asks)):
                rows.extend(f"{head}{side}{fmt.px(p)},{fmt.qty(q)}{tail}" for p, q in lv)
        if t >= cap_start:
            capture.extend(_capture_messages(book, ev, fmt, rng))
            if t == snapshot_after:
                snap = {
                    "lastUpdateId": ev.u, "E": ev.E + 200, "T": ev.E + 195,
                    "bids": fmt.levels(sorted(book.bids.items(), reverse=True)),
                    "asks": fmt.levels(sorted(book.asks.items())),
                }
                # The response arrives after a few more diffs: a client must buffer and replay them.
                capture.append(((ev.E + 2500) * 1_000_000 + 123_456, orjson.dumps(snap)))
    day = datetime.fromtimestamp(m.day_start_ms / 1000, UTC).date()
    depth_path = out / "depth" / f"{sym}-bookDepth-{day.isoformat()}.zip"
    _zip_csv(depth_path, depth_path.with_suffix(".csv").name, "\n".join(rows) + "\n")
    capture_path = None
    if capture:
        capture.extend(_trade_messages(m, cap_start, rng))
        capture.sort(key=lambda x: x[0])
        capture_path = out / "ws" / f"usdm_{sym.lower()}_{day.strftime('%Y%m%d')}.gz"
        capture_path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(capture_path, "wb", compresslevel=5, mtime=0) as f:
            for ts, line in capture:
                f.write(b"%d %s\n" % (ts, line))
    return depth_path, capture_path, book.last_u, SECONDS_PER_DAY


def _recv_ns(event_ms: int, rng: np.random.Generator) -> int:
    # Local receive time: a few milliseconds of network latency after the exchange's event time.
    return event_ms * 1_000_000 + int(rng.integers(1_000_000, 6_000_000))


def _capture_messages(book: BookSimulator, ev: DepthEvent, fmt: _Formatter,
                      rng: np.random.Generator) -> list[tuple[int, bytes]]:
    sym = fmt.spec.symbol
    low = sym.lower()
    depth = {"stream": f"{low}@depth@0ms", "data": {
        "e": "depthUpdate", "E": ev.E, "T": ev.E - 1, "s": sym, "U": ev.U, "u": ev.u, "pu": ev.pu,
        "b": fmt.levels(sorted(ev.bids)), "a": fmt.levels(sorted(ev.asks)),
    }}
    (bp, bq), (ap, aq) = book.top()
    ticker = {"stream": f"{low}@bookTicker", "data": {
        "e": "bookTicker", "u": ev.u, "s": sym, "b": fmt.px(bp), "B": fmt.qty(bq),
        "a": fmt.px(ap), "A": fmt.qty(aq), "T": ev.E - 1, "E": ev.E,
    }}
    recv = _recv_ns(ev.E, rng)
    return [(recv, orjson.dumps(depth)), (recv + 7_000, orjson.dumps(ticker))]


def _agg_trade_messages(m: DayMarket, sel: np.ndarray, rng: np.random.Generator) -> list[tuple[int, bytes]]:
    """@aggTrade messages for the trades ``sel`` picks, stamped with their receive times."""
    s = m.spec
    sym, low = s.symbol, s.symbol.lower()
    t_ms, price, qty = m.t_ms[sel], m.price_tick[sel] * s.tick, m.qty[sel]
    maker, a, f, last = m.is_buyer_maker[sel], m.agg_id[sel], m.first_id[sel], m.last_id[sel]
    # One connection delivers a stream in order: receive times are monotone within the stream.
    recv = np.maximum.accumulate((t_ms + 2) * 1_000_000 + rng.integers(1_000_000, 6_000_000, t_ms.size))
    out: list[tuple[int, bytes]] = []
    for i in range(t_ms.size):
        msg = {"stream": f"{low}@aggTrade", "data": {
            "e": "aggTrade", "E": int(t_ms[i]) + 2, "a": int(a[i]), "s": sym, "p": _fmt(price[i], s.price_decimals),
            "q": _fmt(qty[i], s.qty_decimals), "f": int(f[i]), "l": int(last[i]), "T": int(t_ms[i]),
            "m": bool(maker[i])}}
        out.append((int(recv[i]), orjson.dumps(msg)))
    return out


def _trade_messages(m: DayMarket, cap_start: int, rng: np.random.Generator) -> list[tuple[int, bytes]]:
    """@aggTrade for every trade in the capture window and @kline_1m updates once a second."""
    s = m.spec
    sym, low = s.symbol, s.symbol.lower()
    pdec, qdec = s.price_decimals, s.qty_decimals
    sel = m.t_ms >= m.day_start_ms + cap_start * 1000
    out = _agg_trade_messages(m, sel, rng)
    t_ms, price, qty, maker = m.t_ms[sel], m.price_tick[sel] * s.tick, m.qty[sel], m.is_buyer_maker[sel]
    k = klines_1m(m)
    first_min = cap_start // 60
    for mi in range(first_min, SECONDS_PER_DAY // 60):
        in_min = (t_ms >= k["open_time"][mi]) & (t_ms < k["open_time"][mi] + 60_000)
        for sec in range(60):
            upto = in_min & (t_ms < k["open_time"][mi] + (sec + 1) * 1000)
            closed = sec == 59
            if not closed and not upto.any():
                continue
            px, qx = price[upto], qty[upto]
            o = px[0] if px.size else k["open"][mi]
            c = px[-1] if px.size else k["close"][mi]
            E = int(k["open_time"][mi]) + (sec + 1) * 1000 - (1 if closed else 0)
            bq = qx[~maker[upto]].sum()
            msg = {"stream": f"{low}@kline_1m", "data": {"e": "kline", "E": E, "s": sym, "k": {
                "t": int(k["open_time"][mi]), "T": int(k["close_time"][mi]), "s": sym, "i": "1m",
                "o": _fmt(o, pdec), "c": _fmt(c, pdec),
                "h": _fmt(px.max() if px.size else o, pdec), "l": _fmt(px.min() if px.size else o, pdec),
                "v": _fmt(qx.sum(), qdec), "n": int(px.size), "x": closed,
                "q": _fmt((px * qx).sum(), 4), "V": _fmt(bq, qdec),
                "Q": _fmt((px * qx)[~maker[upto]].sum(), 4), "B": "0"}}}
            out.append((_recv_ns(E, rng), orjson.dumps(msg)))
    return out


def capture_days(out: Path, symbol: str, days: int, seed: int, start: date = date(2024, 1, 1), step_s: int = 4,
                 trades_per_day: int = 20_000, levels: int = 20, daily_snapshot: bool = False,
                 gap_day: int | None = None) -> list[Path]:
    """A recording session of one symbol in ``days`` daily capture files (``usdm_<symbol>_<YYYYMMDD>.gz``,
    hftbacktest's format: @depth, @bookTicker and @aggTrade), its book walked every ``step_s`` seconds
    without a break across midnight.

    The first day opens with a REST snapshot; with ``daily_snapshot`` every day does (a collector that
    snapshots as it opens each day's file), so each day can be rebuilt without the day before. On day
    ``gap_day`` (0-based) one diff at noon is lost and a snapshot arrives a minute later: a gap and its
    resync."""
    spec = spec_for(symbol)
    rng = np.random.default_rng(seed)
    fmt = _Formatter(spec)
    update_id, price0 = 4_000_000_000_000, spec.price0
    bids: dict[int, int] = {}
    asks: dict[int, int] = {}
    paths = []
    for d in range(days):
        day = start + timedelta(days=d)
        day_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        m = simulate_day(SymbolSpec(**{**spec.__dict__, "price0": price0}), day_ms, trades_per_day, rng,
                         id_base=1_000_000_000 + d * 10**8)
        price0 = float(m.bid_tick[-1] * spec.tick)
        book = BookSimulator(m, levels, rng, update_id)
        book.bids, book.asks = bids, asks  # the book goes on from yesterday's
        lines: list[tuple[int, bytes]] = []
        steps = range(0, SECONDS_PER_DAY, step_s)
        lost = len(steps) // 2 if d == gap_day else -1
        for i, t in enumerate(steps):
            ev = book.step(t)
            msgs = _capture_messages(book, ev, fmt, rng)
            if i == lost:
                msgs = msgs[1:]  # the diff never arrived
            lines += msgs
            if (i == 0 and (d == 0 or daily_snapshot)) or i == lost + 15:
                snap = {"lastUpdateId": ev.u, "E": ev.E, "T": ev.E - 1,
                        "bids": fmt.levels(sorted(book.bids.items(), reverse=True)),
                        "asks": fmt.levels(sorted(book.asks.items()))}
                # the day's opening snapshot is written first; the resync's arrives after its diff
                recv = msgs[0][0] - 1 if i == 0 else msgs[-1][0] + 1
                lines.append((recv, orjson.dumps(snap)))
        update_id, bids, asks = book.last_u, book.bids, book.asks
        lines += _agg_trade_messages(m, np.ones(m.t_ms.size, dtype=bool), rng)
        lines.sort(key=lambda x: x[0])
        path = Path(out) / f"usdm_{spec.symbol.lower()}_{day.strftime('%Y%m%d')}.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(path, "wb", compresslevel=5, mtime=0) as f:
            f.writelines(b"%d %s\n" % line for line in lines)
        paths.append(path)
    return paths


def market_capture(out: Path, activity: dict[str, int], minutes: int, seed: int, start: date = date(2024, 1, 1),
                   at_s: int = 14 * 3600, levels: int = 20) -> Path:
    """``minutes`` of a USD-M market of many symbols in one capture file (``@depth@0ms`` every second,
    ``@bookTicker`` and ``@aggTrade``), each symbol trading ``activity[symbol]`` times a day, from ``at_s``
    into the day (14:00 UTC, the busiest hour); each symbol's REST snapshot (naming its symbol, as
    COIN-M's do) two seconds in. The book walks the window only, not the day: fast enough for hundreds of
    symbols (many-symbol tests and benchmarks)."""
    day_ms = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1000)
    lo_ms, hi_ms = day_ms + at_s * 1000, day_ms + (at_s + minutes * 60) * 1000
    lines: list[tuple[int, bytes]] = []
    for i, (symbol, per_day) in enumerate(activity.items()):
        spec, rng = spec_for(symbol), np.random.default_rng([seed, i])
        fmt = _Formatter(spec)
        m = simulate_day(spec, day_ms, per_day, rng, id_base=1_000_000_000 + i * 10**7)
        book = BookSimulator(m, levels, rng, 4_000_000_000_000 + i * 10**11)
        for t in range(at_s, at_s + minutes * 60):
            ev = book.step(t)
            msgs = _capture_messages(book, ev, fmt, rng)
            lines += msgs
            if t == at_s + 2:
                snap = {"symbol": symbol, "lastUpdateId": ev.u, "E": ev.E, "T": ev.E - 1,
                        "bids": fmt.levels(sorted(book.bids.items(), reverse=True)),
                        "asks": fmt.levels(sorted(book.asks.items()))}
                lines.append((msgs[-1][0] + 1, orjson.dumps(snap)))
        lines += _agg_trade_messages(m, (m.t_ms >= lo_ms) & (m.t_ms < hi_ms), rng)
    lines.sort(key=lambda x: x[0])
    path = Path(out) / f"usdm_market_{start.strftime('%Y%m%d')}.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as f:
        f.writelines(b"%d %s\n" % line for line in lines)
    return path
