"""The `tickray` command line: one verb per stage, `--help` on each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tickray.config import load_settings
from tickray.errors import ConfigError, TickrayError


def _symbols(s: str) -> list[str]:
    out = [x.strip().upper() for x in s.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give at least one symbol, e.g. BTCUSDT,ETHUSDT")
    return out


def cmd_up(args, settings) -> None:
    from tickray import stack

    for s in stack.up(settings, with_ray=not args.no_ray, autoscaling_config=args.autoscaling_config):
        print(f"{s.name}: {s.detail}")
    print(f"MLflow tracking: {settings.tracking_uri}")


def cmd_check_cluster(args, settings) -> None:
    import ray

    from tickray.cluster import validate_cluster_config

    config = validate_cluster_config(args.cluster_config)
    types = config["available_node_types"]
    workers = ", ".join(f"{name} {t.get('min_workers', 0)}..{t.get('max_workers', config['max_workers'])} "
                        f"{t.get('resources') or 'resources detected'}"
                        for name, t in types.items() if name != config["head_node_type"])
    print(f"{args.cluster_config}: valid for Ray {ray.__version__}; provider {config['provider']['type']}, "
          f"head {config['head_node_type']} {types[config['head_node_type']].get('resources')}; workers {workers}; "
          f"idle timeout {config['idle_timeout_minutes']} min")


def cmd_down(args, settings) -> None:
    from tickray import stack

    stopped = stack.down(settings)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing started by tickray was running")


def cmd_status(args, settings) -> None:
    from tickray import lake, stack

    for s in stack.status(settings):
        print(f"{s.name:6} {'up  ' if s.running else 'down'} {s.detail}")
    print(f"token  {stack.ray_token_source()} (Ray's; `ray job submit` and the dashboard need it)")
    print(f"mlflow {settings.tracking_uri}")
    root = settings.lake_path
    for ds in ("trades", "book", "bars_1m", "features"):
        if (root / ds).exists():
            print(f"lake   {ds}: {lake.dataset_rows(root, ds):,} rows in {len(lake.partitions(root, ds))} partitions")
    print(f"lake   root {root}")
    _registry_status(settings)
    if settings.ray_address or stack.ray_head_address(settings):
        from tickray.runtime import connect_ray

        dashboard = connect_ray(settings)
        _cluster_status(dashboard)
        _stream_status()


def _registry_status(settings) -> None:
    """The registry's champions (and challengers), one line per registered model."""
    if settings.tracking_uri.startswith("sqlite:///") and not Path(settings.tracking_uri.removeprefix("sqlite:///")).exists():
        return  # nothing trained yet: opening the store would create it
    from mlflow.tracking import MlflowClient

    for m in MlflowClient(settings.tracking_uri).search_registered_models():
        roles = ", ".join(f"{alias} v{v}" for alias, v in sorted(m.aliases.items())) or "no alias"
        print(f"model  {m.name}: {roles}")


def _cluster_status(dashboard: str | None) -> None:
    """Nodes and their resources, running jobs and Serve applications of the cluster this process joined."""
    import ray
    from ray import serve

    nodes = [n for n in ray.nodes() if n["Alive"]]
    total, free = ray.cluster_resources(), ray.available_resources()
    used = ", ".join(f"{k} {total[k] - free.get(k, 0):g}/{total[k]:g}" for k in ("CPU", "GPU") if k in total)
    print(f"nodes  {len(nodes)} alive ({used} in use), dashboard {dashboard or 'off'}")
    if dashboard:
        from ray.job_submission import JobStatus, JobSubmissionClient

        # submitted jobs only: every connected driver (this one too) is listed as a job as well
        jobs = [j for j in JobSubmissionClient(dashboard).list_jobs() if j.submission_id]
        running = [j for j in jobs if j.status in (JobStatus.PENDING, JobStatus.RUNNING)]
        print(f"jobs   {len(running)} running, {len(jobs) - len(running)} ended")
        for j in running:
            print(f"jobs   {j.submission_id} {j.status.value}: {j.entrypoint}")
    apps = serve.status().applications
    if not apps:
        print("serve  no applications")
    for name, app in apps.items():
        replicas = sum(sum(d.replica_states.values()) for d in app.deployments.values())
        print(f"serve  {name}: {app.status.value}, {len(app.deployments)} deployments, {replicas} replicas")


