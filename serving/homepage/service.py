"""The homepage orchestrator: one request is the steps the config lists, in order.

    features -> stage -> sources -> rank -> re-rank -> rows

- **features**: the user's profile with the feature store's online state on top (``profile``).
- **stage**: the cold-start stage (:mod:`serving.homepage.cold_start`) picks the sources that
  answer (``SourceConfig.stages``).
- **sources**: the query tower embeds the user when a ``collaborative`` source answers this
  stage; every source answers (in turn on the request's thread, or in parallel each with its
  own deadline: ``serving.parallel_sources``), merged with per-source quotas
  (:mod:`serving.sources`, built once from ``serving.sources`` through ``SOURCES``).
- **rank**: the ranker scores all merged candidates in one call and the blend makes the final
  score (:class:`serving.homepage.ranking.RankStep`); every model of a page is of one pushed
  version.
- **re-rank**: the configured steps shape the page (:mod:`serving.rerank`, ``serving.rerank``).
- **rows**: "Because you watched X", through the re-rank filters.

Each model call has a deadline; the request has a budget (200 ms by default). If the query tower
fails the other sources still answer (``degraded`` says why); if no source answers, or the
filters leave nothing, the answer is popularity by genre, marked ``fallback: true`` with the
reason. A model failure never becomes an error response; an unexpected error (a bug) falls back
too, but is logged with its traceback and marked ``internal_error``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures

import numpy as np
import pandas as pd

from marquee.config import ServingConfig
from marquee.data import contract as c
from serving.homepage.budget import Budget
from serving.homepage.cold_start import BecauseYouWatched, ColdStartThresholds, stage
from serving.homepage.exposure import ExposureTable
from serving.homepage.fallback import PopularityFallback
from serving.homepage.page import Homepage, PageRow, Pick, degrade
from serving.homepage.ranking import PICK_OUTPUTS, RankStep
from serving.ingest.items import FreshItems
from serving.models.als_store import AlsStore
from serving.models.backends import ModelBackend
from serving.models.breaker import CircuitBreaker
from serving.models.errors import MODEL_ERRORS, NoCandidates, describe
from serving.models.index_store import IndexStore
from serving.models.live_index import LiveIndex
from serving.models.query import QueryFeatures, query_inputs
from serving.rerank import SECONDS_PER_DAY, RerankContext, RerankPipeline, build_pipeline
from serving.rerank import scored_from_catalogue as scored
from serving.rerank.exploration import ExplorationPool
from serving.sources import SOURCES
from serving.sources.als import build as als_source
from serving.sources.base import (
    BuildContext,
    InlineExecutor,
    MergedCandidate,
    SourceRequest,
    check_sources,
    collect_sources,
    needs_query_embedding,
    submit_sources,
)
from serving.sources.item_to_item import build as item_to_item
from serving.state.catalogue import Catalogue, UserProfile, UserStore
from serving.state.feature_store import EmbeddedStore, FeatureStore
from serving.state.records import Event

log = logging.getLogger(__name__)

COLLABORATIVE = "collaborative"
STAGES = ("new", "light", "full")


def _check_config(config: ServingConfig, interactions: pd.DataFrame | None) -> None:
    names = [s.name for s in config.sources]
    problems = [f"unknown source {n!r}" for n in names if n not in SOURCES]
    problems += [f"source {n!r} listed twice" for n in set(names) if names.count(n) > 1]
    problems += [f"source {s.name!r} has unknown stage(s) {sorted(set(s.stages) - set(STAGES))}"
                 for s in config.sources if set(s.stages) - set(STAGES)]
    problems += [f"source {s.name!r} needs quota >= 0 and deadline_ms > 0"
                 for s in config.sources if s.quota < 0 or not s.deadline_ms > 0]
    if problems:
        raise ValueError(f"serving.sources: {'; '.join(problems)}; sources are "
                         f"{sorted(SOURCES)}, stages {list(STAGES)}")
    need = sorted(set(names) & {"trending", "item_to_item"})
    if config.because_you_watched > 0:
        need.append("because_you_watched rows")
    if config.item_to_item_weight:
        need.append("serving.item_to_item_weight")
    if need and interactions is None:
        raise ValueError(f"{', '.join(need)} need the interactions frame: pass interactions="
                         "(serving.state.catalogue.load_frames), or drop them from "
                         "serving.sources (and set serving.because_you_watched: 0)")


@dataclasses.dataclass
class _Request:
    """One request on its way through the steps."""

    page: Homepage
    profile: UserProfile
    k: int
    timestamp: int
    seed: int
    budget: Budget
    query: dict[str, np.ndarray] | None = None
    embedding: np.ndarray | None = None
    index: LiveIndex | None = None


class HomepageService:
    """Built once from config (``serving.build.build_service``), then only called.

    ``interactions`` (the validated interactions frame, :func:`serving.state.catalogue.
    load_frames`) is needed by the trending and item-to-item sources and the "Because you
    watched" rows; a config using them without it fails here, at start-up, as does any bad
    source or re-rank config. ``min_watch_seconds``: the pipeline's ``data.min_watch_seconds``
    (a positive watch, everywhere)."""

    def __init__(self, backend: ModelBackend, indexes: IndexStore, catalogue: Catalogue,
                 users: UserStore, config: ServingConfig = ServingConfig(),
                 popularity: dict[int, float] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 now: Callable[[], float] = time.time,
                 interactions: pd.DataFrame | None = None, store: FeatureStore | None = None,
                 min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS,
                 fresh: FreshItems | None = None, shared: dict | None = None):
        _check_config(config, interactions)
        self.backend, self.indexes, self.catalogue, self.users = backend, indexes, catalogue, users
        self.config, self.min_watch_seconds = config, min_watch_seconds
        self._clock, self._now = clock, now
        self.popularity, self.interactions = popularity, interactions  # (experiment arms')
        # Online features and the page cache; it must answer when its backend is down
        # (EmbeddedStore, or ResilientStore over Redis).
        self.store = store if store is not None else EmbeddedStore(
            config.history_length, min_watch_seconds=min_watch_seconds)
        self.fallback = PopularityFallback(catalogue, popularity or indexes.popularity())
        self.query_breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)
        self.thresholds = ColdStartThresholds(config.light_from, config.full_from)
        try:
            self.rerank = build_pipeline(config.rerank)
        except ValueError as e:
            raise ValueError(f"serving.rerank: {e}") from e
        self.filters = RerankPipeline(tuple(s for s in self.rerank.steps if s.is_filter))
        # ``shared``: objects of sources that several stacks over the same data can share (an
        # experiment's arms: serving.homepage.experiments).
        self.als_models = AlsStore(indexes.base)
        ctx = BuildContext(catalogue, interactions, config, min_watch_seconds, now,
                           shared if shared is not None else {}, als_model=self.als_models.get,
                           serving_version=lambda: self.backend.serving_version())
        self.shared = ctx.shared
        self.sources = {s.name: SOURCES[s.name](ctx) for s in config.sources}
        uses_i2i = config.because_you_watched > 0 or config.item_to_item_weight
        self.item_to_item = item_to_item(ctx) if uses_i2i or "item_to_item" in ctx.shared else None
        # Always: besides the source and the blend signal, a ranker trained with the ALS
        # feature takes the pair's ALS score (without a pushed ALS model it scores nothing).
        self.als = als_source(ctx)
        exposure = (ExposureTable.load(config.exposure_file) if config.exposure_weight
                    else None)
        self.ranking = RankStep(backend, catalogue, config, self.fallback, self.item_to_item,
                                clock, self.als, exposure)
        self.because_you_watched = (
            BecauseYouWatched(self.item_to_item, catalogue, config.because_you_watched,
                              config.row_k) if config.because_you_watched > 0 else None)
        self.exploration_pool = ExplorationPool(catalogue, config.explore_new_days)
        # Titles added while serving (POST /v1/items): catalogue, content source, side index.
        # An experiment arm's stack shares its base's (whose on_add then tells every stack).
        self.fresh = fresh if fresh is not None else FreshItems(
            catalogue, lambda *a: self.backend.candidate_embeddings(*a), on_add=self.items_added)
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        # serving.parallel_sources: the sources of concurrent requests share a pool (a source
        # past its deadline keeps its thread), or each request runs its own, in turn.
        self._executor: futures.Executor = (
            futures.ThreadPoolExecutor(max(4, 4 * len(config.sources)),
                                       thread_name_prefix="candidate-source")
            if config.parallel_sources else InlineExecutor())

    @property
    def rank_breaker(self) -> CircuitBreaker:
        return self.ranking.breaker

    # ------------------------------------------------------------------ request

    def homepage(self, user_id: int, k: int | None = None, timestamp: int | None = None,
                 seed: int | None = None) -> Homepage:
        """Top ``k`` for ``user_id`` at ``timestamp`` (UTC seconds; default now). ``seed`` drives
        exploration, reproducibly per (user, seed); by default the request's day, so a page is
        stable for a day."""
        k = self.config.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        budget = Budget(self.config.deadline_ms, self._clock)
        version = self._cache_version(k, timestamp, seed)
        if version is not None:
            hit = self.store.get_cached(user_id, version)
            if hit is not None:
                page = Homepage.from_dict(hit)
                page.cached, page.timings_ms = True, {"total": self._ms(budget.start)}
                return page
        timestamp = int(self._now()) if timestamp is None else int(timestamp)
        seed = timestamp // SECONDS_PER_DAY if seed is None else int(seed)
        profile, generation = self.profile(user_id)  # features
        page = Homepage(user_id, [], timings_ms={"features": self._ms(budget.start)},
                        stage=stage(profile, self.thresholds), device=profile.device)  # stage
        req = _Request(page, profile, k, timestamp, seed, budget)
        try:
            merged = self._candidates(req)  # sources
            ranked = self.ranking(page, profile, [m.item_id for m in merged], req.query,
                                  req.embedding, req.index, page.model_version, budget)  # rank
            self._rerank(req, merged, ranked)  # re-rank
            if not page.items:
                raise NoCandidates(f"the re-rank filters left no title of {len(merged)} "
                                   f"candidates for this user (stage {page.stage!r}, age bucket "
                                   f"{profile.age_bucket!r}); see serving.rerank")
        except MODEL_ERRORS as e:  # expected: a model or source failed; the fallback answers
            log.warning("homepage for user %s falls back to popularity: %s", user_id, e)
            page = self._fallback(req, describe(e))
        except Exception as e:  # a bug: still answered, but logged loudly and counted apart
            log.exception("homepage for user %s: unexpected error, serving the popularity "
                          "fallback", user_id)
            page = self._fallback(req, f"internal error: {type(e).__name__}")
            page.internal_error = True
        t = self._clock()
        page.rows = self._rows(profile, timestamp, seed)  # rows
        page.timings_ms["rows"] = self._ms(t)
        page.timings_ms["total"] = self._ms(budget.start)
        if (version is not None and page.model_version in (None, version) and not page.fallback
                and page.degraded is None):
            self.store.put_cached(user_id, version, page.to_dict(),
                                  self.config.cache_ttl_seconds, generation=generation)
        return page

    def _ms(self, since: float) -> float:
        return (self._clock() - since) * 1000

    def profile(self, user_id: int) -> tuple[UserProfile, int]:
        """The dataset's profile with the store's online features on top, and their generation:
        recent watches before the dataset's history, both exclusion sets, the latest device, the
        latest onboarding answer."""
        base, live = self.users.get(user_id), self.store.features(user_id)
        return dataclasses.replace(
            base, history=(live.recent_watches + base.history)[: self.config.history_length],
            watched=base.watched | live.watched, device=live.last_device or base.device,
            onboarding_genres=live.onboarding_genres or base.onboarding_genres), live.generation

    def query_features(self, profile: UserProfile, timestamp: int) -> dict[str, np.ndarray]:
        """The query tower's inputs for one user at ``timestamp`` (batch of 1)."""
        q = QueryFeatures(user_id=profile.user_id, timestamp=timestamp, device=profile.device,
                          country=profile.country, subscription_tier=profile.subscription_tier,
                          age_bucket=profile.age_bucket, history=profile.history)
        return {k: v.numpy() for k, v in query_inputs([q], self.config.history_length).items()}

    def _embed(self, req: _Request) -> None:
        """The query tower: the user's embedding ``[dim]``, the version that answered (the
        page's version: every other model of the page is asked for it) and that version's
        index plus the titles added since."""
        t = self._clock()
        req.query = self.query_features(req.profile, req.timestamp)
        emb, version = self.query_breaker.call(
            self.backend.query_embeddings, req.query,
            req.budget.left_s(self.config.query_deadline_ms))
        req.budget.check("query tower", t, self.config.query_deadline_ms)
        req.page.timings_ms["query_tower"] = self._ms(t)
        req.index = self.fresh.live_index(version, self.indexes.get(version))
        req.embedding, req.page.model_version = np.asarray(emb)[0], version

    def _candidates(self, req: _Request) -> list[MergedCandidate]:
        """The sources of the page's stage.

        With ``serving.parallel_sources``: those that do not read the query embedding start
        first, on the pool, while the query tower runs on this thread; then the ones that need
        its embedding; each is cut off at its deadline. Without (the default): the query tower
        first, then every source in config order on this thread, so a slow source cannot spend
        the tower's budget; a source is skipped, with the reason, once the request's budget is
        spent, and one that answers past its deadline is kept (and logged)."""
        page, cfg = req.page, self.config
        configs = [s for s in cfg.sources if page.stage in s.stages]
        sources = [self.sources[s.name] for s in configs]
        quotas = {s.name: s.quota for s in configs}
        left = req.budget.left_ms()
        deadlines = {s.name: min(s.deadline_ms, left) for s in configs}
        check_sources(sources, quotas, deadlines)
        late = [s for s in sources if needs_query_embedding(s)]
        early = [s for s in sources if not needs_query_embedding(s)]
        t = self._clock()
        request = SourceRequest.from_profile(req.profile, req.timestamp, req.seed)
        pending = (submit_sources(early, request, quotas, self._executor)
                   if cfg.parallel_sources else {})
        tower_error = None
        if late:
            try:
                self._embed(req)
            except MODEL_ERRORS as e:  # the other sources still answer; say why
                log.warning("query tower failed for user %s: %s", req.profile.user_id, e)
                tower_error = e
                if COLLABORATIVE in quotas:
                    page.skipped[COLLABORATIVE] = f"query tower: {describe(e)}"
        with_embedding = dataclasses.replace(request, query_embedding=req.embedding,
                                             index=req.index)
        if cfg.parallel_sources:
            pending.update(submit_sources(late, with_embedding, quotas, self._executor))
        else:
            for source in sources:
                if req.budget.left_ms() <= 0:
                    page.skipped[source.name] = (f"the request's {cfg.deadline_ms:.0f} ms budget "
                                                 "was spent before it started")
                    continue
                pending.update(submit_sources(
                    [source], with_embedding if source in late else request, quotas,
                    self._executor))
        sources = [s for s in sources if s.name in pending]
        found = collect_sources({s.name: pending[s.name] for s in sources}, quotas, deadlines)
        page.timings_ms["sources"] = self._ms(t)
        page.timings_ms.update({f"source_{n}": ms for n, ms in found.timings_ms.items()})
        page.skipped.update(found.skipped)
        merged = found.merged[: cfg.candidates]
        if not merged:
            raise tower_error or NoCandidates(
                f"no candidate source answered for stage {page.stage!r} (sources "
                f"{[s.name for s in configs]}; skipped: {page.skipped})")
        if tower_error is not None:
            degrade(page, f"query tower: {describe(tower_error)}")
        return merged

    def _rerank(self, req: _Request, merged: list[MergedCandidate], ranked) -> None:
        t = self._clock()
        ids = [m.item_id for m in merged]
        order = np.lexsort((np.array(ids), -ranked.final)).tolist()  # best first, ties by id
        ordered = [ids[r] for r in order]
        embeddings = None if req.index is None else req.index.embeddings_of(ordered)
        ctx = RerankContext(req.profile, req.timestamp, req.seed, self.exploration_pool(
            req.timestamp, req.profile.user_id, req.seed))
        shaped = self.rerank.apply(
            scored(self.catalogue, ordered, ranked.final[order], embeddings), ctx)[: req.k]
        position = {item: r for r, item in enumerate(ids)}
        outputs = ranked.outputs
        for x in shaped:
            r = position.get(x.item_id)
            req.page.items.append(Pick(
                x.item_id, self.catalogue.titles[self.catalogue.row[x.item_id]], float(x.score),
                **{field: None if r is None or key not in outputs else float(outputs[key][r])
                   for field, key in PICK_OUTPUTS},
                sources={} if r is None else dict(merged[r].scores), explore=x.explore))
        req.page.timings_ms["rerank"] = self._ms(t)

    def _fallback(self, req: _Request, reason: str) -> Homepage:
        """Popularity by genre, through the re-rank filters (watched, maturity, block list)."""
        profile = req.profile
        genres = self.fallback.genres_of(profile.history, profile.onboarding_genres)
        items = self.fallback.recommend(max(req.k * 4, req.k + len(profile.watched)),
                                        set(profile.watched), genres)
        ctx = RerankContext(profile, req.timestamp, req.seed)
        kept = self.filters.apply(scored(self.catalogue, items, self.fallback.scores(items)),
                                  ctx)[: req.k]
        if not kept:
            reason += "; the popularity fallback has no title either that the filters allow"
        return Homepage(req.page.user_id, [
            Pick(x.item_id, self.catalogue.titles[self.catalogue.row[x.item_id]], x.score)
            for x in kept], fallback=True, reason=reason, timings_ms=req.page.timings_ms,
            stage=req.page.stage, skipped=req.page.skipped, device=profile.device)

    def _rows(self, profile: UserProfile, timestamp: int, seed: int) -> list[PageRow]:
        """The "Because you watched" rows, through the re-rank filters."""
        if self.because_you_watched is None:
            return []
        ctx = RerankContext(profile, timestamp, seed)
        out = []
        for row in self.because_you_watched.rows(profile):
            kept = self.filters.apply(scored(
                self.catalogue, [x.item_id for x in row.items], [x.score for x in row.items]), ctx)
            if kept:
                out.append(PageRow(row.title, row.seed_item_id, [
                    Pick(x.item_id, self.catalogue.titles[self.catalogue.row[x.item_id]], x.score,
                         sources={row.items[0].source: x.score}) for x in kept]))
        return out

    def _cache_version(self, k: int, timestamp: int | None, seed: int | None) -> int | None:
        """The pushed version a page is cached under; None when this request is not cached
        (k, timestamp or seed given, caching off, nothing pushed)."""
        if (k != self.config.k or timestamp is not None or seed is not None
                or self.config.cache_ttl_seconds <= 0):
            return None
        return self.backend.serving_version()

    # ------------------------------------------------------------------ hooks and life cycle

    def observe(self, event: Event) -> None:
        """An accepted event (the ingest path's hook): sources that follow live events
        (trending) take it."""
        for source in self.sources.values():
            if hasattr(source, "observe"):
                source.observe(event)

    def refresh_trending(self, now: int | None = None) -> None:
        """Recomputes the live sources (trending) from the loaded plus the accepted watches."""
        for source in self.sources.values():
            if hasattr(source, "refresh_live"):
                source.refresh_live(now)

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
                except Exception:  # keep serving the previous trend; logged with traceback
                    log.exception("trending refresh failed; keeping the previous trend")

        self._refresher = threading.Thread(target=loop, name="trending-refresh", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def items_added(self, rows: list[int]) -> None:
        """Titles appended to the catalogue: the sources that index it and the side index."""
        for source in self.sources.values():
            if hasattr(source, "add_rows"):
                source.add_rows(rows)
        # Embed them now for the serving version, so no request waits for it (a version that
        # this backend cannot embed yet is done by the first request that uses it).
        version = self.backend.serving_version()
        if version is not None:
            try:
                self.fresh.live_index(version, self.indexes.get(version))
            except MODEL_ERRORS as e:  # serving goes on; the next request tries again
                log.warning("new titles not embedded yet for version %s: %s", version, e)

    def warm_up(self) -> None:
        """One call of each model outside any deadline: the first call of a loaded SavedModel
        traces its functions (100+ ms), which must not land on a user's request."""
        query = self.query_features(UserProfile(user_id=0), int(self._now()))
        _, version = self.backend.query_embeddings(query, 30.0)
        if self.backend.has_ranker(version) and len(self.catalogue.item_ids):
            ids = self.catalogue.item_ids[:2].tolist()
            self.ranking.score(query, ids, np.zeros(len(ids), np.float32), 30.0, version)
            if self.backend.ranks_by_id(version):  # the features path too (new titles)
                self.backend.rank(self.ranking.ranker_inputs(
                    query, self.catalogue.rows(ids), np.zeros(len(ids)), version), 30.0, version)
