"""Training: purged folds, the leakage canary, the stacked ensemble on the synthetic market, the MLflow
registry and its promotion rule, and errors that name their cause before any cluster time is spent."""

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_TRAINING as SMALL
from mlflow.tracking import MlflowClient
from tickray.errors import ConfigError
from tickray.features.windows import complete_windows
from tickray.research.rows import (
    NS,
    Rows,
    check_lake,
    load_rows,
    observable,
    purged_kfold,
    shuffle_within_blocks,
    split_windows,
    usable,
)
from tickray.training import registry
from tickray.training.config import load_config, parse_config
from tickray.training.pipeline import run_training

# ---- config and data errors: one line, before any cluster time ------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"models": {"xgboost": {}, "randomforest": {}}}, "unknown model 'randomforest' (known: xgboost, lstm, transformer)"),
    ({"split": {"folds": 3, "purge": 5}}, "unknown key 'split.purge'"),
    ({"models": {"lstm": {"hidden": 30, "heads": 4}}}, "hidden (30) must be a multiple of heads (4)"),
    ({"models": {}}, "name at least one of xgboost, lstm, transformer"),
    ({"split": {"test_fraction": 0.7}}, "split.test_fraction: Input should be less than 0.5"),
    ({"data": {"features": ["ofi_30s", "ofi_7s"]}}, "data: Value error, unknown feature(s) ofi_7s"),
    ({"labels": {"shuffle_within_s": 300}}, "labels.shuffle_within_s (300) must be at least 2040"),
])
def test_bad_configs_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "train.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_files_and_overrides(tmp_path):
    (tmp_path / "bad.yaml").write_text("models: [xgboost\n")
    with pytest.raises(ConfigError, match="training config .*bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    cfg = load_config(None, {"models.xgboost.num_workers": 2, "data.horizons_s": [10]})
    assert cfg.models.xgboost.num_workers == 2 and cfg.data.horizons_s == [10]


def test_lake_problems_are_named_before_training(market_lake, tmp_path):
    with pytest.raises(ConfigError, match=r"no forward return fwd_ret_300s .* add the horizon"):
        check_lake(parse_config({"data": {"horizons_s": [300]}}), market_lake)
    with pytest.raises(ConfigError, match="no feature partitions .* symbols \\['NOPE'\\]"):
        check_lake(parse_config({"data": {"symbols": ["NOPE"]}}), market_lake)
    # a lake written by an older feature set: a feature is missing
    src = next((market_lake / "features").glob("date=*/symbol=*/*.parquet"))
    dst = tmp_path / "lake" / src.relative_to(market_lake)
    dst.parent.mkdir(parents=True)
    t = pq.read_table(src)
    pq.write_table(t.drop_columns(["ofi_30s"]), dst)
    with pytest.raises(ConfigError, match="feature\\(s\\) ofi_30s missing from"):
        check_lake(parse_config({}), tmp_path / "lake")


def _rows(y: np.ndarray, seconds: int) -> Rows:
    ts = np.arange(seconds, dtype=np.int64) * NS
    x = np.random.default_rng(0).normal(size=(seconds, 3)).astype(np.float32)
    sym = np.array(["X"] * seconds, dtype=object)
    return Rows(x, y.astype(np.float32), np.zeros_like(y, float), ts, sym, complete_windows(x, ts, sym, 1),
                ["a", "b", "c"], [10], 1)


def test_one_class_and_empty_windows_are_named():
    cfg = parse_config({"data": {"horizons_s": [10]}})
    with pytest.raises(ConfigError, match="up_10s has one class in the development window"):
        split_windows(_rows(np.ones((5000, 1)), 5000), cfg)
    with pytest.raises(ConfigError, match="the development window is empty"):
        split_windows(_rows(np.tile([[0.0], [1.0]], (10, 1)), 20), cfg)


# ---- folds and the canary's labels -----------------------------------------------------------------


def test_no_fitting_row_reads_into_a_held_out_fold_and_a_shorter_embargo_is_refused():
    """Features that look back 900 s, a 20-row LSTM window, a 10 s label: a fitting row after a held-out
    fold has its whole window and every feature's look-back after the fold (the embargo); one before it
    has its label end before the fold (the purge, separate). An embargo set shorter is refused."""
    config = {"data": {"horizons_s": [10]}, "split": {"folds": 3},
              "models": {"xgboost": {}, "lstm": {"window": 20}}}
    rows = _rows(np.tile([[0.0], [1.0]], (10_000, 1)), 20_000)
    rows.lookback_s = 900
    win = split_windows(rows, parse_config(config))
    for train, valid in win.folds:
        a, b = rows.ts[valid].min(), rows.ts[valid].max()
        t = rows.ts[train]
        assert (t[t > b] - 19 * NS - 900 * NS > b).all()
        assert (t[t < a] + 10 * NS < a).all()
        assert (t > b).any() or (t < a).any()
    with pytest.raises(ConfigError, match=r"split.embargo_s: 100s is shorter .*: at least 920s, or leave it unset"):
        split_windows(rows, parse_config({**config, "split": {"folds": 3, "embargo_s": 100}}))
    assert split_windows(rows, parse_config({**config, "split": {"folds": 3, "embargo_s": 2000}})).dev.size < win.dev.size



def test_purged_kfold_keeps_label_windows_and_embargo_out_of_training():
    ts = np.repeat(np.arange(10_000, dtype=np.int64) * NS, 2)  # two symbols, one row each per second
    idx = np.arange(ts.size)
    purge, embargo = 60 * NS, 90 * NS
    folds = purged_kfold(ts, idx, 5, purge, embargo)
    assert np.array_equal(np.sort(np.concatenate([va for _, va in folds])), idx)  # every row validated once
    for train, valid in folds:
        a, b = ts[valid].min(), ts[valid].max()
        t = ts[train]
        # no training label window (t, t + purge] reaches the block, nothing within the embargo after it
        assert not ((t + purge >= a) & (t <= b + embargo - NS)).any()
        assert np.intersect1d(train, valid).size == 0
        assert train.size > 0


def test_noise_labels_keep_each_blocks_balance_and_break_the_link():
    rng = np.random.default_rng(1)
    ts = np.arange(20_000, dtype=np.int64) * NS
    y = (rng.random((20_000, 2)) < np.linspace(0.2, 0.8, 20_000)[:, None]).astype(np.float32)
    noise = shuffle_within_blocks(y, ts, 1000 * NS, seed=3)
    blocks = ts // (1000 * NS)
    for b in np.unique(blocks):
        assert noise[blocks == b].sum(axis=0).tolist() == y[blocks == b].sum(axis=0).tolist()
    assert (noise != y).mean() > 0.3


# ---- the full pipeline ------------------------------------------------------------------------------


def test_ensemble_recovers_the_planted_signal_out_of_time(trained):
    """The synthetic market plants an order-flow signal: the stacked ensemble finds it on the test window,
    at least as well as its best base model and the logistic baseline (a 0.003 AUC allowance: the
    meta-learner is fitted on out-of-fold predictions, which are noisier than the final models')."""
    r = trained
    assert r.auc("ensemble", 10) >= 0.60
    for h in r.horizons:
        best_single = max(r.auc(m, h) for m in ("xgboost", "lstm", "transformer"))
        assert r.auc("ensemble", h) >= max(best_single, r.auc("logistic", h)) - 0.003, r.lines()
        assert r.auc("prior", h) == 0.5
        for metric in ("logloss", "accuracy", "balanced_accuracy", "f1", "brier"):
            assert np.isfinite(r.scores["ensemble"][h][metric])


def test_models_are_registered_with_lineage_and_nested_runs(trained, mlflow_store):
    uri = mlflow_store[0]
    client = MlflowClient(uri)
    for family in ("xgboost", "lstm", "transformer", "ensemble"):
        mv = client.get_model_version_by_alias(f"tickray-{family}", "champion")
        assert mv.tags["feature_set_version"] == "tick-v2" and mv.tags["horizons_s"] == "[10, 60]"
        assert {"git_commit", "data_range", "test_window", "feature_names"} <= mv.tags.keys()
    children = client.search_runs([client.get_run(trained.run_id).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{trained.run_id}'")
    names = {r.info.run_name for r in children}
    assert {"xgboost-fold0", "lstm-fold2", "transformer-fold1", "xgboost", "prior", "logistic", "ensemble"} <= names
    lstm = next(r for r in children if r.info.run_name == "lstm")
    assert len(client.get_metric_history(lstm.info.run_id, "valid_loss")) >= 1  # per-epoch
    # one worker asked for and rows that fit it: each final fit ran in one Ray task, and its run says so
    fitted = {r.info.run_name: r.data.params.get("fitted") for r in children}
    assert (fitted["xgboost"], fitted["lstm"], fitted["transformer"]) == (
        "in one Ray task (1 thread(s))", "in one Ray task", "in one Ray task")
    assert (pytest.approx(trained.auc("ensemble", 10))
            == client.get_run(trained.run_id).data.metrics["ensemble_test_auc_10s"])


def test_a_run_records_the_files_behind_its_rows(trained, mlflow_store, market):
    """The run's data_provenance.json names, for each lake partition it trained on, the generated files
    its rows were ingested from: that symbol's trades and book files of the day, and nothing else."""
    _, files = market
    mlflow.set_tracking_uri(mlflow_store[0])
    doc = mlflow.artifacts.load_dict(f"runs:/{trained.run_id}/data_provenance.json")
    made_of = {s: sorted(str(p.resolve()) for p in files.agg_trades + files.book_depth if p.name.startswith(s))
               for s in ("BTCUSDT", "ETHUSDT")}
    assert doc["partitions"] == {f"features/date=2024-01-01/symbol={s}": made_of[s] for s in made_of}
    assert doc["inputs"] == sorted(made_of["BTCUSDT"] + made_of["ETHUSDT"]) and len(doc["inputs"]) == 4


def test_data_is_selected_by_the_inputs_behind_it(market_lake):
    """``data.sources``: a partition is read only when every input behind it matches a glob, so rows made
    partly of other data never come in; a selection that leaves nothing says so."""
    def select(*globs: str):
        return list(check_lake(parse_config({**SMALL, "data": {**SMALL["data"], "sources": list(globs)}}), market_lake))

    assert select("*/aggtrades/BTCUSDT-*", "*/depth/BTCUSDT-*") == [("2024-01-01", "BTCUSDT")]
    assert select("*/aggtrades/*", "*/depth/*") == [("2024-01-01", "BTCUSDT"), ("2024-01-01", "ETHUSDT")]
    with pytest.raises(ConfigError, match=r"from sources matching \['\*/aggtrades/\*'\]"):
        select("*/aggtrades/*")  # the book behind every partition came from elsewhere


def test_a_dead_band_leaves_small_moves_out_of_fitting_not_out_of_the_backtest(market_lake):
    """labels.dead_band_bps: a move within the band is neither up nor down. Checked against the lake's
    forward returns read here with pyarrow: inside the band (or past the data) no label, outside it the
    sign; a row with no label left is out of fitting, while the rows a backtest trades do not change."""
    lake = pq.read_table(market_lake / "features", columns=["symbol", "ts", "fwd_ret_10s", "fwd_ret_60s"])
    lake = lake.to_pandas().sort_values(["symbol", "ts"], kind="stable")
    fwd = lake[["fwd_ret_10s", "fwd_ret_60s"]].to_numpy(float)
    band = float(np.nanmedian(np.abs(fwd[:, 0])))  # half the 10-s moves fall inside
    plain = load_rows(parse_config(SMALL), market_lake)
    banded = load_rows(parse_config({**SMALL, "labels": {"dead_band_bps": band}}), market_lake)
    assert banded.ts.tolist() == lake["ts"].astype("int64").tolist()
    inside = np.isnan(fwd) | (np.abs(fwd) <= band)
    assert np.array_equal(np.isnan(banded.y), inside)
    assert np.array_equal(banded.y[~inside], (fwd[~inside] > 0).astype(np.float32))
    assert usable(banded).sum() < usable(plain).sum()
    assert np.array_equal(usable(banded), observable(plain) & ~inside.all(axis=1))
    assert np.array_equal(observable(banded), observable(plain))


@pytest.fixture(scope="module")
def test_rows(trained, market_lake):
    """Feature rows of one symbol from the test window onwards, with the seconds before it (history)."""
    rows = load_rows(parse_config(SMALL), market_lake)
    start = trained.test["ts"].min() - 60 * NS
    sym = trained.test["symbol"].iloc[0]
    keep = np.flatnonzero((rows.symbol == sym) & (rows.ts >= start))[:600]
    frame = pd.DataFrame(rows.x[keep], columns=rows.features)
    frame.insert(0, "ts", rows.ts[keep])
    frame.insert(0, "symbol", sym)
    return frame


def test_the_registered_ensemble_predicts_like_the_trained_one(trained, mlflow_store, test_rows):
    mlflow.set_tracking_uri(mlflow_store[0])
    model = mlflow.pyfunc.load_model("models:/tickray-ensemble@champion")
    shuffled = test_rows.sample(frac=1.0, random_state=0)  # input order is kept in the output
    out = model.predict(shuffled)
    assert list(out["ts"]) == list(shuffled["ts"])
    merged = out.merge(trained.test, on=["symbol", "ts"])
    assert len(merged) > 400
    np.testing.assert_allclose(merged["prob_up_10s"], merged["ensemble_10s"], rtol=1e-5)
    np.testing.assert_allclose(merged["prob_up_60s"], merged["ensemble_60s"], rtol=1e-5)
    # the first rows lack their window of earlier seconds: no prediction, never a padded one
    first = model.predict(test_rows.iloc[:12])
    assert first["prob_up_10s"].isna().sum() == 9 and first["prob_up_10s"].notna().sum() == 3


def test_shock_detector_takes_confidence_away_in_abnormal_markets(mlflow_store, test_rows):
    mlflow.set_tracking_uri(mlflow_store[0])
    model = mlflow.pyfunc.load_model("models:/tickray-ensemble@champion")
    normal = model.predict(test_rows)
    shocked_rows = test_rows.copy()
    feats = [c for c in test_rows.columns if c not in ("symbol", "ts")]
    shocked_rows.loc[300:, feats] = shocked_rows.loc[300:, feats] * 25.0
    shocked = model.predict(shocked_rows)
    late = slice(320, None)
    assert (normal["confidence_10s"].iloc[late] > 0).mean() > 0.9
    assert (shocked["confidence_10s"].iloc[late] == 0).mean() > 0.9
    # the probability itself is the model's; only the confidence says "abnormal"
    assert shocked["prob_up_10s"].iloc[late].notna().all()


def test_promotion_needs_a_win_on_the_same_window(trained, market_lake, mlflow_store):
    uri, artifacts, storage = mlflow_store
    cfg = parse_config({**SMALL, "models": {"xgboost": {"num_boost_round": 50}},
                        "registry": {"promotion": {"metric": "auc", "margin": 0.5}}})
    report = run_training(cfg, market_lake, uri, artifacts, storage)
    decision = next(d for d in report.decisions if d.model == "tickray-xgboost")
    assert decision.challenger == "2" and decision.champion == "1" and not decision.promoted
    assert decision.champion_score == pytest.approx(
        np.mean([trained.auc("xgboost", h) for h in (10, 60)]), abs=0.01)  # the champion, rescored
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("tickray-xgboost", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tickray-xgboost", "challenger").version) == "2"
    run = next(r for r in client.search_runs([client.get_run(report.run_id).info.experiment_id],
                                             f"tags.`mlflow.parentRunId` = '{report.run_id}'")
               if r.info.run_name == "xgboost")
    assert {"promotion_auc_challenger", "promotion_auc_champion"} <= run.data.metrics.keys()
    assert run.data.tags["promotion"].startswith("tickray-xgboost: v1 stays champion, v2 is challenger (auc ")


# (metric, champion's score, challenger's score, margin, promoted?): a better, equal and worse challenger
# at several margins, on a metric where higher is better and on one where lower is.
PROMOTIONS = [
    ("auc", 0.60, 0.62, 0.0, True), ("auc", 0.60, 0.62, 0.01, True), ("auc", 0.60, 0.62, 0.02, True),
    ("auc", 0.60, 0.62, 0.05, False), ("auc", 0.60, 0.60, 0.0, False), ("auc", 0.60, 0.60, 0.01, False),
    ("auc", 0.60, 0.58, 0.0, False), ("auc", 0.60, 0.58, 0.05, False),
    ("logloss", 0.69, 0.67, 0.0, True), ("logloss", 0.69, 0.67, 0.02, True), ("logloss", 0.69, 0.67, 0.05, False),
    ("logloss", 0.69, 0.69, 0.0, False), ("logloss", 0.69, 0.71, 0.0, False), ("logloss", 0.69, 0.71, 0.01, False),
]


def test_a_challenger_is_promoted_only_when_it_wins_by_the_margin(tmp_path):
    """The registry's aliases after each decision, on a real MLflow registry: champion moves to the
    challenger only on a strict win of at least the margin (the gain equal to the margin included)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for k, (metric, champion_score, challenger_score, margin, promoted) in enumerate(PROMOTIONS):
        name = f"promotion-{k}"
        client.create_registered_model(name)
        for _ in range(2):
            client.create_model_version(name, source=str(tmp_path / name))
        client.set_registered_model_alias(name, registry.CHAMPION, "1")
        client.set_registered_model_alias(name, registry.CHALLENGER, "2")
        decision = registry.decide(client, name, "2", metric, margin, challenger_score, champion_score, "1")
        case = (metric, champion_score, challenger_score, margin)
        assert decision.promoted is promoted, case
        aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
        assert aliases == ({registry.CHAMPION: "2"} if promoted else
                           {registry.CHAMPION: "1", registry.CHALLENGER: "2"}), (case, aliases)
        assert decision.line() == (f"{name}: v2 promoted to champion" if promoted else
                                   f"{name}: v1 stays champion, v2 is challenger") + f" ({decision.reason})"
    first = registry.decide(client, "promotion-0", "2", "auc", 0.5, 0.1, None, None)  # no champion yet
    assert first.promoted and first.reason == "no champion yet"


@pytest.mark.slow
def test_leakage_canary_noise_labels_score_at_chance(market_lake, mlflow_store):
    """Labels shuffled within 1-hour blocks, through the whole pipeline: any AUC away from 0.5 would be
    leakage (a feature that sees the future, a split that lets the label through). Shorter blocks are
    refused: with 5-minute blocks XGBoost scored 0.55 at 60 s, reading each block's trend from the
    look-back features, the construction's artefact and not a leak."""
    uri, artifacts, storage = mlflow_store
    cfg = parse_config({**SMALL, "name": "canary", "registry": {"prefix": "canary"},
                        "labels": {"shuffle_within_s": 3600},
                        "models": {"xgboost": {"num_boost_round": 100}, "lstm": SMALL["models"]["lstm"],
                                   "transformer": SMALL["models"]["transformer"]}})
    report = run_training(cfg, market_lake, uri, artifacts, storage)
    print("\n".join(report.lines()))
    for model in ("xgboost", "lstm", "transformer", "logistic", "ensemble"):
        for h in (10, 60):
            assert 0.47 <= report.auc(model, h) <= 0.53, (model, h, report.lines())


@pytest.mark.slow
def test_a_feature_that_reads_one_row_ahead_is_caught_on_a_market_no_model_can_predict(ray_cluster, tmp_path):
    """The other canary. Shuffled labels cannot see a feature that reads future prices, so this one keeps
    the labels and takes the predictability out of the market: generated with no signal (each second's
    return independent of everything before it), nothing known at a row's time can predict its label, and
    the honest pipeline scores chance. Then `ret_1s` is replaced by the next row's (a feature that reads
    one row ahead), and the same training must score well above it."""
    import shutil

    from tickray.features.job import build_features
    from tickray.ingest.job import ingest
    from tickray.sim.synth import generate

    market = tmp_path / "null-market"
    generate(market, ["BTCUSDT"], days=1, seed=11, trades_per_day=20_000, capture_minutes=0, signal=0.0)
    honest, leaky = tmp_path / "honest", tmp_path / "leaky"
    ingest([market / "aggtrades", market / "depth"], honest)
    build_features(honest)
    shutil.copytree(honest, leaky)
    for path in (leaky / "features").rglob("*.parquet"):
        table = pq.read_table(path)
        ahead = np.append(table["ret_1s"].to_numpy(zero_copy_only=False)[1:], np.nan)
        pq.write_table(table.set_column(table.schema.get_field_index("ret_1s"), "ret_1s", pa.array(ahead, table["ret_1s"].type)), path)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = parse_config({**SMALL, "name": "leak-canary", "registry": {"prefix": "leak"},
                        "data": {"horizons_s": [10], "train_every_s": 4},
                        "models": {"xgboost": {"num_boost_round": 100}, "lstm": None, "transformer": None}})
    auc = {}
    for name, lake_root in (("honest", honest), ("leaky", leaky)):
        report = run_training(cfg, lake_root, uri, str(tmp_path / "artifacts"), tmp_path / "ray", register=False)
        print(name, "\n".join(report.lines()))
        auc[name] = {m: report.auc(m, 10) for m in ("xgboost", "logistic", "ensemble")}
    assert all(0.46 <= a <= 0.54 for a in auc["honest"].values()), auc
    assert all(a >= 0.56 and a - auc["honest"][m] >= 0.04 for m, a in auc["leaky"].items()), auc


@pytest.mark.slow
def test_train_job_submits_to_a_ray_head_as_is(market_lake, ray_head, tmp_path):
    """`ray job submit … -- python jobs/train.py --config …` against a head started like `tickray up`:
    the logs are followed to the end and the registered model is in the job's MLflow store."""
    import json

    from conftest import REPO, ray_job

    env = ray_head
    runtime_env = {"env_vars": {"TICKRAY_STATE_DIR": env["TICKRAY_STATE_DIR"]}}

    def submit(*args: str):
        return ray_job(env, "submit", "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
                       "--", "python", "jobs/train.py", *args)

    ok = submit("--config", "jobs/configs/train-synthetic.yaml", "--set", f"data.lake={market_lake}",
                "--set", "models.lstm=null", "--set", "models.transformer=null", "--set", "registry.prefix=job",
                "--set", "models.xgboost.num_boost_round=60")  # the job's path is under test, not the model
    assert ok.returncode == 0, ok.stdout[-4000:] + ok.stderr[-2000:]
    assert "succeeded" in ok.stdout and "job-ensemble: v1 promoted to champion" in ok.stdout
    bad = submit("--set", "models.randomforest={}")
    assert bad.returncode != 0 and "unknown model 'randomforest'" in bad.stdout + bad.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    assert client.get_model_version_by_alias("job-ensemble", "champion").tags["feature_set_version"] == "tick-v2"


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_the_shock_detectors_numpy_scorer_equals_sklearns(max_features):
    """Serving scores the isolation forest with its own tree walk (sklearn's costs ~10 ms a call): the
    scores must be sklearn's, also for forests whose trees each saw a subset of the columns."""
    from sklearn.ensemble import IsolationForest
    from tickray.training.ensemble import ForestScorer

    rng = np.random.default_rng(3)
    fit = rng.normal(size=(3000, 12))
    forest = IsolationForest(n_estimators=50, max_features=max_features, random_state=0).fit(fit)
    probe = np.vstack([rng.normal(size=(500, 12)), rng.normal(scale=6, size=(500, 12)), fit[:5]])
    np.testing.assert_allclose(ForestScorer(forest).score_samples(probe), forest.score_samples(probe), atol=1e-12)


def test_xgboost_fits_in_one_task_as_on_ray_train(ray_cluster, tmp_path, monkeypatch):
    """The final XGBoost fit in one Ray task (``distributed: never``, and ``auto`` when the rows fit a
    worker) makes the same boosters as Ray Train's XGBoostTrainer with one worker (``always``) on the
    same rows and seed: xgboost's hist method is deterministic for the same rows, order and threads."""
    from tickray.training import boosting
    from tickray.training.config import XGBoostConfig

    rng = np.random.default_rng(3)
    n, f = 4000, 6
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0] + x[:, 1] * x[:, 2]))).astype(np.float32)[:, None]
    rows = Rows(x, y, np.zeros_like(y, dtype=float), np.arange(n, dtype=np.int64) * NS, np.array(["X"] * n, object),
                np.ones(n, bool), [f"f{i}" for i in range(f)], [10], 1)
    train, valid = np.arange(3000), np.arange(3000, n)
    fits = {}
    for mode in ("never", "always", "auto"):
        cfg = XGBoostConfig(distributed=mode, num_boost_round=40, early_stopping_rounds=10)
        model, history, where = boosting.train_xgboost(rows, train, valid, cfg, 7, tmp_path, f"fit-{mode}")
        fits[mode] = (model, history, where)
        assert (tmp_path / f"fit-{mode}").is_dir()  # checkpointed either way
    assert [w for *_, w in fits.values()] == ["in one Ray task (1 thread(s))", "on Ray Train (1 worker(s))",
                                              "in one Ray task (1 thread(s))"]
    (one, h1, _), (train_, h2, _) = fits["never"], fits["always"]
    assert [b.save_raw("json") for b in one.boosters] == [b.save_raw("json") for b in train_.boosters]
    assert h1 == h2 and np.array_equal(one.predict(x, valid), train_.predict(x, valid))
    # a training set too large for a worker's memory goes to Ray Train
    monkeypatch.setattr(boosting, "XGB_MEMORY_FACTOR", 10**12)
    assert boosting.fit_path(XGBoostConfig(), x, train) == "ray train"