def _stream_status() -> None:
    """One line per connector of the cluster's stream supervisor."""
    import ray

    from tickray.stream.supervisor import find_supervisor

    sup = find_supervisor()
    health = ray.get(sup.health.remote(), timeout=60) if sup is not None else {}
    if not health:
        print("stream no connectors (`tickray stream --symbols …` starts one)")
    for name, h in health.items():
        lag = max(h["lag_ms"].values(), default=float("nan"))
        print(f"stream {name}: {h['status']}, {','.join(h['symbols'])}, {h['messages_per_s']:,.0f} msg/s, "
              f"{h['received']:,} received, lag {lag:,.0f} ms, {h['quarantined']} quarantined, "
              f"{h['book_gaps']} book gaps, {h['restarts']} restarts")


def cmd_generate(args, settings) -> None:
    import time

    from tickray.synth import generate

    t = time.perf_counter()
    files = generate(Path(args.out), args.symbols, args.days, args.seed, trades_per_day=args.trades_per_day)
    print(f"{files.n_trades:,} trades and {files.n_depth_events:,} depth updates in "
          f"{time.perf_counter() - t:.1f}s:")
    for p in files.all():
        print(f"  {p}")


def cmd_ingest(args, settings) -> int:
    from tickray.ingest import PARTIAL_EXIT, ingest
    from tickray.runtime import connect_ray

    connect_ray(settings)
    rep = ingest([Path(p) for p in args.inputs], Path(args.lake or settings.lake_path), levels=args.levels)
    print("\n".join(rep.lines()))
    print(f"done in {rep.seconds:.1f}s")
    return PARTIAL_EXIT if rep.failed else 0


def cmd_features(args, settings) -> None:
    from tickray.features.job import build_features
    from tickray.runtime import connect_ray

    connect_ray(settings)
    print("\n".join(build_features(Path(args.lake or settings.lake_path)).lines()))


