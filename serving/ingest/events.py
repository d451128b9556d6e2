"""Incoming events: validated against the data contract and the live catalogue and users.

An event is one row of the contract's interactions table (``docs/data.md``). The validator reuses
the dataset validator's row rules (:func:`marquee.data.validate.check_frame`) and adds what a
live event can be checked against: the known users, the catalogue and the server's clock (no
event dated further ahead than ``serving.limits.max_future_skew_seconds``, so a far-future
event cannot drive trending). A bad event raises :class:`InvalidEvent` (a ValueError) listing
every problem, each saying what was expected and what arrived.

:class:`EventWrites` is the events kind of the write path (``serving.ingest.path``):
validate -> durable log -> the feature store -> hooks (trending's live watches).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from marquee.data import contract as c
from marquee.data.validate import check_frame
from serving.state.records import Event

if TYPE_CHECKING:
    from serving.state.feature_store import FeatureStore

log = logging.getLogger(__name__)


class InvalidEvent(ValueError):
    """An event that breaks the contract; ``problems`` holds one message per problem.
    ``duplicate``: the only problem is an id already taken (a title, a user: HTTP 409)."""

    def __init__(self, problems: list[str], what: str = "event", duplicate: bool = False):
        self.problems, self.duplicate = problems, duplicate
        super().__init__(f"invalid {what} ({len(problems)} problem(s)): " + "; ".join(problems))


# Rows that pass every rule of their table; each field of a raw row is checked in a copy of one,
# so that check_frame (which reports the first problem of a row) reports every problem once.
CLEAN_ROWS: dict[str, dict[str, object]] = {
    c.INTERACTIONS: {
        c.USER_ID: 0, c.ITEM_ID: 0, c.TIMESTAMP: 0, c.EVENT: c.EVENT_WATCH, c.POSITION: None,
        c.WATCH_SECONDS: 0.0, c.DEVICE: c.DEVICES[-1], c.RATING: None},
    c.ITEMS: {
        c.ITEM_ID: 0, c.TITLE: "t", c.GENRES: [], c.CAST: [], c.DIRECTOR: None,
        c.RELEASE_YEAR: None, c.DURATION_SECONDS: None, c.ADDED_AT: c.MIN_TIMESTAMP,
        c.MATURITY_RATING: c.MATURITY_RATINGS[0], c.KEYWORDS: None},
    c.USERS: {
        c.USER_ID: 0, c.SIGNUP_AT: c.MIN_TIMESTAMP, c.COUNTRY: "unknown",
        c.SUBSCRIPTION_TIER: c.SUBSCRIPTION_TIERS[-1], c.AGE_BUCKET: None,
        c.ONBOARDING_GENRES: None},
}


def check_row(table: str, raw: object, what: str,
              refs: Mapping[str, tuple[Container[int], str]] = {}  # noqa: B006 (read only)
              ) -> tuple[dict[str, object], list[str]]:
    """Checks one raw row of ``table`` (a JSON object's fields) against the contract.

    Returns (typed value per column, problems): one message per problem in column order, each
    saying what was expected and what arrived; the values are only meaningful without problems.
    ``what`` names the row in messages ("an interaction", "a title"). ``refs``: column -> (the
    ids it must be in, why), checked on a value that is otherwise valid.
    """
    columns = {col.name: col for col in c.SCHEMAS[table]}
    if not isinstance(raw, Mapping):
        return {}, [f"expected {what}: a JSON object with the fields {', '.join(columns)}, "
                    f"got {raw!r}"]
    problems = [f"{k}: not a field of {what} (its fields: {', '.join(columns)})"
                for k in raw if k not in columns]
    problems += [f"{name}: missing; expected {col.doc}" for name, col in columns.items()
                 if not col.nullable and name not in raw]
    probes = []
    for name, col in columns.items():
        row = dict(CLEAN_ROWS[table])
        if name in raw:
            row[name] = raw[name]
            if isinstance(raw[name], bool) and not pa.types.is_string(col.type):
                row[name] = json.dumps(raw[name])  # JSON true is no number: reported as text
        if name == c.WATCH_SECONDS and raw.get(c.EVENT) in c.EVENTS:
            row[c.EVENT] = raw[c.EVENT]  # the impression-has-no-watch-time rule needs both
        probes.append(row)
    if table == c.INTERACTIONS:  # no uniqueness rule: one frame checks every probe at once
        typed, reasons = check_frame(table, pd.DataFrame(probes, dtype=object), check_refs=False)
        value = {name: typed[name].iloc[k] for k, name in enumerate(columns)
                 if name in typed.columns}
    else:  # ids must be unique within a frame: each probe alone
        value, reasons = {}, []
        for name, row in zip(columns, probes, strict=True):
            typed, why = check_frame(table, pd.DataFrame([row], dtype=object), check_refs=False)
            value[name] = typed[name].iloc[0]
            reasons.append(why[0])
    for k, name in enumerate(columns):
        if reasons[k]:
            problems.append(reasons[k])
        elif name in refs and name in raw and int(value[name]) not in refs[name][0]:
            problems.append(f"{name}: {int(value[name])} {refs[name][1]}")
    return value, problems


class EventValidator:
    """Checks raw events (a JSON object's fields) against the contract, the users and the items.

    Args:
      user_ids: known user ids (``UserStore`` supports ``in``); an event of another user is
        refused, as the next pipeline run would reject it (referential integrity).
      item_ids: catalogue item ids (e.g. ``Catalogue.row``).
    """

    def __init__(self, user_ids: Container[int], item_ids: Container[int]):
        self.user_ids, self.item_ids = user_ids, item_ids

    def _refs(self) -> dict[str, tuple[Container[int], str]]:
        return {
            c.USER_ID: (self.user_ids, "is not a known user; the users table must hold a user "
                        "before their events are accepted"),
            c.ITEM_ID: (self.item_ids, "is not in the catalogue; send events only for titles "
                        "the catalogue holds")}

    def validate(self, raw: Mapping[str, object]) -> Event:
        """The typed event; raises InvalidEvent listing every problem. A plainly valid row
        (exact JSON types, every rule met) is taken by :func:`_plain_event` in microseconds;
        anything else goes through the dataset validator's rules, which list every problem
        (``tests/test_event_validation.py`` checks the two agree)."""
        event = _plain_event(raw, self.user_ids, self.item_ids)
        if event is not None:
            return event
        value, problems = check_row(c.INTERACTIONS, raw, "an interaction", self._refs())
        if problems:
            raise InvalidEvent(problems)
        return _event(value)

    def validate_frame(self, frame: pd.DataFrame) -> list[Event | str]:
        """Each row of a batch of the interactions table (a logged part file's) as an Event, or
        why it is refused: the dataset validator's first problem of the row, else an unknown
        user or title (the reasons ``validate`` gives). Raises ContractError for a frame without
        a contract column."""
        typed, reasons = check_frame(c.INTERACTIONS, frame, check_refs=False)
        refs = self._refs()
        out: list[Event | str] = []
        for value, reason in zip(typed.to_dict("records"), reasons, strict=True):
            reason = reason or next((f"{name}: {int(value[name])} {why}"
                                     for name, (ids, why) in refs.items()
                                     if int(value[name]) not in ids), "")
            out.append(reason or _event(value))
        return out


_EVENT_COLUMNS = frozenset(col.name for col in c.SCHEMAS[c.INTERACTIONS])
_REQUIRED = frozenset(col.name for col in c.SCHEMAS[c.INTERACTIONS] if not col.nullable)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object) -> bool:
    return (_int(v) or isinstance(v, float)) and math.isfinite(v)


def _plain_event(raw: object, users: Container[int], items: Container[int]) -> Event | None:
    """The Event of a row that meets every rule of the contract's interactions table and the
    live references with exact JSON types; None when anything is off (or merely unusual, e.g.
    a position of 3.0), leaving the full check to say what."""
    if not isinstance(raw, Mapping) or not _REQUIRED <= raw.keys() <= _EVENT_COLUMNS:
        return None
    user, item, ts, ev, ws, device = (raw[c.USER_ID], raw[c.ITEM_ID], raw[c.TIMESTAMP],
                                      raw[c.EVENT], raw[c.WATCH_SECONDS], raw[c.DEVICE])
    position, rating = raw.get(c.POSITION), raw.get(c.RATING)
    ok = (_int(user) and 0 <= user < 2**63 and _int(item) and 0 <= item < 2**63
          and _int(ts) and c.MIN_TIMESTAMP <= ts <= c.MAX_TIMESTAMP
          and ev in c.EVENTS and device in c.DEVICES
          and _number(ws) and 0 <= ws <= 1e300 and (ev != c.EVENT_IMPRESSION or ws == 0)
          and (position is None or (_int(position) and 1 <= position <= 10_000))
          and (rating is None or (_number(rating) and c.MIN_RATING <= rating <= c.MAX_RATING)))
    labels = {k: raw[k] for k in c.EXPOSURE_COLUMNS if raw.get(k) is not None}
    if not ok or user not in users or item not in items or not all(
            isinstance(v, str) and 0 < len(v) <= c.MAX_LABEL_LENGTH and v.isascii()
            and v.isprintable() for v in labels.values()):
        return None
    return Event(user_id=user, item_id=item, timestamp=ts, event=ev, watch_seconds=float(ws),
                 device=device, position=position,
                 rating=None if rating is None else float(rating), **labels)


def _event(value: Mapping[str, object]) -> Event:
    """The Event of a valid row typed by ``check_frame``."""
    return Event(
        user_id=int(value[c.USER_ID]), item_id=int(value[c.ITEM_ID]),
        timestamp=int(value[c.TIMESTAMP]), event=str(value[c.EVENT]),
        watch_seconds=float(value[c.WATCH_SECONDS]), device=str(value[c.DEVICE]),
        position=None if pd.isna(value[c.POSITION]) else int(value[c.POSITION]),
        rating=None if pd.isna(value[c.RATING]) else float(value[c.RATING]),
        **{k: str(value[k]) for k in c.EXPOSURE_COLUMNS
           if k in value and value[k] is not None and not pd.isna(value[k])})


def check_not_ahead(name: str, value: int, now: int, skew_s: float) -> list[str]:
    """A timestamp no further ahead of the server's clock than ``skew_s`` seconds."""
    if value > now + skew_s:
        return [f"{name}: {value} is {value - now} s ahead of the server's clock (at most "
                f"{skew_s:.0f} s allowed: serving.limits.max_future_skew_seconds); send UTC "
                "seconds of when it happened"]
    return []


class EventWrites:
    """The events kind of the write path (``POST /v1/events``)."""

    name, table, exclusive = "events", c.INTERACTIONS, False

    def __init__(self, validator: EventValidator, store: FeatureStore,
                 max_future_skew_s: float = 300.0):
        self.validator, self.store, self.skew = validator, store, max_future_skew_s

    def validate(self, raw: object, now: int) -> Event:
        event = self.validator.validate(raw)
        problems = check_not_ahead(c.TIMESTAMP, event.timestamp, now, self.skew)
        if problems:
            raise InvalidEvent(problems)
        return event

    def to_row(self, event: Event) -> dict[str, object]:
        return event.to_row()

    def from_row(self, row: Mapping[str, object]) -> Event:
        return self.validator.validate(row)

    def from_frame(self, frame: pd.DataFrame) -> list[Event | str]:
        return self.validator.validate_frame(frame)

    def apply(self, event: Event) -> None:
        self.store.record_event(event)

    def answer(self, event: Event) -> dict[str, object]:
        return {"event": event.to_row()}
