"""`tickray up`, `down`, `status`, `check-cluster`: the stack; `tickray demo`: every stage end to end."""

from __future__ import annotations

from pathlib import Path

from tickray.cli.args import symbols_arg


def cmd_up(args, settings) -> None:
    from tickray.ops import stack

    for s in stack.up(settings, with_ray=not args.no_ray, autoscaling_config=args.autoscaling_config):
        print(f"{s.name}: {s.detail}")
    print(f"MLflow tracking: {settings.tracking_uri}")


def cmd_check_cluster(args, settings) -> None:
    import ray

    from tickray.ops.cluster import validate_cluster_config

    config = validate_cluster_config(args.cluster_config)
    types = config["available_node_types"]
    workers = ", ".join(f"{name} {t.get('min_workers', 0)}..{t.get('max_workers', config['max_workers'])} "
                        f"{t.get('resources') or 'resources detected'}"
                        for name, t in types.items() if name != config["head_node_type"])
    print(f"{args.cluster_config}: valid for Ray {ray.__version__}; provider {config['provider']['type']}, "
          f"head {config['head_node_type']} {types[config['head_node_type']].get('resources')}; workers {workers}; "
          f"idle timeout {config['idle_timeout_minutes']} min")


def cmd_down(args, settings) -> None:
    from tickray.ops import stack

    stopped = stack.down(settings)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing started by tickray was running")


def cmd_status(args, settings) -> None:
    from tickray import lake
    from tickray.ops import stack

    for s in stack.status(settings):
        print(f"{s.name:6} {'up  ' if s.running else 'down'} {s.detail}")
    print(f"token  {stack.ray_token_source()} (Ray's; `ray job submit` and the dashboard need it)")
    print(f"mlflow {settings.tracking_uri}")
    root = settings.lake_path
    bars = list(lake.bar_datasets(root).values()) or ["bars_1m"]
    datasets = ("trades", "book", *bars, "open_interest", "funding", "liquidations", "instruments", "settlements",
                "features", "bar_features")
    for ds in datasets:
        parts = lake.partitions(root, ds) if (root / ds).exists() else []
        if parts:  # coverage: which symbols, which days
            days = sorted({d for d, _ in parts})
            print(f"lake   {ds}: {lake.dataset_rows(root, ds):,} rows in {len(parts)} partitions, "
                  f"{len({s for _, s in parts})} symbols, {days[0]} to {days[-1]}")
    _book_days_status(root)
    print(f"lake   root {root}")
    _registry_status(settings)
    if settings.ray_address or stack.ray_head_address(settings):
        from tickray.ops.runtime import connect_ray

        dashboard = connect_ray(settings)
        _cluster_status(dashboard)
        _stream_status()


def _book_days_status(root) -> None:
    """Per venue, the books' days rebuilt (tickray.lake.book_days): symbols, days, gaps, resyncs, unsynced."""
    from tickray.lake import book_days

    by_venue: dict[str, list[dict]] = {}
    for r in book_days.reports(root):
        by_venue.setdefault(r["venue"], []).append(r)
    for venue, rs in by_venue.items():
        days = sorted({r["day"] for r in rs})
        print(f"lake   books {venue}: {len({r['symbol'] for r in rs})} symbols, {len(rs)} (book, day)s, {days[0]} to "
              f"{days[-1]}; {sum(r['gaps'] for r in rs)} gaps, {sum(r['resyncs'] for r in rs)} resyncs, "
              f"{sum(r['unsynced_s'] for r in rs):,.1f} s unsynced")


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
        syms = h["symbols"]
        shown = ",".join(syms) if len(syms) <= 6 else f"{len(syms)} symbols ({','.join(syms[:3])},...)"
        print(f"stream {name}: {h['status']}, {shown}, {len(h['streams'])} streams per symbol, "
              f"{h['messages_per_s']:,.0f} msg/s, {h['received']:,} received, lag {lag:,.0f} ms, "
              f"{len(h['unsynced'])} unsynced books, {h['quarantined']} quarantined, {h['book_gaps']} book gaps, "
              f"REST weight {h['rest_weight']:,}, {h['restarts']} restarts, node {h['node'][:8] or '?'}")


def cmd_demo(args, settings) -> None:
    from tickray.demo import run_demo

    run_demo(settings, args.symbols, days=args.days, seed=args.seed, trades_per_day=args.trades_per_day,
             replay_speed=args.replay_speed)


def register(sub) -> None:
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

    s = sub.add_parser("demo", help="run every stage end to end on the embedded default")
    s.add_argument("--symbols", type=symbols_arg, default=["BTCUSDT", "ETHUSDT"], help="comma-separated")
    s.add_argument("--days", type=int, default=1)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--trades-per-day", type=int, default=200_000, help="per symbol")
    s.add_argument("--replay-speed", type=float, default=60.0,
                   help="WebSocket replay pace as a multiple of real time (0: unpaced)")
    s.set_defaults(fn=cmd_demo)