def test_a_sequence_model_fits_in_one_task_or_on_ray_train_as_asked(ray_cluster, tmp_path):
    """``distributed: auto`` with one worker fits in one Ray task; ``always`` on TorchTrainer. Both keep the
    best epoch, its history and a checkpoint, and predict every complete window."""
    from tickray.training.config import SequenceConfig
    from tickray.training.trainers import fit_sequence_where_cheapest

    rng = np.random.default_rng(5)
    n = 1500
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(np.float32)[:, None]
    ts, sym = np.arange(n, dtype=np.int64) * NS, np.array(["X"] * n, object)
    rows = Rows(x, y, np.zeros_like(y, dtype=float), ts, sym, complete_windows(x, ts, sym, 5), ["a", "b", "c"], [10], 5)
    train, valid = np.arange(5, 1200), np.arange(1200, n)
    for mode, where in (("auto", "in one Ray task"), ("always", "on Ray Train (1 worker(s))")):
        cfg = SequenceConfig(distributed=mode, window=5, hidden=8, heads=2, epochs=2, batch_size=128)
        model, history, said = fit_sequence_where_cheapest("lstm", rows, train, valid, cfg, 7, tmp_path, f"lstm-{mode}")
        assert said == where and [h["epoch"] for h in history] == [1, 2]
        assert list((tmp_path / f"lstm-{mode}").rglob("model.pt"))
        p = model.predict(x, valid)
        assert p.shape == (valid.size, 1) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
