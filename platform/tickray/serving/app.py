"""Ray Serve: the registry's champion ensemble over HTTP and WebSocket, fed by the online features the
stream actors keep in Redis.

Two deployments: ``Gateway``, the FastAPI ingress that authenticates, rate-limits, reads features and
combines the base models with the ensemble's meta-learner; and ``FamilyModel``, one deployment per base
family (XGBoost, LSTM, Transformer) reached through handles, each scaled and given GPUs on its own. With
``split_families: false`` the families run in the gateway's replica instead: no hop, the fastest on one
node. Routes: ``POST /v1/predict``, ``GET /v1/predictions/{symbol}/latest``, ``WS /v1/stream``,
``GET /v1/models``, ``GET /v1/health``, and the OpenAPI docs at ``/docs``.

Lifecycle: replicas follow the registry's aliases. When ``champion`` moves, the new version is loaded
beside the old one and swapped in; no request fails or waits on the registry. ``canary_share`` of the
requests go to ``challenger``. Every answer names the version that made it.

A live prediction is computed once per version and published feature row: callers asking before the
next row (a second later) get the same answer, each with its own feature age and stale flag.
"""

# No `from __future__ import annotations` here: FastAPI must see the route parameters' real types
# (a string annotation `Request` turns into a required query parameter named "request").
import asyncio
import logging
import random
import time
from collections import OrderedDict

import numpy as np
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.util import metrics

from tickray.serving.config import ServeConfig, parse_serve_config
from tickray.serving.features import FeatureError, LiveFeatures, Reading, doc_problem
from tickray.serving.models import Inputs, ModelVersions, bases_of, combine, describe
from tickray.serving.realised import RealisedAccuracy, RecentMids
from tickray.serving.security import Authenticator, AuthError, RateLimiter
from tickray.stream.keys import FEATURES_CHANNEL, FEATURES_HISTORY, FEATURES_KEY
from tickray.training import registry
from tickray.training.ensemble import Ensemble

log = logging.getLogger("ray.serve")
NS = 1_000_000_000
APP_NAME = "tickray"
FAILED = "failed:"  # how a family that could not answer is reported (never remembered as an answer)
RECENT_PREDICTIONS = 4096  # live predictions kept per gateway replica, keyed by version and published row


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class FeatureRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: dict[str, float]
    # Rows of one symbol one second apart form the windows a sequence model reads; without ts_ns a row
    # stands alone and only the tabular models answer for it.
    ts_ns: int | None = None
    symbol: str = "request"


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbols: list[str] = Field(default_factory=list, description="predict from each symbol's live features")
    rows: list[FeatureRow] = Field(default_factory=list, max_length=1000, description="or from these rows")


api = FastAPI(title="tickray", version="0.1.0", description=__doc__.split("\n\n")[0])


class CrossOrigin:
    """CORS as the replica's gateway config says (``cors_origins``), decided at the first request (after
    the gateway's constructor): Starlette's middleware for the listed origins, or nothing at all, so that
    browsers refuse every cross-origin call."""

    def __init__(self, app):
        self.app, self.inner = app, None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":  # at start-up, before the gateway exists
            return await self.app(scope, receive, send)
        if self.inner is None:
            origins = serve.get_replica_context().servable_object.cfg.cors_origins
            self.inner = CORSMiddleware(self.app, allow_origins=origins, allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type", "X-API-Key"],
                                        max_age=600) if origins else self.app
        await self.inner(scope, receive, send)


api.add_middleware(CrossOrigin)


@api.exception_handler(ApiError)
async def _api_error(request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.status, "detail": exc.detail}, exc.status, headers=exc.headers)


def _invalid_field(errors: list[dict]) -> ApiError:
    """422 naming the first field at fault (pydantic's own message)."""
    err = errors[0]
    return ApiError(422, f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}")


