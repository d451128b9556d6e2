"""Request bodies read strictly: bounded in size, time and depth, one JSON value, no NaN, no
duplicate keys, then checked against the route's pydantic model with every problem listed.

Python's ``json`` accepts ``NaN`` and ``Infinity``, takes the last of duplicate keys and
recurses as deep as the text nests; a write API must refuse all three (a duplicate key is an
ambiguous body: which value did the client mean?), and say so.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError


class BadBody(Exception):
    """A body the route cannot take: ``status`` (400, 408, 411, 413, 415), the message and the
    problems, each saying what was expected and what arrived."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number (or null where the "
                     "field allows it)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears more than once in one object; send each "
                             "field once")
        seen[key] = value
    return seen


def _depth(text: str) -> int:
    """The deepest nesting of objects and arrays, counted outside strings, in O(n)."""
    deepest = depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(raw: bytes, max_depth: int) -> Any:
    """One JSON value from ``raw`` (UTF-8), or BadBody(400) saying what is wrong."""
    if not raw.strip():
        raise BadBody(400, "the body is empty; expected one JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadBody(400, f"the body is not UTF-8 text ({e}); send JSON in UTF-8") from e
    depth = _depth(text)
    if depth > max_depth:
        raise BadBody(400, f"the JSON nests {depth} levels deep; at most {max_depth} are "
                           "accepted (a write body is one flat object)")
    try:
        return json.loads(text, parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicates)
    except ValueError as e:  # JSONDecodeError is a ValueError, as are the hooks' refusals
        raise BadBody(400, f"the body is not valid JSON: {e}") from e


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, at most ``max_bytes`` (413 beyond, counted as it arrives: a missing or lying
    Content-Length changes nothing), within ``timeout_s`` (408)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdecimal() or int(length) > max_bytes):
        raise BadBody(413 if length.isdecimal() else 400,
                      f"Content-Length {length[:40]!r}: expected a decimal number of at most "
                      f"{max_bytes} bytes (serving.limits.max_body_bytes)")
    chunks, size = [], 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BadBody(413, f"the body is over the limit: at most {max_bytes} bytes "
                                   "(serving.limits.max_body_bytes); send one object per request")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError as e:
        raise BadBody(408, f"the body did not arrive within {timeout_s:.0f} s (got {size} "
                           "bytes); send it at once, with a true Content-Length") from e
    return b"".join(chunks)


def problems_of(error: ValidationError) -> list[str]:
    """One line per pydantic error: the field, what was expected, what arrived."""
    out = []
    for e in error.errors(include_url=False):
        where = ".".join(str(x) for x in e["loc"]) or "body"
        got = e.get("input")
        shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        if len(shown) > 80:
            shown = shown[:77] + "..."
        out.append(f"{where}: {e['msg']} (got {shown})")
    return out


async def model_body(request: Request, model: type[BaseModel]) -> tuple[dict, BaseModel]:
    """The body as (the raw object, the model), or BadBody listing every problem."""
    limits = request.app.state.limits
    content_type = request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise BadBody(415, f"Content-Type {content_type[:60]!r}: expected application/json")
    raw = parse_json(await read_body(request, limits.max_body_bytes,
                                     limits.read_timeout_seconds), limits.max_json_depth)
    if not isinstance(raw, dict):
        raise BadBody(400, f"expected one JSON object, got {type(raw).__name__}",
                      [f"body: expected a JSON object with the fields "
                       f"{', '.join(model.model_fields)}"])
    try:
        return raw, model.model_validate(raw)
    except ValidationError as e:
        problems = problems_of(e)
        raise BadBody(400, f"invalid {model.__name__.lower()} ({len(problems)} problem(s)): "
                           + "; ".join(problems), problems) from e
