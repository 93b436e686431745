"""`tickray generate`, `ingest`, `features`: data in, and the features computed from it."""

from __future__ import annotations

from pathlib import Path

from tickray.cli.args import symbols_arg


def cmd_generate(args, settings) -> None:
    import time

    from tickray.sim.synth import SIGNAL, generate

    t = time.perf_counter()
    files = generate(Path(args.out), args.symbols, args.days, args.seed, trades_per_day=args.trades_per_day,
                     signal=SIGNAL if args.signal is None else args.signal)
    print(f"{files.n_trades:,} trades and {files.n_depth_events:,} depth updates in "
          f"{time.perf_counter() - t:.1f}s:")
    for p in files.all():
        print(f"  {p}")


def cmd_ingest(args, settings) -> int:
    from tickray.errors import PARTIAL_EXIT
    from tickray.ingest.job import ingest
    from tickray.ops.runtime import connect_ray

    connect_ray(settings)
    rep = ingest([Path(p) for p in args.inputs], Path(args.lake or settings.lake_path), levels=args.levels)
    print("\n".join(rep.lines() + (rep.book_lines() if args.report else [])))
    print(f"done in {rep.seconds:.1f}s")
    return PARTIAL_EXIT if rep.failed else 0


def cmd_features(args, settings) -> int:
    from tickray.errors import PARTIAL_EXIT
    from tickray.features.job import build_features
    from tickray.ops.runtime import connect_ray

    connect_ray(settings)
    gaps = {"book_gap_s": args.book_gap_s} if args.book_gap_s is not None else {}
    report = build_features(Path(args.lake or settings.lake_path), trade_gap_s=args.trade_gap_s, **gaps)
    print("\n".join(report.lines()))
    return PARTIAL_EXIT if report.failed else 0


def register(sub) -> None:
    s = sub.add_parser("generate", help="write a synthetic market in Binance's real file formats")
    s.add_argument("--symbols", type=symbols_arg, default=["BTCUSDT", "ETHUSDT"], help="comma-separated")
    s.add_argument("--days", type=int, default=1)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--trades-per-day", type=int, default=200_000, help="per symbol")
    s.add_argument("--signal", type=float, default=None,
                   help="how much of each second's return the lagged order-flow imbalance explains "
                        "(default 0.2; 0: a market no model can predict)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("ingest", help="ingest files or folders into the Parquet lake with Ray Data")
    s.add_argument("inputs", nargs="+", help="files or folders (aggTrades, klines, bookDepth, WS captures)")
    s.add_argument("--lake", help="lake root (default: settings lake_root)")
    s.add_argument("--levels", type=int, default=10, help="book levels kept per side")
    s.add_argument("--report", action="store_true",
                   help="print each (book, day)'s gap report: where its book started from, update ids, diffs "
                        "applied, gaps, resyncs, seconds unsynced, rows quarantined (also kept in <lake>/_books/)")
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("features", help="compute features and labels for every lake partition with Ray Data")
    s.add_argument("--lake", help="lake root (default: settings lake_root)")
    s.add_argument("--book-gap-s", type=float, default=None,
                   help="a book silent for longer is unsynced, and a new session starts after it (default: "
                        "tickray.features.grid.BOOK_GAP_S, a minute)")
    s.add_argument("--trade-gap-s", type=float, default=None,
                   help="a longer silence in trades also starts a new session (default: off; quiet markets "
                        "trade rarely)")
    s.set_defaults(fn=cmd_features)
