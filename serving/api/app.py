"""The FastAPI app: routes (``serving.api.routes``), errors mapped to status codes, metrics.

``create_app(service, writes, tokens, limits)`` takes what ``serving.api.server`` built once at
start-up and only serves it. Every 4xx and 5xx answer is ``{"error": ..., "problems": [...]}``
saying what was expected and what arrived; a malformed request never gets a 5xx, a traceback or
a closed connection. The lifespan's shutdown drains and closes the write-ahead log, so SIGTERM
and SIGINT lose no acknowledged write.
"""

from __future__ import annotations

import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from marquee.config import LimitsConfig
from marquee.monitoring.window import ExposureWindow
from serving.api import routes
from serving.api.body import BadBody, problems_of
from serving.api.metrics import Metrics
from serving.api.security import AccessError, RateLimiter, Tokens, install_handlers
from serving.homepage.experiments import front
from serving.homepage.service import HomepageService
from serving.ingest.events import InvalidEvent
from serving.ingest.path import WritesUnavailable
from serving.ingest.wal import WalError
from serving.ingest.wiring import Writes
from serving.state.feature_store import StoreUnavailable

log = logging.getLogger(__name__)
TITLE = "marquee homepage API"
WRITE_ROUTES = {"/v1/events": "events", "/v1/items": "items", "/v1/users": "users",
                "/v1/users/{user_id}/onboarding": "onboarding"}


def _error(status: int, message: str, problems: list[str] | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "problems": problems or []}, status_code=status,
                        headers=headers)


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def _count(request: Request, outcome: str) -> None:
    name = WRITE_ROUTES.get(_route(request))
    if name is not None and request.method == "POST":
        request.app.state.metrics.count_write(name, outcome)


def _install_errors(app: FastAPI) -> None:
    install_handlers(app)
    access_handler = app.exception_handlers[AccessError]

    async def access_error(request: Request, e: AccessError):
        _count(request, "denied")
        return await access_handler(request, e)

    async def bad_body(request: Request, e: BadBody):
        _count(request, "invalid")
        return _error(e.status, e.message, e.problems)

    async def invalid(request: Request, e: InvalidEvent):
        _count(request, "duplicate" if e.duplicate else "invalid")
        return _error(409 if e.duplicate else 400, str(e), e.problems)

    async def unavailable(request: Request, e: Exception):
        log.error("%s %s not stored: %s", request.method, _route(request), e)
        _count(request, "unavailable")
        return _error(503, f"not stored: {e}", headers={"Retry-After": "1"})

    async def validation(request: Request, e: RequestValidationError):
        problems = problems_of(e)
        return _error(400, f"invalid request ({len(problems)} problem(s)): "
                      + "; ".join(problems), problems)

    async def http_error(request: Request, e: HTTPException):
        message = {404: f"no route {request.url.path[:200]!r}; the routes are listed at "
                        "/openapi.json and /docs",
                   405: f"{request.method[:20]} is not allowed on {request.url.path[:200]!r}"
                        f"; allowed: {(e.headers or {}).get('Allow', '?')}"}.get(
                       e.status_code, str(e.detail))
        return _error(e.status_code, message, headers=e.headers)

    app.add_exception_handler(AccessError, access_error)
    app.add_exception_handler(BadBody, bad_body)
    app.add_exception_handler(InvalidEvent, invalid)
    for cls in (WritesUnavailable, WalError, StoreUnavailable):
        app.add_exception_handler(cls, unavailable)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)


class _Guard:
    """ASGI middleware: a request head over ``max_header_bytes`` is a 431 (uvicorn's own bound
    only applies to a head still arriving); every request's route, status and seconds go into
    the metrics."""

    def __init__(self, app, metrics: Metrics, max_header_bytes: int):
        self.app, self.metrics, self.max_header_bytes = app, metrics, max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > self.max_header_bytes:
            response = _error(431, f"the request head is {size} bytes; at most "
                                   f"{self.max_header_bytes} are accepted "
                                   "(serving.limits.max_header_bytes)")
            self.metrics.observe_request("unmatched", scope["method"], 431, 0.0)
            return await response(scope, receive, send)

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status[0],
                                         time.perf_counter() - start)


def _openapi(app: FastAPI):
    """The generated document, without FastAPI's 422 (this API answers 400 for bad input)."""
    def build():
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                              description=app.description)
            for path in doc["paths"].values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema
    return build


def create_app(service: HomepageService, writes: Writes, tokens: Tokens,
               limits: LimitsConfig = LimitsConfig(), close_on_shutdown: bool = True) -> FastAPI:
    """The app over a built service (or its experiments front) and write path: every page
    served is logged when the write path has an impression log. ``close_on_shutdown``: the
    lifespan's end drains and closes the write-ahead log and stops the service."""
    service = front(service)
    service.log_impressions(writes.exposures)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if close_on_shutdown:
            log.info("shutting down: closing the write-ahead log")
            writes.close()
            service.stop()
            service.store.close()
            log.info("write-ahead log closed; every acknowledged write is on disk")

    app = FastAPI(title=TITLE, version="0.1.0", lifespan=lifespan,
                  description="Homepages (retrieval -> ranking -> re-ranking) and the writes "
                              "that feed them. Writes need a bearer token of their scope.")
    app.state.service, app.state.writes, app.state.tokens = service, writes, tokens
    app.state.limits = limits
    app.state.limiter = RateLimiter(limits.write_rate_per_second, limits.write_burst)
    readings = {"feature_store": service.store.stats}
    if writes.wal is not None:
        readings["wal"] = writes.wal.stats
    if writes.exposures is not None:
        readings["impressions"] = writes.exposures.stats
    exposure = ExposureWindow(service.catalogue, new_days=service.config.explore_new_days,
                              popularity=service.users.popularity())
    readings["exposure"] = exposure.stats
    app.state.metrics = metrics = Metrics(readings, exposure=exposure)
    for router in (routes.homepages, routes.writes, routes.ops):
        app.include_router(router)
    _install_errors(app)
    app.add_middleware(_Guard, metrics=metrics, max_header_bytes=limits.max_header_bytes)
    app.openapi = _openapi(app)
    return app
