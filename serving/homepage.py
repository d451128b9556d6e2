"""The thin client: one homepage = candidate sources -> merge -> ranker -> re-rank -> top k.

The user's cold-start stage (:mod:`serving.cold_start`) picks the sources that answer
(``SourceConfig.stages``): by default ``new`` users get trending in their onboarding genres,
``light`` users content-based, item-to-item and trending, ``full`` users also the two-tower
retrieval (query tower -> ScaNN, in-process). The sources answer in parallel, each with its own
deadline, and are merged with per-source quotas (:mod:`serving.sources`). With a query embedding
every candidate, whatever its source, gets its exact retrieval score from the index, and a pushed
ranker scores them all in one call (``blend``); the configured re-rank steps
(:mod:`serving.rerank`) then shape the page. "Because you watched X" rows come with it.

Each model call has a deadline (``ServingConfig``); the whole request has a budget (200 ms by
default). If the query tower fails the other sources still answer (``degraded`` says why); if
no source answers, the answer is popularity by genre, marked ``fallback: true`` with the reason.
A circuit breaker per model stops calling a failing backend and probes it again later. A model
failure never becomes an error response. If only the ranker fails, the retrieval order is
served (``degraded`` says why).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures

import numpy as np
import pandas as pd

from marquee.config import ServingConfig
from marquee.data import contract as c
from serving.backends import IndexStore, ModelBackend
from serving.catalogue import Catalogue, UserProfile, UserStore
from serving.cold_start import BecauseYouWatched, ColdStartThresholds, stage
from serving.events import Event
from serving.feature_store import EmbeddedStore, FeatureStore
from serving.freshness import FreshItems, LiveIndex
from serving.rerank import (
    SECONDS_PER_DAY,
    RerankContext,
    RerankPipeline,
    Scored,
    build_pipeline,
    scored_from_catalogue,
)
from serving.resilience import CircuitBreaker, PopularityFallback
from serving.retrieval import QueryFeatures, query_inputs
from serving.sources import (
    CandidateSource,
    CollaborativeSource,
    ContentSource,
    ItemToItemSource,
    MergedCandidate,
    SourceRequest,
    TrendingSource,
    query_sources,
)
from trainer.ranking import P_WATCH, RETRIEVAL_SCORE, WATCH_TIME_SECONDS

log = logging.getLogger(__name__)

COLLABORATIVE = "collaborative"
ITEM_TO_ITEM, POPULARITY = "item_to_item", "popularity"  # the blend's optional signals
# Positive watches accepted while serving that trending's refresh keeps (the oldest drop out).
LIVE_WATCHES = 1_000_000
# Most new titles one request's exploration step draws from (a seeded sample of them).
EXPLORE_POOL = 200
# Half-lives of history a trending refresh reads (0.5 ** 10 < 0.1%).
TRENDING_WINDOW = 10
SOURCE_NAMES = (COLLABORATIVE, "content", "item_to_item", "trending")
STAGES = ("new", "light", "full")


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / sd if sd > 0 else np.zeros_like(x)


def blend(retrieval: np.ndarray, p_watch: np.ndarray | None, ranker_weight: float,
          item_to_item: np.ndarray | None = None, item_to_item_weight: float = 0.0,
          popularity: np.ndarray | None = None, popularity_weight: float = 0.0) -> np.ndarray:
    """Final score of N candidates [N]::

        (1 - w) * z(retrieval score) + w * z(logit(p_watch))
          + w_i2i * z(item-to-item score) - w_pop * z(log(1 + popularity))

    each signal standardised over this request's candidates (their scales are not comparable).
    ``w = 1`` ranks by the ranker alone, ``w = 0`` keeps the retrieval order; without a ranker
    (``p_watch`` None) the first two terms are z(retrieval score). A signal with weight 0 (or
    None) does not count."""
    final = _standardise(retrieval.astype(np.float64))
    if p_watch is not None:
        p = np.clip(p_watch.astype(np.float64), 1e-7, 1 - 1e-7)
        final = (1 - ranker_weight) * final + ranker_weight * _standardise(np.log(p / (1 - p)))
    if item_to_item is not None and item_to_item_weight:
        final = final + item_to_item_weight * _standardise(item_to_item.astype(np.float64))
    if popularity is not None and popularity_weight:
        final = final - popularity_weight * _standardise(np.log1p(np.maximum(popularity, 0.0)))
    return final


class DeadlineExceeded(TimeoutError):
    pass


class NoCandidates(RuntimeError):
    """No candidate source answered anything (the popularity fallback answers instead)."""


@dataclasses.dataclass(frozen=True)
class Pick:
    """One title on the page. ``score`` is the final score (a z-score over the request's
    candidates; see :meth:`HomepageService._final_scores`), ``sources`` every candidate source's
    own score for it, ``explore`` marks an item the exploration step put in."""

    item_id: int
    title: str
    score: float
    retrieval_score: float | None = None
    p_watch: float | None = None
    watch_time_seconds: float | None = None
    item_to_item: float | None = None  # the blend's item-to-item signal (when weighted)
    popularity: float | None = None  # train positives (when the blend weighs popularity)
    sources: dict[str, float] = dataclasses.field(default_factory=dict)
    explore: bool = False


@dataclasses.dataclass(frozen=True)
class PageRow:
    """A titled row ("Because you watched X") built around ``seed_item_id``."""

    title: str
    seed_item_id: int
    items: list[Pick]


@dataclasses.dataclass
class Homepage:
    user_id: int
    items: list[Pick]
    fallback: bool = False
    reason: str | None = None
    degraded: str | None = None
    model_version: int | None = None
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    stage: str | None = None  # the cold-start stage: new, light or full
    rows: list[PageRow] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # source -> why
    cached: bool = False  # answered from the page cache

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Homepage:
        """Inverse of ``to_dict`` (a cached page)."""
        rows = [PageRow(r["title"], r["seed_item_id"], [Pick(**p) for p in r["items"]])
                for r in d["rows"]]
        return cls(**{**d, "items": [Pick(**p) for p in d["items"]], "rows": rows})


def _check_sources(config: ServingConfig) -> None:
    names = [s.name for s in config.sources]
    problems = [f"unknown source {n!r}" for n in names if n not in SOURCE_NAMES]
    problems += [f"source {n!r} listed twice" for n in set(names) if names.count(n) > 1]
    problems += [f"source {s.name!r} has unknown stage(s) {sorted(set(s.stages) - set(STAGES))}"
                 for s in config.sources if set(s.stages) - set(STAGES)]
    problems += [f"source {s.name!r} needs quota >= 0 and deadline_ms > 0"
                 for s in config.sources if s.quota < 0 or not s.deadline_ms > 0]
    if problems:
        raise ValueError(f"serving.sources: {'; '.join(problems)}; sources are "
                         f"{list(SOURCE_NAMES)}, stages {list(STAGES)}")


def _rerank_pipeline(config: ServingConfig) -> RerankPipeline:
    try:
        return build_pipeline(config.rerank)
    except ValueError as e:
        raise ValueError(f"serving.rerank: {e}") from e


class HomepageService:
    """``interactions`` (the validated interactions frame, :func:`serving.catalogue.load_frames`)
    is needed by the trending and item-to-item sources and the "Because you watched" rows; a
    config using them without it fails here, at start-up, as does any bad source or re-rank
    config. ``min_watch_seconds``: a watch this long is a positive for those sources (pass the
    pipeline's ``data.min_watch_seconds``, as to :func:`serving.catalogue.load_frames`).
    Trending is computed as of the last interaction (``refresh_trending`` renews it)."""

    def __init__(self, backend: ModelBackend, indexes: IndexStore, catalogue: Catalogue,
                 users: UserStore, config: ServingConfig = ServingConfig(),
                 popularity: dict[int, float] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 now: Callable[[], float] = time.time,
                 interactions: pd.DataFrame | None = None, store: FeatureStore | None = None,
                 min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS):
        self.backend, self.indexes, self.catalogue, self.users = backend, indexes, catalogue, users
        self.config = config
        # Online features and the page cache; it must answer when its backend is down
        # (EmbeddedStore, or ResilientStore over Redis).
        self.store = store if store is not None else EmbeddedStore(config.history_length)
        self.fallback = PopularityFallback(catalogue, popularity or indexes.popularity())
        self.query_breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)
        self.rank_breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)
        self._clock, self._now = clock, now
        self.min_watch_seconds = min_watch_seconds
        self.thresholds = ColdStartThresholds(config.light_from, config.full_from)
        self.rerank = _rerank_pipeline(config)
        self.filters = RerankPipeline(tuple(s for s in self.rerank.steps if s.is_filter))
        _check_sources(config)
        names = {s.name for s in config.sources}
        need = sorted(names & {"trending", "item_to_item"})
        if config.because_you_watched > 0:
            need.append("because_you_watched rows")
        if config.item_to_item_weight:
            need.append("serving.item_to_item_weight")
        if need and interactions is None:
            raise ValueError(f"{', '.join(need)} need the interactions frame: pass interactions="
                             "(serving.catalogue.load_frames), or drop them from serving.sources "
                             "(and set serving.because_you_watched: 0)")
        self.sources: dict[str, CandidateSource] = {}
        if "content" in names:
            self.sources["content"] = ContentSource(catalogue)
        self._live_watches: deque[Event] = deque(maxlen=LIVE_WATCHES)
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        if "trending" in names:
            latest = int(interactions[c.TIMESTAMP].max()) if len(interactions) else 0
            # What a refresh recomputes from: the loaded watches within TRENDING_WINDOW
            # half-lives of the latest (older ones weigh < 0.1%), plus the live ones.
            window = TRENDING_WINDOW * config.trending_half_life_days * SECONDS_PER_DAY
            watches = interactions[interactions[c.EVENT] == c.EVENT_WATCH]
            self._trending_base = watches[watches[c.TIMESTAMP] >= latest - window]
            self.sources["trending"] = TrendingSource.from_interactions(
                self._trending_base, catalogue, latest, config.trending_half_life_days,
                min_watch_seconds=min_watch_seconds)
        item_to_item = None
        if ("item_to_item" in names or config.because_you_watched > 0
                or config.item_to_item_weight):
            item_to_item = ItemToItemSource.from_interactions(
                interactions, catalogue, min_watch_seconds=min_watch_seconds)
        self.item_to_item = item_to_item
        if "item_to_item" in names:
            self.sources["item_to_item"] = item_to_item
        self.because_you_watched = (
            BecauseYouWatched(item_to_item, catalogue, config.because_you_watched, config.row_k)
            if config.because_you_watched > 0 else None)
        # Titles added while serving (POST /v1/items): catalogue, content source, side index.
        self.fresh = FreshItems(catalogue, lambda *a: self.backend.candidate_embeddings(*a),
                                on_add=self._items_added)
        self._pool: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None
        # Sources of concurrent requests share it; a source past its deadline keeps its thread.
        self._executor = futures.ThreadPoolExecutor(max(4, 4 * len(config.sources)),
                                                    thread_name_prefix="candidate-source")

    # ------------------------------------------------------------------ stages

    def _remaining_ms(self, start: float) -> float:
        return max(0.0, self.config.deadline_ms - (self._clock() - start) * 1000)

    def _remaining(self, start: float, stage_ms: float) -> float:
        return min(stage_ms, self._remaining_ms(start)) / 1000

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

    def observe(self, event: Event) -> None:
        """An accepted event (``EventIngest``'s ``on_accept``): positive watches feed trending's
        next refresh."""
        if event.is_watch and event.watch_seconds >= self.min_watch_seconds:
            self._live_watches.append(event)

    def refresh_trending(self, now: int | None = None) -> None:
        """Recomputes trending as of ``now`` (default: the later of the clock and the latest
        watch) from the loaded watches plus the live ones, without retraining."""
        trending = self.sources.get("trending")
        if not isinstance(trending, TrendingSource):
            return
        live = pd.DataFrame([e.to_row() for e in list(self._live_watches)],
                            columns=self._trending_base.columns)
        frame = pd.concat([self._trending_base, live], ignore_index=True) if len(live) else (
            self._trending_base)
        latest = int(frame[c.TIMESTAMP].max()) if len(frame) else 0
        trending.refresh(frame, int(max(latest, self._now())) if now is None else int(now))

    def start_refresh(self) -> None:
        """Refreshes trending every ``trending_refresh_seconds`` in a daemon thread (``stop``
        ends it); a failed refresh is logged and the previous trend kept."""
        interval = self.config.trending_refresh_seconds
        if interval <= 0 or "trending" not in self.sources or self._refresher is not None:
            return

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.refresh_trending()
                except Exception:  # keep serving the previous trend
                    log.exception("trending refresh failed; keeping the previous trend")

        self._refresher = threading.Thread(target=loop, name="trending-refresh", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)

    def _items_added(self, rows: list[int]) -> None:
        content = self.sources.get("content")
        if isinstance(content, ContentSource):
            content.add_rows(rows)
        # Embed them now for the pushed version, so no request waits for it (a version that
        # this backend cannot embed yet is done by the first request that uses it).
        version = getattr(self.backend, "query_version", None) or self.indexes.latest_version()
        if version is not None:
            try:
                self.fresh.live_index(version, self.indexes.get(version))
            except Exception as e:  # serving goes on; the next request tries again
                log.warning("new titles not embedded yet for version %s: %s", version, e)

    def _query_tower(self, query: dict, start: float, timings: dict):
        """-> (embedding [dim], model version, LiveIndex of that version: the pushed index plus
        the titles added since)."""
        t = self._clock()
        emb, version = self.query_breaker.call(
            self.backend.query_embeddings, query,
            self._remaining(start, self.config.query_deadline_ms))
        self._check(start, "query tower", t, self.config.query_deadline_ms)
        timings["query_tower"] = (self._clock() - t) * 1000
        return (np.asarray(emb)[0], version,
                self.fresh.live_index(version, self.indexes.get(version)))

    def _signals(self, profile: UserProfile, ids: list[int]) -> dict[str, np.ndarray]:
        """The blend's optional signals of each candidate: item-to-item score and popularity,
        each only when weighted."""
        cfg, out = self.config, {}
        if cfg.item_to_item_weight and self.item_to_item is not None:
            out[ITEM_TO_ITEM] = self.item_to_item.score(profile.history, ids)
        if cfg.popularity_weight:
            out[POPULARITY] = np.array([self.fallback.score(i) for i in ids], np.float64)
        return out

    def _blend(self, retrieval: np.ndarray, outputs: dict[str, np.ndarray]) -> np.ndarray:
        cfg = self.config
        return blend(retrieval, outputs.get(P_WATCH), cfg.ranker_weight,
                     outputs.get(ITEM_TO_ITEM), cfg.item_to_item_weight,
                     outputs.get(POPULARITY), cfg.popularity_weight)

    def _final_scores(self, page: Homepage, profile: UserProfile, ids: list[int], query, emb,
                      index: LiveIndex, start: float,
                      timings: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Final scores ``[N]`` of the merged candidates and the model outputs per candidate.

        With a query embedding: every candidate's exact retrieval score (a title newer than the
        index gets the request's lowest), blended (:func:`blend`) with the ranker's p_watch when
        one is pushed and the weighted item-to-item and popularity signals. Without: the merged
        order as a z-score. Always z-scores, so additive re-rank boosts mean the same on every
        path."""
        if emb is None:
            return _standardise(-np.arange(len(ids), dtype=np.float64)), {}
        known = index.contains(ids)
        retrieval = np.zeros(len(ids), np.float32)
        retrieval[known] = index.score(emb, np.asarray(ids)[known])
        retrieval[~known] = retrieval[known].min() if known.any() else 0.0
        outputs = {RETRIEVAL_SCORE: retrieval, **self._signals(profile, ids)}
        if not self.backend.has_ranker():
            return self._blend(retrieval, outputs), outputs
        t = self._clock()
        try:
            inputs = {key: np.repeat(v, len(ids), axis=0) for key, v in query.items()}
            inputs.update(self.catalogue.candidate_inputs(self.catalogue.rows(ids)))
            inputs[RETRIEVAL_SCORE] = retrieval
            out = self.rank_breaker.call(self.backend.rank, inputs,
                                         self._remaining(start, self.config.rank_deadline_ms))
            self._check(start, "ranker", t, self.config.rank_deadline_ms)
            outputs.update({P_WATCH: np.asarray(out[P_WATCH]),
                            WATCH_TIME_SECONDS: np.asarray(out[WATCH_TIME_SECONDS])})
        except Exception as e:  # the ranker is optional: degrade to the retrieval order
            log.warning("ranker failed, serving the retrieval order: %s", e)
            _degrade(page, f"ranker: {type(e).__name__}: {e}")
        final = self._blend(retrieval, outputs)
        timings["ranker"] = (self._clock() - t) * 1000
        return final, outputs

    def _exploration_pool(self, timestamp: int, user_id: int = 0,
                          seed: int = 0) -> tuple[Scored, ...]:
        """Titles added in the ``explore_new_days`` up to ``timestamp``; when there are more
        than ``EXPLORE_POOL``, a sample of that many seeded by (user, seed), so different users
        explore different new titles and a page replays exactly. The candidate rows of the
        request's hour are found once per hour and catalogue size."""
        since = timestamp - self.config.explore_new_days * SECONDS_PER_DAY
        hour = timestamp // 3600
        key = (hour, len(self.catalogue.item_ids))
        cached = self._pool
        if cached is None or cached[0] != key:
            added = self.catalogue.added_at
            lo = hour * 3600 - self.config.explore_new_days * SECONDS_PER_DAY
            rows = np.flatnonzero((added >= lo) & (added < (hour + 1) * 3600))
            cached = self._pool = (key, rows, added[rows])
        _, rows, added = cached
        rows = rows[(added >= since) & (added <= timestamp)]
        if len(rows) > EXPLORE_POOL:
            rng = np.random.default_rng([int(user_id) & 0x7FFFFFFF, int(seed) & 0x7FFFFFFF])
            rows = np.sort(rng.choice(rows, EXPLORE_POOL, replace=False))
        ids = self.catalogue.item_ids[rows].tolist()
        return tuple(scored_from_catalogue(self.catalogue, ids, [0.0] * len(ids)))

    def _personal(self, profile: UserProfile, k: int, timings: dict, timestamp: int,
                  seed: int, page: Homepage) -> None:
        cfg = self.config
        start = self._clock()
        configs = [s for s in cfg.sources if page.stage in s.stages]
        query = emb = index = tower_error = None
        if any(s.name == COLLABORATIVE for s in configs):
            query = self.query_features(profile, timestamp)
            try:
                emb, page.model_version, index = self._query_tower(query, start, timings)
            except Exception as e:  # the other sources still answer; say why
                log.warning("query tower failed for user %s: %s", profile.user_id, e)
                tower_error = e
                page.skipped[COLLABORATIVE] = f"query tower: {type(e).__name__}: {e}"
        sources = [self.sources[s.name] for s in configs if s.name != COLLABORATIVE]
        if emb is not None:
            sources.insert(0, CollaborativeSource(index.search, self.catalogue))
        t = self._clock()
        left = self._remaining_ms(start)
        found = query_sources(
            sources, SourceRequest.from_profile(profile, timestamp, seed, emb),
            {s.name: s.quota for s in configs},
            {s.name: min(s.deadline_ms, left) for s in configs}, self._executor)
        timings["sources"] = (self._clock() - t) * 1000
        timings.update({f"source_{n}": ms for n, ms in found.timings_ms.items()})
        page.skipped.update(found.skipped)
        merged: list[MergedCandidate] = found.merged[: cfg.candidates]
        if not merged:
            raise tower_error or NoCandidates(
                f"no candidate source answered for stage {page.stage!r} (sources "
                f"{[s.name for s in configs]}; skipped: {page.skipped})")
        if tower_error is not None:
            _degrade(page, f"query tower: {type(tower_error).__name__}: {tower_error}")

        ids = [m.item_id for m in merged]
        final, outputs = self._final_scores(page, profile, ids, query, emb, index, start,
                                            timings)
        t = self._clock()
        order = np.lexsort((np.array(ids), -final)).tolist()  # best first, ties by item id
        embeddings = None if index is None else index.embeddings_of([ids[r] for r in order])
        ctx = RerankContext(profile, timestamp, seed, self._exploration_pool(
            timestamp, profile.user_id, seed))
        shaped = self.rerank.apply(scored_from_catalogue(
            self.catalogue, [ids[r] for r in order], final[order], embeddings), ctx)[:k]
        position = {item: r for r, item in enumerate(ids)}
        for x in shaped:
            r = position.get(x.item_id)
            page.items.append(Pick(
                x.item_id, self.catalogue.titles[self.catalogue.row[x.item_id]], float(x.score),
                **{field: None if r is None or key not in outputs else float(outputs[key][r])
                   for field, key in (("retrieval_score", RETRIEVAL_SCORE), ("p_watch", P_WATCH),
                                      ("watch_time_seconds", WATCH_TIME_SECONDS),
                                      ("item_to_item", ITEM_TO_ITEM),
                                      ("popularity", POPULARITY))},
                sources={} if r is None else dict(merged[r].scores), explore=x.explore))
        timings["rerank"] = (self._clock() - t) * 1000

    def _rows(self, profile: UserProfile, timestamp: int, seed: int) -> list[PageRow]:
        """The "Because you watched" rows, through the re-rank filters (watched, maturity,
        block list)."""
        if self.because_you_watched is None:
            return []
        ctx = RerankContext(profile, timestamp, seed)
        out = []
        for row in self.because_you_watched.rows(profile):
            kept = self.filters.apply(scored_from_catalogue(
                self.catalogue, [x.item_id for x in row.items], [x.score for x in row.items]), ctx)
            if kept:
                out.append(PageRow(row.title, row.seed_item_id, [
                    Pick(x.item_id, self.catalogue.titles[self.catalogue.row[x.item_id]], x.score,
                         sources={row.items[0].source: x.score}) for x in kept]))
        return out

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

    def profile(self, user_id: int) -> tuple[UserProfile, int]:
        """The dataset's profile with the store's online features on top, and their generation:
        recent watches before the dataset's history, both exclusion sets, the latest device, the
        latest onboarding answer."""
        base, live = self.users.get(user_id), self.store.features(user_id)
        return dataclasses.replace(
            base, history=(live.recent_watches + base.history)[: self.config.history_length],
            watched=base.watched | live.watched, device=live.last_device or base.device,
            onboarding_genres=live.onboarding_genres or base.onboarding_genres), live.generation

    def _cache_version(self, k: int, timestamp: int | None, seed: int | None) -> int | None:
        """The pushed version a page is cached under; None when this request is not cached
        (k, timestamp or seed given, caching off, nothing pushed)."""
        if (k != self.config.k or timestamp is not None or seed is not None
                or self.config.cache_ttl_seconds <= 0):
            return None
        return self.indexes.latest_version()

    # ------------------------------------------------------------------ request

    def homepage(self, user_id: int, k: int | None = None, timestamp: int | None = None,
                 seed: int | None = None) -> Homepage:
        """Top ``k`` for ``user_id`` at ``timestamp`` (UTC seconds; default now). ``seed`` drives
        exploration, reproducibly per (user, seed); by default the request's day, so a page is
        stable for a day."""
        k = self.config.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        start = self._clock()
        version = self._cache_version(k, timestamp, seed)
        if version is not None:
            hit = self.store.get_cached(user_id, version)
            if hit is not None:
                page = Homepage.from_dict(hit)
                page.cached, page.timings_ms = True, {"total": (self._clock() - start) * 1000}
                return page
        timestamp = int(self._now()) if timestamp is None else int(timestamp)
        seed = timestamp // SECONDS_PER_DAY if seed is None else int(seed)
        profile, generation = self.profile(user_id)
        timings: dict[str, float] = {"features": (self._clock() - start) * 1000}
        page = Homepage(user_id, [], timings_ms=timings, stage=stage(profile, self.thresholds))
        try:
            self._personal(profile, k, timings, timestamp, seed, page)
        except Exception as e:  # any model-path failure is answered by the fallback, logged
            log.warning("homepage for user %s falls back to popularity: %s", user_id, e)
            genres = self.fallback.genres_of(profile.history, profile.onboarding_genres)
            items = self.fallback.recommend(k, set(profile.watched), genres)
            page = Homepage(user_id, [
                Pick(i, self.catalogue.titles[self.catalogue.row[i]], self.fallback.score(i))
                for i in items], fallback=True, reason=f"{type(e).__name__}: {e}",
                timings_ms=timings, stage=page.stage, skipped=page.skipped)
        t = self._clock()
        page.rows = self._rows(profile, timestamp, seed)
        page.timings_ms["rows"] = (self._clock() - t) * 1000
        page.timings_ms["total"] = (self._clock() - start) * 1000
        if (version is not None and page.model_version in (None, version) and not page.fallback
                and page.degraded is None):
            self.store.put_cached(user_id, version, page.to_dict(),
                                  self.config.cache_ttl_seconds, generation=generation)
        return page


def _degrade(page: Homepage, why: str) -> None:
    page.degraded = why if page.degraded is None else f"{page.degraded}; {why}"
