"""Ray Serve: the champion model over HTTP, fed by the online features the stream actors keep in Redis.
``POST /v1/predict {"symbols": [...]}`` reads each symbol's latest features (with their age);
``{"rows": [{feature: value, ...}]}`` predicts explicit rows. Feature names and the feature-set version
are checked against the model's registered signature: a mismatch is an error, never a wrong answer.
"""


import time

import numpy as np
import orjson
import redis
import xgboost
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

from tickray.stream.actor import FEATURES_KEY
from tickray.training.registry import load_champion

api = FastAPI(title="tickray", version="0.1.0")


class PredictRequest(BaseModel):
    symbols: list[str] = Field(default_factory=list, max_length=200)
    rows: list[dict[str, float]] = Field(default_factory=list, max_length=1000)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Predictor:
    def __init__(self, tracking_uri: str, model_name: str, redis_url: str):
        self.model = load_champion(tracking_uri, model_name)
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2)

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        return self.model.booster.predict(xgboost.DMatrix(matrix, feature_names=self.model.feature_names))

    def _prediction(self, p: float, **extra) -> dict:
        return {"horizon": f"{self.model.horizon_s}s", "prob_up": float(p),
                "confidence": float(abs(p - 0.5) * 2), "model_version": self.model.version, **extra}

    @api.post("/v1/predict")
    def predict(self, req: PredictRequest) -> dict:
        if not req.symbols and not req.rows:
            raise HTTPException(422, "give 'symbols' (live features) or 'rows' (explicit features)")
        names = self.model.feature_names
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
                if doc["feature_set_version"] != self.model.feature_set_version or set(doc["features"]) != set(names):
                    raise HTTPException(409, f"{symbol}: live features (set {doc['feature_set_version']}) do not "
                                             f"match model {self.model.name} v{self.model.version} "
                                             f"(set {self.model.feature_set_version})")
                p = self._predict(np.array([[doc["features"][n] for n in names]], dtype=float))[0]
                out.append(self._prediction(p, symbol=doc["symbol"], ts_ns=doc["ts_ns"],
                                            feature_age_s=round(time.time() - doc["published_at"], 3)))
        return {"model": self.model.name, "model_version": self.model.version, "predictions": out}

    @api.get("/v1/health")
    def health(self) -> dict:
        return {"status": "ok", "model": self.model.name, "model_version": self.model.version,
                "feature_set_version": self.model.feature_set_version}


def app_builder(args: dict) -> serve.Application:
    """For ``serve run serve/tickray.yaml``: args tracking_uri, model_name, redis_url."""
    return Predictor.bind(args["tracking_uri"], args["model_name"], args["redis_url"])


def deploy(tracking_uri: str, model_name: str, redis_url: str, host: str, port: int) -> str:
    """Deploy (or update) the app on the connected Ray cluster; returns its base URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_builder({"tracking_uri": tracking_uri, "model_name": model_name, "redis_url": redis_url}),
              name="tickray", route_prefix="/")
    return f"http://{host}:{port}"
