"""The peers every model is measured against: popularity, EASE, implicit ALS and item-kNN.

All four share one interface (:class:`Recommender`), are vectorised over batches of users, and
are deterministic: the same train rows give the same rankings (ALS is seeded; ties in score go to
the lower item id). A user without train rows (one positive overall, all of it in test) gets an
all-zero score from the personal methods, so their list is the catalogue in id order; only
:class:`Popularity` serves them meaningfully.

``evaluate_peers`` fits and scores them all in one run; ``tune`` picks a model's arguments on a
validation split carved from train (``tune_ease`` for EASE's L2).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from marquee.data import contract as c
from marquee.evaluation.protocol import (
    DEFAULT_KS,
    NO_ITEM,
    Split,
    evaluate_rankings,
    validation_split,
)

# Grids for `tune`. On MovieLens 100K's validation split each best value is inside its grid,
# not on an edge (bench/bench_peers.py prints the choices).
EASE_GRID = {"l2": (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)}
ALS_GRID = {
    "factors": (128, 256, 512),  # on MovieLens 100K the score plateaus from 512 on
    "regularization": (5.0, 10.0, 20.0),
    "alpha": (1.0, 2.0, 4.0),
}
KNN_GRID = {"k": (10, 20, 50, 100, 200, 400, 800), "shrink": (0.0, 10.0, 50.0)}
# The metric (on the validation split) that tune_ease maximises.
TUNING_METRIC = "ndcg@20"
FIT_SECONDS = "fit_seconds"  # evaluate_peers' key for a peer's wall-clock fit time


@runtime_checkable
class Recommender(Protocol):
    """What the protocol needs from a model.

    ``fit`` learns from the train positives; ``recommend`` ranks candidates for users, any of
    whom may have no train rows.
    """

    name: str

    def fit(self, split_train: pd.DataFrame, catalogue: np.ndarray) -> None:
        """Learns from ``split_train`` (positive rows) over ``catalogue`` ``[I]`` (sorted ids)."""

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        """``user_ids [B]`` -> item ids ``[B, k]``, best first, without the user's train items,
        padded at the end with ``NO_ITEM`` when fewer than k candidates are left."""


def interaction_matrix(
    train: pd.DataFrame, users: np.ndarray, catalogue: np.ndarray
) -> sp.csr_matrix:
    """Binary user-item matrix ``[len(users), len(catalogue)]`` (float32) of the train rows.

    A user watching an item several times gives a single 1.
    """
    rows = np.searchsorted(users, train[c.USER_ID].to_numpy(np.int64))
    cols = np.searchsorted(catalogue, train[c.ITEM_ID].to_numpy(np.int64))
    x = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(len(users), len(catalogue)),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def top_k(
    scores: np.ndarray, history: sp.csr_matrix, k: int, catalogue: np.ndarray
) -> np.ndarray:
    """The k best candidates per row.

    Args:
      scores: ``[B, I]`` model scores over ``catalogue``.
      history: ``[B, I]`` the users' train items (non-zero = excluded).
      k: list length.
      catalogue: ``[I]`` item ids.

    Returns:
      ``[B, k]`` int64 item ids, best first, ties to the lower item id; rows end in ``NO_ITEM``
      when fewer than k candidates are left. Raises ValueError on NaN scores.
    """
    scores = np.array(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError(
            "the model produced NaN scores: its fit diverged or solved a singular system; raise "
            "its regularisation.")
    rows, cols = history.nonzero()
    scores[rows, cols] = -np.inf
    take = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
    out = np.full((scores.shape[0], k), NO_ITEM, dtype=np.int64)
    ids = catalogue[order]
    ids[np.take_along_axis(scores, order, axis=1) == -np.inf] = NO_ITEM
    out[:, :take] = ids
    return out


class _MatrixRecommender:
    """Shared plumbing: the user-item matrix, batching, exclusion and top-k.

    Subclasses set ``name`` and implement ``_fit(x)`` and ``_scores(rows, history)``.
    """

    name: str
    batch_size = 1024

    def fit(self, split_train: pd.DataFrame, catalogue: np.ndarray) -> None:
        catalogue = np.asarray(catalogue, dtype=np.int64)
        if len(catalogue) == 0 or np.any(np.diff(catalogue) <= 0):
            raise ValueError(
                f"{self.name}: the catalogue must be non-empty, sorted and without duplicates "
                "(use Split.catalogue).")
        if c.EVENT in split_train and (split_train[c.EVENT] != c.EVENT_WATCH).any():
            raise ValueError(
                f"{self.name}: fit() takes positives only, got '{c.EVENT}' values other than "
                f"'{c.EVENT_WATCH}'; pass Split.train from leave_last_out().")
        items = split_train[c.ITEM_ID].to_numpy(np.int64)
        unknown = np.setdiff1d(items, catalogue)
        if len(unknown):
            raise ValueError(
                f"{self.name}: train has {len(unknown)} item(s) outside the catalogue, e.g. "
                f"{unknown[:5].tolist()}; the catalogue is the items present in train.")
        self.catalogue = catalogue
        self.users = np.unique(split_train[c.USER_ID].to_numpy(np.int64))
        x = interaction_matrix(split_train, self.users, catalogue)
        # One empty row at the end stands for every user without train rows.
        self._history = sp.vstack([x, sp.csr_matrix((1, len(catalogue)))], format="csr")
        self._fit(x)

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        if not hasattr(self, "catalogue"):
            raise RuntimeError(f"{self.name}: call fit() before recommend().")
        user_ids = np.asarray(user_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.users, user_ids), max(len(self.users) - 1, 0))
        known = (self.users[pos] == user_ids) if len(self.users) else np.zeros(len(user_ids), bool)
        rows = np.where(known, pos, -1)
        out = np.empty((len(user_ids), k), dtype=np.int64)
        for start in range(0, len(user_ids), self.batch_size):
            part = rows[start:start + self.batch_size]
            history = self._history[np.where(part >= 0, part, len(self.users))]
            scores = self._scores(part, history)
            out[start:start + len(part)] = top_k(scores, history, k, self.catalogue)
        return out

    def _fit(self, x: sp.csr_matrix) -> None:
        """Learns from the binary user-item matrix ``x [U, I]``."""
        raise NotImplementedError

    def _scores(self, rows: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """Scores ``[B, I]`` for users at ``rows`` ``[B]`` of x (-1: no train rows), whose train
        items are ``history [B, I]``."""
        raise NotImplementedError


class Popularity(_MatrixRecommender):
    """Items by the number of distinct train users who watched them (ties: lower id first)."""

    def __init__(self, name: str = "popularity"):
        self.name = name

    def _fit(self, x: sp.csr_matrix) -> None:
        self.counts = np.asarray(x.sum(axis=0)).ravel()  # [I]

    def _scores(self, rows: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(rows), len(self.counts)))


class EASE(_MatrixRecommender):
    """EASE (Steck, 2019): a closed-form item-item linear model.

    ``P = (X^T X + l2 I)^-1``, ``B = I - P diag(1 / diag(P))`` (so ``diag(B) = 0``), score =
    ``x_u B``. Memory and time are those of a dense ``[I, I]`` float64 inverse (8 I^2 bytes:
    23 MB for MovieLens 100K's 1,682 items, 3.2 GB for 20,000).
    """

    def __init__(self, l2: float = 500.0, name: str = "ease"):
        if not l2 > 0:
            raise ValueError(f"EASE l2 must be > 0, got {l2!r}")
        self.l2 = float(l2)
        self.name = name

    def _fit(self, x: sp.csr_matrix) -> None:
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.l2
        p = np.linalg.inv(g)
        self.weights = -p / np.diag(p)[None, :]  # [I, I]; column j divided by P_jj
        self.weights[np.diag_indices_from(self.weights)] = 0.0

    def _scores(self, rows: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.asarray(history @ self.weights)


class ItemKNN(_MatrixRecommender):
    """Item-based k nearest neighbours with shrunk cosine similarity.

    ``sim(i, j) = (x_i . x_j) / (|x_i| |x_j| + shrink)`` over the item columns of the binary
    user-item matrix, ``sim(i, i) = 0``; each item keeps its ``k`` most similar items (ties: lower
    id); score(u, j) = sum over the user's train items i of ``sim(i, j)`` among i's neighbours.
    The similarity is built in blocks of rows, so memory is ``O(I * k)`` plus one block.
    """

    block_rows = 1024

    def __init__(self, k: int = 100, shrink: float = 10.0, name: str = "itemknn"):
        if k < 1 or shrink < 0:
            raise ValueError(f"ItemKNN needs k >= 1 and shrink >= 0, got k={k}, shrink={shrink}")
        self.k = int(k)
        self.shrink = float(shrink)
        self.name = name

    def _fit(self, x: sp.csr_matrix) -> None:
        n = x.shape[1]
        co = (x.T @ x).tocsr()  # [I, I] co-occurrence counts
        norms = np.sqrt(co.diagonal())
        keep = min(self.k, n)
        blocks = []
        for start in range(0, n, self.block_rows):
            stop = min(start + self.block_rows, n)
            sim = co[start:stop].toarray().astype(np.float64)
            sim /= norms[start:stop, None] * norms[None, :] + self.shrink
            sim[np.arange(stop - start), np.arange(start, stop)] = 0.0
            cols = np.argsort(-sim, axis=1, kind="stable")[:, :keep]
            vals = np.take_along_axis(sim, cols, axis=1)
            rows = np.repeat(np.arange(stop - start), keep)
            blocks.append(sp.csr_matrix(
                (vals.ravel(), (rows, cols.ravel())), shape=(stop - start, n)))
        self.similarity = sp.vstack(blocks, format="csr")  # [I, I], row i = i's neighbours
        self.similarity.eliminate_zeros()

    def _scores(self, rows: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return (history @ self.similarity).toarray()


class ImplicitALS(_MatrixRecommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the ``implicit`` library (CPU).

    A positive has confidence ``alpha`` (implicit 0.7 scales the binary matrix by alpha; other
    cells have confidence 1 and preference 0). The defaults are a fast setting close to the best
    of :data:`ALS_GRID` on MovieLens 100K's validation split; tune with :func:`tune`.

    Score = ``user_factors @ item_factors.T``; users without train rows get zero scores. Seeded,
    and fit with BLAS limited to one thread (implicit runs its own threads; a BLAS pool on top of
    them slows it down several-fold).
    """

    def __init__(
        self,
        factors: int = 128,
        regularization: float = 10.0,
        iterations: int = 15,
        alpha: float = 2.0,
        seed: int = 0,
        name: str = "ials",
    ):
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.iterations = int(iterations)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.name = name

    def _fit(self, x: sp.csr_matrix) -> None:
        try:
            from implicit.cpu.als import AlternatingLeastSquares
        except ImportError as e:
            raise ImportError(
                "ImplicitALS needs the `implicit` package: `.venv/bin/pip install implicit` "
                "(pinned in pyproject.toml).") from e
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                iterations=self.iterations, random_state=self.seed, dtype=np.float32)
            model.fit(x, show_progress=False)
        self.user_factors = np.asarray(model.user_factors)  # [U, factors]
        self.item_factors = np.asarray(model.item_factors)  # [I, factors]
        if not (np.isfinite(self.user_factors).all() and np.isfinite(self.item_factors).all()):
            raise ValueError(
                f"{self.name}: ALS factors are not finite after fit; raise `regularization` "
                f"(now {self.regularization}) or lower `alpha` (now {self.alpha}).")

    def _scores(self, rows: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        scores = self.user_factors[np.maximum(rows, 0)] @ self.item_factors.T
        scores[rows < 0] = 0.0
        return scores


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The outcome of a grid search on the validation split.

    Attributes:
      best: the chosen constructor arguments (the first in grid order reaching the top score),
        e.g. ``{"l2": 100.0}``; build the model with ``EASE(**tuning.best)``.
      scores: ``(arguments, metric on the validation split)`` for every grid point, in order.
      metric: the metric maximised, e.g. ``ndcg@20``.
    """

    best: dict[str, Any]
    scores: list[tuple[dict[str, Any], float]]
    metric: str


def tune(
    split: Split,
    build: Callable[..., Recommender],
    grid: Mapping[str, Sequence[Any]],
    metric: str = TUNING_METRIC,
) -> Tuning:
    """Grid search of ``build(**arguments)`` on :func:`validation_split` ``(split)``.

    Args:
      split: the evaluation split; only its train part is used (the validation split is carved
        from it with the protocol's per-user rule), so ``split.test`` plays no part in the choice.
      build: makes a model from keyword arguments, e.g. ``EASE`` or ``ImplicitALS``.
      grid: ``{argument: values}``; every combination is tried, in ``itertools.product`` order.
      metric: ``recall@K``, ``ndcg@K`` or ``hr@K``, maximised.
    """
    name, _, k = metric.partition("@")
    if not k.isdigit() or name not in ("recall", "ndcg", "hr"):
        raise ValueError(f"metric must look like 'ndcg@20' (recall, ndcg or hr), got {metric!r}")
    val = validation_split(split)
    scores = []
    for values in itertools.product(*grid.values()):
        arguments = dict(zip(grid, values, strict=True))
        model = build(**arguments)
        model.fit(val.train, val.catalogue)
        result = evaluate_rankings(val, lambda u, m=model: m.recommend(u, int(k)), ks=(int(k),))
        scores.append((arguments, result[metric]))
    best = max(range(len(scores)), key=lambda i: (scores[i][1], -i))
    return Tuning(best=scores[best][0], scores=scores, metric=metric)


def tune_ease(split: Split, metric: str = TUNING_METRIC) -> Tuning:
    """Chooses EASE's ``l2`` from :data:`EASE_GRID` on the validation split (see :func:`tune`)."""
    return tune(split, EASE, EASE_GRID, metric)


def evaluate_peers(
    split: Split,
    peers: Sequence[Recommender],
    ks: Sequence[int] = DEFAULT_KS,
    extra_recall_ks: Sequence[int] = (),
) -> dict[str, float]:
    """Fits every peer on ``split.train`` and evaluates it on ``split.test``.

    Returns:
      ``{"<name>.<metric>@<K>": value}`` for every peer (see
      :func:`~marquee.evaluation.protocol.evaluate_rankings`), plus ``"<name>.fit_seconds"``,
      the wall-clock fit time (the only key without ``@`` and the only one that varies between
      runs).
    """
    names = [p.name for p in peers]
    if len(set(names)) != len(names):
        raise ValueError(f"peer names must be unique (they prefix the metrics), got {names}")
    max_k = max([*ks, *extra_recall_ks])
    out: dict[str, float] = {}
    for peer in peers:
        start = time.perf_counter()
        peer.fit(split.train, split.catalogue)
        seconds = time.perf_counter() - start
        metrics = evaluate_rankings(
            split, lambda u, p=peer: p.recommend(u, max_k), ks=ks, extra_recall_ks=extra_recall_ks)
        out.update({f"{peer.name}.{key}": value for key, value in metrics.items()})
        out[f"{peer.name}.{FIT_SECONDS}"] = seconds
    return out
