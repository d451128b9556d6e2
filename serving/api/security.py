"""Who may call which route (bearer tokens by scope) and how often (a token bucket per client).

Scopes: ``events`` (POST /v1/events and /v1/users/{id}/onboarding: the app backend), ``admin``
(POST /v1/items and /v1/users; also grants ``events`` and ``read``), ``read`` (the homepage, only
when ``serving.auth.require_read_token``; an ``events`` token grants it too). Wiring::

    app.state.tokens = Tokens.load(config.serving.auth)  # Tokens.insecure_dev() for a demo
    app.state.limiter = RateLimiter(limits.write_rate_per_second, limits.write_burst)  # or None
    install_handlers(app)  # an AccessError -> JSON {"error": message}, its status and headers
    @router.post("/v1/events", dependencies=[Depends(access("events"))])
    def add_item(body: Item, principal: Annotated[Principal, Depends(access("admin"))]): ...

Refusals: 401 Unauthorized (no, malformed or unknown token; WWW-Authenticate), 403 Forbidden (the
token's scope does not grant the route's), 503 WritesDisabled (no token that could is configured),
429 RateLimited (Retry-After; ``events``/``admin`` routes only, per token, else per address).
Each is logged at INFO with the route scope, the client and the reason; no token ever is.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from marquee.config import AuthConfig

log = logging.getLogger(__name__)
GRANTS = {"admin": ("admin", "events", "read"), "events": ("events", "read"), "read": ("read",)}
LIMITED = ("events", "admin")  # route scopes the RateLimiter applies to
MIN_TOKEN_LENGTH = 16
TOKEN_HINT = "use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
CONFIG_KEY = "serving.auth.tokens"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request is: the scope its token has (``admin`` under --insecure-dev, ``read`` on an
    open homepage) and a non-secret id, ``token:<8 hex of sha256(token)>`` or
    ``anonymous:<client address>``."""

    scope: str
    client_id: str


