"""The onboarding quiz answer (``POST /v1/users/{id}/onboarding``): validate, log, store."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from marquee.data import contract as c
from serving.ingest.events import InvalidEvent
from serving.state.catalogue import Catalogue
from serving.state.records import Onboarding

if TYPE_CHECKING:
    from serving.state.feature_store import FeatureStore




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


# The answers' log of earlier versions (one JSON line each); read at start-up if present.
LEGACY_LOG = "onboarding.jsonl"


def read_legacy(folder: str | Path) -> list[dict[str, object]]:
    """The answers ``DIR/onboarding.jsonl`` (written before the write-ahead log) holds."""
    path = Path(folder) / LEGACY_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


class OnboardingWrites:
    """The onboarding kind of the write path (``POST /v1/users/{id}/onboarding``): the quiz
    answer of any user id (new ones included), stored as an online feature. Known genres are
    the catalogue's, re-read when an answer names one not seen yet (a title added while serving
    may bring a genre)."""

    name, table, exclusive = "onboarding", c.ONBOARDING, False

    def __init__(self, store: FeatureStore, catalogue: Catalogue, count: int = 3):
        self.store, self.catalogue, self.count = store, catalogue, count
        self._genres = self._catalogue_genres()

    def _catalogue_genres(self) -> frozenset[str]:
        return frozenset(g for gs in list(self.catalogue.genres) for g in gs)

    def validate(self, raw: object, now: int, user_id: int = 0) -> Onboarding:
        genres = raw.get("genres") if isinstance(raw, dict) else None
        if isinstance(genres, list) and not set(map(str, genres)) <= self._genres:
            self._genres = self._catalogue_genres()
        return validate_onboarding(user_id, raw, self._genres, self.count, now)

    def to_row(self, answer: Onboarding) -> dict[str, object]:
        return answer.to_json()

    def from_row(self, row: dict[str, object]) -> Onboarding:
        genres = row[c.ONBOARDING_GENRES]
        genres = genres.tolist() if hasattr(genres, "tolist") else list(genres)
        return Onboarding(int(row[c.USER_ID]), tuple(str(g) for g in genres),
                          int(row[c.TIMESTAMP]))

    def apply(self, answer: Onboarding) -> None:
        self.store.record_event(answer)

    def answer(self, answer: Onboarding) -> dict[str, object]:
        return {"onboarding": answer.to_json()}
