"""The two-tower source: the query tower's embedding searched in the ScaNN index (plus the
titles added since it was built, :class:`serving.models.live_index.LiveIndex`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from serving.sources.base import (
    BuildContext,
    Candidate,
    SourceRequest,
    _best,
    _check_k,
)
from serving.state.catalogue import Catalogue

log = logging.getLogger(__name__)


class CollaborativeSource:
    """The two-tower path: the request's query embedding ``[dim]`` searched in the request's
    index (``request.index``: the pushed version's ScaNN index plus the titles added since), or
    in ``search(embedding [dim], n) -> (ids [n], scores [n])`` when one is given (tests).

    It asks for ``k`` plus the number of watched items, so that k remain after excluding them;
    ids outside the catalogue are dropped. Without an embedding (the tower did not answer) the
    answer is empty.
    """

    needs_query_embedding = True  # waits for the query tower

    def __init__(self, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None,
                 catalogue: Catalogue, name: str = "collaborative"):
        self.search, self.catalogue, self.name = search, catalogue, name

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        search = self.search or (request.index.search if request.index is not None else None)
        if _check_k(k) == 0 or request.query_embedding is None or search is None:
            return []
        n = min(k + len(request.profile.watched), len(self.catalogue.item_ids))
        ids, scores = search(np.asarray(request.query_embedding), n)
        ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float64)
        known = self.catalogue.holds(ids)
        return _best(self.name, ids[known], scores[known], request.profile.watched, k)


def build(ctx: BuildContext) -> CollaborativeSource:
    return CollaborativeSource(None, ctx.catalogue)
