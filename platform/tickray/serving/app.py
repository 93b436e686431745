"""Ray Serve: the registry's champion ensemble over HTTP and WebSocket, fed by the online features the
stream actors keep in Redis.

Two deployments: ``Gateway``, the FastAPI ingress; and ``FamilyModel``, one deployment per base family
(XGBoost, LSTM, Transformer) reached through handles, each scaled and given GPUs on its own. With
``split_families: false`` the families run in the gateway's replica instead: no hop, the fastest on one
node. Routes: ``POST /v1/predict``, ``GET /v1/predictions/{symbol}/latest``, ``WS /v1/stream``,
``GET /v1/models``, ``GET /v1/health``, and the OpenAPI docs at ``/docs``.

The gateway composes parts with one job each: ``security.Guard`` (who may call, how often, how much),
``lifecycle.ServedVersions`` (champion and canary following the registry, realised accuracy),
``predictor.Predictor`` (features to predictions) and ``push`` (the WebSocket). Every answer names the
version that made it.
"""

# No `from __future__ import annotations` here: FastAPI must see the route parameters' real types
# (a string annotation `Request` turns into a required query parameter named "request").
import ipaddress
import logging
import time

import numpy as np
import redis.asyncio as aioredis
from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from tickray.errors import ConfigError
from tickray.serving.api import ApiError, PredictRequest, api, invalid_field
from tickray.serving.config import ServeConfig, parse_serve_config
from tickray.serving.features import freshness
from tickray.serving.lifecycle import ServedVersions
from tickray.serving.metrics import ServeMetrics
from tickray.serving.models import ModelVersions, bases_of, describe
from tickray.serving.predictor import Predictor
from tickray.serving.push import Sessions, push_predictions
from tickray.serving.security import Guard
from tickray.training import registry

log = logging.getLogger("ray.serve")
APP_NAME = "tickray"


