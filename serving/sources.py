"""Candidate sources: where a homepage's candidates come from, each behind one small interface.

Every source implements :class:`CandidateSource`: ``name`` and ``candidates(request, k)``. The
contract (``tests/test_sources.py`` runs it on every implementation): at most ``k`` candidates,
best first, distinct item ids, all in the catalogue, none the user has watched, and the same
answer for the same request. A source with nothing to go on (no query embedding, no history)
answers an empty list; an empty list is an answer, not an error.

- :class:`CollaborativeSource`: the two-tower query embedding searched in the ScaNN index.
- :class:`ContentSource`: TF-IDF over item metadata, matched to the user's recent watches.
- :class:`TrendingSource`: time-decayed positive watches, overall or in the request's genres.
- :class:`ItemToItemSource`: co-watch neighbours of the user's last watches.

:func:`query_sources` asks sources in parallel, each with its own deadline, and merges their
answers with :func:`merge_candidates` (dedupe, per-source quotas, every source's score kept).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from marquee.data import contract as c
from serving.catalogue import MISSING, Catalogue, UserProfile
from trainer import features as f
from trainer.retrieval import LIST_PAD

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class Candidate:
    item_id: int
    source: str
    score: float


@dataclasses.dataclass(frozen=True, eq=False)
class SourceRequest:
    """What a source may use to answer one homepage request.

    ``profile`` holds the history (positive watches, most recent first), the watched set (to
    exclude) and the onboarding genres. ``query_embedding`` is the query tower's ``[dim]``
    output, or None when the tower did not answer. ``genres`` are the genres to favour
    (:meth:`from_profile` uses the onboarding quiz's). ``timestamp`` is UTC seconds; ``seed`` is
    the request's seed for any sampling a source does.
    """

    profile: UserProfile
    timestamp: int
    seed: int = 0
    query_embedding: np.ndarray | None = None
    genres: tuple[str, ...] = ()

    @classmethod
    def from_profile(cls, profile: UserProfile, timestamp: int, seed: int = 0,
                     query_embedding: np.ndarray | None = None) -> SourceRequest:
        return cls(profile, int(timestamp), seed, query_embedding, profile.onboarding_genres)


@runtime_checkable
class CandidateSource(Protocol):
    name: str

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        """At most ``k`` candidates, best first: distinct, in the catalogue, not watched."""


def _check_k(k: int) -> int:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def _best(name: str, ids: np.ndarray, scores: np.ndarray, exclude: Iterable[int],
          k: int) -> list[Candidate]:
    """``ids [N]``, ``scores [N]`` -> the ``k`` best candidates, ties to the lower item id;
    excluded ids, non-finite scores and repeated ids (after the best) are dropped."""
    exclude = set(exclude)
    ids, scores = np.asarray(ids), np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    if not finite.all():
        ids, scores = ids[finite], scores[finite]
    m = k + len(exclude)  # enough to fill k unless repeated ids take places
    if len(ids) > 4 * m:  # a big list (content over a large catalogue): sort only its head
        head = _head(ids, scores, m)
        out = _take_best(name, ids[head], scores[head], exclude, k)
        if len(out) == k:
            return out
    return _take_best(name, ids, scores, exclude, k)


def _head(ids: np.ndarray, scores: np.ndarray, m: int) -> np.ndarray:
    """Positions of the first ``m`` of a full sort by (score desc, id asc), in O(N): every score
    above the m-th largest, then the lowest ids among those equal to it."""
    threshold = np.partition(scores, len(scores) - m)[len(scores) - m]
    above = np.flatnonzero(scores > threshold)
    tied = np.flatnonzero(scores == threshold)
    need = m - len(above)
    if len(tied) > need:
        tied = tied[np.argpartition(ids[tied], need - 1)[:need]] if need > 0 else tied[:0]
    return np.concatenate([above, tied])


def _take_best(name: str, ids: np.ndarray, scores: np.ndarray, exclude: set[int],
               k: int) -> list[Candidate]:
    out: list[Candidate] = []
    seen: set[int] = set()
    for r in np.lexsort((ids, -scores)).tolist():
        if len(out) >= k:
            break
        item = int(ids[r])
        if item in seen or item in exclude:
            continue
        seen.add(item)
        out.append(Candidate(item, name, float(scores[r])))
    return out


def positive_watches(interactions: pd.DataFrame, catalogue: Catalogue,
                     min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS) -> pd.DataFrame:
    """The watch events of at least ``min_watch_seconds`` on catalogue items."""
    df = interactions
    keep = ((df[c.EVENT] == c.EVENT_WATCH) & (df[c.WATCH_SECONDS] >= min_watch_seconds)
            & df[c.ITEM_ID].isin(catalogue.item_ids))
    return df[keep]


# ---------------------------------------------------------------------------- collaborative

class CollaborativeSource:
    """The two-tower path: ``search(embedding [dim], n) -> (ids [n], scores [n])``, best first.

    The lead passes ``lambda emb, n: index.search(emb, n)``. It asks for ``k`` plus the number
    of watched items, so that k remain after excluding them; ids outside the catalogue are dropped.
    """

    def __init__(self, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                 catalogue: Catalogue, name: str = "collaborative"):
        self.search, self.catalogue, self.name = search, catalogue, name

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        if _check_k(k) == 0 or request.query_embedding is None:
            return []
        n = min(k + len(request.profile.watched), len(self.catalogue.item_ids))
        ids, scores = self.search(np.asarray(request.query_embedding), n)
        ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float64)
        row = self.catalogue.row
        known = np.fromiter((int(i) in row for i in ids), bool, len(ids))
        return _best(self.name, ids[known], scores[known], request.profile.watched, k)


# ---------------------------------------------------------------------------- content

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


class ContentSource:
    """Items like the user's recent watches, by TF-IDF over their metadata.

    ``matrix`` is ``[num_items, vocabulary]``, one L2-normalised TF-IDF row per item (of
    :func:`item_document`). The profile is the mean of the rows of the last ``recent`` watches,
    L2-normalised, so a candidate's score is its cosine similarity to it, in [0, 1]; items with
    score 0 (nothing in common) are not candidates.
    """

    def __init__(self, catalogue: Catalogue, recent: int = 10, name: str = "content"):
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.catalogue, self.recent, self.name = catalogue, recent, name
        self.vectorizer = TfidfVectorizer(analyzer=_as_is, norm="l2", dtype=np.float32)
        docs = [item_document(catalogue, r) for r in range(len(catalogue.item_ids))]
        self.matrix = self.vectorizer.fit_transform(docs).tocsr()
        # The same matrix by column: a request reads only its profile's tokens' columns.
        self._columns = self.matrix.tocsc()

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
        self._columns, self.matrix = matrix.tocsc(), matrix  # readers check the row count

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
        scores = np.asarray(columns[:, tokens] @ weights).ravel()
        ids = self.catalogue.item_ids[:len(scores)]
        m = k + len(request.profile.watched)
        if len(scores) > 4 * m:  # keep the best m (by score, then id) before dropping zeros
            head = _head(ids, scores, m)
            ids, scores = ids[head], scores[head]
        hit = scores > 0
        return _best(self.name, ids[hit], scores[hit], request.profile.watched, k)


# ---------------------------------------------------------------------------- trending

def decay_weights(timestamps: np.ndarray, now: int, half_life_days: float) -> np.ndarray:
    """``0.5 ** (age / half_life)`` per event ``[N]``; events after ``now`` count as age 0."""
    age = np.maximum(0, now - np.asarray(timestamps, np.float64))
    return 0.5 ** (age / (half_life_days * SECONDS_PER_DAY))


@dataclasses.dataclass(frozen=True)
class _Trend:
    scores: np.ndarray  # [num_items] decayed positive watches by catalogue row
    order: list[int]  # rows with a positive score, best first (ties: lower id)
    by_genre: dict[str, list[int]]  # the same order, per genre


class TrendingSource:
    """Recently popular: positive watches weighted ``0.5 ** (age / half_life)`` and summed.

    A request with ``genres`` gets those genres' trending items interleaved (each genre's best
    first), then the overall trend; otherwise the overall trend. :meth:`refresh` recomputes from
    new interactions without retraining; requests in flight keep the state they started with.
    """

    def __init__(self, catalogue: Catalogue, half_life_days: float = 3.0,
                 min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS, name: str = "trending"):
        if half_life_days <= 0:
            raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
        self.catalogue, self.half_life_days, self.name = catalogue, half_life_days, name
        self.min_watch_seconds = min_watch_seconds
        self._trend = _Trend(np.zeros(len(catalogue.item_ids)), [], {})

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, catalogue: Catalogue, now: int,
                          half_life_days: float = 3.0, **kwargs) -> TrendingSource:
        source = cls(catalogue, half_life_days, **kwargs)
        source.refresh(interactions, now)
        return source

    @property
    def scores(self) -> np.ndarray:
        """``[num_items]`` decayed positive watches by catalogue row."""
        return self._trend.scores

    def refresh(self, interactions: pd.DataFrame, now: int) -> None:
        pos = positive_watches(interactions, self.catalogue, self.min_watch_seconds)
        weights = decay_weights(pos[c.TIMESTAMP].to_numpy(), now, self.half_life_days)
        scores = np.zeros(len(self.catalogue.item_ids))
        np.add.at(scores, self.catalogue.rows(pos[c.ITEM_ID].tolist()), weights)
        order = [r for r in np.argsort(-scores, kind="stable").tolist() if scores[r] > 0]
        by_genre: dict[str, list[int]] = {}
        for r in order:
            for g in self.catalogue.genres[r]:
                by_genre.setdefault(g, []).append(r)
        self._trend = _Trend(scores, order, by_genre)  # one swap: readers see old or new

    def candidates(self, request: SourceRequest, k: int) -> list[Candidate]:
        trend, exclude, k = self._trend, request.profile.watched, _check_k(k)
        lists = [trend.by_genre[g] for g in dict.fromkeys(request.genres) if g in trend.by_genre]
        rows = [x[d] for d in range(max(map(len, lists), default=0)) for x in lists if d < len(x)]
        out: list[Candidate] = []
        for r in dict.fromkeys(rows + trend.order):
            if len(out) >= k:
                break
            item = int(self.catalogue.item_ids[r])
            if item not in exclude:
                out.append(Candidate(item, self.name, float(trend.scores[r])))
        return out


# ---------------------------------------------------------------------------- item to item

class ItemToItemSource:
    """Co-watch neighbours: ``sim(i, j) = n_ij / (sqrt(n_i) sqrt(n_j) + shrink)``.

    ``n_ij`` counts users with positive watches of both, ``n_i`` of i (cosine over the binary
    user-item matrix, shrunk towards 0 for rarely watched pairs, as ``marquee.evaluation.ItemKNN``).
    ``neighbour_rows [num_items, M]`` holds each item's top-M catalogue rows best first (ties:
    lower id, -1 pads), ``neighbour_sims [num_items, M]`` their similarities. A request's
    candidates are scored by the summed similarity to its last ``recent`` watches.
    """

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


# ---------------------------------------------------------------------------- merge

@dataclasses.dataclass(frozen=True)
class MergedCandidate:
    """One item after the merge: the source whose quota it used, and every source's score."""

    item_id: int
    source: str
    scores: dict[str, float]


