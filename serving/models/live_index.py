"""The pushed index of one version plus the titles added since (an exact side index)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from marquee.retrieval_index import RetrievalIndex


class LiveIndex:
    """The pushed index of one model version plus the side index of titles it lacks.

    ``side_ids`` [M] and ``side_embeddings`` [M, dim] come from the same version's candidate
    tower, so a query of that version's query tower scores both alike. The side index is
    searched exactly. Offers what the homepage needs of an index."""

    def __init__(self, main: RetrievalIndex, side_ids: np.ndarray | None = None,
                 side_embeddings: np.ndarray | None = None):
        self.main = main
        self.side_ids = np.asarray([] if side_ids is None else side_ids, np.int64)
        dim = main.dim
        self.side_embeddings = (np.zeros((0, dim), np.float32) if side_embeddings is None
                                else np.asarray(side_embeddings, np.float32))
        if self.side_embeddings.shape != (len(self.side_ids), dim):
            raise ValueError(f"side embeddings have shape {self.side_embeddings.shape}, expected "
                             f"({len(self.side_ids)}, {dim}) for the side ids of a dim-{dim} "
                             "index")
        self._side_row = {int(i): r for r, i in enumerate(self.side_ids.tolist())}

    @property
    def metadata(self) -> dict:
        return self.main.metadata

    def _find(self, item_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids [N] -> (ids, row in the pushed index [N], row in the side index [N]); -1 where
        that index lacks the id. The side index holds only titles the pushed one lacks."""
        ids = np.asarray(item_ids, np.int64).reshape(-1)
        main = self.main.find(ids)
        side = np.full(len(ids), -1, np.int64)
        if self._side_row:
            lacking = np.flatnonzero(main < 0)
            side[lacking] = np.fromiter(map(self._side_row.get, ids[lacking].tolist(),
                                            itertools.repeat(-1)), np.int64, len(lacking))
        return ids, main, side

    def contains(self, item_ids) -> np.ndarray:
        """[N] bool: which ids either index holds."""
        _, main, side = self._find(item_ids)
        return (main >= 0) | (side >= 0)

    def held_scores(self, query: np.ndarray, item_ids) -> tuple[np.ndarray, np.ndarray]:
        """Exact dot product of one query [dim] with each id [N] -> (scores [N] float32, 0 for
        an id neither index holds; held [N] bool)."""
        ids, main, side = self._find(item_ids)
        out = np.zeros(len(ids), np.float32)
        in_main, in_side = main >= 0, side >= 0
        if in_main.any():
            out[in_main] = self.main.score_rows(query, main[in_main])
        if in_side.any():
            out[in_side] = self.side_embeddings[side[in_side]] @ np.asarray(query, np.float32)
        return out, in_main | in_side

    def score(self, query: np.ndarray, item_ids) -> np.ndarray:
        """Exact dot product of one query [dim] with each id [N] -> [N] float32 (KeyError for
        an id neither index holds)."""
        out, held = self.held_scores(query, item_ids)
        if not held.all():
            raise KeyError(f"item id(s) in neither the retrieval index nor the titles added "
                           f"since: {np.asarray(item_ids, np.int64)[~held][:5].tolist()}")
        return out

    def embeddings_of(self, item_ids) -> np.ndarray | None:
        """[N, dim] embeddings of the ids, or None if the pushed index has none or an id is
        in neither index."""
        if self.main.embeddings is None:
            return None
        ids, main, side = self._find(item_ids)
        if ((main < 0) & (side < 0)).any():
            return None
        if (side < 0).all():
            return self.main.embeddings[main]
        out = np.zeros((len(ids), self.main.dim), np.float32)
        out[main >= 0] = self.main.embeddings[main[main >= 0]]
        out[side >= 0] = self.side_embeddings[side[side >= 0]]
        return out

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of one query [dim] over both indexes -> (ids [k], scores [k]), best first
        (ties: lower id first)."""
        ids, scores = self.main.search(query, min(k, self.main.num_items))
        if not len(self.side_ids):
            return ids, scores
        side = self.side_embeddings @ np.asarray(query, np.float32)
        all_ids = np.concatenate([np.asarray(ids, np.int64), self.side_ids])
        all_scores = np.concatenate([np.asarray(scores, np.float32), side])
        order = np.lexsort((all_ids, -all_scores))[:k]
        return all_ids[order], all_scores[order]
