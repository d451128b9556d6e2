"""The API's routes, one router per resource: homepages, writes, operations.

    GET  /v1/users/{user_id}/homepage?k=50   the homepage (a model failure is answered by the
                                             fallback, marked, never a 5xx)
    POST /v1/events                          one interaction            scope events
    POST /v1/users/{user_id}/onboarding      the 3-genre quiz answer    scope events
    POST /v1/items                           a new title                scope admin
    POST /v1/users                           a signup                   scope admin
    GET  /healthz, /metrics                  liveness and readiness; Prometheus text

A write's 200 means it is in the durable log and the online state (``serving.ingest.path``).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from serving.api.body import BadBody, model_body
from serving.api.models import (
    Accepted,
    Error,
    EventBody,
    Health,
    HomepageOut,
    ItemBody,
    OnboardingBody,
    UserBody,
)
from serving.api.security import Principal, access

MAX_K = 500
# An id as the API takes it: ASCII digits only (Python's int() also takes other scripts'
# digits, which no client means), within the contract's int64.
_ID = re.compile(r"[0-9]{1,19}")
ERRORS = {400: {"model": Error, "description": "bad input: what was expected and what arrived"},
          401: {"model": Error, "description": "no or unknown bearer token"},
          403: {"model": Error, "description": "the token's scope does not allow this route"},
          408: {"model": Error, "description": "the body did not arrive in time"},
          409: {"model": Error, "description": "the id is taken"},
          413: {"model": Error, "description": "the body is too large"},
          415: {"model": Error, "description": "not application/json"},
          429: {"model": Error, "description": "over the client's write rate (Retry-After)"},
          503: {"model": Error, "description": "not stored: no durable log, or it failed"}}
READ_ERRORS = {k: ERRORS[k] for k in (400, 401, 403)}


def parse_id(raw: str, what: str = "user id") -> int:
    if not _ID.fullmatch(raw) or int(raw) > 2**63 - 1:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise BadBody(400, f"{what} must be a non-negative integer of ASCII digits below 2**63, "
                           f"got {shown!r}")
    return int(raw)


def parse_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not _ID.fullmatch(raw) or not 1 <= int(raw) <= MAX_K:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise BadBody(400, f"k must be an integer between 1 and {MAX_K} (ASCII digits), got "
                           f"{shown!r}")
    return int(raw)


homepages = APIRouter(tags=["homepage"])


@homepages.get("/v1/users/{user_id}/homepage", response_model=HomepageOut,
               responses=READ_ERRORS, summary="A user's homepage")
def homepage(request: Request, user_id: str,
             principal: Annotated[Principal, Depends(access("read"))],
             k: str | None = None) -> dict:
    """Top ``k`` titles and the "Because you watched" rows. ``fallback`` marks popularity
    answering (why in ``reason``), ``degraded`` a page served with a part missing."""
    service = request.app.state.service
    page = service.homepage(parse_id(user_id), parse_k(k, service.config.k))
    request.app.state.metrics.observe_page(page)
    return page.to_dict()


writes = APIRouter(tags=["writes"])


def _body_doc(model) -> dict:
    """The route's request body in the OpenAPI document: the body is read by ``model_body``
    (strict JSON, bounded), not by FastAPI, so the document is given the model's schema."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


async def _write(request: Request, route: str, model, **params) -> dict:
    raw, _ = await model_body(request, model)
    path = request.app.state.writes.path
    answer = await run_in_threadpool(path.accept, route, raw, **params)
    request.app.state.metrics.count_write(route, "accepted")
    return {"status": "accepted", **answer}


@writes.post("/v1/events", response_model=Accepted, responses=ERRORS,
             openapi_extra=_body_doc(EventBody),
             summary="Record one interaction")
async def post_event(request: Request,
                     principal: Annotated[Principal, Depends(access("events"))]) -> dict:
    """One row of the contract's interactions table; it updates the user's online features at
    once and is logged for the next pipeline run."""
    return await _write(request, "events", EventBody)


@writes.post("/v1/users/{user_id}/onboarding", response_model=Accepted, responses=ERRORS,
             openapi_extra=_body_doc(OnboardingBody),
             summary="Store a user's onboarding quiz answer")
async def post_onboarding(request: Request, user_id: str,
                          principal: Annotated[Principal, Depends(access("events"))]) -> dict:
    """The 3 genres a user picked; their next homepage (cold-start stage ``new``) leads with
    trending titles in those genres."""
    return await _write(request, "onboarding", OnboardingBody, user_id=parse_id(user_id))


@writes.post("/v1/items", response_model=Accepted, responses=ERRORS,
             openapi_extra=_body_doc(ItemBody),
             summary="Add a title while serving")
async def post_item(request: Request,
                    principal: Annotated[Principal, Depends(access("admin"))]) -> dict:
    """A row of the contract's items table: in the catalogue and retrievable (embedded by the
    pushed candidate tower) on the next request, logged for the next pipeline run."""
    return await _write(request, "items", ItemBody)


@writes.post("/v1/users", response_model=Accepted, responses=ERRORS,
             openapi_extra=_body_doc(UserBody),
             summary="Sign a user up while serving")
async def post_user(request: Request,
                    principal: Annotated[Principal, Depends(access("admin"))]) -> dict:
    """A row of the contract's users table: known at once (their events accepted, their
    profile served), logged for the next pipeline run."""
    return await _write(request, "users", UserBody)


ops = APIRouter(tags=["operations"])


@ops.get("/healthz", response_model=Health, summary="Liveness and readiness")
def healthz(request: Request) -> dict:
    service, writes_ = request.app.state.service, request.app.state.writes
    return {"status": "ok", "backend": service.backend.name,
            "model_version": service.backend.serving_version(),
            "query_breaker": service.query_breaker.state,
            "rank_breaker": service.rank_breaker.state,
            "writes": "durable" if writes_.wal is not None else "off"}


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response,
         responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