class AccessError(Exception):
    """A refused request: HTTP ``status``, ``message`` (what was expected, what arrived, the fix;
    never a token) and response ``headers``."""

    status = 500

    def __init__(self, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message, self.headers = message, dict(headers or {})


class Unauthorized(AccessError):
    status = 401


class Forbidden(AccessError):
    status = 403


class RateLimited(AccessError):
    status = 429


class WritesDisabled(AccessError):
    status = 503


@dataclasses.dataclass(frozen=True)
class _Token:
    scope: str
    digest: bytes  # sha256 of the token; the plaintext is not kept
    source: str  # "env MARQUEE_EVENTS_TOKEN", "file /run/secrets/events"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _client_id(digest: bytes) -> str:
    return "token:" + digest.hex()[:8]


def _known(scope: str, where: str = "") -> None:
    if scope not in GRANTS:
        raise ValueError(f"{where}unknown scope {scope!r}; valid: {', '.join(sorted(GRANTS))}")


def _read_file(scope: str, file: str) -> str:
    fix = f"write the {scope} token on its first line ({TOKEN_HINT}) or drop it from {CONFIG_KEY}"
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as e:
        raise ValueError(f"token file {file!r} (scope {scope}) is unreadable ({e}): {fix}") from e
    if not lines or not lines[0].strip():
        raise ValueError(f"token file {file!r} (scope {scope}) has an empty first line: {fix}")
    return lines[0].strip()


class Tokens:
    """The configured bearer tokens (as digests); ``check`` decides each request. Immutable."""

    def __init__(self, tokens: tuple[_Token, ...], auth: AuthConfig, insecure: bool = False):
        self._tokens, self._auth, self.insecure = tokens, auth, insecure
        self.require_read_token = auth.require_read_token

    @classmethod
    def load(cls, auth: AuthConfig, environ: Mapping[str, str] = os.environ) -> Tokens:
        """Reads each ``auth.tokens`` entry's ``env`` variable (unset or blank: no token) and
        ``file`` (first line, stripped); when both give a token, both are accepted. ValueError
        for an unknown scope, an entry naming neither, a named file missing, unreadable or empty,
        a token under 16 characters or not visible ASCII, or one token given to two scopes."""
        found: dict[bytes, _Token] = {}
        for i, entry in enumerate(auth.tokens):
            _known(entry.scope, f"{CONFIG_KEY}[{i}]: ")
            if not entry.env and not entry.file:
                raise ValueError(f"{CONFIG_KEY}[{i}] (scope {entry.scope}) names no env or file")
            sources = []
            if entry.file:
                sources.append((f"file {entry.file}", _read_file(entry.scope, entry.file)))
            if entry.env and environ.get(entry.env, "").strip():
                sources.append((f"env {entry.env}", environ[entry.env].strip()))
            for source, value in sources:
                if len(value) < MIN_TOKEN_LENGTH or not all("!" <= c <= "~" for c in value):
                    raise ValueError(
                        f"the {entry.scope} token from {source} has {len(value)} characters; it "
                        f"needs at least {MIN_TOKEN_LENGTH}, all visible ASCII: {TOKEN_HINT}")
                token = _Token(entry.scope, _digest(value), source)
                other = found.setdefault(token.digest, token)
                if other.scope != token.scope:
                    raise ValueError(
                        f"the same token is configured for scopes {other.scope} ({other.source})"
                        f" and {token.scope} ({source}): give each scope its own token")
        tokens = cls(tuple(found.values()), auth)
        for scope in LIMITED + ("read",) * auth.require_read_token:
            if not tokens._granting(scope):
                log.warning("no token grants scope %s, so its routes answer 503: %s", scope,
                            tokens._fix(scope))
        return tokens

    @classmethod
    def insecure_dev(cls) -> Tokens:
        """Lets every request through as ``admin`` (``marquee serve --insecure-dev``, ``make
        demo``), flagged ``.insecure = True``. Never for a server others can reach."""
        log.warning("INSECURE: every request is allowed without a token (--insecure-dev)")
        return cls((), AuthConfig(tokens=()), insecure=True)

    def _granting(self, scope: str) -> list[_Token]:
        return [t for t in self._tokens if scope in GRANTS[t.scope]]

    def _fix(self, scope: str) -> str:
        envs = [t.env for t in self._auth.tokens if t.env and scope in GRANTS.get(t.scope, ())]
        where = f"set {' or '.join(envs)} or " if envs else f"add a {scope} token to "
        return f"{where}{CONFIG_KEY} in the config, or run `marquee serve --insecure-dev` (demo)"

    def check(self, authorization: str | None, scope: str, client: str = "unknown") -> Principal:
        """The principal of a request to a route of ``scope`` carrying this Authorization header
        from address ``client``; raises (and logs) Unauthorized, Forbidden or WritesDisabled.
        The token is compared (constant time) with every configured one, with no early exit."""
        _known(scope)
        if self.insecure:
            return Principal("admin", f"anonymous:{client}")
        if scope == "read" and not self.require_read_token:
            return Principal("read", f"anonymous:{client}")
        if not self._granting(scope):
            raise _deny(WritesDisabled(
                f"this route needs a {scope} token and none is configured: {self._fix(scope)}"),
                scope, client)
        challenge = {"WWW-Authenticate": f'Bearer realm="marquee", scope="{scope}"'}
        expected = "expected `Authorization: Bearer <token>`"
        scheme, _, presented = (authorization or "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            if not scheme:
                got = "no Authorization header"
            elif scheme.lower() == "bearer":
                got = "`Bearer` with no token"
            elif presented and scheme.isalnum() and len(scheme) < MIN_TOKEN_LENGTH:
                got = f"a `{scheme}` header"  # too short to be a token: safe to echo
            else:
                got = "a header that is not `<scheme> <token>`"  # maybe a bare token: not echoed
            raise _deny(Unauthorized(f"{expected}, got {got}", challenge), scope, client)
        digest, match = _digest(presented), None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.digest) and match is None:
                match = token
        if match is None:
            held = " or ".join(t.source for t in self._granting(scope))
            message = (f"{expected} with a {scope} token, got one the server does not hold: "
                       f"send the token from {held}")
            raise _deny(Unauthorized(message, challenge), scope, f"{client} {_client_id(digest)}")
        if scope not in GRANTS[match.scope]:
            message = (f"this route needs scope {scope}; the token {_client_id(match.digest)} "
                       f"has scope {match.scope}, which grants {', '.join(GRANTS[match.scope])}:"
                       f" send a token of a scope that grants {scope}")
            insufficient = f'Bearer realm="marquee", error="insufficient_scope", scope="{scope}"'
            raise _deny(Forbidden(message, {"WWW-Authenticate": insufficient}), scope,
                        _client_id(match.digest))
        return Principal(match.scope, _client_id(match.digest))


def _deny(error: AccessError, scope: str, client: str) -> AccessError:
    log.info("denied %d: route scope %s, client %s: %s", error.status, scope, client, error.message)
    return error


def retry_after(seconds: float) -> int:
    """``seconds`` as a Retry-After value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))  # 1e-9: float dust must not add a second


class RateLimiter:
    """A token bucket per client key: ``burst`` requests at once, refilled at ``rate_per_second``.
    Thread-safe. Holds at most ``max_clients`` keys: the least recently used is forgotten (and so
    comes back with a full bucket)."""

    def __init__(self, rate_per_second: float, burst: int,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        if not (isinstance(rate_per_second, (int, float)) and math.isfinite(rate_per_second)
                and rate_per_second > 0):
            raise ValueError("rate_per_second (serving.limits.write_rate_per_second) must be a "
                             f"positive number, got {rate_per_second!r}")
        for name, value in (("burst (serving.limits.write_burst)", burst),
                            ("max_clients", max_clients)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.rate, self.burst, self.max_clients = float(rate_per_second), burst, max_clients
        self._clock, self._lock = clock, threading.Lock()
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float | None:
        """Takes one request from ``key``'s bucket: None when allowed, else the seconds until one
        would be (and nothing is taken)."""
        with self._lock:
            now = self._clock()
            level, last = self._buckets.pop(key, (float(self.burst), now))
            level = min(float(self.burst), level + max(0.0, now - last) * self.rate)
            allowed = level >= 1.0
            self._buckets[key] = (level - 1.0 if allowed else level, now)  # now the most recent
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return None if allowed else (1.0 - level) / self.rate


def access(scope: str) -> Callable:
    """A FastAPI dependency ``(request) -> Principal`` for a route of ``scope``: checks
    ``request.app.state.tokens`` and, for ``events``/``admin``, ``request.app.state.limiter``
    (None or absent: no limit); raises an AccessError. Async: a refusal takes no worker thread."""
    _known(scope)

    async def dependency(request: Request) -> Principal:
        client = request.client.host if request.client else "unknown"
        tokens: Tokens = request.app.state.tokens
        principal = tokens.check(request.headers.get("authorization"), scope, client)
        limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
        if limiter is not None and scope in LIMITED:
            wait = limiter.acquire(principal.client_id)
            if wait is not None:
                raise _deny(RateLimited(
                    f"more than {limiter.rate:g} writes per second (burst {limiter.burst}) from "
                    f"{principal.client_id}: retry after {retry_after(wait)} s, or raise "
                    "serving.limits.write_rate_per_second / write_burst",
                    {"Retry-After": str(retry_after(wait))}), scope, principal.client_id)
        return principal

    return dependency


def install_handlers(app: FastAPI) -> None:
    """Makes every AccessError a JSON ``{"error": message}`` response with its status, headers."""

    async def handle(request: Request, exc: AccessError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(AccessError, handle)
