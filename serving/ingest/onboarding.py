"""The onboarding quiz answer (``POST /v1/users/{id}/onboarding``): validate, log, store."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from marquee.data import contract as c
from serving.ingest.events import EventLogError, InvalidEvent
from serving.state.catalogue import Catalogue
from serving.state.records import Onboarding

if TYPE_CHECKING:
    from serving.state.feature_store import FeatureStore


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
