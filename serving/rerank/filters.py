"""Filter steps: each drops items by a per-item rule (also applied to the exploration pool)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from serving.rerank.base import RerankContext, Scored

# Maturity ratings each age bucket may see; a bucket not listed (adults, unknown) sees all.
ALLOWED_MATURITY: dict[str, frozenset[str]] = {"under-18": frozenset({"G", "PG", "PG-13"})}
# What a title without a rating carries (the contract's default and an empty field).
UNRATED = frozenset({"unrated", ""})


@dataclasses.dataclass(frozen=True)
class ExcludeWatched:
    name: ClassVar[str] = "exclude_watched"
    is_filter: ClassVar[bool] = True

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        return [x for x in items if x.item_id not in ctx.profile.watched]


@dataclasses.dataclass(frozen=True)
class MaturityFilter:
    """Keeps the ratings :data:`ALLOWED_MATURITY` gives the user's age bucket. ``unrated``
    decides titles without a rating (``unrated``, or empty) for a listed bucket: ``block``
    (the default: a title nobody rated is not shown to a minor) or ``allow`` (for a catalogue
    that carries no ratings at all, as MovieLens: ``configs/movielens.yaml``)."""

    unrated: str = "block"
    name: ClassVar[str] = "maturity"
    is_filter: ClassVar[bool] = True

    def __post_init__(self):
        if self.unrated not in ("block", "allow"):
            raise ValueError(f"maturity: unrated must be 'block' or 'allow', got "
                             f"{self.unrated!r}")

    def apply(self, items: list[Scored], ctx: RerankContext) -> list[Scored]:
        allowed = ALLOWED_MATURITY.get(ctx.profile.age_bucket)
        if allowed is None:
            return list(items)
        if self.unrated == "allow":
            allowed = allowed | UNRATED
        return [x for x in items if x.maturity in allowed]


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
