"""`tickray bars` through the layered bar cache, and `tickray screen` over them."""

from __future__ import annotations

import argparse
from pathlib import Path

from tickray.cli.args import symbols_arg
from tickray.errors import TickrayError
from tickray.market.venues import KLINE_ENDPOINTS


def _utc_ns(text: str) -> int:
    """``2024-11-01`` or ``2024-11-01T12:00`` (UTC) → ns."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time (YYYY-MM-DD[THH:MM], UTC)") from None
    return int(t.replace(tzinfo=t.tzinfo or dt.UTC).timestamp()) * 1_000_000_000


def _day(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M").removesuffix(" 00:00")


def _coverage(root: Path, symbol: str) -> str:
    """The days the lake's stored bars of ``symbol`` cover, as ranges of consecutive days."""
    import datetime as dt

    from tickray import lake

    by_dataset = {ds: [d for d, s in lake.partitions(root, ds) if s == symbol] for ds in lake.bar_datasets(root).values()}
    datasets = [ds for ds, dates in by_dataset.items() if dates]
    days = sorted({dt.date.fromisoformat(d) for dates in by_dataset.values() for d in dates})
    if not days:
        return f"the lake ({root}) has no bars of {symbol}"
    ranges = [[days[0], days[0]]]
    for d in days[1:]:
        if d - ranges[-1][1] == dt.timedelta(days=1):
            ranges[-1][1] = d
        else:
            ranges.append([d, d])
    shown = ", ".join(f"{a}" if a == b else f"{a} to {b}" for a, b in ranges[:8])
    held = "1m bars" if datasets == ["bars_1m"] else f"bars ({', '.join(datasets)})"
    return f"the lake's {held} of {symbol} cover {shown}{' …' if len(ranges) > 8 else ''}"


def _bar_cache(args, settings):
    from tickray.bars.cache import BarCache
    from tickray.bars.collector import Collector, venue
    from tickray.ops.stack import redis_client

    root = Path(args.lake or settings.lake_path)
    name = args.venue or settings.kline_venue
    collector = Collector(root, venue(name, args.venue_url or settings.kline_venue_url),
                          redis_url=None if args.no_redis else settings.redis_url) if name else None
    return BarCache(root, None if args.no_redis else redis_client(settings), collector=collector)


def _bar_cache_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-redis", action="store_true", help="skip the shared Redis layer of the bar cache")
    s.add_argument("--lake", help="lake root (default: settings lake_root)")
    s.add_argument("--venue", choices=list(KLINE_ENDPOINTS), help="fetch 1m klines the lake lacks from this "
                   "venue's REST API (default: settings kline_venue; none: the lake only)")
    s.add_argument("--venue-url", help="the venue's base URL (default: its public one)")


def cmd_bars(args, settings) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if args.live:
        return _live_bars(args.symbols, settings)
    if args.start is None or args.end is None:
        raise TickrayError("tickray bars needs --start and --end (or --live)")
    if args.ray:  # a big range: Ray Data tasks per symbol and month, written as a Parquet folder
        from tickray.bars.build import bars_dataset
        from tickray.ops.runtime import connect_ray

        if not args.out:
            raise TickrayError("tickray bars --ray writes a Parquet folder: give it --out DIR")
        connect_ray(settings)
        ds = bars_dataset(Path(args.lake or settings.lake_path), args.symbols, args.timeframe, args.start, args.end)
        ds.write_parquet(args.out)
        print(f"{ds.count():,} {args.timeframe} bars → {args.out}/ ({ds.num_blocks()} Ray Data tasks)")
        return
    cache = _bar_cache(args, settings)
    bars = cache.get_bars(args.symbols, args.timeframe, args.start, args.end)
    found = set(bars.column("symbol").to_pylist()) if bars.num_rows else set()
    for symbol in args.symbols:
        if symbol not in found:  # an empty answer says why
            print(f"no {args.timeframe} bars for {symbol} from {_day(args.start)} to {_day(args.end)}: "
                  f"{_coverage(cache.lake_root, symbol)}")
    if not bars.num_rows:
        return
    if args.out:
        out = Path(args.out)
        (pq.write_table if out.suffix == ".parquet" else pacsv.write_csv)(bars, out)
        print(f"{bars.num_rows:,} {args.timeframe} bars → {out}")
    else:
        print(bars.to_pandas().to_string(index=False, max_rows=args.rows))


