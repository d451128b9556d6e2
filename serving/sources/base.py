"""The candidate source interface, the shared top-k helpers and the merge.

Every source implements :class:`CandidateSource`: ``name`` and ``candidates(request, k)``. The
contract (``tests/test_sources.py`` runs it on every implementation): at most ``k`` candidates,
best first, distinct item ids, all in the catalogue, none the user has watched, and the same
answer for the same request. A source with nothing to go on (no query embedding, no history)
answers an empty list; an empty list is an answer, not an error. Each source module has a
``build(ctx)`` that makes it once, at start-up, from a :class:`BuildContext`
(``serving.sources.SOURCES`` maps the config's names to them): adding a source is one module
and one line there.

:func:`query_sources` asks sources on an executor, each with its own deadline, and merges their
answers with :func:`merge_candidates` (dedupe, per-source quotas, every source's score kept): on
a thread pool they answer in parallel and a late one is cut off; on :class:`InlineExecutor` they
answer in turn on the caller's thread and a late answer is kept (``serving.parallel_sources``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from marquee.artifacts import is_positive_watch
from marquee.data import contract as c
from serving.state.catalogue import Catalogue, UserProfile

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400

class Candidate(NamedTuple):
    """One source's candidate (a named tuple: a request makes ~1,300 of them, and a frozen
    dataclass takes twice as long to build)."""

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
    the request's seed for any sampling a source does. ``index`` is the retrieval index of the
    version whose query tower answered (``search(emb [dim], n)``), or None.
    """

    profile: UserProfile
    timestamp: int
    seed: int = 0
    query_embedding: np.ndarray | None = None
    genres: tuple[str, ...] = ()
    index: object | None = None  # serving.models.live_index.LiveIndex

    @classmethod
    def from_profile(cls, profile: UserProfile, timestamp: int, seed: int = 0,
                     query_embedding: np.ndarray | None = None,
                     index: object | None = None) -> SourceRequest:
        return cls(profile, int(timestamp), seed, query_embedding, profile.onboarding_genres,
                   index)


