"""The Serve application's settings: the ``args`` of an application in ``serve/config.yaml``.

Every key is known (a typo is a one-line error naming it); secrets never sit in the file in clear:
API keys are listed as SHA-256 hashes, or read from an environment variable and hashed at build time.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from tickray.config import API_KEYS_ENV, JWT_SECRET_ENV, StrictModel, load_settings
from tickray.errors import ConfigError
from tickray.serving.security import hash_key
from tickray.training.config import one_line_error


class Replicas(StrictModel):
    """Serve autoscaling: replicas between min and max, scaled on ongoing requests per replica."""
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # Requests a replica takes at once; beyond it callers queue in Serve's router, which backs off
    # (Serve's default of 5 made 32 clients on one gateway wait seconds).
    max_ongoing_requests: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _bounds(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self

    def options(self, extra_slots: int = 0) -> dict:
        """Serve's deployment options; ``extra_slots``: ongoing requests a replica takes beyond
        ``max_ongoing_requests`` (the gateway's WebSocket sessions, which never take a request's slot)."""
        actor = {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}
        common = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests + extra_slots}
        if self.min_replicas == self.max_replicas:
            return {"num_replicas": self.min_replicas, **common}
        return {**common, "autoscaling_config": {
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests}}


class RateLimit(StrictModel):
    """Per API key, JWT subject, or (auth off) client address: at most ``requests`` in any ``window_s`` seconds (a sliding window)."""
    requests: int = Field(600, ge=1)
    window_s: float = Field(60.0, gt=0)


class Connections(StrictModel):
    """What slow or long-lived connections may hold of a gateway replica, so that no caller can take the
    API away from the others. A client is its address as the proxy saw it (X-Forwarded-For is not trusted)."""
    # WebSocket sessions per replica, in slots of their own beside max_ongoing_requests; one more is
    # accepted and closed at once (1013, try again later), as is one over the per-client cap.
    websockets: int = Field(32, ge=1)
    websockets_per_client: int = Field(8, ge=1)
    # A session subscribed to nothing this long is closed (1000). Dead peers are the proxy's: uvicorn
    # pings every 20 s and drops a peer that has not answered in 20 s.
    websocket_idle_s: float = Field(60.0, gt=0)
    # A request body not complete this long after the request reached the replica: 408.
    body_timeout_s: float = Field(5.0, gt=0)
    # Request bodies one client may be sending at once (a slow sender holds a request slot): 429 beyond.
    bodies_per_client: int = Field(4, ge=1)


class RealisedWeights(StrictModel):
    """Ensemble weights that follow each family's realised accuracy on the live predictions (see
    tickray.serving.realised)."""
    window: int = Field(600, ge=10)  # the latest scored predictions per family and horizon
    min_scored: int = Field(100, ge=1)  # scores every family needs before its horizon is pooled
    score_every_s: float = Field(2.0, gt=0)


class ServeConfig(StrictModel):
    # The registered ensemble served (its ``champion``; ``challenger`` takes canary_share of requests).
    model: str = "tickray-ensemble"
    # Blank: the project's settings (TICKRAY_* variables) where the application is built.
    tracking_uri: str = ""
    redis_url: str = ""
    canary_share: float = Field(0.0, ge=0, le=1)
    # True: one deployment per base-model family, reached through handles (scale or give GPUs to one
    # family alone); False: every family in the gateway's replica, no hop (the fastest on one node).
    split_families: bool = True
    gateway: Replicas = Replicas()
    families: Replicas = Replicas()
    # A family that has not answered in this time is left out of the answer (which says so).
    family_timeout_s: float = Field(2.0, gt=0)
    # None: the stacked meta-learner combines the families; set: weights that follow realised accuracy.
    realised_weights: RealisedWeights | None = None
    # Features older than this are stale: "reject" answers 503, "flag" answers with confidence 0; the same
    # for a row whose book the stream was rebuilding (book_synced false: degraded "book").
    stale_after_s: float = Field(10.0, gt=0)
    stale_policy: Literal["reject", "flag"] = "flag"
    # How often replicas look for a moved alias in the registry.
    reload_poll_s: float = Field(2.0, gt=0)
    connections: Connections = Connections()
    # Authentication: SHA-256 hex digests of API keys, plus the keys in the variable api_keys_env names
    # (comma-separated, hashed when the app is built), plus HS256 JWTs signed with the secret in the
    # variable jwt_secret_env. None of them configured: no authentication, callers told apart (and
    # rate-limited) by address; `tickray serve` then refuses a non-loopback host without --insecure.
    api_keys_sha256: list[str] = Field(default_factory=list)
    api_keys_env: str = API_KEYS_ENV
    jwt_secret_env: str = JWT_SECRET_ENV
    jwt_secret: str = Field("", exclude=True, repr=False)  # filled from jwt_secret_env at build time
    rate_limit: RateLimit | None = RateLimit()
    # Origins whose pages may call the API from a browser (e.g. "https://dash.example.com"); none: CORS off.
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(65_536, ge=256)
    max_symbols: int = Field(100, ge=1)
    # Serve's line per request in the proxy's and replicas' logs: off, as uvicorn's is in the benchmark's
    # plain app (each costs CPU on the request path); warnings and errors are logged either way.
    access_log: bool = False
    # Serve's own lines below this level (deploying, replicas added, routes updated: INFO) go to its log
    # files under the Ray session, not the console; tickray says where the app is served.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    def logging_config(self) -> dict:
        """Serve's LoggingConfig (deployments, and the proxy through serve.start)."""
        return {"enable_access_log": self.access_log, "log_level": self.log_level}

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys_sha256 or self.jwt_secret)


def parse_serve_config(args: dict, where: str = "serve config") -> ServeConfig:
    """The application's args → :class:`ServeConfig`, with the keys and secret from the environment."""
    try:
        cfg = ServeConfig.model_validate(args)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, where)) from None
    env_keys = [k.strip() for k in os.environ.get(cfg.api_keys_env, "").split(",") if k.strip()]
    bad = [h for h in cfg.api_keys_sha256 if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower())]
    if bad:
        raise ConfigError(f"{where}: api_keys_sha256: {bad[0]!r} is not a SHA-256 hex digest "
                          "(`tickray serve --new-key` prints one)")
    urls = {}
    if not (cfg.tracking_uri and cfg.redis_url):
        settings = load_settings()
        urls = {"tracking_uri": cfg.tracking_uri or settings.tracking_uri, "redis_url": cfg.redis_url or settings.redis_url}
    return cfg.model_copy(update={
        **urls,
        "api_keys_sha256": sorted({h.lower() for h in cfg.api_keys_sha256} | {hash_key(k) for k in env_keys}),
        "jwt_secret": os.environ.get(cfg.jwt_secret_env, "")})
