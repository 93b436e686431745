"""`tickray demo`: every stage of the platform, real and small, end to end on the embedded default.

generate → ingest (Ray Data) → features (Ray Data) → train (Ray Train, MLflow registry) → deploy (Ray
Serve) → a stream actor replays the generated WebSocket capture from a local exchange → predictions over
HTTP from Serve → a walk-forward backtest with its HTML report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import ray

from tickray.backtest.config import BacktestConfig
from tickray.backtest.walkforward import run_backtest
from tickray.config import Settings
from tickray.errors import DataFormatError
from tickray.features.job import build_features
from tickray.ingest.job import ingest
from tickray.ops import stack
from tickray.ops.runtime import connect_ray
from tickray.serving.app import deploy
from tickray.serving.config import ServeConfig
from tickray.sim.exchange import ReplayExchange
from tickray.sim.synth import generate
from tickray.stream.actor import StreamIngestActor, wait_for_messages
from tickray.stream.keys import forget
from tickray.training.config import parse_config
from tickray.training.pipeline import run_training

# The demo's training: XGBoost stacked (one base model keeps it to a minute; jobs/configs/ has the
# LSTM and Transformer), beside the baselines, at both label horizons.
DEMO_TRAINING = {"data": {"horizons_s": [10, 60], "train_every_s": 2}, "split": {"folds": 3},
                 "models": {"xgboost": {}}}
# The same models walk-forward (jobs/configs/backtest-synthetic.yaml is the job form): retrained on the
# past in each of 3 windows, sized by the ensemble's confidence, after Binance USD-M taker costs.
DEMO_BACKTEST = {"train": {**DEMO_TRAINING, "data": {"horizons_s": [10, 60], "train_every_s": 4},
                           "models": {"xgboost": {"num_boost_round": 150, "early_stopping_rounds": 20}}},
                 "walk_forward": {"windows": 3},
                 "strategy": {"threshold": 0.05, "sizing": "confidence", "full_size_confidence": 0.3,
                              "cost_aware": True}}


def _selecting(config: dict, data_dir: Path, symbols: list[str], first: date, days: int) -> dict:
    """A demo config that reads exactly the market the demo generated, whatever else the lake holds."""
    selection = {"symbols": symbols, "start": first.isoformat(),
                 "end": (first + timedelta(days=days - 1)).isoformat(), "sources": [f"{data_dir.resolve()}/*"]}
    if "train" in config:
        return {**config, "train": _selecting(config["train"], data_dir, symbols, first, days)}
    return {**config, "data": {**config["data"], **selection}}


@dataclass
class DemoResult:
    rows_ingested: dict[str, int] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    predictions: list[dict] = field(default_factory=list)
    backtest: dict = field(default_factory=dict)
    report_path: Path | None = None
    stream_stats: dict = field(default_factory=dict)


def run_demo(settings: Settings, symbols: list[str], days: int = 1, seed: int = 7,
             trades_per_day: int = 200_000, replay_speed: float = 60.0,
             say: Callable[[str], None] = print) -> DemoResult:
    result = DemoResult()
    state = settings.state_path
    data_dir = state / "demo" / "market"
    lake_root = settings.lake_path
    t_all = time.perf_counter()

    def stage(name: str) -> float:
        say(f"\n== {name}")
        return time.perf_counter()

    t = stage("1/9 generate a synthetic market")
    first = date(2024, 1, 1)
    files = generate(data_dir, symbols, days, seed, first, trades_per_day=trades_per_day)
    say(f"{files.n_trades:,} trades, {files.n_depth_events:,} depth updates, "
        f"{len(files.all())} files under {data_dir} ({time.perf_counter() - t:.1f}s)")

    t = stage("2/9 Ray and Redis")
    dashboard = connect_ray(settings)
    if not stack.redis_status(settings).running:
        stack.start_redis(settings)
    stack.check_redis(settings)
    say(f"Ray {ray.__version__}: {ray.cluster_resources().get('CPU', 0):.0f} CPUs; dashboard {dashboard or 'off'}")
    say(f"Redis at {settings.redis_host}:{settings.redis_port} ({time.perf_counter() - t:.1f}s)")

    t = stage("3/9 ingest with Ray Data into the Parquet lake")
    rep = ingest([data_dir / "aggtrades", data_dir / "depth", data_dir / "klines"], lake_root)
    for line in rep.lines():
        say(line)
    if rep.failed:
        raise DataFormatError(f"the demo's own market did not ingest: {rep.failed[0].input}: {rep.failed[0].reason}")
    result.rows_ingested = dict(rep.rows)
    say(f"rows ingested: {sum(rep.rows.values()):,} into {lake_root} ({rep.seconds:.1f}s)")

    stage("4/9 features and labels with Ray Data")
    for line in build_features(lake_root).lines():
        say(line)

    stage("5/9 train XGBoost (Ray Train) and its stacked ensemble, register in MLflow")
    training = parse_config(_selecting(DEMO_TRAINING, data_dir, symbols, first, days), "demo")
    tr = run_training(training, lake_root, settings.tracking_uri, settings.artifact_root, state / "ray_results", say=say)
    for line in tr.lines():
        say(line)
    result.model_name = "tickray-ensemble"
    result.model_version = tr.versions[result.model_name]

    t = stage("6/9 deploy on Ray Serve")
    serving = ServeConfig(model=result.model_name, tracking_uri=settings.tracking_uri, redis_url=settings.redis_url)
    base = deploy(serving, settings.serve_host, settings.serve_port)
    health = _health(base)
    say(f"Serve at {base}: {health} ({time.perf_counter() - t:.1f}s)")

    _stream_and_predict(settings, symbols, files.ws_captures, base, replay_speed, result, stage, say)
    stage("9/9 walk-forward backtest of the ensemble and the baselines, with a report")
    reports = state / "reports"
    stamp = datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')
    backtest = BacktestConfig.model_validate(_selecting(DEMO_BACKTEST, data_dir, symbols, first, days))
    bt = run_backtest(backtest, lake_root, settings.tracking_uri, settings.artifact_root,
                      reports / f"backtest-{stamp}.html", say=say)
    for line in bt.lines():
        say(line)
    result.backtest = {m: {f"{h}s": p for h, p in by_h.items()} for m, by_h in bt.performance.items()}
    result.report_path = reports / f"demo-{stamp}.json"
    result.report_path.write_text(json.dumps({
        "model": result.model_name, "model_version": result.model_version,
        "test_scores": {m: {f"{h}s": s for h, s in by_h.items()} for m, by_h in tr.scores.items()},
        "backtest": result.backtest, "backtest_report": str(bt.report_path), "predictions": result.predictions,
        "stream": result.stream_stats, "rows_ingested": result.rows_ingested}, indent=2, default=str))
    say(f"\n== done in {time.perf_counter() - t_all:.0f}s. Where to look:")
    _where_to_look(settings, symbols, dashboard, base, bt.report_path, result.report_path, say)
    return result


def _health(base: str, wait_s: float = 60) -> dict:
    """The new app's health, once its proxy takes connections (serve.run returns when the replicas are
    ready; on a loaded machine the HTTP proxy may start listening a moment later)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return httpx.get(f"{base}/v1/health", timeout=30).json()
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _stream_and_predict(settings: Settings, symbols: list[str], captures: list, base: str, replay_speed: float,
                        result: DemoResult, stage: Callable[[str], float], say: Callable[[str], None]) -> None:
    """Steps 7 and 8: the capture replayed by a local exchange into a stream actor, then predictions for
    its live features over HTTP."""
    t = stage("7/9 stream: replay the WebSocket capture through a local exchange into a stream actor")
    exchange = ReplayExchange(captures, speed=replay_speed).start()
    forget(stack.redis_client(settings), symbols)  # a replay is its own session: not one to resume
    actor = StreamIngestActor.remote(symbols, exchange.ws_url, exchange.rest_url, settings.redis_url)
    try:
        ray.get(actor.start.remote())
        total = len(exchange.messages)
        stats = result.stream_stats = wait_for_messages(actor, total)
        say(f"{stats['messages'].get('received', 0):,} of {total:,} messages from {exchange.ws_url}; "
            f"features published {stats['features_published']}; quarantined {stats['quarantined'] or 'none'}; "
            f"book {stats['book']} ({time.perf_counter() - t:.1f}s)")

        stage("8/9 predictions over HTTP from Ray Serve")
        resp = httpx.post(f"{base}/v1/predict", json={"symbols": symbols}, timeout=30)
        resp.raise_for_status()
        body = resp.json()
        result.predictions = body["predictions"]
        for p in body["predictions"]:
            each = ", ".join(f"P(up in {h}) = {v['prob_up']:.3f} (confidence {v['confidence']:.3f})"
                             for h, v in p["horizons"].items())
            say(f"POST /v1/predict → {p['symbol']}: {each}, model v{p['model_version']}, "
                f"features {p['feature_age_s']}s old")
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)
        exchange.stop()


def _where_to_look(settings: Settings, symbols: list[str], dashboard: str | None, base: str, backtest_report,
                   summary, say: Callable[[str], None]) -> None:
    say(f"Ray dashboard:  {dashboard or '(not running)'}")
    say(f"MLflow UI:      mlflow ui --backend-store-uri {settings.tracking_uri}")
    say(f"Serve:          curl -s -XPOST {base}/v1/predict -H 'content-type: application/json' -d '{{\"symbols\": {json.dumps(symbols)}}}'")
    say(f"Backtest:       {backtest_report}")
    say(f"Summary:        {summary}")
    say("Stop the stack: tickray down")