@serve.deployment
class FamilyModel:
    """One base family of the served ensemble, for any version the gateway asks for."""

    def __init__(self, tracking_uri: str, model: str, family: str):
        import torch

        self.family = family
        self.versions = ModelVersions(tracking_uri, model, device="cuda" if torch.cuda.is_available() else "cpu")
        champion = self.versions.aliases()[registry.CHAMPION]
        if champion is not None:  # ready before the first request: a load takes longer than a request may
            self.versions.get_now(champion)

    async def load(self, version: str) -> str:
        await self.versions.get(version)
        return self.family

    async def predict(self, version: str, x: np.ndarray, ends: np.ndarray) -> np.ndarray:
        loaded = await self.versions.get(version)
        return bases_of(loaded)[self.family].predict(x, ends)


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, cfg: ServeConfig, families: dict[str, DeploymentHandle]):
        self.cfg = cfg
        self.redis = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=2)
        self.guard = Guard(cfg, self.redis)
        self.served = ServedVersions(cfg, families, self.redis)
        self.metrics = ServeMetrics()
        self.predictor = Predictor(cfg, families, self.served, self.redis, self.metrics)
        self.sessions = Sessions(cfg.connections)
        if not self.guard.auth.enabled:
            log.warning("tickray serve: no API keys and no JWT secret configured; the API is open")

    async def _admit(self, conn, query_key: bool = False) -> str:
        self.served.follow()
        return await self.guard.admit(conn, query_key)

    async def _answer(self, route: str, work) -> JSONResponse:
        """Run a route's work, counting its answer by route and status code."""
        t0 = time.perf_counter()
        code = 500
        try:
            out = await work()
            code = 200
            return JSONResponse(out)
        except ApiError as e:
            code = e.status
            raise
        finally:
            self.metrics.requests.inc(tags={"route": route, "code": str(code)})
            self.metrics.stage("total", t0)

    @api.post("/v1/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, request: Request) -> JSONResponse:
        """Probabilities of an up-move at every horizon, from symbols' live features or explicit rows."""
        async def work():
            await self._admit(request)
            try:
                req = PredictRequest.model_validate_json(await self.guard.body(request))
            except ValidationError as e:
                raise invalid_field(e.errors()) from None
            if bool(req.symbols) == bool(req.rows):
                raise ApiError(422, "body: give either 'symbols' (live features) or 'rows' (explicit features)")
            return await (self.predictor.from_symbols(req.symbols) if req.symbols
                          else self.predictor.from_rows(req.rows))
        return await self._answer("/v1/predict", work)

    @api.get("/v1/predictions/{symbol}/latest")
    async def latest(self, symbol: str, request: Request) -> JSONResponse:
        """The prediction from a symbol's latest live features."""
        async def work():
            await self._admit(request)
            out = await self.predictor.from_symbols([symbol])
            return {"model": out["model"], **out["predictions"][0]}
        return await self._answer("/v1/predictions/latest", work)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        """The served versions, their aliases, families, meta-learner weights and feature set."""
        async def work():
            await self._admit(request)
            return {"model": self.cfg.model, "canary_share": self.cfg.canary_share,
                    "split_families": self.cfg.split_families,
                    "versions": {a: {**describe(m), **({"realised": t.summary()} if (t := self.served.tracker(m)) else {})}
                                 for a, m in self.served.served().items()}}
        return await self._answer("/v1/models", work)

    @api.get("/v1/health")
    async def health(self) -> JSONResponse:
        """Readiness: the models loaded and how fresh each symbol's live features are (no key needed)."""
        async def work():
            self.served.follow()
            champion = self.served.champion
            return {"status": "ready", "model": self.cfg.model, "model_version": champion.version,
                    "versions": {a: m.version for a, m in self.served.served().items()},
                    "horizons_s": champion.horizons, "feature_set_version": champion.model.feature_set_version,
                    "auth": "on" if self.guard.auth.enabled else "off",
                    "features": await freshness(self.redis, self.cfg.stale_after_s)}
        return await self._answer("/v1/health", work)

    @api.websocket("/v1/stream")
    async def stream(self, ws: WebSocket) -> None:
        """Send ``{"subscribe": ["BTCUSDT", ...]}`` (or ``"unsubscribe"``); receive a prediction for every
        new feature row of the subscribed symbols, with the row's age when it was pushed."""
        try:
            await self._admit(ws, query_key=True)
        except ApiError as e:
            await ws.close(code=1008 if e.status == 401 else 1013, reason=e.detail[:120])
            return
        await ws.accept()
        with self.sessions.hold(ws) as refused:
            if refused:  # accepted first, so that the client sees the code and the reason
                await ws.close(code=1013, reason=refused)
                return
            await push_predictions(ws, self.redis, self.predictor, self.cfg.max_symbols,
                                   self.cfg.connections.websocket_idle_s)


def build(cfg: ServeConfig) -> serve.Application:
    """The application graph: the gateway, and a FamilyModel deployment per base family of the current
    champion when the families are split out."""
    handles = {}
    if cfg.split_families:
        for fam in bases_of(ModelVersions(cfg.tracking_uri, cfg.model).champion_now()):
            handles[fam] = FamilyModel.options(name=f"Family-{fam}", logging_config=cfg.logging_config(),
                                               **cfg.families.options()).bind(cfg.tracking_uri, cfg.model, fam)
    return Gateway.options(logging_config=cfg.logging_config(),
                           **cfg.gateway.options(extra_slots=cfg.connections.websockets)).bind(cfg, handles)


def app_builder(args: dict) -> serve.Application:
    """For ``serve run serve/config.yaml`` / ``serve deploy``: the application's args are a ServeConfig."""
    return build(parse_serve_config(args, "serve application args"))


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def check_exposure(cfg: ServeConfig, host: str, insecure: bool) -> None:
    """An API without authentication is bound to a loopback address only, unless ``insecure``."""
    if not (cfg.auth_enabled or insecure or is_loopback(host)):
        raise ConfigError(f"serve: refusing to bind {host} without authentication: configure API keys "
                          f"({cfg.api_keys_env} or api_keys_sha256) or a JWT secret ({cfg.jwt_secret_env}), "
                          "or pass --insecure to serve an open API on a non-loopback address")


def deploy(cfg: ServeConfig, host: str, port: int, name: str = APP_NAME, insecure: bool = False) -> str:
    """Deploy (or update) the app on the connected Ray cluster; returns its base URL."""
    check_exposure(cfg, host, insecure)
    serve.start(http_options={"host": host, "port": port}, logging_config=cfg.logging_config())  # the proxy's
    # Ray applies http_options only when Serve first starts on a cluster: where it already runs, the app
    # is served where its proxies listen, and that is the URL to give.
    http = serve.context._get_global_client().http_config
    if (http.host, http.port) != (host, port):
        log.warning("Serve already runs on this cluster at %s:%s; the app is served there, not at %s:%s",
                    http.host, http.port, host, port)
    serve.run(build(cfg), name=name, route_prefix="/")
    return f"http://{http.host}:{http.port}"