@api.exception_handler(RequestValidationError)
async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, _invalid_field(exc.errors()))


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
        self.cfg, self.handles = cfg, families
        self.versions = ModelVersions(cfg.tracking_uri, cfg.model)
        aliases = self.versions.aliases()
        self.live: dict[str, registry.LoadedModel | None] = {
            registry.CHAMPION: self.versions.champion_now(),
            registry.CHALLENGER: (self.versions.get_now(aliases[registry.CHALLENGER])
                                  if cfg.canary_share > 0 and aliases[registry.CHALLENGER] else None)}
        self.redis = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=2)
        self.auth = Authenticator(cfg.api_keys_sha256, cfg.jwt_secret)
        self.limiter = RateLimiter(self.redis, cfg.rate_limit.requests, cfg.rate_limit.window_s) \
            if cfg.rate_limit else None
        self._poller: asyncio.Task | None = None
        self._recent: OrderedDict[tuple, dict] = OrderedDict()
        self._realised: dict[str, RealisedAccuracy] = {}  # version → its families' scored live predictions
        self._mids = RecentMids(keep=3600)  # the published mids the predictions are scored against
        self._scorer: asyncio.Task | None = None
        self.requests = metrics.Counter("tickray_serve_requests", "API requests by route and status code",
                                        tag_keys=("route", "code"))
        self.stage_ms = metrics.Histogram("tickray_serve_stage_ms", "time in one stage of a prediction, ms",
                                          boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500],
                                          tag_keys=("stage",))
        self.latency = metrics.Histogram("tickray_serve_predict_ms", "a prediction request in the replica, ms",
                                         boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                                         tag_keys=("model", "model_version"))
        self.cache = metrics.Counter("tickray_serve_live_predictions", "live predictions answered from the "
                                     "replica's recent ones (hit) or computed (miss)", tag_keys=("result",))
        if not self.auth.enabled:
            log.warning("tickray serve: no API keys and no JWT secret configured; the API is open")

    # ---- lifecycle ------------------------------------------------------------------------------

    def _follow_aliases(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_aliases())
        if self.cfg.realised_weights and (self._scorer is None or self._scorer.done()):
            self._scorer = asyncio.get_running_loop().create_task(self._score_realised())

    async def _poll_aliases(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_poll_s)
            try:
                aliases = await asyncio.to_thread(self.versions.aliases)
                for alias, version in aliases.items():
                    if alias == registry.CHALLENGER and (self.cfg.canary_share == 0 or version is None):
                        self.live[alias] = None
                        continue
                    current = self.live[alias]
                    if version is None or (current is not None and current.version == version):
                        continue  # a champion alias removed by mistake keeps the last one serving
                    loaded = await self.versions.get(version)
                    await asyncio.gather(*(h.load.remote(version) for f, h in self.handles.items()
                                           if f in bases_of(loaded)))
                    self.live[alias] = loaded  # swapped only when ready: requests never wait on a load
                    log.info("%s %s now v%s", self.cfg.model, alias, version)
            except Exception as e:  # noqa: BLE001 (the registry being away must not stop serving)
                log.warning("alias poll of %s failed: %s", self.cfg.model, e)

    def _tracker(self, loaded: registry.LoadedModel) -> RealisedAccuracy | None:
        """The version's realised-accuracy record, when weights follow it (ensembles only)."""
        rw = self.cfg.realised_weights
        if rw is None or not isinstance(loaded.model.model, Ensemble):
            return None
        if loaded.version not in self._realised:
            self._realised[loaded.version] = RealisedAccuracy(list(bases_of(loaded)), loaded.horizons, rw.window,
                                                              rw.min_scored)
        return self._realised[loaded.version]

    async def _score_realised(self) -> None:
        """Score the live predictions whose horizons have passed, from the published rows' mids."""
        while True:
            await asyncio.sleep(self.cfg.realised_weights.score_every_s)
            try:
                served = {m.version for m in self.live.values() if m is not None}
                for version in [v for v in self._realised if v not in served]:
                    del self._realised[version]
                trackers = list(self._realised.values())
                for symbol in {s for t in trackers for s, p in t.pending.items() if p}:
                    oldest = min(min(t.pending[symbol]) for t in trackers if t.pending.get(symbol))
                    await self._read_mids(symbol, max(self._mids.newest(symbol), oldest - 1))
                    ts, mid = self._mids.series(symbol)  # once for every version served
                    for t in trackers:
                        t.score(symbol, ts, mid)
            except Exception as e:  # noqa: BLE001 (Redis away or a foreign row: scoring waits, serving goes on)
                log.warning("scoring realised accuracy failed: %s", e)

    async def _read_mids(self, symbol: str, after_ts: int, page: int = 200) -> None:
        """The symbol's rows published after ``after_ts`` from its feature history, newest first."""
        got, end = [], "+"
        while True:
            entries = await self.redis.xrevrange(FEATURES_HISTORY.format(symbol=symbol), max=end, count=page)
            for _, f in entries:
                try:
                    doc = orjson.loads(f.get(b"doc", b"{}"))
                except orjson.JSONDecodeError:
                    continue
                if doc_problem(doc) is not None:
                    continue  # not a stream actor's row (LiveFeatures skips it too)
                if doc["ts_ns"] <= after_ts:
                    return self._mids.add(symbol, got)
                if isinstance(doc.get("mid"), float) and doc["mid"] > 0:
                    got.append((doc["ts_ns"], doc["mid"]))
            if len(entries) < page:
                return self._mids.add(symbol, got)
            end = "(" + entries[-1][0].decode()

    def _pick(self) -> tuple[str, registry.LoadedModel]:
        challenger = self.live[registry.CHALLENGER]
        if challenger is not None and random.random() < self.cfg.canary_share:
            return registry.CHALLENGER, challenger
        return registry.CHAMPION, self.live[registry.CHAMPION]

    # ---- guards ---------------------------------------------------------------------------------

    async def _admit(self, headers, query=None) -> str:
        self._follow_aliases()
        try:
            caller = self.auth.identify(headers, query)
        except AuthError as e:
            raise ApiError(401, str(e), {"WWW-Authenticate": "Bearer"}) from None
        if self.limiter is not None:
            wait = await self.limiter.retry_after_s(caller)
            if wait:
                raise ApiError(429, f"rate limit of {self.cfg.rate_limit.requests} requests per "
                                    f"{self.cfg.rate_limit.window_s:g}s exceeded", {"Retry-After": str(int(np.ceil(wait)))})
        return caller

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes is over the limit of {limit}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"body is over the limit of {limit} bytes")
        return body

    async def _answer(self, route: str, work) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            out = await work()
            code = 200
            return JSONResponse(out)
        except ApiError as e:
            code = e.status
            raise
        except Exception:
            code = 500
            raise
        finally:
            self.requests.inc(tags={"route": route, "code": str(code)})
            self.stage_ms.observe((time.perf_counter() - t0) * 1e3, tags={"stage": "total"})

    # ---- predictions ----------------------------------------------------------------------------

    async def _base(self, loaded: registry.LoadedModel, inputs: Inputs) -> tuple[dict, dict]:
        """Each family's predictions for the targets (NaN where it could not answer) and why not."""
        m = inputs.targets.size
        base, why = {}, {}
        calls = {}
        undefined = np.isnan(inputs.x[inputs.targets])  # (m, F)
        for fam, model in bases_of(loaded).items():
            ends = inputs.ends_for(model.window)
            if ends.size < m:
                names = [loaded.features[k] for k in np.flatnonzero(undefined.any(axis=0))]
                why[fam] = (f"features undefined: {', '.join(names[:6])}{' …' if len(names) > 6 else ''} "
                            "(a stream warming up?)" if names else
                            f"needs {model.window} consecutive seconds of features")
            if ends.size == 0:
                continue
            if fam in self.handles:
                calls[fam] = (ends, self.handles[fam].predict.remote(loaded.version, inputs.x, ends))
            else:
                calls[fam] = (ends, model.predict(inputs.x, ends))
        async def answer(call):
            return call if isinstance(call, np.ndarray) else await asyncio.wait_for(call, self.cfg.family_timeout_s)

        results = await asyncio.gather(*(answer(call) for _, call in calls.values()), return_exceptions=True)
        pos = {int(t): i for i, t in enumerate(inputs.targets)}
        for (fam, (ends, _)), p in zip(calls.items(), results):
            if isinstance(p, BaseException):  # one family failing degrades the answer, never fails it
                first = str(p).strip().splitlines()[-1][:200] if str(p).strip() else ""
                why[fam] = f"{FAILED} {type(p).__name__} {first}".strip()
                continue
            full = np.full((m, len(loaded.horizons)), np.nan)
            full[[pos[int(e)] for e in ends]] = p
            base[fam] = full
        return base, why

    async def _predict(self, loaded: registry.LoadedModel, alias: str, inputs: Inputs,
                       live: list[Reading] | None = None) -> list[dict]:
        """Predictions for the targets; ``live``: the readings they are the latest rows of (scored later)."""
        t0 = time.perf_counter()
        base, why = await self._base(loaded, inputs)
        t1 = time.perf_counter()
        self.stage_ms.observe((t1 - t0) * 1e3, tags={"stage": "models"})
        if not base:
            raise ApiError(503, "no model could answer: " + "; ".join(f"{f} {w}" for f, w in why.items()))
        tracker = self._tracker(loaded)
        weights = tracker.weights() if tracker else None
        p, conf = combine(loaded, inputs.x[inputs.targets], base, weights)
        self.stage_ms.observe((time.perf_counter() - t1) * 1e3, tags={"stage": "combine"})
        if tracker and live:
            nan = np.full((inputs.targets.size, len(loaded.horizons)), np.nan)
            probs = np.stack([base.get(f, nan) for f in tracker.families], axis=1)  # (targets, families, H)
            for r, pr in zip(live, probs):
                if isinstance(r.latest.get("mid"), float):
                    tracker.record(r.symbol, r.ts_ns, r.latest["mid"], pr)
        out = []
        for i in range(inputs.targets.size):
            missing = {f: w for f, w in why.items() if f not in base or np.isnan(base[f][i]).all()}
            row = {"horizons": {f"{h}s": {"prob_up": round(float(p[i, j]), 6), "confidence": round(float(conf[i, j]), 6)}
                                for j, h in enumerate(loaded.horizons)},
                   "model_version": loaded.version, "alias": alias}
            if weights is not None:
                for j, h in enumerate(loaded.horizons):
                    row["horizons"][f"{h}s"]["combined_by"] = "stacked" if np.isnan(weights[0, j]) else "realised"
            if missing:
                row["degraded"] = missing
            out.append(row)
        return out

    def _answered(self, loaded: registry.LoadedModel, t0: float) -> None:
        """Per version, so that champion and challenger compare: computed or remembered answers alike."""
        self.latency.observe((time.perf_counter() - t0) * 1e3,
                             tags={"model": loaded.name, "model_version": loaded.version})

    async def _read(self, loaded: registry.LoadedModel, symbols: list[str]) -> dict[str, Reading]:
        t0 = time.perf_counter()
        window = max(m.window for m in bases_of(loaded).values())
        try:
            readings = await LiveFeatures(self.redis, loaded.features, loaded.model.feature_set_version).read(
                symbols, window)
        except FeatureError as e:
            raise ApiError(e.status, str(e)) from None
        self.stage_ms.observe((time.perf_counter() - t0) * 1e3, tags={"stage": "features"})
        return readings

    async def _live_predictions(self, loaded: registry.LoadedModel, alias: str,
                                readings: list[Reading]) -> list[dict]:
        """A prediction per symbol's latest row: computed once per version and published row, since every
        caller asking before the next row gets the same answer."""
        def key(r: Reading) -> tuple:
            return loaded.version, r.symbol, r.ts_ns, r.latest["published_at"]  # a row published again: anew

        found = {key(r): self._recent[key(r)] for r in readings if key(r) in self._recent}
        todo = [r for r in readings if key(r) not in found]
        if found:
            self.cache.inc(len(found), tags={"result": "hit"})
        if todo:
            self.cache.inc(len(todo), tags={"result": "miss"})
            parts = [r.series() for r in todo]
            x = np.concatenate([v.x for v in parts])
            ts = np.concatenate([v.ts_ns for v in parts])
            sym = np.concatenate([np.full(v.ts_ns.size, v.symbol, object) for v in parts])
            ends = np.cumsum([v.ts_ns.size for v in parts]) - 1
            preds = await self._predict(loaded, alias, Inputs(x, ts, sym, ends), live=todo)
            for r, pred in zip(todo, preds):
                found[key(r)] = pred
                if not any(w.startswith(FAILED) for w in pred.get("degraded", {}).values()):  # not a passing fault
                    self._recent[key(r)] = pred
            while len(self._recent) > RECENT_PREDICTIONS:
                self._recent.popitem(last=False)
        # copies: the caller marks its own answer (staleness, alias)
        return [{**pred, "alias": alias, "horizons": {h: dict(v) for h, v in pred["horizons"].items()}}
                for pred in (found[key(r)] for r in readings)]

    async def _from_symbols(self, symbols: list[str]) -> dict:
        symbols = list(dict.fromkeys(s.upper() for s in symbols))
        if len(symbols) > self.cfg.max_symbols:
            raise ApiError(422, f"symbols: {len(symbols)} symbols, at most {self.cfg.max_symbols} per request")
        alias, loaded = self._pick()
        t0 = time.perf_counter()
        readings = await self._read(loaded, symbols)
        stale = {s: r.age_s for s, r in readings.items() if r.age_s > self.cfg.stale_after_s}
        if stale and self.cfg.stale_policy == "reject":
            raise ApiError(503, "stale features: " + ", ".join(
                f"{s} {a:.1f}s old" for s, a in stale.items()) + f" (limit {self.cfg.stale_after_s:g}s); "
                "is its stream actor running?")
        parts = [readings[s] for s in symbols]
        preds = await self._live_predictions(loaded, alias, parts)
        for r, pred in zip(parts, preds):
            pred.update(symbol=r.symbol, ts_ns=r.ts_ns, feature_age_s=round(r.age_s, 3), stale=r.symbol in stale)
            if r.symbol in stale:
                for h in pred["horizons"].values():
                    h["confidence"] = 0.0
        self._answered(loaded, t0)
        return {"model": loaded.name, "model_version": loaded.version, "predictions": preds}

    async def _from_rows(self, rows: list[FeatureRow]) -> dict:
        alias, loaded = self._pick()
        t0 = time.perf_counter()
        names = loaded.features
        for i, row in enumerate(rows):
            missing, extra = set(names) - row.features.keys(), row.features.keys() - set(names)
            if missing or extra:
                raise ApiError(422, f"rows.{i}.features: missing {sorted(missing)[:5]}, unknown {sorted(extra)[:5]} "
                                    f"(model {loaded.name} v{loaded.version}, feature set "
                                    f"{loaded.model.feature_set_version})")
        # Without ts_ns a row stands alone: seconds 2 apart never form a window.
        ts = np.array([r.ts_ns if r.ts_ns is not None else i * 2 * NS for i, r in enumerate(rows)], np.int64)
        sym = np.array([r.symbol.upper() for r in rows], object)
        order = np.lexsort((ts, sym))
        x = np.array([[rows[k].features[n] for n in names] for k in order], np.float32)
        preds = await self._predict(loaded, alias, Inputs(x, ts[order], sym[order], np.arange(len(rows))))
        out = [None] * len(rows)
        for pos, k in enumerate(order):
            out[k] = {**preds[pos], "row": int(k), "symbol": str(sym[k]), "ts_ns": int(ts[k])}
        self._answered(loaded, t0)
        return {"model": loaded.name, "model_version": loaded.version, "predictions": out}

    # ---- routes ---------------------------------------------------------------------------------

    @api.post("/v1/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, request: Request) -> JSONResponse:
        """Probabilities of an up-move at every horizon, from symbols' live features or explicit rows."""
        async def work():
            await self._admit(request.headers)
            try:
                req = PredictRequest.model_validate_json(await self._body(request))
            except ValidationError as e:
                raise _invalid_field(e.errors()) from None
            if bool(req.symbols) == bool(req.rows):
                raise ApiError(422, "body: give either 'symbols' (live features) or 'rows' (explicit features)")
            return await (self._from_symbols(req.symbols) if req.symbols else self._from_rows(req.rows))
        return await self._answer("/v1/predict", work)

    @api.get("/v1/predictions/{symbol}/latest")
    async def latest(self, symbol: str, request: Request) -> JSONResponse:
        """The prediction from a symbol's latest live features."""
        async def work():
            await self._admit(request.headers)
            out = await self._from_symbols([symbol])
            return {"model": out["model"], **out["predictions"][0]}
        return await self._answer("/v1/predictions/latest", work)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        """The served versions, their aliases, families, meta-learner weights and feature set."""
        async def work():
            await self._admit(request.headers)
            return {"model": self.cfg.model, "canary_share": self.cfg.canary_share,
                    "split_families": self.cfg.split_families,
                    "versions": {a: {**describe(m), **({"realised": t.summary()} if (t := self._tracker(m)) else {})}
                                 for a, m in self.live.items() if m is not None}}
        return await self._answer("/v1/models", work)

    @api.get("/v1/health")
    async def health(self) -> JSONResponse:
        """Readiness: the models loaded and how fresh each symbol's live features are (no key needed)."""
        async def work():
            self._follow_aliases()
            fresh = {}
            async for key in self.redis.scan_iter(match=FEATURES_KEY.format(symbol="*"), count=1000):
                symbol = key.decode().rsplit(":", 1)[1]
                if key.decode() != FEATURES_KEY.format(symbol=symbol):
                    continue  # the history streams share the prefix
                raw = await self.redis.get(key)
                if raw is None:
                    continue
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    doc = None
                problem = doc_problem(doc) if doc is not None else "not JSON"
                if problem:
                    fresh[symbol] = {"unusable": problem}
                    continue
                age = time.time() - doc["published_at"]
                fresh[symbol] = {"age_s": round(age, 3), "stale": age > self.cfg.stale_after_s}
            champion = self.live[registry.CHAMPION]
            return {"status": "ready", "model": self.cfg.model, "model_version": champion.version,
                    "versions": {a: m.version for a, m in self.live.items() if m is not None},
                    "horizons_s": champion.horizons, "feature_set_version": champion.model.feature_set_version,
                    "auth": "on" if self.auth.enabled else "off", "features": fresh}
        return await self._answer("/v1/health", work)

    @api.websocket("/v1/stream")
    async def stream(self, ws: WebSocket) -> None:
        """Send ``{"subscribe": ["BTCUSDT", ...]}`` (or ``"unsubscribe"``); receive a prediction for every
        new feature row of the subscribed symbols, with the row's age when it was pushed."""
        try:
            await self._admit(ws.headers, dict(ws.query_params))
        except ApiError as e:
            await ws.close(code=1008 if e.status == 401 else 1013, reason=e.detail[:120])
            return
        await ws.accept()
        subscribed: set[str] = {s.strip().upper() for s in ws.query_params.get("symbols", "").split(",") if s.strip()}
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(FEATURES_CHANNEL)
        listener = asyncio.get_running_loop().create_task(self._listen(ws, subscribed))
        try:
            while not listener.done():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if msg is None:
                    continue
                doc = orjson.loads(msg["data"])
                if doc["symbol"] not in subscribed:
                    continue
                try:
                    out = await self._from_symbols([doc["symbol"]])
                except ApiError as e:
                    await ws.send_json({"symbol": doc["symbol"], "error": e.status, "detail": e.detail})
                    continue
                pred = out["predictions"][0]
                pred["pushed_at"] = time.time()
                pred["published_at"] = doc["published_at"]
                pred["tick_received_at"] = doc.get("tick_received_at")  # the stream actor's, when it says
                await ws.send_text(orjson.dumps({"model": out["model"], **pred}).decode())
        except WebSocketDisconnect:
            pass
        finally:
            listener.cancel()
            await pubsub.aclose()

    async def _listen(self, ws: WebSocket, subscribed: set[str]) -> None:
        while True:
            try:
                msg = orjson.loads(await ws.receive_text())
                if not isinstance(msg, dict) or not set(msg) <= {"subscribe", "unsubscribe"}:
                    raise ValueError("send {\"subscribe\": [symbols]} or {\"unsubscribe\": [symbols]}")
            except WebSocketDisconnect:
                return
            except ValueError as e:
                await ws.send_json({"error": 422, "detail": str(e)})
                continue
            subscribed.update(s.upper() for s in msg.get("subscribe", []))
            subscribed.difference_update(s.upper() for s in msg.get("unsubscribe", []))
            await ws.send_json({"subscribed": sorted(subscribed)})


def build(cfg: ServeConfig) -> serve.Application:
    """The application graph: the gateway, and a FamilyModel deployment per base family of the current
    champion when the families are split out."""
    handles = {}
    if cfg.split_families:
        for fam in bases_of(ModelVersions(cfg.tracking_uri, cfg.model).champion_now()):
            handles[fam] = FamilyModel.options(name=f"Family-{fam}", logging_config=cfg.logging_config(),
                                               **cfg.families.options()).bind(cfg.tracking_uri, cfg.model, fam)
    return Gateway.options(logging_config=cfg.logging_config(), **cfg.gateway.options()).bind(cfg, handles)


def app_builder(args: dict) -> serve.Application:
    """For ``serve run serve/config.yaml`` / ``serve deploy``: the application's args are a ServeConfig."""
    return build(parse_serve_config(args, "serve application args"))


def deploy(cfg: ServeConfig, host: str, port: int, name: str = APP_NAME) -> str:
    """Deploy (or update) the app on the connected Ray cluster; returns its base URL."""
    serve.start(http_options={"host": host, "port": port}, logging_config=cfg.logging_config())  # the proxy's
    serve.run(build(cfg), name=name, route_prefix="/")
    return f"http://{host}:{port}"