@runtime_checkable
class CandidateSource(Protocol):
    """A source may also offer hooks the service calls when it has them: ``observe(event)``
    (an accepted write: trending's live watches), ``refresh_live(now)`` (the periodic refresh)
    and ``add_rows(rows)`` (titles appended to the catalogue: the content source). A source
    with ``needs_query_embedding = False`` starts before the query tower answers and gets no
    embedding or index; without the attribute it waits for them."""

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
    above the m-th largest, then the lowest ids among those equal to it.

    On a long list (content over 500K titles) a strided sample's quantile gives a bound ``q``
    with about 4m scores at or above it; the m-th largest is then found among those alone (when
    at least m reach ``q`` it is at least ``q``, so the answer is the same; otherwise the whole
    list is partitioned)."""
    n = len(scores)
    if n > HEAD_SAMPLE_FROM * m:
        sample = scores[:: max(1, n // HEAD_SAMPLE)]
        rank = min(len(sample) - 1, int(np.ceil(4 * m * len(sample) / n)))
        q = np.partition(sample, len(sample) - 1 - rank)[len(sample) - 1 - rank]
        kept = np.flatnonzero(scores >= q)
        if len(kept) >= m:
            return kept[_exact_head(ids[kept], scores[kept], m)]
    return _exact_head(ids, scores, m)


def _exact_head(ids: np.ndarray, scores: np.ndarray, m: int) -> np.ndarray:
    n = len(scores)
    threshold = np.partition(scores, n - m)[n - m]
    above = np.flatnonzero(scores > threshold)
    tied = np.flatnonzero(scores == threshold)
    need = m - len(above)
    if len(tied) > need:
        tied = tied[np.argpartition(ids[tied], need - 1)[:need]] if need > 0 else tied[:0]
    return np.concatenate([above, tied])


# _head samples a list this many times longer than m, HEAD_SAMPLE scores of it.
HEAD_SAMPLE_FROM, HEAD_SAMPLE = 64, 16_384


def _take_best(name: str, ids: np.ndarray, scores: np.ndarray, exclude: set[int],
               k: int) -> list[Candidate]:
    """The first ``k`` by (score desc, id asc) that are not excluded, each id once."""
    order = np.lexsort((ids, -scores))
    ids, scores = np.asarray(ids, np.int64)[order], scores[order]
    keep = np.zeros(len(ids), bool)
    keep[np.unique(ids, return_index=True)[1]] = True  # an id's first (best) place only
    if exclude:
        keep &= ~np.isin(ids, np.fromiter(exclude, np.int64, len(exclude)))
    at = np.flatnonzero(keep)[:k]
    return [Candidate(i, name, x) for i, x in zip(ids[at].tolist(), scores[at].tolist(),
                                                 strict=True)]


def positive_watches(interactions: pd.DataFrame, catalogue: Catalogue,
                     min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS) -> pd.DataFrame:
    """The watch events of at least ``min_watch_seconds`` on catalogue items."""
    df = interactions
    keep = (is_positive_watch(df[c.EVENT], df[c.WATCH_SECONDS], min_watch_seconds)
            & df[c.ITEM_ID].isin(catalogue.item_ids).to_numpy())
    return df[keep]



@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a source may be built from at start-up: the catalogue, the loaded interactions
    (None when the service has none), the serving config and the positive-watch threshold
    (``data.min_watch_seconds``) and the service's clock. ``shared`` holds objects several
    steps use (the item-to-item neighbours are built once for the source, the blend and the
    rows). ``als_model(version)``: the ALS model pushed with a version (None: none);
    ``serving_version()``: the version being served."""

    catalogue: Catalogue
    interactions: pd.DataFrame | None
    config: object  # marquee.config.ServingConfig
    min_watch_seconds: float
    now: Callable[[], float] = time.time  # the service's clock (UTC seconds)
    shared: dict = dataclasses.field(default_factory=dict)
    als_model: Callable[[int | None], object | None] = lambda version: None
    serving_version: Callable[[], int | None] = lambda: None

    def need_interactions(self, what: str) -> pd.DataFrame:
        if self.interactions is None:
            raise ValueError(f"{what} needs the interactions frame: pass interactions= "
                             "(serving.state.catalogue.load_frames), or drop it from the config")
        return self.interactions



class MergedCandidate(NamedTuple):
    """One item after the merge: the source whose quota it used, and (``scores``) every
    source's score. The scores are looked up when asked for (a page asks for its 50 picks' of
    a thousand candidates), in the sources' merge order."""

    item_id: int
    source: str
    by_source: Mapping[str, Mapping[int, float]]  # source -> item id -> score, shared

    @property
    def scores(self) -> dict[str, float]:
        item = self.item_id
        return {name: table[item] for name, table in self.by_source.items() if item in table}

    def __repr__(self) -> str:  # not the shared table (every candidate's scores)
        return (f"MergedCandidate(item_id={self.item_id!r}, source={self.source!r}, "
                f"scores={self.scores!r})")


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
    names = [name for name in quotas if name in results]
    # An id a source lists twice keeps its first score.
    by_source = {name: {c.item_id: c.score for c in reversed(results[name])} for name in names}
    # [source, its ids, the next place to read, quota left]
    turns = [[name, [c.item_id for c in results[name]], 0, quotas[name]] for name in names]
    out: list[MergedCandidate] = []
    taken: set[int] = set()
    while turns:
        for turn in turns:
            name, ids, at, left = turn
            while at < len(ids) and ids[at] in taken:
                at += 1
            if at >= len(ids) or left <= 0:
                turn[3] = 0
                continue
            taken.add(ids[at])
            out.append(MergedCandidate(ids[at], name, by_source))
            turn[2], turn[3] = at + 1, left - 1
        turns = [turn for turn in turns if turn[3] > 0]
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


