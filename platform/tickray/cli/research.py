"""`tickray train`, `tune`, `backtest`, `monitor`: the research loop."""

from __future__ import annotations

import os
from pathlib import Path

from tickray.errors import ConfigError


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
    from tickray.ops.runtime import connect_ray
    from tickray.research.rows import check_lake
    from tickray.training.pipeline import run_training

    cfg = _train_config(args)
    lake_root = Path(cfg.data.lake or settings.lake_path)
    check_lake(cfg, lake_root)  # a wrong feature or label fails here, before any cluster time
    connect_ray(settings)
    report = run_training(cfg, lake_root, settings.tracking_uri, settings.artifact_root,
                          settings.state_path / "ray_results")
    print("\n".join(report.lines()))


def cmd_tune(args, settings) -> None:
    from tickray.ops.runtime import connect_ray
    from tickray.research.rows import check_lake
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


def _output_path(given: str, settings) -> Path:
    """Where a file the caller named goes, absolute. A relative path from a job that `ray job submit` runs
    would land in Ray's temporary copy of the uploaded working directory, gone with the job: it goes under
    the state folder's ``reports/`` instead."""
    path = Path(given)
    if not path.is_absolute() and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # set by Ray for a job's driver
        path = settings.state_path / "reports" / path
    return path.resolve()


def cmd_backtest(args, settings) -> None:
    from tickray.backtest.config import load_backtest_config
    from tickray.backtest.walkforward import run_backtest
    from tickray.ops.runtime import connect_ray

    cfg = load_backtest_config(args.backtest_config, _overrides(args))
    connect_ray(settings)
    report = run_backtest(cfg, Path(settings.lake_path), settings.tracking_uri, settings.artifact_root,
                          _output_path(args.report, settings) if args.report else None)
    print("\n".join(report.lines()))


def cmd_monitor(args, settings) -> None:
    import ray

    from tickray.ops.runtime import connect_ray
    from tickray.training.monitor import Monitor, MonitorActor, load_monitor_config

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


def register(sub) -> None:
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
