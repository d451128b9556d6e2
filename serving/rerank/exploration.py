"""Exploration: a seeded share of the page's slots for new or under-exposed titles."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import ClassVar

import numpy as np

from serving.rerank.base import SECONDS_PER_DAY, RerankContext, Scored, request_rng
from serving.state.catalogue import Catalogue


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


# Most new titles one request's exploration step draws from (a seeded sample of them).
EXPLORE_POOL = 200


class ExplorationPool:
    """The titles added in the ``days`` up to a request's timestamp: what :class:`Exploration`
    may show. When there are more than ``EXPLORE_POOL``, a sample of that many seeded by
    (user, seed), so different users explore different new titles and a page replays exactly.
    The candidate rows of the request's hour are found once per hour and catalogue size."""

    def __init__(self, catalogue: Catalogue, days: int):
        self.catalogue, self.days = catalogue, days
        self._cached: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def __call__(self, timestamp: int, user_id: int = 0, seed: int = 0) -> tuple[Scored, ...]:
        from serving.rerank.base import scored_from_catalogue

        since = timestamp - self.days * SECONDS_PER_DAY
        hour = timestamp // 3600
        key = (hour, len(self.catalogue.item_ids))
        cached = self._cached
        if cached is None or cached[0] != key:
            added = self.catalogue.added_at
            lo = hour * 3600 - self.days * SECONDS_PER_DAY
            rows = np.flatnonzero((added >= lo) & (added < (hour + 1) * 3600))
            cached = self._cached = (key, rows, added[rows])
        _, rows, added = cached
        rows = rows[(added >= since) & (added <= timestamp)]
        if len(rows) > EXPLORE_POOL:
            rng = np.random.default_rng([int(user_id) & 0x7FFFFFFF, int(seed) & 0x7FFFFFFF])
            rows = np.sort(rng.choice(rows, EXPLORE_POOL, replace=False))
        ids = self.catalogue.item_ids[rows].tolist()
        return tuple(scored_from_catalogue(self.catalogue, ids, [0.0] * len(ids)))
