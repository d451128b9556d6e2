"""The API's bodies as pydantic models: the write bodies generated from the data contract
(``marquee.data.contract.SCHEMAS``), so the OpenAPI document and the checks follow it, and the
answers.

The generated models check types and ranges strictly (an integer within the contract's 64 or
32 bits, a finite number, a JSON boolean is no number, no unknown field); the write path's
validators then check what only the live state knows (a known user, a new id, genres some title
has) and the contract's value rules (``marquee.data.validate``), and every problem is listed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from marquee.data import contract as c

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
MAX_TEXT = 1_000  # characters of one text field
MAX_LIST = 1_000  # entries of one list field


# The contract's value rules a JSON schema can state (``marquee.data.validate`` checks them all
# again, with the rest): column -> allowed values, or (least, most).
CHOICES = {c.EVENT: c.EVENTS, c.DEVICE: c.DEVICES, c.MATURITY_RATING: c.MATURITY_RATINGS,
           c.SUBSCRIPTION_TIER: c.SUBSCRIPTION_TIERS, c.AGE_BUCKET: c.AGE_BUCKETS}
RANGES = {c.TIMESTAMP: (c.MIN_TIMESTAMP, c.MAX_TIMESTAMP),
          c.ADDED_AT: (c.MIN_TIMESTAMP, c.MAX_TIMESTAMP),
          c.SIGNUP_AT: (c.MIN_TIMESTAMP, c.MAX_TIMESTAMP),
          c.WATCH_SECONDS: (0, 1e300), c.POSITION: (1, 10_000),
          c.RATING: (c.MIN_RATING, c.MAX_RATING),
          c.RELEASE_YEAR: (c.MIN_RELEASE_YEAR, c.MAX_RELEASE_YEAR),
          c.DURATION_SECONDS: (1, 100 * 3600), c.USER_ID: (0, INT64[1]), c.ITEM_ID: (0, INT64[1])}
NOT_BLANK = (c.TITLE, c.COUNTRY)


def _annotation(column: c.Column) -> Any:
    t = column.type
    if column.name in CHOICES:
        return Literal[CHOICES[column.name]]
    if pa.types.is_int64(t) or pa.types.is_int32(t):
        lo, hi = RANGES.get(column.name, INT64 if pa.types.is_int64(t) else INT32)
        return Annotated[StrictInt, Field(ge=lo, le=hi)]
    if pa.types.is_floating(t):
        lo, hi = RANGES.get(column.name, (-1e300, 1e300))
        number = StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
        return Annotated[number, Field(ge=lo, le=hi)]
    if pa.types.is_string(t) and column.name in c.EXPOSURE_COLUMNS:
        return Annotated[StrictStr, Field(min_length=1, max_length=c.MAX_LABEL_LENGTH,
                                          pattern=r"^[ -~]+$")]
    if pa.types.is_string(t):
        pattern = r".*\S" if column.name in NOT_BLANK else None
        return Annotated[StrictStr, Field(max_length=MAX_TEXT, pattern=pattern)]
    if pa.types.is_list(t):
        return Annotated[list[Annotated[StrictStr, Field(max_length=MAX_TEXT)]],
                         Field(max_length=MAX_LIST)]
    raise TypeError(f"no JSON type for {column.name}: {t}")  # a new contract type needs one


def contract_model(table: str, name: str, defaulted: tuple[str, ...] = (),
                   doc: str = "") -> type[BaseModel]:
    """A body model of one row of ``table``. ``defaulted``: required columns the server fills
    when absent (``added_at``, ``signup_at``: now)."""
    fields: dict[str, Any] = {}
    for column in c.SCHEMAS[table]:
        annotation = _annotation(column)
        optional = column.nullable or column.name in defaulted or not column.required
        if optional:
            annotation = annotation | None
        fields[column.name] = (annotation, Field(None if optional else ...,
                                                 description=column.doc))
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


EventBody = contract_model(c.INTERACTIONS, "Event",
                           doc="One interaction: a row of the contract's interactions table.")
ItemBody = contract_model(c.ITEMS, "Item", defaulted=(c.ADDED_AT,),
                          doc="A new title: a row of the contract's items table (added_at "
                              "defaults to now).")
UserBody = contract_model(c.USERS, "User", defaulted=(c.SIGNUP_AT,),
                          doc="A signup: a row of the contract's users table (signup_at "
                              "defaults to now).")


class OnboardingBody(BaseModel):
    """The 3-genre onboarding quiz answer."""

    model_config = ConfigDict(extra="forbid")
    genres: Annotated[list[Annotated[StrictStr, Field(max_length=MAX_TEXT)]],
                      Field(max_length=MAX_LIST, examples=[["comedy", "drama", "thriller"]])]


# ----------------------------------------------------------------------------- answers

class Error(BaseModel):
    """Every 4xx and 5xx: what was wrong and how to fix it; ``problems`` lists each."""

    error: str
    problems: list[str] = []


class PickOut(BaseModel):
    item_id: int
    title: str
    score: float = Field(description="the final score (a z-score over the request's "
                                     "candidates)")
    retrieval_score: float | None = None
    p_watch: float | None = None
    watch_time_seconds: float | None = None
    item_to_item: float | None = None
    popularity: float | None = None
    als: float | None = None
    sources: dict[str, float] = Field(default_factory=dict,
                                      description="each candidate source's own score")
    explore: bool = False
    team: str | None = Field(None, description="an interleaved page: the arm whose list the "
                                               "title came from")


class RowOut(BaseModel):
    title: str
    seed_item_id: int
    items: list[PickOut]


class HomepageOut(BaseModel):
    """A homepage. ``fallback``: popularity answered (``reason`` says why; ``internal_error``
    when the cause was a bug, not a model or store failure); ``degraded``: served with a part
    missing (why)."""

    user_id: int
    items: list[PickOut]
    fallback: bool = False
    reason: str | None = None
    degraded: str | None = None
    model_version: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    stage: str | None = None
    rows: list[RowOut] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    cached: bool = False
    internal_error: bool = False
    page_id: str | None = Field(None, description="the page's id in the impression log; send "
                                                  "it as page_id with a watch from this page")
    experiments: dict[str, str] = Field(
        default_factory=dict, description="experiment id -> the arm that served the page "
                                          "(interleaved: each title's team)")


class Accepted(BaseModel):
    """A write that is in the durable log and the online state."""

    model_config = ConfigDict(extra="allow")
    status: str = "accepted"


class Health(BaseModel):
    status: str
    backend: str
    model_version: int | None
    query_breaker: str
    rank_breaker: str
    writes: str = Field(description="'durable' (a write-ahead log), 'off' (no --event-log)")