def check_sources(sources: Sequence[CandidateSource], quotas: Mapping[str, int],
                  deadlines_ms: Mapping[str, float]) -> None:
    names = [s.name for s in sources]
    missing = [n for n in names if n not in quotas or n not in deadlines_ms]
    if len(set(names)) != len(names) or missing:
        raise ValueError(f"sources {names} need distinct names, each with a quota and a "
                         f"deadline; missing for {missing}")


def needs_query_embedding(source: CandidateSource) -> bool:
    """Whether ``source`` reads the request's query embedding or index (so it waits for the
    query tower); a source that does not say is assumed to."""
    return bool(getattr(source, "needs_query_embedding", True))


Pending = dict[str, tuple[float, futures.Future]]


class InlineExecutor(futures.Executor):
    """Runs each call on the submitting thread, at ``submit``: the future is done when it
    returns (with the call's result or its exception). For sources that should not pay a
    thread hand-off (``serving.parallel_sources: false``); a deadline cannot cut them off."""

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        future: futures.Future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # the source's failure, reported by collect_sources
            future.set_exception(e)
        return future


def submit_sources(sources: Sequence[CandidateSource], request: SourceRequest,
                   quotas: Mapping[str, int], executor: futures.Executor) -> Pending:
    """Starts every source on ``executor``: name -> (start time, future)."""
    return {s.name: (time.perf_counter(), executor.submit(_timed, s, request, quotas[s.name]))
            for s in sources}


_LATE_LOGGED: dict[str, list] = {}  # source -> [last line's time, late answers since]
LATE_LOG_EVERY_S = 60.0


def _late(name: str, ms: float, deadline_ms: float) -> None:
    """Logs a late but kept answer: at most a line a minute per source, with the count since
    (under overload every request could be late)."""
    now = time.monotonic()
    last = _LATE_LOGGED.setdefault(name, [-LATE_LOG_EVERY_S, 0])
    last[1] += 1
    if now - last[0] >= LATE_LOG_EVERY_S:
        log.warning("candidate source %s answered in %.0f ms, past its %.0f ms deadline; kept "
                    "(%d late answer(s) since the last such line)", name, ms, deadline_ms,
                    last[1])
        last[0], last[1] = now, 0


def collect_sources(pending: Pending, quotas: Mapping[str, int],
                    deadlines_ms: Mapping[str, float]) -> SourceResults:
    """Waits for each started source until its deadline (counted from its start); merges."""
    answers, skipped, timings = {}, {}, {}
    for name, (start, future) in pending.items():
        left = deadlines_ms[name] / 1000 - (time.perf_counter() - start)
        try:
            answers[name], timings[name] = future.result(timeout=max(0.0, left))
            if timings[name] > deadlines_ms[name]:  # done when collected, but late: kept
                _late(name, timings[name], deadlines_ms[name])
        except futures.TimeoutError:
            future.cancel()
            skipped[name] = f"missed its {deadlines_ms[name]:.0f} ms deadline"
        except Exception as e:  # a failing source is reported and skipped, never fatal
            skipped[name] = f"{type(e).__name__}: {e}"
        if name in skipped:
            log.warning("candidate source %s skipped: %s", name, skipped[name])
    return SourceResults(merge_candidates(answers, quotas), answers, skipped, timings)


def query_sources(sources: Sequence[CandidateSource], request: SourceRequest,
                  quotas: Mapping[str, int], deadlines_ms: Mapping[str, float],
                  executor: futures.Executor) -> SourceResults:
    """Asks every source for its quota at once on ``executor``; merges what arrives in time.

    Each source's deadline counts from the moment it is submitted. A source that raises or
    misses its deadline contributes nothing and is named in ``skipped`` with the reason; its
    thread runs to the end in the background (Python cannot stop it) and the answer is dropped.
    On an :class:`InlineExecutor` every source has answered when it is collected: one that took
    longer than its deadline is kept, and logged.
    """
    check_sources(sources, quotas, deadlines_ms)
    return collect_sources(submit_sources(sources, request, quotas, executor), quotas,
                           deadlines_ms)
