"""The ALS source: the user's vector folded in from their positive watches at request time
(``marquee.als``), searched in the model's ScaNN index over the item factors (a catalogue large
enough for a tree) or dot every title's factors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from marquee.als import AlsModel
from marquee.data import contract as c
from serving.sources.base import (
    BuildContext,
    Candidate,
    SourceRequest,
    _best,
    _check_k,
    positive_watches,
)
from serving.state.catalogue import Catalogue, UserProfile

# Folded-in vectors kept (cleared when full): a page asks twice, the source and the blend.
VECTOR_CACHE = 4096


class AlsSource:
    """Collaborative filtering by implicit ALS, pushed with the towers of one training run.

    ``model(version)`` is the ALS model pushed with ``version`` (None: none, and the source
    answers nothing); the candidates use ``version()``'s, the one being served, and the blend
    signal (:meth:`score`) the page's. A user's positives are those of the loaded
    interactions (``positives``: user id -> item ids) plus the profile's history, which holds
    the watches accepted since start-up: a watch a second ago counts, and a user the fit never
    saw gets a vector from their first watch. Titles outside the catalogue, or added after the
    fit (no factors), are not candidates.
    """

    needs_query_embedding = False  # starts before the query tower answers

    def __init__(self, catalogue: Catalogue, model: Callable[[int | None], AlsModel | None],
                 version: Callable[[], int | None], positives: dict[int, np.ndarray] | None = None,
                 name: str = "als"):
        self.catalogue, self.model, self.version, self.name = catalogue, model, version, name
        self.positives = positives or {}
        self._mask: tuple[AlsModel, np.ndarray] | None = None  # its titles in the catalogue
        # (model, user, history) -> vector: the source and the blend signal of one page
        self._vectors: dict[tuple, np.ndarray | None] = {}

    @staticmethod
    def positives_of(interactions: pd.DataFrame | None, catalogue: Catalogue,
                     min_watch_seconds: float) -> dict[int, np.ndarray]:
        """user id -> the catalogue titles of their positive watches in ``interactions``."""
        if interactions is None:
            return {}
        pos = positive_watches(interactions, catalogue, min_watch_seconds)
        users, items = pos[c.USER_ID].to_numpy(np.int64), pos[c.ITEM_ID].to_numpy(np.int64)
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        cuts = np.flatnonzero(np.diff(users)) + 1
        return {int(u[0]): i for u, i in zip(np.split(users, cuts), np.split(items, cuts),
                                             strict=True) if len(u)}

    def user_vector(self, model: AlsModel, profile: UserProfile) -> np.ndarray | None:
        """The user's folded-in vector (None: no positive the model knows)."""
        key = (id(model), profile.user_id, profile.history)
        if key not in self._vectors:
            known = self.positives.get(profile.user_id, np.zeros(0, np.int64))
            if len(self._vectors) >= VECTOR_CACHE:
                self._vectors.clear()
            self._vectors[key] = model.fold_in(
                np.concatenate([known, np.asarray(profile.history, np.int64)]))
        return self._vectors[key]

    def _in_catalogue(self, model: AlsModel) -> np.ndarray:
        mask = self._mask
        if mask is None or mask[0] is not model:
            mask = self._mask = (model, np.isin(model.item_ids, self.catalogue.item_ids))
        return mask[1]

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        model = self.model(self.version())
        if _check_k(k) == 0 or model is None:
            return []
        user = self.user_vector(model, request.profile)
        if user is None:
            return []
        if model.index is not None:  # the best titles without scoring every one
            n = k + len(request.profile.watched)
            while True:
                ids, scores = model.top(user, n)
                ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float64)
                known = self.catalogue.holds(ids)
                best = _best(self.name, ids[known], scores[known], request.profile.watched, k)
                # Titles of the fit that left the catalogue took places: ask for more.
                if len(best) == k or n >= model.index.num_items:
                    return best
                n *= 4
        keep = self._in_catalogue(model)
        return _best(self.name, model.item_ids[keep], model.scores(user)[keep],
                     request.profile.watched, k)

    def score(self, profile: UserProfile, item_ids: Sequence[int],
              version: int | None) -> np.ndarray | None:
        """``[N]`` the ALS score of each of ``item_ids`` for the user (0 for a title without
        factors) with the model of ``version``: a blend signal for candidates of every source.
        None without a model or anything to fold in."""
        model = self.model(version)
        user = None if model is None else self.user_vector(model, profile)
        return None if user is None else model.score(user, item_ids)


def build(ctx: BuildContext) -> AlsSource:
    """Built once per service (the source and the blend's signal share it, ``ctx.shared``)."""
    if "als" not in ctx.shared:
        ctx.shared["als"] = AlsSource(
            ctx.catalogue, ctx.als_model, ctx.serving_version,
            AlsSource.positives_of(ctx.interactions, ctx.catalogue, ctx.min_watch_seconds))
    return ctx.shared["als"]
