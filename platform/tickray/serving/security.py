"""Who may call the API and how often: API keys kept as SHA-256 digests, HS256 JWT bearer tokens, a
per-caller sliding-window rate limit kept in Redis (so every replica counts against the same window), and
the bounds on request bodies (size, time, how many one client sends at once); ``Guard`` applies them all
at the gateway's door.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING

import orjson
from starlette.requests import ClientDisconnect

from tickray.serving.api import ApiError

if TYPE_CHECKING:  # the config checks keys with hash_key from here
    from tickray.serving.config import ServeConfig

KEY_HEADER = "x-api-key"


class AuthError(Exception):
    """Missing or invalid credentials (answered 401)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh API key and the digest to put in the config."""
    key = "tk_" + secrets.token_urlsafe(32)
    return key, hash_key(key)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_jwt(claims: dict, secret: str) -> str:
    """An HS256 JWT (what a caller's identity provider would issue; used by tests and `tickray serve`)."""
    head = _b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = _b64encode(orjson.dumps(claims))
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64encode(sig)}"


def verify_jwt(token: str, secret: str, now: float | None = None) -> dict:
    """The claims of an HS256 token signed with ``secret``; AuthError saying why otherwise. Only HS256 is
    accepted (a token naming another algorithm, "none" included, is refused)."""
    try:
        head_b, body_b, sig_b = token.split(".")
        head = orjson.loads(_b64decode(head_b))
        claims = orjson.loads(_b64decode(body_b))
        sig = _b64decode(sig_b)
    except (ValueError, orjson.JSONDecodeError):
        raise AuthError("bearer token is not a JWT") from None
    if not isinstance(head, dict) or head.get("alg") != "HS256":
        raise AuthError("bearer token: only HS256 is accepted")
    want = hmac.new(secret.encode(), f"{head_b}.{body_b}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, want):
        raise AuthError("bearer token: bad signature")
    if not isinstance(claims, dict):
        raise AuthError("bearer token: claims are not an object")
    now = time.time() if now is None else now
    if "exp" in claims and now >= float(claims["exp"]):
        raise AuthError("bearer token expired")
    if "nbf" in claims and now < float(claims["nbf"]):
        raise AuthError("bearer token not yet valid")
    return claims


class Authenticator:
    def __init__(self, key_digests: list[str], jwt_secret: str = ""):
        self.digests = frozenset(key_digests)
        self.jwt_secret = jwt_secret
        self.enabled = bool(self.digests or jwt_secret)

    def identify(self, headers, query: dict | None = None, address: str = "unknown") -> str:
        """The caller's identity (``key:<digest prefix>`` or ``jwt:<sub>``) from the ``X-API-Key`` header,
        an ``Authorization: Bearer`` JWT, or (WebSocket clients that cannot set headers) ``?api_key=``;
        with authentication off, the client's address (``addr:<host>``), so that no caller's requests
        count against another's rate limit."""
        if not self.enabled:
            return f"addr:{address}"
        key = headers.get(KEY_HEADER) or (query or {}).get("api_key")
        if key:
            digest = hash_key(key)
            if digest in self.digests:
                return f"key:{digest[:12]}"
            raise AuthError("invalid API key")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if not self.jwt_secret:
                raise AuthError("bearer tokens are not accepted here; send X-API-Key")
            claims = verify_jwt(auth[7:].strip(), self.jwt_secret)
            return f"jwt:{claims.get('sub', 'unknown')}"
        raise AuthError("missing credentials: send X-API-Key or Authorization: Bearer <JWT>")


# A sliding-window log: the caller's request times in a sorted set; drop those older than the window,
# admit if fewer than the limit remain. Atomic in Redis, so replicas share one count. Returns 0 when
# admitted, else the milliseconds until the oldest request leaves the window.
_SLIDING_WINDOW = """
local key, now, window, limit, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
"""


class RateLimiter:
    def __init__(self, redis_async, requests: int, window_s: float, prefix: str = "tickray:ratelimit:"):
        self.script = redis_async.register_script(_SLIDING_WINDOW)
        self.requests, self.window_ms, self.prefix = requests, int(window_s * 1000), prefix

    async def retry_after_s(self, caller: str) -> float:
        """0 when the request is admitted; otherwise the seconds until it would be."""
        now_ms = time.time() * 1000
        wait_ms = await self.script(keys=[self.prefix + caller],
                                    args=[now_ms, self.window_ms, self.requests, f"{now_ms}:{secrets.token_hex(4)}"])
        return int(wait_ms) / 1000


def address(conn) -> str:
    """A request's or WebSocket's client address, as the proxy saw it."""
    return conn.client.host if conn.client else "unknown"


class Guard:
    """The gateway's door: who the caller is, whether their window has room, and how large and how slow a
    body may be. Refusals are ApiErrors (401, 429, 413, 408) that the API answers as JSON."""

    def __init__(self, cfg: ServeConfig, redis_async):
        self.auth = Authenticator(cfg.api_keys_sha256, cfg.jwt_secret)
        self.rate_limit, self.max_body_bytes, self.limits = cfg.rate_limit, cfg.max_body_bytes, cfg.connections
        self.limiter = RateLimiter(redis_async, cfg.rate_limit.requests, cfg.rate_limit.window_s) \
            if cfg.rate_limit else None
        self.sending = Counter()  # client address → bodies still arriving

    async def admit(self, conn, query_key: bool = False) -> str:
        """The caller's identity, once they are known and within their rate limit. ``query_key``: accept
        ``?api_key=`` (WebSocket clients cannot set headers)."""
        try:
            caller = self.auth.identify(conn.headers, dict(conn.query_params) if query_key else None, address(conn))
        except AuthError as e:
            raise ApiError(401, str(e), {"WWW-Authenticate": "Bearer"}) from None
        if self.limiter is not None:
            wait = await self.limiter.retry_after_s(caller)
            if wait:
                raise ApiError(429, f"rate limit of {self.rate_limit.requests} requests per "
                                    f"{self.rate_limit.window_s:g}s exceeded", {"Retry-After": str(math.ceil(wait))})
        return caller

    async def body(self, request) -> bytes:
        """The request's body, refused as soon as it is known to be over the size limit, when it has not
        arrived in ``body_timeout_s``, or when it comes in pieces and its client already has
        ``bodies_per_client`` bodies still arriving. A body that is there whole when first read (every
        quick caller's, however many share an address and however busy the replica) takes no slot."""
        try:
            return await asyncio.wait_for(self._read(request, address(request)), self.limits.body_timeout_s)
        except TimeoutError:
            raise ApiError(408, f"request body not complete within {self.limits.body_timeout_s:g}s") from None

    async def _read(self, request, client: str) -> bytes:
        limit, waiting = self.max_body_bytes, False
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes is over the limit of {limit}")
        body = b""
        try:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                body += message.get("body", b"")
                if len(body) > limit:
                    raise ApiError(413, f"body is over the limit of {limit} bytes")
                if not message.get("more_body", False):
                    return body
                if not waiting:  # the rest is still on its way: a slot of the client's until it comes
                    if self.sending[client] >= self.limits.bodies_per_client:
                        raise ApiError(429, f"{self.sending[client]} request bodies from {client} are still "
                                            f"arriving; at most {self.limits.bodies_per_client} at once")
                    self.sending[client] += 1
                    waiting = True
        finally:
            if waiting:
                self.sending[client] -= 1
                if not self.sending[client]:
                    del self.sending[client]