def merge_candidates(results: Mapping[str, Sequence[Candidate]],
                     quotas: Mapping[str, int]) -> list[MergedCandidate]:
    """Dedupes the sources' answers into one list, taking turns in ``quotas`` order.

    Round robin: each source in turn adds its next candidate not already taken, until its quota
    of new items is used or its list ends. An item any source returned (within its quota or not)
    carries that source's score in ``scores``, a feature for the ranker. The order depends only on
    the inputs. Sources in ``quotas`` but not in ``results`` (skipped) are passed over.
    """
    unknown = sorted(set(results) - set(quotas))
    if unknown:
        raise ValueError(f"no quota for source(s) {unknown}; quotas are given for {list(quotas)}")
    score_of: dict[int, dict[str, float]] = {}
    for name in quotas:
        for cand in results.get(name, ()):
            score_of.setdefault(cand.item_id, {}).setdefault(name, cand.score)
    pointer = {name: 0 for name in quotas if name in results}
    added = dict.fromkeys(pointer, 0)
    out: list[MergedCandidate] = []
    taken: set[int] = set()
    while pointer:
        for name in list(pointer):
            answer = results[name]
            while pointer[name] < len(answer) and answer[pointer[name]].item_id in taken:
                pointer[name] += 1
            if pointer[name] >= len(answer) or added[name] >= quotas[name]:
                del pointer[name]
                continue
            item = answer[pointer[name]].item_id
            taken.add(item)
            added[name] += 1
            out.append(MergedCandidate(item, name, dict(score_of[item])))
    return out


