"""`tickray replay` (the local venue), `stream` (connectors on the cluster), `serve` (the Serve API)."""

from __future__ import annotations

from pathlib import Path

from tickray.cli.args import symbols_arg
from tickray.errors import ConfigError
from tickray.market.venues import BINANCE_STREAM_MARKETS


def cmd_replay(args, settings) -> None:
    import time

    from tickray.sim.exchange import Faults, ReplayExchange

    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"replay: no such capture file: {', '.join(missing)}")
    faults = Faults(**{k: getattr(args, k) for k in Faults.__dataclass_fields__})
    ex = ReplayExchange(files, speed=args.speed, host=args.host, port=args.port, faults=faults).start()
    streams = sorted({name for _, name, _ in ex.messages})
    print(f"replaying {len(ex.messages):,} messages of {len(streams)} streams at {args.speed:g}x "
          f"(snapshots for {', '.join(ex.snapshots) or 'no symbol'})")
    print(f"WebSocket: {ex.ws_url}/stream?streams={'/'.join(streams)}  (USDⓈ-M's routes too: /public/stream, "
          "/market/stream)")
    print(f"REST:      {ex.rest_url}/fapi/v1/depth?symbol=...  (also aggTrades, historicalTrades)", flush=True)
    try:
        while not (args.once and ex.finished.is_set()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        ex.stop()


def cmd_stream(args, settings) -> None:
    import json
    from dataclasses import asdict

    import ray

    from tickray.ops import stack
    from tickray.ops.runtime import connect_ray
    from tickray.ops.stack import redis_client
    from tickray.stream.keys import forget
    from tickray.stream.supervisor import ConnectorSpec, find_supervisor, group_names, supervisor

    if not (settings.ray_address or stack.ray_head_address(settings)):
        raise ConfigError("stream: no Ray cluster to run on; start one with `tickray up` (or set TICKRAY_RAY_ADDRESS)")
    connect_ray(settings)
    if args.add or args.remove:
        sup = find_supervisor()
        if sup is None:
            raise ConfigError(f"stream: no connector named {args.name!r} (or {args.name}-N) is running")
        changed = ray.get(sup.add_symbols.remote(args.name, args.add) if args.add
                          else sup.remove_symbols.remote(args.name, args.remove))
        for name, syms in changed.items():
            print(f"{name}: {'+' if args.add else '-'} {', '.join(syms)} (on its live connections)")
        return
    if args.status or args.stop:
        sup = find_supervisor()
        names = group_names(ray.get(sup.health.remote()), args.name) if sup is not None else []
        if not names:
            raise ConfigError(f"stream: no connector named {args.name!r} (or {args.name}-N) is running")
        if args.status:  # one JSON document: each connector's stats by its name
            print(json.dumps({name: ray.get(sup.stats.remote(name)) for name in names}, indent=1, default=str))
            return
        for name in names:
            ray.get(sup.stop_connector.remote(name))
            print(f"connector {name!r} stopped (lake flushed, checkpoint written)")
        return
    venue = args.venue or settings.stream_venue
    rest_url, ws_url = args.rest_url or settings.stream_rest_url, args.ws_url or settings.stream_ws_url
    plan = _plan(args, venue, rest_url)
    if args.fresh:
        forget(redis_client(settings), [s for c in plan for s in c.symbols])
    sup = supervisor(settings.redis_url)
    for c in plan:
        spec = ConnectorSpec(c.name, c.symbols, args.streams.split(","), ws_url, rest_url, settings.redis_url,
                             {"venue": venue, "lake_root": str(settings.lake_path), "flush_s": settings.stream_flush_s})
        started = ray.get(sup.start_connector.remote(asdict(spec)))
        shown = ", ".join(c.symbols[:8]) + (f" and {len(c.symbols) - 8} more" if len(c.symbols) > 8 else "")
        print(f"{started['actor']}: {shown} × {args.streams} (expected {c.rate:,.0f} msg/s; streams per route "
              f"{c.streams_per_route})")
    print(f"{len(plan)} connector(s) from {ws_url}; features in Redis {settings.redis_url.split('@')[-1]}; "
          f"lake {settings.lake_path}; `tickray stream --name {args.name} --status`, `tickray status`")


def _plan(args, venue: str, rest_url: str) -> list:
    """The connectors for ``--symbols`` (ALL: every trading symbol the venue lists), balanced by the
    venue's 24 h trade counts; an explicit list the venue's listing cannot rate is split by count."""
    from tickray.stream.plan import plan_connectors, venue_listing

    market = BINANCE_STREAM_MARKETS[venue]
    everything = args.symbols == ["ALL"]
    try:
        rates = venue_listing(rest_url, market, None if everything else args.symbols)
    except ConfigError as e:
        if everything:
            raise
        print(f"note: {e}; connectors balanced by symbol count instead")
        rates = dict.fromkeys(args.symbols, 1.0)
    return plan_connectors(rates, args.streams.split(","), market, args.name, min_connectors=args.connectors or 1,
                           rate_per_connector=args.rate_per_connector)


def cmd_serve(args, settings) -> None:
    from tickray.config import read_yaml_mapping
    from tickray.serving.security import new_key

    if args.new_key:
        key, digest = new_key()
        print(f"API key (give it to the caller; it is not stored): {key}\n"
              f"its SHA-256 (add to api_keys_sha256 in {args.file}): {digest}")
        return
    from ray import serve

    from tickray.ops import stack
    from tickray.ops.runtime import connect_ray
    from tickray.serving.app import APP_NAME, check_exposure, deploy
    from tickray.serving.config import parse_serve_config

    cfg = None
    if not args.stop:  # a bad config is reported before any cluster is touched
        doc = read_yaml_mapping(Path(args.file), "Serve config")
        apps = [a for a in doc.get("applications") or [] if a.get("name") == APP_NAME]
        if not apps:
            raise ConfigError(f"{args.file}: no application named {APP_NAME!r} under applications")
        overrides = {k: v for k, v in (("model", args.model), ("canary_share", args.canary_share)) if v is not None}
        cfg = parse_serve_config({"tracking_uri": settings.tracking_uri, "redis_url": settings.redis_url,
                                  **{k: v for k, v in (apps[0].get("args") or {}).items() if v != ""}, **overrides},
                                 f"{args.file}: applications.{APP_NAME}.args")
        check_exposure(cfg, settings.serve_host, args.insecure)
    if not (settings.ray_address or stack.ray_head_address(settings)):
        raise ConfigError("serve: no Ray cluster to deploy on; start one with `tickray up` (or set TICKRAY_RAY_ADDRESS)")
    connect_ray(settings)
    if args.stop:
        serve.delete(APP_NAME)
        print(f"Serve application {APP_NAME!r} deleted")
        return
    url = deploy(cfg, settings.serve_host, settings.serve_port, insecure=args.insecure)
    print(f"{cfg.model} (champion) at {url}: POST /v1/predict, GET /v1/predictions/{{symbol}}/latest, "
          f"WS /v1/stream, GET /v1/models, GET /v1/health, docs at {url}/docs; "
          f"auth {'on' if cfg.auth_enabled else 'OFF (no keys configured; callers rate-limited by address)'}")


def register(sub) -> None:
    s = sub.add_parser("replay", help="serve WebSocket captures as a Binance combined stream with its REST "
                       "snapshot and trades, optionally with faults")
    s.add_argument("files", nargs="+", help="captures: `<recv_ts> <json>` lines (.gz), cryptofeed .txt (+ its .http. log)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9443)
    s.add_argument("--speed", type=float, default=1.0, help="pace as a multiple of real time (0: as fast as taken)")
    s.add_argument("--once", action="store_true", help="exit when the replay is over (default: stay up, quiet)")
    for flag, what in (("disconnect-every", "close each connection after every N messages"),
                       ("duplicate-every", "send every Nth message twice"),
                       ("reorder-every", "swap every Nth message with the next"),
                       ("corrupt-every", "cut every Nth message in half (invalid JSON)"),
                       ("drop-depth-every", "leave out every Nth depth update (a gap)"),
                       ("stall-every", "go silent for --stall-s after every Nth message")):
        s.add_argument(f"--{flag}", type=int, default=0, metavar="N", help=what)
    s.add_argument("--stall-s", type=float, default=0.0)
    s.set_defaults(fn=cmd_replay)

    s = sub.add_parser("stream", help="start a streaming-ingest connector on the cluster, owned by the stream "
                       "supervisor (restarted if it dies, resuming from its checkpoint): live features, book and "
                       "state in Redis; raw messages, trades and book states in the lake")
    s.add_argument("--symbols", type=symbols_arg, default=["BTCUSDT"],
                   help="comma-separated, or ALL: every symbol the venue lists as trading")
    s.add_argument("--streams", default="depth@0ms,aggTrade,kline_1m", help="comma-separated, per symbol")
    s.add_argument("--name", default="default", help="connector name; a plan of several names them <name>-1, "
                   "<name>-2, ... (--status and --stop take the group)")
    s.add_argument("--connectors", type=int, help="at least this many connectors (default: as few as the venue's "
                   "streams per connection and --rate-per-connector allow)")
    s.add_argument("--rate-per-connector", type=float, default=20_000.0,
                   help="expected msg/s one connector may take (default 20,000; one measured 56-61k at most)")
    s.add_argument("--venue", choices=list(BINANCE_STREAM_MARKETS), help="default: settings.stream_venue")
    s.add_argument("--ws-url", help="default: settings.stream_ws_url (the venue)")
    s.add_argument("--rest-url", help="default: settings.stream_rest_url")
    s.add_argument("--add", type=symbols_arg, metavar="SYMBOLS", help="stream these too, on the running connectors "
                   "of --name (SUBSCRIBE on their live connections)")
    s.add_argument("--remove", type=symbols_arg, metavar="SYMBOLS", help="stop streaming these (UNSUBSCRIBE)")
    s.add_argument("--status", action="store_true", help="print the connector's counters")
    s.add_argument("--stop", action="store_true", help="stop the connector (flushing the lake, checkpointing)")
    s.add_argument("--fresh", action="store_true", help="start clean instead of resuming the symbols' checkpoints "
                   "(for a replay of another session)")
    s.set_defaults(fn=cmd_stream)

    s = sub.add_parser("serve", help="deploy the prediction API on Ray Serve (serve/config.yaml, the blanks "
                       "filled from these settings): the registry's champion, fed by the stream actors' features")
    s.add_argument("--file", default="serve/config.yaml", help="the Serve config (its `tickray` application)")
    s.add_argument("--model", help="registered model to serve (default: the file's)")
    s.add_argument("--canary-share", type=float, help="share of requests for `challenger` (default: the file's)")
    s.add_argument("--new-key", action="store_true", help="print a new API key and the digest to configure")
    s.add_argument("--stop", action="store_true", help="delete the application")
    s.add_argument("--insecure", action="store_true", help="serve without authentication on a non-loopback "
                   "address (TICKRAY_SERVE_HOST); refused otherwise")
    s.set_defaults(fn=cmd_serve)
