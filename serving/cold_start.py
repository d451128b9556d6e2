"""The cold-start ladder and the "Because you watched X" rows.

:func:`stage` places a user on the ladder by the length of their history (positive watches):

- ``new`` (no history): trending / popularity in the onboarding genres;
- ``light`` (from ``light_from`` to below ``full_from``): content-based from the watched items;
- ``full`` (``full_from`` and more): the whole pipeline (two-tower retrieval, ranker, re-rank).

The onboarding quiz (``POST /v1/users/{id}/onboarding``, :class:`OnboardingIngest`): a user picks
``count`` (3) genres; the answer goes to the feature store (the next homepage of a ``new`` user is
trending and popular titles in those genres, its cached page invalidated) and to an append-only
log (``DIR/onboarding.jsonl``) replayed at start-up and merged into the users table's
``onboarding_genres`` by the next data export.

:class:`BecauseYouWatched` builds one row per recent watch from :class:`ItemToItemSource`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from marquee.data import contract as c
from serving.catalogue import Catalogue, UserProfile
from serving.events import EventLogError, InvalidEvent, Onboarding
from serving.sources import Candidate, ItemToItemSource

if TYPE_CHECKING:
    from serving.feature_store import FeatureStore

NEW, LIGHT, FULL = "new", "light", "full"
Stage = Literal["new", "light", "full"]


@dataclasses.dataclass(frozen=True)
class ColdStartThresholds:
    """History lengths (positive watches) where the ``light`` and ``full`` stages begin."""

    light_from: int = 1
    full_from: int = 5

    def __post_init__(self):
        if not 1 <= self.light_from <= self.full_from:
            raise ValueError(f"need 1 <= light_from <= full_from, got light_from="
                             f"{self.light_from}, full_from={self.full_from}")


def stage(profile: UserProfile, thresholds: ColdStartThresholds = ColdStartThresholds()
          ) -> Stage:
    """``new`` below ``light_from`` watches, ``full`` from ``full_from``, ``light`` between."""
    n = len(profile.history)
    if n >= thresholds.full_from:
        return FULL
    return LIGHT if n >= thresholds.light_from else NEW


@dataclasses.dataclass(frozen=True)
class Row:
    """One titled homepage row; ``seed_item_id`` is the watch it is built around."""

    title: str
    seed_item_id: int
    items: list[Candidate]


class BecauseYouWatched:
    """For each of the last ``seeds`` distinct catalogue items in the history, a row titled
    ``Because you watched <title>`` of its ``k`` nearest co-watch neighbours not yet watched.
    A watch without unwatched neighbours gives no row; rows are in history order (most recent
    first), so at most ``seeds`` rows."""

    def __init__(self, item_to_item: ItemToItemSource, catalogue: Catalogue, seeds: int = 3,
                 k: int = 10, title: str = "Because you watched {title}"):
        self.item_to_item, self.catalogue = item_to_item, catalogue
        self.seeds, self.k, self.title = seeds, k, title

    def rows(self, profile: UserProfile) -> list[Row]:
        recent = [i for i in dict.fromkeys(profile.history) if i in self.catalogue.row]
        out = []
        for item in recent[: self.seeds]:
            items = self.item_to_item.because_you_watched(item, self.k, exclude=profile.watched)
            if items:
                name = self.catalogue.titles[self.catalogue.row[item]]
                out.append(Row(self.title.format(title=name), item, items))
        return out


# ----------------------------------------------------------------------------- onboarding

ONBOARDING_LOG = "onboarding.jsonl"


def validate_onboarding(user_id: int, raw: object, known_genres: Iterable[str], count: int,
                        now: int) -> Onboarding:
    """``{"genres": [g1, g2, g3]}`` -> Onboarding; raises InvalidEvent listing every problem:
    not exactly ``count`` distinct genres, or a genre no title has."""
    example = '{"genres": ["comedy", "drama", "thriller"]}'
    if not isinstance(raw, dict) or not isinstance(raw.get("genres"), list):
        raise InvalidEvent([f"expected a JSON object like {example} with {count} genres, got "
                            f"{raw!r}"], what="onboarding answer")
    genres = raw["genres"]
    problems = [f"{k}: not a field of an onboarding answer (its one field: genres)"
                for k in raw if k != "genres"]
    if not all(isinstance(g, str) for g in genres):
        problems.append(f"genres: expected {count} genre names (strings), got {genres!r}")
    else:
        known = set(known_genres)
        if len(set(genres)) != count or len(genres) != count:
            problems.append(f"genres: expected {count} distinct genres, got {len(genres)} "
                            f"({len(set(genres))} distinct): {genres!r}")
        unknown = [g for g in genres if g not in known]
        if unknown:
            problems.append(f"genres: {unknown!r} are not genres of any title; pick from "
                            f"{sorted(known)}")
    if problems:
        raise InvalidEvent(problems, what="onboarding answer")
    return Onboarding(int(user_id), tuple(genres), int(now))


class OnboardingLog:
    """Appends each answer as one JSON line to ``DIR/onboarding.jsonl`` (flushed and synced
    before the answer is acknowledged); :meth:`read` gives them back in order."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / ONBOARDING_LOG
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EventLogError(f"cannot create {self.path.parent}: {e}") from e

    def append(self, answer: Onboarding) -> None:
        line = json.dumps(answer.to_json()) + "\n"
        with self._lock:
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as e:
                raise EventLogError(f"could not append the onboarding answer of user "
                                    f"{answer.user_id} to {self.path}: {e}. Check that the "
                                    "folder exists, is writable and has free space.") from e

    def read(self) -> list[Onboarding]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out.append(Onboarding(int(d[c.USER_ID]), tuple(d[c.ONBOARDING_GENRES]),
                                      int(d[c.TIMESTAMP])))
        return out


class OnboardingIngest:
    """Validate -> feature store -> log (when given), the path of every quiz answer. Known
    genres are the catalogue's, re-read when an answer names one not seen yet (a title added
    while serving may bring a genre)."""

    def __init__(self, store: FeatureStore, catalogue: Catalogue, count: int = 3,
                 log: OnboardingLog | None = None, now: Callable[[], float] = time.time):
        self.store, self.catalogue, self.count, self.log, self._now = (
            store, catalogue, count, log, now)
        self._genres = self._catalogue_genres()

    def _catalogue_genres(self) -> frozenset[str]:
        return frozenset(g for gs in list(self.catalogue.genres) for g in gs)

    def accept(self, user_id: int, raw: object) -> Onboarding:
        genres = raw.get("genres") if isinstance(raw, dict) else None
        if isinstance(genres, list) and not set(map(str, genres)) <= self._genres:
            self._genres = self._catalogue_genres()
        answer = validate_onboarding(user_id, raw, self._genres, self.count, int(self._now()))
        self.store.record_event(answer)
        if self.log is not None:
            self.log.append(answer)
        return answer

    def replay(self) -> int:
        """Puts the logged answers back into the store (start-up); returns how many."""
        answers = self.log.read() if self.log is not None else []
        for answer in answers:
            self.store.record_event(answer)
        return len(answers)