@dataclasses.dataclass
class SourceResults:
    """``merged``: :func:`merge_candidates`' list; ``answers``: each answering source's list;
    ``skipped``: source -> why it contributed nothing; ``timings_ms``: per answering source."""

    merged: list[MergedCandidate]
    answers: dict[str, list[Candidate]]
    skipped: dict[str, str]
    timings_ms: dict[str, float]


def _timed(source: CandidateSource, request: SourceRequest, k: int) -> tuple[list, float]:
    start = time.perf_counter()
    out = source.candidates(request, k)
    return out, (time.perf_counter() - start) * 1000


def query_sources(sources: Sequence[CandidateSource], request: SourceRequest,
                  quotas: Mapping[str, int], deadlines_ms: Mapping[str, float],
                  executor: futures.Executor) -> SourceResults:
    """Asks every source for its quota at once on ``executor``; merges what arrives in time.

    Each source's deadline counts from the moment all are submitted. A source that raises or
    misses its deadline contributes nothing and is named in ``skipped`` with the reason; its
    thread runs to the end in the background (Python cannot stop it) and the answer is dropped.
    """
    names = [s.name for s in sources]
    missing = [n for n in names if n not in quotas or n not in deadlines_ms]
    if len(set(names)) != len(names) or missing:
        raise ValueError(f"sources {names} need distinct names, each with a quota and a "
                         f"deadline; missing for {missing}")
    start = time.perf_counter()
    pending = {s.name: executor.submit(_timed, s, request, quotas[s.name]) for s in sources}
    answers, skipped, timings = {}, {}, {}
    for name, future in pending.items():
        left = deadlines_ms[name] / 1000 - (time.perf_counter() - start)
        try:
            answers[name], timings[name] = future.result(timeout=max(0.0, left))
        except futures.TimeoutError:
            future.cancel()
            skipped[name] = f"missed its {deadlines_ms[name]:.0f} ms deadline"
        except Exception as e:  # a failing source is reported and skipped, never fatal
            skipped[name] = f"{type(e).__name__}: {e}"
        if name in skipped:
            log.warning("candidate source %s skipped: %s", name, skipped[name])
    return SourceResults(merge_candidates(answers, quotas), answers, skipped, timings)