def _utc_ns(text: str) -> int:
    """``2024-11-01`` or ``2024-11-01T12:00`` (UTC) → ns."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time (YYYY-MM-DD[THH:MM], UTC)") from None
    return int(t.replace(tzinfo=t.tzinfo or dt.UTC).timestamp()) * 1_000_000_000


def _bar_cache(args, settings):
    from tickray.bar_cache import BarCache
    from tickray.collector import Collector, venue
    from tickray.stack import redis_client

    root = Path(args.lake or settings.lake_path)
    name = args.venue or settings.kline_venue
    collector = Collector(root, venue(name, args.venue_url or settings.kline_venue_url)) if name else None
    return BarCache(root, None if args.no_redis else redis_client(settings), collector=collector)


def _bar_cache_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-redis", action="store_true", help="skip the shared Redis layer of the bar cache")
    s.add_argument("--lake", help="lake root (default: settings lake_root)")
    s.add_argument("--venue", help="fetch 1m klines the lake lacks from this venue's REST API: binance-usdm, "
                   "binance-spot or upbit (default: settings kline_venue; none: the lake only)")
    s.add_argument("--venue-url", help="the venue's base URL (default: its public one)")


def cmd_bars(args, settings) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if args.live:
        return _live_bars(args.symbols, settings)
    if args.start is None or args.end is None:
        raise TickrayError("tickray bars needs --start and --end (or --live)")
    if args.ray:  # a big range: Ray Data tasks per symbol and month, written as a Parquet folder
        from tickray.bars import bars_dataset
        from tickray.runtime import connect_ray

        if not args.out:
            raise TickrayError("tickray bars --ray writes a Parquet folder: give it --out DIR")
        connect_ray(settings)
        ds = bars_dataset(Path(args.lake or settings.lake_path), args.symbols, args.timeframe, args.start, args.end)
        ds.write_parquet(args.out)
        print(f"{ds.count():,} {args.timeframe} bars → {args.out}/ ({ds.num_blocks()} Ray Data tasks)")
        return
    cache = _bar_cache(args, settings)
    bars = cache.get_bars(args.symbols, args.timeframe, args.start, args.end)
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

    from tickray.stack import redis_client
    from tickray.stream.actor import LIVE_BARS_KEY

    r = redis_client(settings)
    rows = [{"timeframe": tf.decode(), **orjson.loads(v)} for s in symbols
            for tf, v in sorted(r.hgetall(LIVE_BARS_KEY.format(symbol=s.upper())).items())]
    if not rows:
        print(f"no live bars in Redis for {', '.join(symbols)}: is a stream actor running for them?")
        return
    for row in rows:
        row["ts"] = dt.datetime.fromtimestamp(row["ts"] / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M")
    cols = ["symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "trades", "vwap"]
    print(pd.DataFrame(rows)[cols].to_string(index=False))


def cmd_screen(args, settings) -> None:
    from tickray import lake
    from tickray.screener import screen

    cache = _bar_cache(args, settings)
    root = cache.lake_root
    symbols = args.universe if args.universe != ["ALL"] else sorted({s for _, s in lake.partitions(root, "bars_1m")})
    table = screen(cache, symbols, args.timeframe, args.days, args.rule)
    print(table.head(args.top).to_string(index=False) if not table.empty else "no symbol has enough bars")
    m = cache.metrics()
    print(f"bar cache: {m['lookups']} chunk lookups, memory hits {m['l1']}, Redis hits {m['l2']}, "
          f"lake reads {m['lake']}")


def _overrides(args) -> dict:
    import yaml

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. models.xgboost.num_workers=2)")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _train_config(args):
    from tickray.training.config import load_config

    return load_config(args.train_config, _overrides(args))


def cmd_train(args, settings) -> None:
    from tickray.runtime import connect_ray
    from tickray.training.data import check_lake
    from tickray.training.pipeline import run_training

    cfg = _train_config(args)
    lake_root = Path(cfg.data.lake or settings.lake_path)
    check_lake(cfg, lake_root)  # a wrong feature or label fails here, before any cluster time
    connect_ray(settings)
    report = run_training(cfg, lake_root, settings.tracking_uri, settings.artifact_root,
                          settings.state_path / "ray_results")
    print("\n".join(report.lines()))


def cmd_tune(args, settings) -> None:
    from tickray.runtime import connect_ray
    from tickray.training.data import check_lake
    from tickray.training.tune import run_tune, search_space

    cfg = _train_config(args)
    lake_root = Path(cfg.data.lake or settings.lake_path)
    if cfg.tune is None:
        raise ConfigError(f"{args.train_config or 'config'}: no tune section (family, num_samples, space)")
    search_space(cfg)
    check_lake(cfg, lake_root)
    connect_ray(settings)
    _, trained = run_tune(cfg, lake_root, settings.tracking_uri, settings.artifact_root,
                          settings.state_path / "ray_results", resume=args.resume)
    if trained is not None:
        print("\n".join(trained.lines()))


def cmd_backtest(args, settings) -> None:
    from tickray.backtest.config import load_backtest_config
    from tickray.backtest.walkforward import run_backtest
    from tickray.runtime import connect_ray

    cfg = load_backtest_config(args.backtest_config, _overrides(args))
    connect_ray(settings)
    report = run_backtest(cfg, Path(settings.lake_path), settings.tracking_uri, settings.artifact_root,
                          Path(args.report) if args.report else None)
    print("\n".join(report.lines()))


def cmd_monitor(args, settings) -> None:
    import ray

    from tickray.monitoring import Monitor, MonitorActor, load_monitor_config
    from tickray.runtime import connect_ray

    cfg = load_monitor_config(args.monitor_config, _overrides(args))
    connect_ray(settings)
    if args.once:
        print("\n".join(Monitor(cfg, settings).check().lines()))
        return
    name = "tickray-monitor"
    try:
        old = ray.get_actor(name, namespace="tickray")
        ray.get(old.stop.remote())
        ray.kill(old)
    except ValueError:
        pass  # none running
    if args.stop:
        print(f"{name} stopped")
        return
    MonitorActor.options(name=name, namespace="tickray", lifetime="detached").remote(
        cfg.model_dump_json(), settings.model_dump_json())
    print(f"{name}: checking {cfg.model}@{cfg.alias} every {cfg.interval_s:g}s on the cluster; "
          "`tickray monitor --stop` ends it")


def cmd_replay(args, settings) -> None:
    import time

    from tickray.exchange_sim import Faults, ReplayExchange

    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"replay: no such capture file: {', '.join(missing)}")
    faults = Faults(**{k: getattr(args, k) for k in Faults.__dataclass_fields__})
    ex = ReplayExchange(files, speed=args.speed, host=args.host, port=args.port, faults=faults).start()
    streams = sorted({name for _, name, _ in ex.messages})
    print(f"replaying {len(ex.messages):,} messages of {len(streams)} streams at {args.speed:g}x "
          f"(snapshots for {', '.join(ex.snapshots) or 'no symbol'})")
    print(f"WebSocket: {ex.ws_url}/stream?streams={'/'.join(streams)}")
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

    from tickray import stack
    from tickray.runtime import connect_ray
    from tickray.stack import redis_client
    from tickray.stream.actor import forget
    from tickray.stream.supervisor import ConnectorSpec, find_supervisor, supervisor

    if not (settings.ray_address or stack.ray_head_address(settings)):
        raise ConfigError("stream: no Ray cluster to run on; start one with `tickray up` (or set TICKRAY_RAY_ADDRESS)")
    connect_ray(settings)
    if args.status or args.stop:
        sup = find_supervisor()
        if sup is None:
            raise ConfigError(f"stream: no connector named {args.name!r} is running")
        if args.status:
            print(json.dumps(ray.get(sup.stats.remote(args.name)), indent=1, default=str))
        else:
            ray.get(sup.stop_connector.remote(args.name))
            print(f"connector {args.name!r} stopped (lake flushed, checkpoint written)")
        return
    if args.fresh:
        forget(redis_client(settings), args.symbols)
    ws_url = args.ws_url or settings.stream_ws_url
    spec = ConnectorSpec(args.name, args.symbols, args.streams.split(","), ws_url,
                         args.rest_url or settings.stream_rest_url, settings.redis_url,
                         {"venue": args.venue or settings.stream_venue, "lake_root": str(settings.lake_path),
                          "flush_s": settings.stream_flush_s})
    started = ray.get(supervisor(settings.redis_url).start_connector.remote(asdict(spec)))
    print(f"{started['actor']}: {', '.join(args.symbols)} × {args.streams} from {ws_url}; features in Redis "
          f"{settings.redis_url.split('@')[-1]}; lake {settings.lake_path}; "
          f"`tickray stream --name {args.name} --status`")


def cmd_serve(args, settings) -> None:
    from tickray.config import read_yaml_mapping
    from tickray.serving.security import new_key

    if args.new_key:
        key, digest = new_key()
        print(f"API key (give it to the caller; it is not stored): {key}\n"
              f"its SHA-256 (add to api_keys_sha256 in {args.file}): {digest}")
        return
    from ray import serve

    from tickray import stack
    from tickray.runtime import connect_ray
    from tickray.serving.app import APP_NAME, deploy
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
    if not (settings.ray_address or stack.ray_head_address(settings)):
        raise ConfigError("serve: no Ray cluster to deploy on; start one with `tickray up` (or set TICKRAY_RAY_ADDRESS)")
    connect_ray(settings)
    if args.stop:
        serve.delete(APP_NAME)
        print(f"Serve application {APP_NAME!r} deleted")
        return
    url = deploy(cfg, settings.serve_host, settings.serve_port)
    print(f"{cfg.model} (champion) at {url}: POST /v1/predict, GET /v1/predictions/{{symbol}}/latest, "
          f"WS /v1/stream, GET /v1/models, GET /v1/health, docs at {url}/docs; "
          f"auth {'on' if cfg.auth_enabled else 'OFF (no keys configured)'}")


def cmd_demo(args, settings) -> None:
    from tickray.demo import run_demo

    run_demo(settings, args.symbols, days=args.days, seed=args.seed, trades_per_day=args.trades_per_day,
             replay_speed=args.replay_speed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickray", description="Ray-distributed platform for market tick data.")
    p.add_argument("--config", help="YAML settings file (TICKRAY_* environment variables win over it)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = sub.add_parser("up", help="start the local stack: redis-server and a Ray head (with dashboard)")
    s.add_argument("--no-ray", action="store_true", help="start only redis-server")
    s.add_argument("--autoscaling-config", type=Path, metavar="YAML",
                   help="a fake_multinode cluster config (infra/local-cluster.yaml): the head's autoscaler adds "
                        "and removes worker nodes on this machine as demand asks")
    s.set_defaults(fn=cmd_up)

    s = sub.add_parser("check-cluster", help="check a cluster launcher config with Ray's own schema, naming the "
                                             "key at fault, before `ray up`")
    s.add_argument("cluster_config", type=Path, metavar="YAML", help="cluster.yaml or infra/local-cluster.yaml")
    s.set_defaults(fn=cmd_check_cluster)
    sub.add_parser("down", help="stop what `tickray up` started (and nothing else)").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="show the local stack, the lake, the registry's champions and, with a cluster, "
                                  "its nodes, jobs, Serve applications and stream connectors").set_defaults(fn=cmd_status)

    s = sub.add_parser("generate", help="write a synthetic market in Binance's real file formats")
    s.add_argument("--symbols", type=_symbols, default=["BTCUSDT", "ETHUSDT"], help="comma-separated")
    s.add_argument("--days", type=int, default=1)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--trades-per-day", type=int, default=200_000, help="per symbol")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("ingest", help="ingest files or folders into the Parquet lake with Ray Data")
    s.add_argument("inputs", nargs="+", help="files or folders (aggTrades, klines, bookDepth, WS captures)")
    s.add_argument("--lake", help="lake root (default: settings lake_root)")
    s.add_argument("--levels", type=int, default=10, help="book levels kept per side")
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("features", help="compute features and labels for every lake partition with Ray Data")
    s.add_argument("--lake", help="lake root (default: settings lake_root)")
    s.set_defaults(fn=cmd_features)

    s = sub.add_parser("bars", help="bars of any whole-minute timeframe, through the layered bar cache")
    s.add_argument("--symbols", type=_symbols, required=True, help="comma-separated")
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

    s = sub.add_parser("screen", help="rank a universe of symbols by a rule over the last N days of bars")
    s.add_argument("--universe", type=_symbols, default=["ALL"], help="comma-separated, or ALL (every symbol "
                   "with 1m bars in the lake)")
    s.add_argument("--timeframe", default="1h")
    s.add_argument("--days", type=float, default=30)
    s.add_argument("--rule", default="movers", help="movers, rsi or volume_spike")
    s.add_argument("--top", type=int, default=20)
    _bar_cache_arguments(s)
    s.set_defaults(fn=cmd_screen)

    s = sub.add_parser("train", help="base models, baselines and the stacked ensemble on Ray Train, "
                                     "judged out of time and registered in MLflow")
    s.add_argument("--config", dest="train_config", help="training config YAML (examples in jobs/configs/)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set models.xgboost.num_workers=2 (repeatable)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("tune", help="Ray Tune (Optuna + ASHA) over one base model, then train with the best")
    s.add_argument("--config", dest="train_config", required=True, help="training config YAML with a tune section")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("--resume", action="store_true", help="resume an interrupted search (Tuner.restore)")
    s.set_defaults(fn=cmd_tune)

    s = sub.add_parser("backtest", help="walk-forward backtest: every window's models trained on the past only, "
                                        "judged by returns after costs, with a report")
    s.add_argument("--config", dest="backtest_config", required=True,
                   help="backtest config YAML (jobs/configs/backtest-*.yaml)")
    s.add_argument("--report", help="write the HTML report (and its PNG figures beside it) here")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set walk_forward.windows=6 (repeatable)")
    s.set_defaults(fn=cmd_backtest)

    s = sub.add_parser("monitor", help="drift and accuracy monitoring of the champion, alerts, retraining jobs")
    s.add_argument("--config", dest="monitor_config", help="monitor config YAML (jobs/configs/monitor.yaml)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("--once", action="store_true", help="run one check here and print it")
    s.add_argument("--stop", action="store_true", help="stop the monitor actor")
    s.set_defaults(fn=cmd_monitor)

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
    s.add_argument("--symbols", type=_symbols, default=["BTCUSDT"], help="comma-separated")
    s.add_argument("--streams", default="depth@0ms,aggTrade,kline_1m", help="comma-separated, per symbol")
    s.add_argument("--name", default="default", help="connector name (one connection each)")
    s.add_argument("--venue", choices=["usdm", "coinm", "spot"], help="default: settings.stream_venue")
    s.add_argument("--ws-url", help="default: settings.stream_ws_url (the venue)")
    s.add_argument("--rest-url", help="default: settings.stream_rest_url")
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
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("demo", help="run every stage end to end on the embedded default")
    s.add_argument("--symbols", type=_symbols, default=["BTCUSDT", "ETHUSDT"], help="comma-separated")
    s.add_argument("--days", type=int, default=1)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--trades-per-day", type=int, default=200_000, help="per symbol")
    s.add_argument("--replay-speed", type=float, default=60.0,
                   help="WebSocket replay pace as a multiple of real time (0: unpaced)")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        code = args.fn(args, settings)
    except TickrayError as e:
        print(f"tickray {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"tickray {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
