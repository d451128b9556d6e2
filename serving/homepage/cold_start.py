"""The cold-start ladder and the "Because you watched X" rows.

:func:`stage` places a user on the ladder by the length of their history (positive watches):

- ``new`` (no history): trending / popularity in the onboarding genres;
- ``light`` (from ``light_from`` to below ``full_from``): content-based from the watched items;
- ``full`` (``full_from`` and more): the whole pipeline (two-tower retrieval, ranker, re-rank).

The onboarding quiz (``POST /v1/users/{id}/onboarding``, ``serving.ingest.onboarding``): a user
picks ``count`` (3) genres; the answer goes to the durable log and the feature store, and the next
homepage of a ``new`` user is trending and popular titles in those genres.

:class:`BecauseYouWatched` builds one row per recent watch from :class:`ItemToItemSource`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from serving.sources.base import Candidate
from serving.sources.item_to_item import ItemToItemSource
from serving.state.catalogue import Catalogue, UserProfile

if TYPE_CHECKING:
    pass

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
