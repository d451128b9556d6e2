"""The pushed index of one version plus the titles added since (an exact side index)."""

from __future__ import annotations

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

    def contains(self, item_ids) -> np.ndarray:
        """[N] bool: which ids either index holds."""
        ids = np.asarray(item_ids, np.int64)
        return self.main.contains(ids) | np.isin(ids, self.side_ids)

    def _split(self, item_ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(item_ids, np.int64)
        side = np.isin(ids, self.side_ids)
        return ids, side

    def score(self, query: np.ndarray, item_ids) -> np.ndarray:
        """Exact dot product of one query [dim] with each id [N] -> [N] float32 (KeyError for
        an id neither index holds)."""
        ids, side = self._split(item_ids)
        out = np.zeros(len(ids), np.float32)
        if (~side).any():
            out[~side] = self.main.score(query, ids[~side])
        if side.any():
            rows = [self._side_row[int(i)] for i in ids[side]]
            out[side] = self.side_embeddings[rows] @ np.asarray(query, np.float32)
        return out

    def embeddings_of(self, item_ids) -> np.ndarray | None:
        """[N, dim] embeddings of the ids, or None if the pushed index has none or an id is
        in neither index."""
        ids, side = self._split(item_ids)
        if self.main.embeddings is None or not self.contains(ids).all():
            return None
        out = np.zeros((len(ids), self.main.dim), np.float32)
        if (~side).any():
            out[~side] = self.main.embeddings[self.main.rows(ids[~side])]
        if side.any():
            out[side] = self.side_embeddings[[self._side_row[int(i)] for i in ids[side]]]
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
