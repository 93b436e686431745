"""The HTTP surface of the served API: the FastAPI app the gateway's routes hang on, the request bodies,
errors as JSON (``{"error": status, "detail": ...}``), and CORS as the gateway's config says.
"""

# No `from __future__ import annotations`: FastAPI reads the real types of the handlers' parameters.
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve


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
