"""Popularity-by-genre fallback and a circuit breaker: a model failure never becomes a 5xx.

The fallback ranks items by their train positives (from the pipeline's retrieval metadata), per
genre. A user with known genres (the onboarding quiz, or the genres of their watches) gets those
genres' most popular titles interleaved; otherwise the overall most popular.

The circuit breaker stops calling a failing backend: after ``failure_threshold`` consecutive
failures it opens; while open, calls are refused at once (the caller falls back); after
``reset_seconds`` one probe call is let through (half-open); success closes it, failure re-opens.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from serving.catalogue import Catalogue

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class PopularityFallback:
    def __init__(self, catalogue: Catalogue, popularity: dict[int, float]):
        self.catalogue = catalogue
        counts = np.array([popularity.get(int(i), 0.0) for i in catalogue.item_ids])
        self._popularity = {int(i): float(n) for i, n in zip(catalogue.item_ids, counts,
                                                              strict=True)}
        # most popular first; ties by item id (stable sort over id-sorted rows)
        self.order = np.argsort(-counts, kind="stable")
        self.by_genre: dict[str, list[int]] = {}
        for r in self.order.tolist():
            for g in catalogue.genres[r]:
                self.by_genre.setdefault(g, []).append(r)

    def score(self, item_id: int) -> float:
        """The item's popularity (train positives): the fallback's ranking score."""
        return self._popularity.get(int(item_id), 0.0)

    def genres_of(self, history: Sequence[int], onboarding: Sequence[str]) -> list[str]:
        """Onboarding genres first, then the genres of the history by frequency."""
        counts = Counter(g for i in history if int(i) in self.catalogue.row
                         for g in self.catalogue.genres[self.catalogue.row[int(i)]])
        out = list(dict.fromkeys(onboarding))
        out += [g for g, _ in counts.most_common() if g not in out]
        return [g for g in out if g in self.by_genre]

    def recommend(self, k: int, exclude: set[int], genres: Sequence[str] = ()) -> list[int]:
        """Top ``k`` item ids, round-robin over ``genres`` then overall popularity."""
        out: list[int] = []
        taken: set[int] = set()

        def take(row: int) -> None:
            item = int(self.catalogue.item_ids[row])
            if item not in exclude and item not in taken:
                taken.add(item)
                out.append(item)

        lists = [self.by_genre[g] for g in genres]
        depth = 0
        while lists and len(out) < k and any(depth < len(x) for x in lists):
            for rows in lists:
                if depth < len(rows) and len(out) < k:
                    take(rows[depth])
            depth += 1
        for r in self.order.tolist():
            if len(out) >= k:
                break
            take(r)
        return out


class CircuitOpen(RuntimeError):
    pass


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._clock() - self._opened_at >= self.reset_seconds:
            return HALF_OPEN
        return OPEN

    def call(self, fn: Callable, *args, **kwargs):
        with self._lock:
            state = self._state()
            if state == OPEN or (state == HALF_OPEN and self._probing):
                raise CircuitOpen(
                    f"circuit open after {self._failures} consecutive failures; "
                    f"next probe in {self.reset_seconds - (self._clock() - self._opened_at):.1f} s")
            if state == HALF_OPEN:
                self._probing = True
        try:
            result = fn(*args, **kwargs)
        except Exception:
            with self._lock:
                self._failures += 1
                self._probing = False
                if self._failures >= self.failure_threshold or self._opened_at is not None:
                    self._opened_at = self._clock()
            raise
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False
        return result
