from pathlib import Path

import pytest
from tickray.config import load_settings
from tickray.errors import ConfigError


def test_defaults_run_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.redis_port != 6379  # a Ray head with an autoscaling config listens there
    assert s.tracking_uri == f"sqlite:///{tmp_path / '.tickray' / 'mlflow.db'}"
    assert s.lake_path == tmp_path / ".tickray" / "lake"
    assert s.ray_address == ""


def test_environment_beats_yaml_and_overrides_beat_both(tmp_path, monkeypatch):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("redis_port: 7001\nserve_port: 9001\n")
    monkeypatch.setenv("TICKRAY_REDIS_PORT", "7002")
    s = load_settings(cfg)
    assert (s.redis_port, s.serve_port) == (7002, 9001)
    assert load_settings(cfg, serve_port=9002).serve_port == 9002


def test_unknown_yaml_key_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("redis_prot: 7001\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    msg = str(e.value)
    assert "redis_prot" in msg and str(cfg) in msg and "\n" not in msg


def test_unknown_environment_variable_is_an_error(monkeypatch):
    monkeypatch.setenv("TICKRAY_REDIS_PROT", "1")
    with pytest.raises(ConfigError, match="TICKRAY_REDIS_PROT"):
        load_settings()


def test_the_apis_secrets_in_the_environment_are_not_settings_but_are_read_by_serve(monkeypatch):
    """`TICKRAY_API_KEYS=… tickray serve`, as the README says: the settings let the secrets pass, and the
    serving config takes them in (a key hashed, the JWT secret kept out of its dump)."""
    from tickray.serving.config import parse_serve_config
    from tickray.serving.security import hash_key

    monkeypatch.setenv("TICKRAY_API_KEYS", "tk_one, tk_two")
    monkeypatch.setenv("TICKRAY_JWT_SECRET", "s3cret")
    load_settings()
    cfg = parse_serve_config({"tracking_uri": "sqlite:///x.db", "redis_url": "redis://127.0.0.1:1/0"})
    assert cfg.api_keys_sha256 == sorted([hash_key("tk_one"), hash_key("tk_two")])
    assert cfg.jwt_secret == "s3cret" and "s3cret" not in str(cfg.model_dump())
    monkeypatch.setenv("TICKRAY_API_KEY", "tk_typo")  # a near miss is still refused
    with pytest.raises(ConfigError, match="TICKRAY_API_KEY;"):
        load_settings()


def test_bad_value_names_the_key(monkeypatch):
    monkeypatch.setenv("TICKRAY_SERVE_PORT", "70000")
    with pytest.raises(ConfigError, match="serve_port"):
        load_settings()


def test_unreadable_or_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_every_shipped_job_config_loads():
    """jobs/configs/*.yaml as their jobs read them: a renamed or removed key fails here, not in a job."""
    from tickray.backtest.config import load_backtest_config
    from tickray.training.config import load_config
    from tickray.training.monitor import load_monitor_config

    configs = sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        loader = (load_backtest_config if path.name.startswith("backtest-")
                  else load_monitor_config if path.name.startswith("monitor") else load_config)
        loader(path)
