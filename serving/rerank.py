"""Re-ranking: the ranked list -> the page, as small steps with one interface, ordered by config.

Every step implements :class:`RerankStep`: ``apply(items, ctx) -> items``. The contract
(``tests/test_rerank.py`` runs it on every step): the input list is not changed; the output has
distinct item ids, all from the input (only :class:`Exploration` adds items, from
``ctx.exploration_pool``); the same input and context give the same output. Lists are best
first; a step that changes scores re-sorts by score, the others keep or decide the order.

:func:`build_pipeline` turns config (``[{"step": "max_per_genre", "n": 2}, ...]`` or step
instances) into a :class:`RerankPipeline`, itself a step. The pipeline runs its filter steps
(watched, maturity, block list) over the exploration pool too, so exploration never brings
back what a filter removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from serving.catalogue import Catalogue, UserProfile

SECONDS_PER_DAY = 86_400
# Maturity ratings each age bucket may see; a bucket not listed (adults, unknown) sees all.
ALLOWED_MATURITY: dict[str, frozenset[str]] = {"under-18": frozenset({"G", "PG", "PG-13"})}


@dataclasses.dataclass(frozen=True, eq=False)
class Scored:
    """One item on its way to the page. ``embedding`` ``[dim]`` is optional (MMR's similarity);
    ``explore`` marks an item :class:`Exploration` put in (log it with the impression)."""

    item_id: int
    score: float
    genres: tuple[str, ...] = ()
    added_at: int = 0
    maturity: str = ""
    embedding: np.ndarray | None = None
    explore: bool = False


def scored_from_catalogue(catalogue: Catalogue, item_ids: Sequence[int], scores: Sequence[float],
                          embeddings: np.ndarray | None = None) -> list[Scored]:
    """``item_ids [N]``, ``scores [N]`` (and ``embeddings [N, dim]``) -> Scored with metadata."""
    rows = catalogue.rows(item_ids)
    return [Scored(int(i), float(s), tuple(catalogue.genres[r]), int(catalogue.added_at[r]),
                   catalogue.maturity[r], None if embeddings is None else embeddings[n])
            for n, (i, s, r) in enumerate(zip(item_ids, scores, rows.tolist(), strict=True))]


@dataclasses.dataclass(frozen=True)
class RerankContext:
    """The request as re-ranking sees it: ``timestamp`` UTC seconds, ``seed`` the request's seed,
    ``exploration_pool`` under-exposed or new items :class:`Exploration` may show."""

    profile: UserProfile
    timestamp: int
    seed: int = 0
    exploration_pool: tuple[Scored, ...] = ()


@runtime_checkable
class RerankStep(Protocol):
    name: ClassVar[str]
    is_filter: ClassVar[bool]  # drops items by a per-item rule only (also applied to the pool)

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        """A new list (the input unchanged): distinct ids, best first."""


def request_rng(user_id: int, seed: int, salt: int = 0) -> np.random.Generator:
    """A generator seeded by (user, request seed, salt) alone: the same page on every replay.

    Uses a stable hash (Python's ``hash`` of a str changes between processes).
    """
    digest = hashlib.blake2b(f"{user_id}:{seed}:{salt}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _by_score(items: list[Scored]) -> list[Scored]:
    return sorted(items, key=lambda x: -x.score)  # stable: ties keep their order


# ---------------------------------------------------------------------------- filters

@dataclasses.dataclass(frozen=True)
class ExcludeWatched:
    name: ClassVar[str] = "exclude_watched"
    is_filter: ClassVar[bool] = True

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        return [x for x in items if x.item_id not in ctx.profile.watched]


@dataclasses.dataclass(frozen=True)
class MaturityFilter:
    """Keeps the ratings :data:`ALLOWED_MATURITY` gives the user's age bucket (unrated is out
    for a listed bucket)."""

    name: ClassVar[str] = "maturity"
    is_filter: ClassVar[bool] = True

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        allowed = ALLOWED_MATURITY.get(ctx.profile.age_bucket)
        return list(items) if allowed is None else [x for x in items if x.maturity in allowed]


@dataclasses.dataclass(frozen=True)
class BlockList:
    """Content policy: these item ids are never shown."""

    item_ids: frozenset[int] = frozenset()
    name: ClassVar[str] = "block_list"
    is_filter: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "item_ids", frozenset(int(i) for i in self.item_ids))

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        return [x for x in items if x.item_id not in self.item_ids]


# ---------------------------------------------------------------------------- row shape

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
        count: dict[str, int] = {}
        out = []
        for x in items:
            if all(count.get(g, 0) < self.n for g in x.genres):
                out.append(x)
                for g in set(x.genres):
                    count[g] = count.get(g, 0) + 1
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


# ---------------------------------------------------------------------------- exploration

def exploration_slots(share: float, n: int) -> list[int]:
    """The positions < ``n`` exploration fills: ``p`` where ``floor((p + 1) * share)`` grows,
    so every prefix of length m holds ``floor(m * share)`` of them (share 0.2: 4, 9, 14, ...)."""
    s = Fraction(share).limit_denominator(10_000)
    p = np.arange(n, dtype=np.int64)  # exact integer arithmetic on the fraction num / den
    return np.flatnonzero((p + 1) * s.numerator // s.denominator
                          > p * s.numerator // s.denominator).tolist()


@dataclasses.dataclass(frozen=True)
class Exploration:
    """Epsilon-greedy: a ``share`` of the slots (:func:`exploration_slots`) goes to items drawn
    without replacement from ``ctx.exploration_pool`` (minus the list's and the watched items),
    the rest keep their order. The draw is seeded by (user id, request seed, ``seed``) only, so
    a page replays exactly. The list grows by the items put in; ``explore`` marks them."""

    share: float
    seed: int = 0
    name: ClassVar[str] = "exploration"
    is_filter: ClassVar[bool] = False

    def __post_init__(self):
        if not 0 <= self.share < 1:
            raise ValueError(f"exploration needs 0 <= share < 1, got {self.share}")

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        present = {x.item_id for x in items} | set(ctx.profile.watched)
        pool = list({x.item_id: x for x in ctx.exploration_pool
                     if x.item_id not in present}.values())
        draw = request_rng(ctx.profile.user_id, ctx.seed, self.seed).permutation(len(pool))
        explore = [dataclasses.replace(pool[i], explore=True) for i in draw.tolist()]
        slots = set(exploration_slots(self.share, len(items) + len(explore)))
        out, rest = [], iter(items)
        for p in range(len(items) + len(explore)):
            if p in slots and explore:
                out.append(explore.pop(0))
            elif (x := next(rest, None)) is not None:
                out.append(x)
            else:
                break
        return out


# ---------------------------------------------------------------------------- pipeline

STEPS: dict[str, type] = {s.name: s for s in (
    ExcludeWatched, MaturityFilter, BlockList, MaxPerGenre, FreshnessBoost, MMR, Exploration)}


@dataclasses.dataclass(frozen=True)
class RerankPipeline:
    """Steps in config order; itself a :class:`RerankStep`."""

    steps: tuple[RerankStep, ...]
    name: ClassVar[str] = "pipeline"
    is_filter: ClassVar[bool] = False

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        pool = list(ctx.exploration_pool)
        for step in self.steps:
            if step.is_filter:
                pool = step.apply(pool, ctx)
        ctx = dataclasses.replace(ctx, exploration_pool=tuple(pool))
        for step in self.steps:
            items = step.apply(items, ctx)
        return items


def _step(config: Any) -> RerankStep:
    if isinstance(config, RerankStep):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict) or config.get("step") not in STEPS:
        raise ValueError(f"a re-rank step is a dict {{'step': NAME, ...arguments}}, a dataclass "
                         f"with a 'step' field, or a step; NAME one of {sorted(STEPS)}; "
                         f"got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "step"}
    cls = STEPS[config["step"]]
    try:
        return cls(**kwargs)
    except TypeError as e:
        fields = [x.name for x in dataclasses.fields(cls)]
        raise ValueError(f"re-rank step {config['step']!r} takes {fields}, got {sorted(kwargs)}"
                         ) from e


def build_pipeline(step_configs: Sequence[Any]) -> RerankPipeline:
    """Config -> pipeline. Each entry: ``{"step": name, **arguments}`` (names: :data:`STEPS`),
    a dataclass with those fields (e.g. a typed config), or a step instance."""
    return RerankPipeline(tuple(_step(x) for x in step_configs))
