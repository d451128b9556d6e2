"""The rank step: every merged candidate's final score from the retrieval score, the ranker
and the blend's optional signals, in one batched ranker call."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from marquee.artifacts import ALS_SCORE, KNOWN, P_WATCH, RETRIEVAL_SCORE, WATCH_TIME_SECONDS
from marquee.config import ServingConfig
from marquee.data.contract import ITEM_ID
from serving.homepage.budget import Budget
from serving.homepage.exposure import ExposureTable
from serving.homepage.fallback import PopularityFallback
from serving.homepage.page import Homepage, degrade
from serving.models.backends import ModelBackend
from serving.models.breaker import CircuitBreaker
from serving.models.live_index import LiveIndex
from serving.sources.als import AlsSource
from serving.sources.item_to_item import ItemToItemSource
from serving.state.catalogue import Catalogue, UserProfile

log = logging.getLogger(__name__)

ITEM_TO_ITEM, POPULARITY, ALS = "item_to_item", "popularity", "als"  # the blend's optional signals
EXPOSURE = "exposure"
# What a Pick reports of the model outputs: Pick field -> output key.
PICK_OUTPUTS = (("retrieval_score", RETRIEVAL_SCORE), ("p_watch", P_WATCH),
                ("watch_time_seconds", WATCH_TIME_SECONDS), ("item_to_item", ITEM_TO_ITEM),
                ("popularity", POPULARITY), ("als", ALS))


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / sd if sd > 0 else np.zeros_like(x)


def blend(retrieval: np.ndarray, p_watch: np.ndarray | None, ranker_weight: float,
          item_to_item: np.ndarray | None = None, item_to_item_weight: float = 0.0,
          popularity: np.ndarray | None = None, popularity_weight: float = 0.0,
          als: np.ndarray | None = None, als_weight: float = 0.0,
          exposure: np.ndarray | None = None, exposure_weight: float = 0.0) -> np.ndarray:
    """Final score of N candidates [N]::

        (1 - w) * z(retrieval score) + w * z(logit(p_watch))
          + w_i2i * z(item-to-item score) - w_pop * z(log(1 + popularity)) + w_als * z(ALS score)
          - w_exp * z(log(1 + exposure))

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
    if als is not None and als_weight:
        final = final + als_weight * _standardise(als.astype(np.float64))
    if exposure is not None and exposure_weight:
        final = final - exposure_weight * _standardise(np.log1p(np.maximum(exposure, 0.0)))
    return final


@dataclasses.dataclass
class Ranked:
    """``final [N]`` scores of the candidates (z-scores, so additive re-rank boosts mean the same
    on every path) and the model outputs per candidate (``outputs[key] [N]``)."""

    final: np.ndarray
    outputs: dict[str, np.ndarray]


