"""The thin client: one homepage = query tower -> ScaNN (in-process) -> ranker -> re-rank.

Each stage has a deadline (``ServingConfig``); the whole request has a budget (200 ms by
default). If the model backend is down, errors, or a stage misses its deadline, the answer is
popularity by genre, marked ``fallback: true`` with the reason; a circuit breaker per model stops
calling a failing backend and probes it again later. A model failure never becomes an error
response. If only the ranker fails, the retrieval order is served (``degraded`` says why).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from marquee.config import ServingConfig
from serving.backends import IndexStore, ModelBackend
from serving.catalogue import Catalogue, UserProfile, UserStore
from serving.resilience import CircuitBreaker, PopularityFallback
from serving.retrieval import QueryFeatures, query_inputs
from trainer.ranking import P_WATCH, RETRIEVAL_SCORE, WATCH_TIME_SECONDS

log = logging.getLogger(__name__)


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / sd if sd > 0 else np.zeros_like(x)


def blend(retrieval: np.ndarray, p_watch: np.ndarray, ranker_weight: float) -> np.ndarray:
    """Final score of N candidates [N]: ``(1 - w) * z(retrieval score) + w * z(logit(p_watch))``,
    each standardised over this request's candidates (the two scales are not comparable).
    ``w = 1`` ranks by the ranker alone, ``w = 0`` keeps the retrieval order."""
    p = np.clip(p_watch.astype(np.float64), 1e-7, 1 - 1e-7)
    return ((1 - ranker_weight) * _standardise(retrieval.astype(np.float64))
            + ranker_weight * _standardise(np.log(p / (1 - p))))


class DeadlineExceeded(TimeoutError):
    pass


@dataclasses.dataclass(frozen=True)
class Pick:
    item_id: int
    title: str
    score: float
    retrieval_score: float | None = None
    p_watch: float | None = None
    watch_time_seconds: float | None = None


@dataclasses.dataclass
class Homepage:
    user_id: int
    items: list[Pick]
    fallback: bool = False
    reason: str | None = None
    degraded: str | None = None
    model_version: int | None = None
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class HomepageService:
    def __init__(self, backend: ModelBackend, indexes: IndexStore, catalogue: Catalogue,
                 users: UserStore, config: ServingConfig = ServingConfig(),
                 popularity: dict[int, float] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 now: Callable[[], float] = time.time):
        self.backend, self.indexes, self.catalogue, self.users = backend, indexes, catalogue, users
        self.config = config
        self.fallback = PopularityFallback(catalogue, popularity or indexes.popularity())
        self.query_breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)
        self.rank_breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)
        self._clock, self._now = clock, now

    # ------------------------------------------------------------------ stages

    def _remaining(self, start: float, stage_ms: float) -> float:
        left = self.config.deadline_ms - (self._clock() - start) * 1000
        return max(0.0, min(stage_ms, left)) / 1000

    def _check(self, start: float, stage: str, stage_start: float, stage_ms: float) -> None:
        now = self._clock()
        if (now - stage_start) * 1000 > stage_ms or (now - start) * 1000 > self.config.deadline_ms:
            raise DeadlineExceeded(
                f"{stage} took {(now - stage_start) * 1000:.0f} ms (stage deadline "
                f"{stage_ms:.0f} ms, request budget {self.config.deadline_ms:.0f} ms)")

    def query_features(self, profile: UserProfile, timestamp: int) -> dict[str, np.ndarray]:
        """The query tower's inputs for one user at ``timestamp`` (batch of 1)."""
        q = QueryFeatures(user_id=profile.user_id, timestamp=timestamp, device=profile.device,
                          country=profile.country, subscription_tier=profile.subscription_tier,
                          age_bucket=profile.age_bucket, history=profile.history)
        return {k: v.numpy() for k, v in query_inputs([q], self.config.history_length).items()}

    def _personal(self, profile: UserProfile, k: int, timings: dict,
                  timestamp: int | None) -> Homepage:
        cfg = self.config
        start = self._clock()
        query = self.query_features(
            profile, int(self._now()) if timestamp is None else int(timestamp))
        t = self._clock()
        emb, version = self.query_breaker.call(
            self.backend.query_embeddings, query, self._remaining(start, cfg.query_deadline_ms))
        self._check(start, "query tower", t, cfg.query_deadline_ms)
        timings["query_tower"] = (self._clock() - t) * 1000

        t = self._clock()
        index = self.indexes.get(version)
        exclude = profile.watched
        ids, scores = index.search(emb, cfg.candidates + len(exclude))
        keep = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)
                if int(i) not in exclude and int(i) in self.catalogue.row]
        keep = list(dict.fromkeys(i for i, _ in keep))[: cfg.candidates]  # dedupe, keep order
        score_of = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True)}
        timings["retrieval"] = (self._clock() - t) * 1000
        page = Homepage(profile.user_id, [], model_version=version, timings_ms=timings)
        retrieval = np.array([score_of[i] for i in keep], np.float32)
        order = np.arange(len(keep))
        p_watch = watch_time = final = None
        if keep and self.backend.has_ranker():
            t = self._clock()
            try:
                rows = self.catalogue.rows(keep)
                inputs = {key: np.repeat(v, len(keep), axis=0) for key, v in query.items()}
                inputs.update(self.catalogue.candidate_inputs(rows))
                inputs[RETRIEVAL_SCORE] = retrieval
                out = self.rank_breaker.call(self.backend.rank, inputs,
                                             self._remaining(start, cfg.rank_deadline_ms))
                self._check(start, "ranker", t, cfg.rank_deadline_ms)
                p_watch, watch_time = out[P_WATCH], out[WATCH_TIME_SECONDS]
                final = blend(retrieval, p_watch, cfg.ranker_weight)
                order = np.lexsort((np.array(keep), -final))  # best first, ties by item id
            except Exception as e:  # the ranker is optional: degrade to the retrieval order
                log.warning("ranker failed, serving the retrieval order: %s", e)
                page.degraded = f"ranker: {type(e).__name__}: {e}"
            timings["ranker"] = (self._clock() - t) * 1000
        for r in order[:k].tolist():
            item = keep[r]
            page.items.append(Pick(
                item, self.catalogue.titles[self.catalogue.row[item]],
                float(final[r]) if p_watch is not None and page.degraded is None
                else float(retrieval[r]),
                retrieval_score=float(retrieval[r]),
                p_watch=None if p_watch is None or page.degraded else float(p_watch[r]),
                watch_time_seconds=None if watch_time is None or page.degraded
                else float(watch_time[r])))
        return page

    def warm_up(self) -> None:
        """One call of each model outside any deadline: the first call of a loaded SavedModel
        traces its functions (100+ ms), which must not land on a user's request."""
        query = self.query_features(UserProfile(user_id=0), int(self._now()))
        self.backend.query_embeddings(query, 30.0)
        if self.backend.has_ranker() and len(self.catalogue.item_ids):
            rows = np.arange(min(2, len(self.catalogue.item_ids)))
            inputs = {key: np.repeat(v, len(rows), axis=0) for key, v in query.items()}
            inputs.update(self.catalogue.candidate_inputs(rows))
            inputs[RETRIEVAL_SCORE] = np.zeros(len(rows), np.float32)
            self.backend.rank(inputs, 30.0)

    # ------------------------------------------------------------------ request

    def homepage(self, user_id: int, k: int | None = None,
                 timestamp: int | None = None) -> Homepage:
        """Top ``k`` for ``user_id`` at ``timestamp`` (UTC seconds; default now)."""
        k = self.config.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        start = self._clock()
        profile = self.users.get(user_id)
        timings: dict[str, float] = {}
        try:
            page = self._personal(profile, k, timings, timestamp)
        except Exception as e:  # any model-path failure is answered by the fallback, logged
            log.warning("homepage for user %s falls back to popularity: %s", user_id, e)
            genres = self.fallback.genres_of(profile.history, profile.onboarding_genres)
            items = self.fallback.recommend(k, set(profile.watched), genres)
            page = Homepage(user_id, [
                Pick(i, self.catalogue.titles[self.catalogue.row[i]], self.fallback.score(i))
                for i in items], fallback=True,
                reason=f"{type(e).__name__}: {e}", timings_ms=timings)
        page.timings_ms["total"] = (self._clock() - start) * 1000
        return page
