"""Popularity-by-genre fallback: a model failure never becomes a 5xx.

The fallback ranks items by their train positives (from the pipeline's retrieval metadata), per
genre. A user with known genres (the onboarding quiz, or the genres of their watches) gets those
genres' most popular titles interleaved; otherwise the overall most popular.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from serving.state.catalogue import Catalogue


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

    def scores(self, item_ids) -> np.ndarray:
        """``[N]`` popularity of each id (0 for a title it does not know), in one call."""
        get = self._popularity.get
        return np.fromiter((get(int(i), 0.0) for i in item_ids), np.float64, len(item_ids))

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
