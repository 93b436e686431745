"""Ray Serve: the champion ensemble over HTTP, fed by the online features the stream actors keep in Redis.
``POST /v1/predict {"symbols": [...]}`` reads each symbol's latest features (with their age);
``{"rows": [{feature: value, ...}]}`` predicts explicit rows; every horizon of the model in one answer.
Feature names and the feature-set version are checked against the model's registered signature: a
mismatch is an error, never a wrong answer. Only the latest feature row is at hand here, so a model
that reads a window of earlier seconds (LSTM, Transformer) is refused at start-up.
"""


import time

import numpy as np
import orjson
import redis
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve
from ray.util import metrics

from tickray.stream.actor import FEATURES_KEY
from tickray.training import registry

api = FastAPI(title="tickray", version="0.1.0")


class PredictRequest(BaseModel):
    symbols: list[str] = Field(default_factory=list, max_length=200)
    rows: list[dict[str, float]] = Field(default_factory=list, max_length=1000)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Predictor:
    def __init__(self, tracking_uri: str, model_name: str, redis_url: str):
        self.model = registry.load(tracking_uri, model_name, registry.CHAMPION)
        if self.model.model.model.window > 1:
            raise ValueError(f"{model_name} v{self.model.version} reads {self.model.model.model.window} seconds of "
                             "features per prediction; this deployment has only the latest row")
        self.feature_set_version = self.model.model.feature_set_version
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2)
        self.latency = metrics.Histogram("tickray_serve_predict_ms", "a /v1/predict request in the replica, ms",
                                         boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                                         tag_keys=("model", "model_version"))

    def _predict(self, matrix: np.ndarray) -> list[dict]:
        p, conf = self.model.model.predict_matrix(matrix.astype(np.float32), np.arange(len(matrix)))
        return [{f"{h}s": {"prob_up": float(p[i, j]), "confidence": float(conf[i, j])}
                 for j, h in enumerate(self.model.horizons)} for i in range(len(matrix))]

    def _prediction(self, horizons: dict, **extra) -> dict:
        return {"horizons": horizons, "model_version": self.model.version, **extra}

    @api.post("/v1/predict")
    def predict(self, req: PredictRequest) -> dict:
        t0 = time.perf_counter()
        if not req.symbols and not req.rows:
            raise HTTPException(422, "give 'symbols' (live features) or 'rows' (explicit features)")
        names = self.model.features
        out = []
        if req.rows:
            for i, row in enumerate(req.rows):
                missing, extra = set(names) - row.keys(), row.keys() - set(names)
                if missing or extra:
                    raise HTTPException(422, f"rows[{i}]: missing features {sorted(missing)}, "
                                             f"unknown features {sorted(extra)}")
            probs = self._predict(np.array([[r[n] for n in names] for r in req.rows], dtype=float))
            out += [self._prediction(p, row=i) for i, p in enumerate(probs)]
        if req.symbols:
            keys = [FEATURES_KEY.format(symbol=s.upper()) for s in req.symbols]
            docs = self.redis.mget(keys)
            for symbol, raw in zip(req.symbols, docs):
                if raw is None:
                    raise HTTPException(404, f"no live features for symbol {symbol.upper()!r}")
                doc = orjson.loads(raw)
                if doc["feature_set_version"] != self.feature_set_version or not set(names) <= doc["features"].keys():
                    raise HTTPException(409, f"{symbol}: live features (set {doc['feature_set_version']}) do not "
                                             f"match model {self.model.name} v{self.model.version} "
                                             f"(set {self.feature_set_version})")
                p = self._predict(np.array([[doc["features"][n] for n in names]], dtype=float))[0]
                out.append(self._prediction(p, symbol=doc["symbol"], ts_ns=doc["ts_ns"],
                                            feature_age_s=round(time.time() - doc["published_at"], 3)))
        self.latency.observe((time.perf_counter() - t0) * 1e3,
                             tags={"model": self.model.name, "model_version": str(self.model.version)})
        return {"model": self.model.name, "model_version": self.model.version, "predictions": out}

    @api.get("/v1/health")
    def health(self) -> dict:
        return {"status": "ok", "model": self.model.name, "model_version": self.model.version,
                "feature_set_version": self.feature_set_version, "horizons_s": self.model.horizons}


def app_builder(args: dict) -> serve.Application:
    """For ``serve run serve/tickray.yaml``: args tracking_uri, model_name, redis_url."""
    return Predictor.bind(args["tracking_uri"], args["model_name"], args["redis_url"])


def deploy(tracking_uri: str, model_name: str, redis_url: str, host: str, port: int) -> str:
    """Deploy (or update) the app on the connected Ray cluster; returns its base URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_builder({"tracking_uri": tracking_uri, "model_name": model_name, "redis_url": redis_url}),
              name="tickray", route_prefix="/")
    return f"http://{host}:{port}"
