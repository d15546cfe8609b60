"""API tokens, scopes, per-client rate limits and the report response cache.

* **Tokens** (``TokenStore``, in Redis): ``surge_<id>_<secret>``; only the SHA-256 of a token is stored (a token
  carries 256 random bits, so a fast hash is enough: nothing to brute-force). Scopes ``read`` and ``admin``
  (admin implies read). Managed by ``surge tokens create|list|revoke``; a revoked token stops working within
  ``SURGE_CACHE_L1_TTL_MS``. Admin routes always need ``admin``; reads need ``read`` when ``SURGE_GATEWAY_AUTH=read``
  and are open otherwise. A token that is presented and wrong is a 401 either way. The SSE route
  routes (``takes_query_token``: the signal and job streams) also take it as ``?access_token=``, since a browser's
  EventSource sends no headers; given twice it is refused (401), so the rate limit and the check see one token.
* **Rate limits** (``RateLimiter``): a token bucket per client (the token id when one is presented, else the
  peer address): ``SURGE_GATEWAY_RATE_PER_MIN`` per minute, bucket ``SURGE_GATEWAY_BURST`` x that, and at most
  ``SURGE_GATEWAY_MAX_CONCURRENT`` requests in flight; beyond either, 429 with ``Retry-After`` (seconds).
  ``/health`` and ``/metrics`` (probes and scrapes) are not limited.
* **Response cache** (``ResponseCache``): GET answers of the report-like routes (``CACHED_PREFIXES``) are kept
  ``SURGE_GATEWAY_CACHE_TTL_S`` in an LRU, with an ``ETag``; ``If-None-Match`` answers 304. Hits and misses are
  exported on ``/metrics``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qs

import orjson
import redis
from fastapi import Depends, HTTPException, Request

from streams.storage.cache import L1Cache
from streams.storage.registry import AUDIT_COLUMNS, audit_row

TOKENS_KEY: Final = "surge:api_tokens"
TOKEN_HASHES_KEY: Final = "surge:api_tokens:sha256"
SCOPES: Final = ("read", "admin")
Scope = Literal["read", "admin"]
TOKEN_PREFIX: Final = "surge_"
UNLIMITED_PATHS: Final = frozenset({"/health", "/metrics"})
CACHED_PREFIXES: Final = ("/stats/", "/performance", "/reports/")
# A browser's EventSource cannot send headers, so these routes also take the token as ``?access_token=``.
# Only these: a token in a URL ends up in access logs, so no other route reads it from there.
QUERY_TOKEN_PATHS: Final = re.compile(r"^(/signals/stream|/jobs/[0-9a-f]{32}/events)$")
QUERY_TOKEN_PARAM: Final = "access_token"


def takes_query_token(path: str) -> bool:
    return QUERY_TOKEN_PATHS.match(path) is not None


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    name: str
    scopes: tuple[str, ...]
    created_us: int
    revoked_us: int = 0

    def allows(self, scope: str) -> bool:
        return not self.revoked_us and (scope in self.scopes or "admin" in self.scopes)

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}({self.name})"

    def public(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "name": self.name, "scopes": list(self.scopes),
                "created_us": self.created_us, "revoked_us": self.revoked_us}


class TokenStore:
    """API tokens in Redis: ``TOKENS_KEY`` id -> JSON, ``TOKEN_HASHES_KEY`` sha256 -> id."""

    def __init__(self, client: redis.Redis, l1: L1Cache | None = None) -> None:
        self.client = client
        self.l1 = l1

    def create(self, name: str, scopes: list[str]) -> tuple[str, TokenInfo]:
        """A new token (the only time its secret is known) and its record."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}, not {scopes!r}")
        if not name or len(name) > 128:
            raise ValueError("a token needs a name of 1-128 characters")
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        info = TokenInfo(token_id, name, tuple(sorted(set(scopes))), time.time_ns() // 1000)
        doc = {**info.public(), "sha256": sha256(token)}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(TOKENS_KEY, token_id, orjson.dumps(doc))
        pipe.hset(TOKEN_HASHES_KEY, doc["sha256"], token_id)
        pipe.execute()
        return token, info

    def list(self) -> list[TokenInfo]:
        raw: dict[bytes, bytes] = self.client.hgetall(TOKENS_KEY)  # type: ignore[assignment]  # sync client
        return sorted((_info(orjson.loads(v)) for v in raw.values()), key=lambda t: (t.created_us, t.token_id))

    def revoke(self, token_id: str) -> TokenInfo:
        raw = self.client.hget(TOKENS_KEY, token_id)
        if raw is None:
            raise KeyError(f"no token {token_id!r}")
        doc = orjson.loads(raw)
        doc["revoked_us"] = doc.get("revoked_us") or time.time_ns() // 1000
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(TOKENS_KEY, token_id, orjson.dumps(doc))
        pipe.hdel(TOKEN_HASHES_KEY, doc["sha256"])
        pipe.execute()
        return _info(doc)

    def verify(self, token: str) -> TokenInfo | None:
        """The live token's record, or None (unknown, malformed or revoked)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None
        digest = sha256(token)
        key = f"token:{digest}"
        if self.l1 is not None:
            hit, cached = self.l1.get(key)
            if hit:
                return cached if isinstance(cached, TokenInfo) else None
        token_id = self.client.hget(TOKEN_HASHES_KEY, digest)
        info: TokenInfo | None = None
        if token_id is not None:
            raw = self.client.hget(TOKENS_KEY, token_id)
            if raw is not None:
                doc = orjson.loads(raw)
                if hmac.compare_digest(str(doc.get("sha256", "")), digest) and not doc.get("revoked_us"):
                    info = _info(doc)
        if self.l1 is not None:
            self.l1.put(key, info)
        return info


def _info(doc: dict[str, Any]) -> TokenInfo:
    return TokenInfo(str(doc["token_id"]), str(doc["name"]), tuple(doc["scopes"]), int(doc["created_us"]),
                     int(doc.get("revoked_us") or 0))


def bearer(headers_get: Callable[[str], str | None]) -> str | None:
    value = headers_get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


@dataclass
class RateLimiter:
    """Token bucket plus an in-flight cap per client key (thread-safe; see the module docstring)."""

    per_min: float = 300.0
    burst: float = 1.5
    max_concurrent: int = 100
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 100_000
    limited: int = 0
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def capacity(self) -> float:
        return self.per_min * self.burst

    def acquire(self, client: str) -> float | None:
        """None: admitted (call ``release``); else the seconds to wait before retrying."""
        now = self.clock()
        rate = self.per_min / 60.0
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = _Bucket(self.capacity, now)
                while len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            self._buckets.move_to_end(client)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.in_flight >= self.max_concurrent:
                self.limited += 1
                return 1.0
            if bucket.tokens < 1.0:
                self.limited += 1
                return (1.0 - bucket.tokens) / rate
            bucket.tokens -= 1.0
            bucket.in_flight += 1
            return None

    def release(self, client: str) -> None:
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is not None and bucket.in_flight > 0:
                bucket.in_flight -= 1


@dataclass
class ResponseCache:
    """LRU + TTL of (status, headers, body) by request path and query."""

    ttl_s: float = 5.0
    capacity: int = 512
    clock: Callable[[], float] = time.monotonic
    hits: int = 0
    misses: int = 0
    _items: OrderedDict[str, tuple[float, list[tuple[bytes, bytes]], bytes]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None and item[0] > self.clock():
                self._items.move_to_end(key)
                self.hits += 1
                return item[1], item[2]
            self._items.pop(key, None)
            self.misses += 1
            return None

    def put(self, key: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        with self._lock:
            self._items[key] = (self.clock() + self.ttl_s, headers, body)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


Scope_ = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[MutableMapping[str, Any]]],
                   Callable[[MutableMapping[str, Any]], Awaitable[None]]], Awaitable[None]]


class GatewayMiddleware:
    """Rate limit, then (for ``CACHED_PREFIXES``) the response cache with ETags. Pure ASGI, so a streamed
    response (SSE, exports) passes through untouched."""

    def __init__(self, app: Scope_, limiter: RateLimiter, cache: ResponseCache,
                 client_of: Callable[[str | None, str], str],
                 authorized: Callable[[str | None], bool]) -> None:
        self.app = app
        self.limiter = limiter
        self.cache = cache
        self.client_of = client_of
        self.authorized = authorized

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = bearer(headers.get)
        if token is None and takes_query_token(path):  # the SSE client is limited by its token, like the rest
            token = query_token(parse_qs(scope.get("query_string", b"").decode("latin-1"),
                                         keep_blank_values=True).get(QUERY_TOKEN_PARAM))
        if path in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        client = self.client_of(token, f"ip:{peer[0] if peer else '?'}")
        wait = self.limiter.acquire(client)
        if wait is not None:
            await _send_json(send, 429, {"detail": f"rate limit exceeded ({self.limiter.per_min:g} requests/min, "
                                                   f"burst {self.limiter.capacity:g}, at most "
                                                   f"{self.limiter.max_concurrent} at once)"},
                             [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
            return
        try:
            if (scope.get("method") == "GET" and self.cache.ttl_s > 0 and path.startswith(CACHED_PREFIXES)
                    and self.authorized(token)):
                await self._cached(scope, receive, send, headers)
            else:
                await self.app(scope, receive, send)
        finally:
            self.limiter.release(client)

    async def _cached(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                      send: Callable[[MutableMapping[str, Any]], Awaitable[None]], headers: dict[str, str]) -> None:
        key = scope["path"] + "?" + scope.get("query_string", b"").decode("latin-1")
        hit = self.cache.get(key)
        if hit is None:
            status: list[int] = []
            out_headers: list[tuple[bytes, bytes]] = []
            chunks: list[bytes] = []

            async def capture(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(int(message["status"]))
                    out_headers.extend(message.get("headers", []))
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            await self.app(scope, receive, capture)
            body = b"".join(chunks)
            kept = [(k, v) for k, v in out_headers if k.lower() not in (b"content-length", b"etag")]
            if status and status[0] != 200:
                await _send(send, status[0], out_headers, body)
                return
            kept.append((b"etag", etag_of(body).encode()))
            self.cache.put(key, kept, body)
            hit = kept, body
        kept, body = hit
        etag = dict(kept).get(b"etag", b"").decode()
        if headers.get("if-none-match") == etag:
            await _send(send, 304, [(b"etag", etag.encode())], b"")
            return
        await _send(send, 200, [*kept, (b"x-cache", b"hit" if self.cache.hits and hit else b"miss")], body)


def query_token(values: list[str] | None) -> str | None:
    """The ``?access_token=`` of a streaming route: None if absent, "" (refused) if given more than once."""
    if not values:
        return None
    return values[0] if len(values) == 1 else ""


async def _send(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int,
                headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int, body: Any,
                     headers: list[tuple[bytes, bytes]]) -> None:
    await _send(send, status, [(b"content-type", b"application/json"), *headers], orjson.dumps(body))


# --- FastAPI dependencies --------------------------------------------------------------------------------------


def _store(request: Request) -> TokenStore:
    resources = request.app.state.resources
    return TokenStore(resources.redis(), resources.l1)


def _check(request: Request, scope: Scope, required: bool) -> TokenInfo | None:
    token = bearer(request.headers.get)
    if token is None and takes_query_token(request.url.path):
        token = query_token(request.query_params.getlist(QUERY_TOKEN_PARAM))
    if token is None and not required:
        return None
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if not token:
        raise HTTPException(401, f"a bearer token with scope {scope} is required", headers=unauthorized)
    info = _store(request).verify(token)
    if info is None:
        raise HTTPException(401, "invalid or revoked token", headers=unauthorized)
    if not info.allows(scope):
        raise HTTPException(403, f"this token lacks scope {scope}")
    request.state.token = info
    return info


def require_read(request: Request) -> TokenInfo | None:
    return _check(request, "read", request.app.state.resources.settings.gateway_auth == "read")


def require_admin(request: Request) -> TokenInfo:
    info = _check(request, "admin", True)
    assert info is not None
    return info


ReadDep = Depends(require_read)
AdminToken = Annotated[TokenInfo, Depends(require_admin)]


def audit(warehouse: Any, action: str, actor: str, subject: str, reason: str = "") -> None:
    """One row in ``audit_logs`` (the registry's trail): ``subject`` goes in its model_version column."""
    warehouse.insert("audit_logs", [audit_row(action, actor, subject, "", reason, time.time_ns() // 1000)],
                     list(AUDIT_COLUMNS))