class RankStep:
    """Scores the merged candidates of one request.

    With a query embedding: every candidate's exact retrieval score (a title newer than the
    index gets the request's lowest), blended (:func:`blend`) with the ranker's p_watch when the
    page's model version has a ranker, and the weighted item-to-item and popularity signals.
    Without: the merged order as a z-score. A ranker failure degrades the page to the blend
    without it (``degraded`` says why); it never fails the page."""

    def __init__(self, backend: ModelBackend, catalogue: Catalogue, config: ServingConfig,
                 fallback: PopularityFallback, item_to_item: ItemToItemSource | None,
                 clock: Callable[[], float], als: AlsSource | None = None,
                 exposure: ExposureTable | None = None):
        self.backend, self.catalogue, self.config = backend, catalogue, config
        self.fallback, self.item_to_item, self._clock = fallback, item_to_item, clock
        self.als, self.exposure = als, exposure
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)

    def signals(self, profile: UserProfile, ids: list[int],
                version: int | None = None) -> dict[str, np.ndarray]:
        """The blend's optional signals of each candidate, each only when weighted (the ALS
        score with the model of the page's ``version``, when it has one)."""
        cfg, out = self.config, {}
        if cfg.als_weight and self.als is not None:
            als = self.als.score(profile, ids, version)
            if als is not None:
                out[ALS] = als
        if cfg.item_to_item_weight and self.item_to_item is not None:
            out[ITEM_TO_ITEM] = self.item_to_item.score(profile.history, ids)
        if cfg.popularity_weight:
            out[POPULARITY] = self.fallback.scores(ids)
        if cfg.exposure_weight and self.exposure is not None:
            out[EXPOSURE] = self.exposure.counts(ids)
        return out

    def _blend(self, retrieval: np.ndarray, outputs: dict[str, np.ndarray]) -> np.ndarray:
        cfg = self.config
        return blend(retrieval, outputs.get(P_WATCH), cfg.ranker_weight,
                     outputs.get(ITEM_TO_ITEM), cfg.item_to_item_weight,
                     outputs.get(POPULARITY), cfg.popularity_weight, outputs.get(ALS),
                     cfg.als_weight, outputs.get(EXPOSURE), cfg.exposure_weight)

    def pair_scores(self, retrieval: np.ndarray, als: np.ndarray | None,
                    version: int | None) -> dict[str, np.ndarray]:
        """The pair scores ``version``'s ranker takes: the retrieval score, and the ALS score
        (0 where the user has no ALS vector, as in training) for a ranker trained with it."""
        out = {RETRIEVAL_SCORE: np.asarray(retrieval, np.float32)}
        if ALS_SCORE in self.backend.ranker_inputs(version):
            out[ALS_SCORE] = (np.zeros(len(retrieval), np.float32) if als is None
                              else np.asarray(als, np.float32))
        return out

    def ranker_inputs(self, query: dict[str, np.ndarray], rows: np.ndarray,
                      retrieval: np.ndarray, version: int | None,
                      als: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The ranker's batch of N pairs: the query's features repeated, the titles' own."""
        inputs = {key: np.repeat(v, len(rows), axis=0) for key, v in query.items()}
        inputs.update(self.catalogue.candidate_inputs(rows))
        inputs.update(self.pair_scores(retrieval, als, version))
        return inputs

    def score(self, query: dict[str, np.ndarray], ids: list[int], retrieval: np.ndarray,
              timeout_s: float, version: int | None,
              als: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The ranker's outputs for the candidates ``ids`` (``als``: their ALS scores, None
        without): by id (the query once, the titles' features looked up in the model) when the
        version's ranker can, with any title its table lacks (added since training) scored
        again from its features; otherwise every pair's features sent."""
        if not self.backend.ranks_by_id(version):
            return self.backend.rank(self.ranker_inputs(query, self.catalogue.rows(ids),
                                                         retrieval, version, als),
                                     timeout_s, version)
        item_ids = np.asarray(ids, np.int64)
        out = self.backend.rank_by_id(
            {**query, ITEM_ID: item_ids, **self.pair_scores(retrieval, als, version)},
            timeout_s, version)
        out = {k: np.array(out[k]) for k in (P_WATCH, WATCH_TIME_SECONDS, KNOWN)}
        unknown = np.flatnonzero(~out[KNOWN].astype(bool))
        if len(unknown):
            rest = self.backend.rank(self.ranker_inputs(
                query, self.catalogue.rows(item_ids[unknown].tolist()), retrieval[unknown],
                version, None if als is None else als[unknown]), timeout_s, version)
            for key in (P_WATCH, WATCH_TIME_SECONDS):
                out[key][unknown] = np.asarray(rest[key])
        return out

    def __call__(self, page: Homepage, profile: UserProfile, ids: list[int],
                 query: dict[str, np.ndarray] | None, emb: np.ndarray | None,
                 index: LiveIndex | None, version: int | None, budget: Budget) -> Ranked:
        if emb is None:
            return Ranked(_standardise(-np.arange(len(ids), dtype=np.float64)), {})
        retrieval, known = index.held_scores(emb, ids)
        retrieval[~known] = retrieval[known].min() if known.any() else 0.0
        outputs = {RETRIEVAL_SCORE: retrieval, **self.signals(profile, ids, version)}
        if not self.backend.has_ranker(version):
            return Ranked(self._blend(retrieval, outputs), outputs)
        als = outputs.get(ALS)
        if (als is None and self.als is not None
                and ALS_SCORE in self.backend.ranker_inputs(version)):
            als = self.als.score(profile, ids, version)  # the ranker's feature, unweighted
        t = self._clock()
        try:
            out = self.breaker.call(self.score, query, ids, retrieval,
                                    budget.left_s(self.config.rank_deadline_ms), version, als)
            budget.check("ranker", t, self.config.rank_deadline_ms)
            outputs.update({P_WATCH: np.asarray(out[P_WATCH]),
                            WATCH_TIME_SECONDS: np.asarray(out[WATCH_TIME_SECONDS])})
        except budget.expected_errors as e:  # the ranker is optional: the blend without it
            log.warning("ranker failed, serving the blend without it: %s", e)
            degrade(page, f"ranker: {type(e).__name__}: {e}")
        page.timings_ms["ranker"] = (self._clock() - t) * 1000
        return Ranked(self._blend(retrieval, outputs), outputs)
