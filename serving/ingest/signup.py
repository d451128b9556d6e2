"""Signup: a user who joins while serving is known at once, without a pipeline run.

    POST /v1/users --validate_user--> contract users row --write-ahead log--> DIR/users/part-*
                                          \\--UserStore.add--> events accepted, profile served
                                          \\--FeatureStore (a quiz answer)--> cached page stale

A signup is one row of the contract's users table (``docs/data.md``); ``signup_at`` defaults to
now. The users log is a contract ``users`` table in the event-log folder, so the next pipeline
run reads the user together with their events in ``interactions/`` (referential integrity holds),
and a restart puts the logged users back (the write path's replay, ``serving.ingest.path``).
Until then the user is this process's: another replica does not know them (as with titles
added while serving).

``onboarding_genres``, when given, must be distinct genres some title has (the quiz's rule, any
number of them) and is the user's quiz answer unless they already answered the quiz: an answer
to ``POST /v1/users/{id}/onboarding``, before or after the signup, outranks the row's genres, as
it outranks the users table's for every user (the row's genres are the profile's, the answer is
an online feature), so the rule is the same after a restart.

The store invalidates a user's cached pages only on a watch or a quiz answer, so the signup
records one (the answer the user already gave, else the row's genres, else none): a page cached
for the id before it was a user (no profile, no maturity filter) is not served again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Container, Mapping
from typing import TYPE_CHECKING

import pandas as pd

from marquee.data import contract as c
from serving.ingest.events import InvalidEvent, check_not_ahead, check_row
from serving.state.feature_store import StoreUnavailable
from serving.state.records import Onboarding

if TYPE_CHECKING:
    from serving.state.catalogue import Catalogue, UserStore
    from serving.state.feature_store import FeatureStore

log = logging.getLogger(__name__)


class InvalidUser(InvalidEvent):
    """A users row that breaks the contract or whose id is known; ``problems`` lists all."""

    def __init__(self, problems: list[str], duplicate: bool = False):
        super().__init__(problems, what="user", duplicate=duplicate)


def validate_user(raw: object, users: Container[int], genres: Collection[str],
                  now: int) -> dict[str, object]:
    """One raw user (a JSON object of the contract's ``users`` fields) -> the typed users row
    (column -> int, str, None or list of str).

    ``signup_at`` defaults to ``now`` (UTC seconds) when absent; ``age_bucket`` and
    ``onboarding_genres`` may be absent or null. ``genres``: the catalogue's, which
    ``onboarding_genres`` must be distinct ones of. Raises InvalidUser listing every problem;
    an id in ``users`` (a duplicate, when it is the only problem)."""
    if isinstance(raw, Mapping) and c.SIGNUP_AT not in raw:
        raw = {**raw, c.SIGNUP_AT: int(now)}
    value, problems = check_row(c.USERS, raw, "a user")
    picked = value.get(c.ONBOARDING_GENRES)
    if isinstance(picked, list):  # a list of text (anything else is a problem already)
        repeated = sorted({g for g in picked if picked.count(g) > 1})
        if repeated:
            problems.append(f"{c.ONBOARDING_GENRES}: {repeated!r} picked more than once; "
                            "list each genre once")
        unknown = [g for g in dict.fromkeys(picked) if g not in genres]
        if unknown:
            problems.append(f"{c.ONBOARDING_GENRES}: {unknown!r} are not genres of any title; "
                            f"pick from {sorted(genres)}")
    if problems:
        raise InvalidUser(problems)
    age = value[c.AGE_BUCKET]
    row = {c.USER_ID: int(value[c.USER_ID]), c.SIGNUP_AT: int(value[c.SIGNUP_AT]),
           c.COUNTRY: str(value[c.COUNTRY]),
           c.SUBSCRIPTION_TIER: str(value[c.SUBSCRIPTION_TIER]),
           c.AGE_BUCKET: None if age is None or pd.isna(age) else str(age),
           c.ONBOARDING_GENRES: None if picked is None else [str(g) for g in picked]}
    _check_new(row[c.USER_ID], users)
    return row


def _check_new(user_id: int, users: Container[int]) -> None:
    if user_id in users:
        raise InvalidUser([f"{c.USER_ID}: {user_id} is already a user; a new user needs a new "
                           "id (changing a profile needs a pipeline run)"], duplicate=True)


class SignupWrites:
    """The signups kind of the write path (``POST /v1/users``): a contract users row, its
    ``signup_at`` (default: now) no further ahead than the allowed skew, its id new. Applied,
    the user is known at once: their events are accepted and their profile served. The quiz
    answer it carries (or the genres it names) bumps the user's generation, so no page cached
    for the id before is served; a store that cannot take it is logged, not raised (the user is
    added and logged, and the homepage reads the row's genres from the profile anyway)."""

    name, table, exclusive = "users", c.USERS, True

    def __init__(self, users: UserStore, store: FeatureStore, catalogue: Catalogue,
                 max_future_skew_s: float = 300.0):
        self.users, self.store, self.catalogue, self.skew = users, store, catalogue, (
            max_future_skew_s)
        self._genres = self._catalogue_genres()

    def _catalogue_genres(self) -> frozenset[str]:
        return frozenset(g for gs in list(self.catalogue.genres) for g in gs)

    def validate(self, raw: object, now: int) -> dict[str, object]:
        picked = raw.get(c.ONBOARDING_GENRES) if isinstance(raw, Mapping) else None
        if isinstance(picked, list) and not set(map(str, picked)) <= self._genres:
            self._genres = self._catalogue_genres()  # a title added since may bring a genre
        row = validate_user(raw, self.users, self._genres, now)
        problems = check_not_ahead(c.SIGNUP_AT, int(row[c.SIGNUP_AT]), now, self.skew)
        if problems:
            raise InvalidUser(problems)
        return row

    def to_row(self, row: dict[str, object]) -> dict[str, object]:
        return dict(row)

    def from_row(self, row: Mapping[str, object]) -> dict[str, object] | None:
        if int(row[c.USER_ID]) in self.users:
            return None  # loaded with the dataset (or put back already)
        plain = {k: (v.tolist() if hasattr(v, "tolist") and not isinstance(v, int | float)
                     else v) for k, v in row.items()}
        return validate_user(plain, self.users, self._catalogue_genres(),
                             int(row[c.SIGNUP_AT]))

    def apply(self, row: dict[str, object]) -> None:
        self.users.add(pd.DataFrame([row]))
        user_id, genres = int(row[c.USER_ID]), tuple(row[c.ONBOARDING_GENRES] or ())
        try:
            given = self.store.features(user_id).onboarding_genres
            self.store.record_event(Onboarding(user_id, given or genres, int(row[c.SIGNUP_AT])))
        except StoreUnavailable as e:
            log.warning("user %s is signed up, but the feature store did not take the signup "
                        "(%s): a page cached for the id before may be served until it expires",
                        user_id, e)

    def answer(self, row: dict[str, object]) -> dict[str, object]:
        return {"user": dict(row)}
