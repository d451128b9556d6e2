"""Item-to-item: co-watch neighbours of the user's last watches."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from marquee.data import contract as c
from serving.sources.base import (
    BuildContext,
    Candidate,
    SourceRequest,
    _best,
    _check_k,
    positive_watches,
)
from serving.state.catalogue import Catalogue

log = logging.getLogger(__name__)


class ItemToItemSource:
    """Co-watch neighbours: ``sim(i, j) = n_ij / (sqrt(n_i) sqrt(n_j) + shrink)``.

    ``n_ij`` counts users with positive watches of both, ``n_i`` of i (cosine over the binary
    user-item matrix, shrunk towards 0 for rarely watched pairs, as ``marquee.evaluation.ItemKNN``).
    ``neighbour_rows [num_items, M]`` holds each item's top-M catalogue rows best first (ties:
    lower id, -1 pads), ``neighbour_sims [num_items, M]`` their similarities. A request's
    candidates are scored by the summed similarity to its last ``recent`` watches.
    """

    needs_query_embedding = False  # starts before the query tower answers

    def __init__(self, catalogue: Catalogue, neighbour_rows: np.ndarray,
                 neighbour_sims: np.ndarray, recent: int = 3, name: str = "item_to_item"):
        self.catalogue, self.recent, self.name = catalogue, recent, name
        self.neighbour_rows, self.neighbour_sims = neighbour_rows, neighbour_sims

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, catalogue: Catalogue,
                          neighbours: int = 50, shrink: float = 10.0, recent: int = 3,
                          min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS,
                          name: str = "item_to_item") -> ItemToItemSource:
        if neighbours < 1 or shrink < 0:
            raise ValueError(f"need neighbours >= 1 and shrink >= 0, got {neighbours}, {shrink}")
        pos = positive_watches(interactions, catalogue, min_watch_seconds)
        n = len(catalogue.item_ids)
        _, users = np.unique(pos[c.USER_ID].to_numpy(), return_inverse=True)
        x = sp.csr_matrix((np.ones(len(pos)), (users, catalogue.rows(pos[c.ITEM_ID].tolist()))),
                          shape=(int(users.max(initial=-1)) + 1, n))
        x.data[:] = 1.0  # a user watching an item twice counts once
        co = (x.T @ x).tocoo()  # [I, I] users who watched both, only the pairs that exist
        norms = np.sqrt(co.diagonal())
        m = min(neighbours, max(n - 1, 1))
        sim = co.data / (norms[co.row] * norms[co.col] + shrink + 1e-12)
        keep = (co.row != co.col) & (sim > 0)
        r, col, sim = co.row[keep], co.col[keep], sim[keep]
        # One sort of every pair: by row, then best first, ties to the lower row (= lower id).
        order = np.lexsort((col, -sim, r))
        r, col, sim = r[order], col[order], sim[order]
        first = np.searchsorted(r, r)  # where each pair's row starts
        rank = np.arange(len(r)) - first
        top = rank < m
        rows, sims = np.full((n, m), -1, np.int64), np.zeros((n, m), np.float32)
        rows[r[top], rank[top]] = col[top]
        sims[r[top], rank[top]] = sim[top]
        return cls(catalogue, rows, sims, recent, name)

    def because_you_watched(self, item_id: int, k: int,
                            exclude: Iterable[int] = ()) -> list[Candidate]:
        """The ``k`` nearest neighbours of ``item_id`` (a catalogue item), minus ``exclude``."""
        row, k, exclude = int(self.catalogue.rows([item_id])[0]), _check_k(k), set(exclude)
        out = []
        for r, s in zip(self.neighbour_rows[row].tolist(), self.neighbour_sims[row].tolist(),
                        strict=True):
            if len(out) >= k or r < 0:
                break
            if int(self.catalogue.item_ids[r]) not in exclude:
                out.append(Candidate(int(self.catalogue.item_ids[r]), self.name, float(s)))
        return out

    def _seed_scores(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue rows, summed similarity) of the neighbours of the last ``recent`` distinct
        watches in ``history`` (most recent first)."""
        seeds = [self.catalogue.row[i] for i in dict.fromkeys(history)
                 if i in self.catalogue.row and self.catalogue.row[i] < len(self.neighbour_rows)
                 ][: self.recent]
        if not seeds:
            return np.zeros(0, np.int64), np.zeros(0)
        rows = self.neighbour_rows[seeds].ravel()
        sims = self.neighbour_sims[seeds].ravel().astype(np.float64)
        valid = rows >= 0
        unique, at = np.unique(rows[valid], return_inverse=True)
        return unique, np.bincount(at, weights=sims[valid], minlength=len(unique))

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        rows, scores = self._seed_scores(request.profile.history)
        hit = scores > 0
        return _best(self.name, self.catalogue.item_ids[rows[hit]], scores[hit],
                     request.profile.watched, _check_k(k))

    def score(self, history: Sequence[int], item_ids: Sequence[int]) -> np.ndarray:
        """``[N]`` the score :meth:`candidates` gives each of ``item_ids`` for a user with
        ``history`` (0 for a title that is no recent watch's neighbour): a ranking signal for
        candidates of every source (``ServingConfig.item_to_item_weight``)."""
        rows, scores = self._seed_scores(history)
        by_row = dict(zip(rows.tolist(), scores.tolist(), strict=True))
        row = self.catalogue.row
        return np.array([by_row.get(row.get(int(i), -1), 0.0) for i in item_ids], np.float64)


def build(ctx: BuildContext) -> ItemToItemSource:
    """Built once per service: the source, the blend's signal and the "Because you watched"
    rows share it (``ctx.shared``)."""
    if "item_to_item" not in ctx.shared:
        ctx.shared["item_to_item"] = ItemToItemSource.from_interactions(
            ctx.need_interactions("item-to-item"), ctx.catalogue,
            min_watch_seconds=ctx.min_watch_seconds)
    return ctx.shared["item_to_item"]
