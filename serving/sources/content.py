"""Content-based: TF-IDF over the titles' metadata, matched to the user's recent watches."""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent import futures

import numpy as np
import scipy.sparse as sp
from scipy.sparse import _sparsetools
from sklearn.feature_extraction.text import TfidfVectorizer

from marquee.artifacts import LIST_PAD
from serving.sources.base import (
    BuildContext,
    Candidate,
    SourceRequest,
    _best,
    _check_k,
    _head,
)
from serving.state.catalogue import MISSING, Catalogue
from trainer import features as f

log = logging.getLogger(__name__)


def title_tokens(title: str) -> list[str]:
    """The trainer's rule (``trainer.preprocessing.title_tokens``): lower-cased a-z0-9 words."""
    return re.sub(r"[^a-z0-9]+", " ", title.lower()).split()


def item_document(catalogue: Catalogue, row: int) -> list[str]:
    """One item's metadata as field-prefixed tokens: ``genre:drama``, ``cast:..``, ``title:..``."""
    feats = catalogue.features
    tokens = [f"genre:{g.lower()}" for g in catalogue.genres[row]]
    for field, key in (("cast", f.CAST), ("keyword", f.KEYWORDS)):
        tokens += [f"{field}:{v.lower()}" for v in feats[key][row] if v != LIST_PAD]
    director = str(feats[f.DIRECTOR][row])
    if director != MISSING:
        tokens.append(f"director:{director.lower()}")
    return tokens + [f"title:{t}" for t in title_tokens(catalogue.titles[row])]


def _as_is(doc: list[str]) -> list[str]:
    return doc


# From this many titles a request's scoring is split into row blocks scored on parallel threads
# (scipy's sparse kernels release the GIL): at 500K titles one profile reads ~3M postings, ~6 ms
# on one core. Below it the thread hand-off costs more than it saves.
SPLIT_FROM_ROWS = 100_000
MAX_BLOCKS = 4


def default_blocks(num_rows: int) -> int:
    """Row blocks for a catalogue of ``num_rows``: one per core (at most ``MAX_BLOCKS``) from
    ``SPLIT_FROM_ROWS`` titles, else 1."""
    if num_rows < SPLIT_FROM_ROWS:
        return 1
    return max(1, min(MAX_BLOCKS, os.cpu_count() or 1))


def row_blocks(matrix: sp.csr_matrix, blocks: int) -> list[sp.csc_matrix]:
    """``matrix`` [rows, vocabulary] as ``blocks`` consecutive row ranges, each by column (CSC:
    a request reads only its profile's tokens' columns)."""
    bounds = np.linspace(0, matrix.shape[0], blocks + 1).round().astype(int)
    return [matrix[lo:hi].tocsc() for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def column_scores(block: sp.csc_matrix, tokens: np.ndarray, weights: np.ndarray,
                  out: np.ndarray | None = None) -> np.ndarray:
    """``block [rows, vocabulary] @ x`` for the sparse ``x`` that is ``weights [T]`` at the
    columns ``tokens [T]`` (sorted, distinct) and 0 elsewhere -> ``[rows]``, the same floats as
    ``block[:, tokens] @ weights``; written into ``out`` (contiguous ``[rows]`` of that dtype)
    when given.

    Adds column by column into one output with scipy's own kernel (``csc_matvec`` over each
    column's slice of the postings, no copy): selecting the columns first copied every posting
    the profile reads, ~3M at 500K titles, as long again as the product itself."""
    rows = block.shape[0]
    dtype = np.result_type(block.dtype, weights.dtype)
    if out is None:
        out = np.zeros(rows, dtype)
    elif out.shape != (rows,) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous [{rows}] {dtype} array, got "
                         f"{out.shape} {out.dtype}")
    else:
        out.fill(0)
    starts, ends = block.indptr[tokens].tolist(), block.indptr[np.asarray(tokens) + 1].tolist()
    x = np.ascontiguousarray(weights, dtype).reshape(-1, 1)
    data = block.data.astype(dtype, copy=False)
    one_column = np.zeros(2, block.indptr.dtype)
    for j, (a, b) in enumerate(zip(starts, ends, strict=True)):
        if b > a:
            one_column[1] = b - a
            _sparsetools.csc_matvec(rows, 1, one_column, block.indices[a:b], data[a:b], x[j],
                                    out)
    return out


