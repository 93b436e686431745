"""The HTTP surface of the served API: the FastAPI app the gateway's routes hang on, the request bodies,
errors as JSON (``{"error": status, "detail": ...}``), and CORS as the gateway's config says.
"""

# No `from __future__ import annotations`: FastAPI reads the real types of the handlers' parameters.
import logging
import math
import re
import time
import uuid
from typing import Annotated

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, field_validator
from ray import serve
from starlette.exceptions import HTTPException

log = logging.getLogger("ray.serve")
NS = 1_000_000_000
FLOAT32_MAX = 3.4028234663852886e38  # the models read float32: a larger value would overflow to inf
EARLIEST_TS_NS = 946_684_800 * NS  # 2000-01-01: no market data in tickray's reach is older
SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,39}")  # BTCUSDT, BTC-PERPETUAL, ES-20241220-6000-C


def symbol_problem(s) -> str | None:
    """Why a value is not a symbol (None when it is one)."""
    if not isinstance(s, str):
        return f"a symbol is a string, not {type(s).__name__}"
    if not SYMBOL.fullmatch(s):
        return f"{s[:40]!r}{'…' if len(s) > 40 else ''} is not a symbol (letters, digits and _.:/-, at most 40)"
    return None


def _symbol(s: str) -> str:
    why = symbol_problem(s)
    if why:
        raise ValueError(why)
    return s


Symbol = Annotated[str, AfterValidator(_symbol)]


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class FeatureRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # strict: a string such as "1.5", or true, is not a number
    features: dict[str, Annotated[float, Strict()]]
    # Rows of one symbol one second apart form the windows a sequence model reads; without ts_ns a row
    # stands alone and only the tabular models answer for it.
    ts_ns: Annotated[int, Strict()] | None = Field(None, ge=EARLIEST_TS_NS, le=2**63 - 1)
    symbol: Symbol = "request"

    @field_validator("features")
    @classmethod
    def _finite(cls, features: dict[str, float]) -> dict[str, float]:
        for name, v in features.items():
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                raise ValueError(f"{name} = {v!r} is not a finite number within float32 range")
        return features

    @field_validator("ts_ns")
    @classmethod
    def _not_future(cls, ts_ns: int | None) -> int | None:
        if ts_ns is not None and ts_ns > time.time_ns() + 86_400 * NS:
            raise ValueError(f"{ts_ns} is more than a day ahead of now")
        return ts_ns


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbols: list[Symbol] = Field(default_factory=list, description="predict from each symbol's live features")
    rows: list[FeatureRow] = Field(default_factory=list, max_length=1000, description="or from these rows")


api = FastAPI(title="tickray", version="0.1.0",
              description="The registry's champion ensemble over HTTP and WebSocket, fed by the online features "
                          "the stream actors keep in Redis.")


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


def invalid_field(errors: list[dict]) -> ApiError:
    """422 naming the first field at fault (pydantic's own message)."""
    err = errors[0]
    return ApiError(422, f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}")


@api.exception_handler(RequestValidationError)
async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, invalid_field(exc.errors()))


@api.exception_handler(HTTPException)
async def _http(request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (an unknown route, a method not allowed) in the API's one error shape."""
    return JSONResponse({"error": exc.status_code, "detail": exc.detail}, exc.status_code, headers=exc.headers)


@api.exception_handler(Exception)
async def _internal(request, exc: Exception) -> JSONResponse:
    """Never a trace in an answer: the caller gets an id to quote, the log gets the rest."""
    request_id = uuid.uuid4().hex[:16]
    log.error("request %s to %s failed", request_id, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal", "request_id": request_id}, 500)
