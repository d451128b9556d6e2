"""Steps that shape the list: a cap per genre, a freshness boost, MMR diversity."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from serving.rerank.base import SECONDS_PER_DAY, RerankContext, Scored, _by_score


@dataclasses.dataclass(frozen=True)
class MaxPerGenre:
    """At most ``n`` items per genre: greedy in list order (best first); an item is kept only if
    each of its genres has fewer than ``n`` kept so far, and then counts against each. Items
    without genres are always kept."""

    n: int
    name: ClassVar[str] = "max_per_genre"
    is_filter: ClassVar[bool] = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"max_per_genre needs n >= 1, got {self.n}")

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        left: dict[str, int] = {}  # places left per genre
        out = []
        n = self.n
        for x in items:
            genres = x.genres
            for g in genres:
                if left.get(g, n) <= 0:
                    break
            else:
                out.append(x)
                for g in set(genres):  # a genre listed twice counts once
                    left[g] = left.get(g, n) - 1
        return out


@dataclasses.dataclass(frozen=True)
class FreshnessBoost:
    """Items added within the last ``days`` of the request: score * boost (``mode="multiply"``)
    or score + boost (``"add"``, for scores that may be negative); then re-sorted by score."""

    days: float
    boost: float
    mode: str = "multiply"
    name: ClassVar[str] = "freshness"
    is_filter: ClassVar[bool] = False

    def __post_init__(self):
        if self.mode not in ("multiply", "add") or self.days < 0:
            raise ValueError(f"freshness needs mode 'multiply' or 'add' and days >= 0, "
                             f"got mode={self.mode!r}, days={self.days}")

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        since = ctx.timestamp - self.days * SECONDS_PER_DAY
        out = []
        for x in items:
            if since <= x.added_at <= ctx.timestamp:
                x = dataclasses.replace(x, score=x.score * self.boost if self.mode == "multiply"
                                        else x.score + self.boost)
            out.append(x)
        return _by_score(out)


def _similarity_to(items: list[Scored], pick: int, unit: np.ndarray | None,
                   genre_matrix: np.ndarray) -> np.ndarray:
    """``[N]`` similarity of every item to item ``pick``: cosine of embeddings if given, else
    Jaccard of genre sets (0 when both have none)."""
    if unit is not None:
        return unit @ unit[pick]
    inter = genre_matrix @ genre_matrix[pick]
    union = genre_matrix.sum(1) + genre_matrix[pick].sum() - inter
    return np.divide(inter, union, out=np.zeros(len(items)), where=union > 0)


@dataclasses.dataclass(frozen=True)
class MMR:
    """Maximal Marginal Relevance over the first ``k`` picks; the rest follow in their order.

    Relevance is the score min-max normalised to [0, 1] over the input (all 0 if every score is
    equal). Each pick maximises ``lam * relevance - (1 - lam) * max similarity to the items
    already picked`` (0 for the first pick; ties: earlier in the list). Similarity: cosine over
    item embeddings if every item has one, else Jaccard over genres. Scores are left unchanged.
    """

    lam: float
    k: int
    name: ClassVar[str] = "mmr"
    is_filter: ClassVar[bool] = False

    def __post_init__(self):
        if not 0 <= self.lam <= 1 or self.k < 0:
            raise ValueError(f"mmr needs 0 <= lam <= 1 and k >= 0, got lam={self.lam}, k={self.k}")

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        if not items:
            return []
        scores = np.array([x.score for x in items], np.float64)
        span = scores.max() - scores.min()
        relevance = (scores - scores.min()) / span if span > 0 else np.zeros(len(items))
        unit = None
        if all(x.embedding is not None for x in items):
            emb = np.stack([np.asarray(x.embedding, np.float64) for x in items])
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        genre_matrix = np.zeros((len(items), 0))
        if unit is None:  # genres only when there are no embeddings to compare
            names = sorted({g for x in items for g in x.genres})
            genre_matrix = np.array([[g in x.genres for g in names] for x in items], np.float64)
        max_sim = np.full(len(items), -np.inf)  # to the picks so far (may be negative)
        free = np.ones(len(items), bool)
        picks: list[int] = []
        for _ in range(min(self.k, len(items))):
            penalty = max_sim if picks else np.zeros(len(items))
            value = np.where(free, self.lam * relevance - (1 - self.lam) * penalty, -np.inf)
            pick = int(np.argmax(value))
            picks.append(pick)
            free[pick] = False
            max_sim = np.maximum(max_sim, _similarity_to(items, pick, unit, genre_matrix))
        return [items[p] for p in picks] + [x for x, f in zip(items, free, strict=True) if f]