def _live_bars(symbols: list[str], settings) -> None:
    """The open bar of each timeframe, as the stream actors keep it in Redis."""
    import datetime as dt

    import orjson
    import pandas as pd

    from tickray.ops.stack import redis_client
    from tickray.stream.keys import LIVE_BARS_KEY

    r = redis_client(settings)
    rows = [{"timeframe": tf.decode(), **orjson.loads(v)} for s in symbols
            for tf, v in sorted(r.hgetall(LIVE_BARS_KEY.format(symbol=s.upper())).items())]
    missing = [s for s in symbols if s not in {row["symbol"] for row in rows}]
    if missing:
        print(f"no live bars in Redis for {', '.join(missing)}: is a stream actor running for them?")
    if not rows:
        return
    for row in rows:
        row["ts"] = dt.datetime.fromtimestamp(row["ts"] / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M")
    cols = ["symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "trades", "vwap"]
    print(pd.DataFrame(rows)[cols].to_string(index=False))


def cmd_screen(args, settings) -> None:
    from tickray.bars.build import stored_bars
    from tickray.bars.screener import DAY_NS, screen

    cache = _bar_cache(args, settings)
    root = cache.lake_root
    symbols = args.universe if args.universe != ["ALL"] else sorted(stored_bars(root))
    if args.start is not None and args.end is None:
        raise TickrayError("tickray screen --start needs --end (or give --days before each symbol's newest bar)")
    table = screen(cache, symbols, args.timeframe, args.days, args.rule, end_ns=args.end, start_ns=args.start)
    windows = {(_day(a), _day(b)) for a, b in table.attrs["windows"].values()}
    if args.end is not None:
        start = args.start if args.start is not None else args.end - int(args.days * DAY_NS)
        print(f"{args.rule} on {args.timeframe} bars from {_day(start)} to {_day(args.end)} (UTC, end exclusive)")
    elif len(windows) == 1:
        (a, b), = windows
        print(f"{args.rule} on {args.timeframe} bars from {a} to {b} (UTC, end exclusive)")
    elif windows:  # each symbol's own newest bar ends its window
        table.insert(1, "until", [_day(table.attrs["windows"][s][1]) for s in table["symbol"]])
        print(f"{args.rule} on {args.timeframe} bars over each symbol's last {args.days:g} days")
    print(table.head(args.top).to_string(index=False) if not table.empty else "no symbol has enough bars")
    for symbol, why in sorted(table.attrs["left_out"].items()):
        coverage = _coverage(root, symbol)
        print(f"left out {symbol}: {coverage}" if why.startswith("no 1m bars") else
              f"left out {symbol}: {why} ({coverage})")
    m = cache.metrics()
    print(f"bar cache: {m['lookups']} chunk lookups, memory hits {m['l1']}, Redis hits {m['l2']}, "
          f"lake reads {m['lake']}")


def register(sub) -> None:
    s = sub.add_parser("bars", help="bars of any whole-minute timeframe, through the layered bar cache")
    s.add_argument("--symbols", type=symbols_arg, required=True, help="comma-separated")
    s.add_argument("--timeframe", default="1h", help="<n>m, <n>h or <n>d: 5m, 7m, 15m, 1h, 4h, 1d")
    s.add_argument("--start", type=_utc_ns, help="YYYY-MM-DD[THH:MM], UTC, inclusive")
    s.add_argument("--end", type=_utc_ns, help="YYYY-MM-DD[THH:MM], UTC, exclusive")
    s.add_argument("--ray", action="store_true", help="for big ranges: resample with Ray Data (a task per "
                   "symbol and month, straight from the lake) into the Parquet folder --out")
    s.add_argument("--live", action="store_true", help="the open bar of each timeframe, as the stream actors "
                   "keep it in Redis (live monitoring)")
    s.add_argument("--out", help="write to a .parquet or .csv file instead of printing")
    s.add_argument("--rows", type=int, default=60, help="rows printed at most")
    _bar_cache_arguments(s)
    s.set_defaults(fn=cmd_bars)

    s = sub.add_parser("screen", help="rank a universe of symbols by a rule over a window of bars (default: "
                       "each symbol's last N days)")
    s.add_argument("--universe", type=symbols_arg, default=["ALL"], help="comma-separated, or ALL (every symbol "
                   "with 1m bars in the lake)")
    s.add_argument("--timeframe", default="1h")
    s.add_argument("--days", type=float, default=30, help="the window's length before its end")
    s.add_argument("--end", type=_utc_ns, help="YYYY-MM-DD[THH:MM], UTC, exclusive: screen a past window "
                   "(default: each symbol's newest bar)")
    s.add_argument("--start", type=_utc_ns, help="YYYY-MM-DD[THH:MM], UTC, inclusive, with --end (instead of "
                   "--days)")
    s.add_argument("--rule", default="movers", help="movers, rsi or volume_spike")
    s.add_argument("--top", type=int, default=20)
    _bar_cache_arguments(s)
    s.set_defaults(fn=cmd_screen)