class ContentSource:
    """Items like the user's recent watches, by TF-IDF over their metadata.

    ``matrix`` is ``[num_items, vocabulary]``, one L2-normalised TF-IDF row per item (of
    :func:`item_document`). The profile is the mean of the rows of the last ``recent`` watches,
    L2-normalised, so a candidate's score is its cosine similarity to it, in [0, 1]; items with
    score 0 (nothing in common) are not candidates.

    ``blocks`` (default :func:`default_blocks`): the scores of a request are computed over that
    many row ranges at once, on the source's own threads; the scores are the same as with one.
    """

    needs_query_embedding = False  # starts before the query tower answers

    def __init__(self, catalogue: Catalogue, recent: int = 10, name: str = "content",
                 blocks: int | None = None):
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        if blocks is not None and blocks < 1:
            raise ValueError(f"blocks must be >= 1 (row ranges scored in parallel), got {blocks}")
        self.catalogue, self.recent, self.name = catalogue, recent, name
        self.vectorizer = TfidfVectorizer(analyzer=_as_is, norm="l2", dtype=np.float32)
        docs = [item_document(catalogue, r) for r in range(len(catalogue.item_ids))]
        self.matrix = self.vectorizer.fit_transform(docs).tocsr()
        self.blocks = blocks or default_blocks(self.matrix.shape[0])
        self._pool = (futures.ThreadPoolExecutor(self.blocks - 1, thread_name_prefix=name)
                      if self.blocks > 1 else None)
        self._columns = row_blocks(self.matrix, self.blocks)
        self._scratch = threading.local()  # each request thread's scores array (_scores)

    def add_rows(self, rows: list[int]) -> None:
        """Titles appended to the catalogue (rows in order, right after the last one known):
        their TF-IDF rows with the fitted vocabulary (a word it never saw does not count)."""
        if not rows:
            return
        if rows != list(range(self.matrix.shape[0], self.matrix.shape[0] + len(rows))):
            raise ValueError(f"rows {rows[:3]}... do not follow the {self.matrix.shape[0]} "
                             "rows the content source holds")
        new = self.vectorizer.transform([item_document(self.catalogue, r) for r in rows])
        matrix = sp.vstack([self.matrix, new]).tocsr()
        # `_columns` first: a reader holding the new blocks and the old matrix cuts the scores
        # at the old matrix's rows.
        self._columns, self.matrix = row_blocks(matrix, self.blocks), matrix

    def _scores(self, columns: list[sp.csc_matrix], tokens: np.ndarray,
                weights: np.ndarray) -> np.ndarray:
        """matrix @ profile over the profile's tokens, block by block: the first block on this
        thread, the others on the pool at the same time.

        Into this thread's scratch array, valid until its next call: a fresh [num_items] array
        (2 MB at 500K titles) a request costs ~0.5 ms of page faults in a busy process."""
        bounds = np.cumsum([0] + [b.shape[0] for b in columns]).tolist()
        dtype = np.result_type(columns[0].dtype, weights.dtype)
        out = getattr(self._scratch, "scores", None)
        if out is None or len(out) < bounds[-1] or out.dtype != dtype:
            out = self._scratch.scores = np.empty(bounds[-1] + 1024, dtype)  # room to grow
        parts = [out[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        others = [self._pool.submit(column_scores, b, tokens, weights, part)
                  for b, part in zip(columns[1:], parts[1:], strict=True)]
        try:
            column_scores(columns[0], tokens, weights, parts[0])
        finally:  # none still writes into the scratch when this returns or raises
            futures.wait(others)
        for other in others:
            other.result()
        return out[:bounds[-1]]

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        # A title being added is in the catalogue before it is here (and in `_columns` before
        # `matrix`): rows past what this matrix holds are skipped.
        matrix, columns = self.matrix, self._columns
        rows = [r for r in (self.catalogue.row.get(i) for i in request.profile.history)
                if r is not None and r < matrix.shape[0]][: self.recent]
        if _check_k(k) == 0 or not rows:
            return []
        # The profile (mean of the rows, L2-normalised) over the tokens it has, then
        # scores = matrix @ profile reading only those tokens' columns.
        watched = matrix[rows].tocoo()
        tokens, at = np.unique(watched.col, return_inverse=True)
        weights = np.bincount(at, weights=watched.data, minlength=len(tokens))
        weights /= max(np.linalg.norm(weights), 1e-12)
        # float32 like the matrix: float64 weights would make scipy copy the columns to float64
        scores = self._scores(columns, tokens, weights.astype(np.float32))[:matrix.shape[0]]
        ids = self.catalogue.item_ids[:len(scores)]
        m = k + len(request.profile.watched)
        if len(scores) > 4 * m:  # keep the best m (by score, then id) before dropping zeros
            head = _head(ids, scores, m)
            ids, scores = ids[head], scores[head]
        hit = scores > 0
        return _best(self.name, ids[hit], scores[hit], request.profile.watched, k)


def build(ctx: BuildContext) -> ContentSource:
    return ContentSource(ctx.catalogue)
