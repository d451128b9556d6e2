"""Trending: time-decayed positive watches, overall or in the request's genres."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from marquee.artifacts import is_positive_watch
from marquee.data import contract as c
from serving.sources.base import (
    SECONDS_PER_DAY,
    BuildContext,
    Candidate,
    SourceRequest,
    _check_k,
    positive_watches,
)
from serving.state.catalogue import Catalogue

log = logging.getLogger(__name__)


def decay_weights(timestamps: np.ndarray, now: int, half_life_days: float) -> np.ndarray:
    """``0.5 ** (age / half_life)`` per event ``[N]``; events after ``now`` count as age 0."""
    age = np.maximum(0, now - np.asarray(timestamps, np.float64))
    return 0.5 ** (age / (half_life_days * SECONDS_PER_DAY))


def _interleave(lists: list[list[int]]) -> Iterator[int]:
    """The first of each list, then the second of each, ...: lazily, so a request reads only
    the heads of long genre lists."""
    for depth in itertools.count():
        more = False
        for x in lists:
            if depth < len(x):
                more = True
                yield x[depth]
        if not more:
            return


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

    needs_query_embedding = False  # starts before the query tower answers

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
        out: list[Candidate] = []
        seen: set[int] = set()
        ids = self.catalogue.item_ids
        # Lazily: the overall order lists every title watched (most of a 500K catalogue), and
        # joining it per request cost 6.6 ms there, interleaving whole genre lists ~7 ms; only
        # the first k distinct are needed.
        for r in itertools.chain(_interleave(lists), trend.order):
            if len(out) >= k:
                break
            if r in seen:
                continue
            seen.add(r)
            item = int(ids[r])
            if item not in exclude:
                out.append(Candidate(item, self.name, float(trend.scores[r])))
        return out


# Positive watches accepted while serving that a refresh keeps (the oldest drop out).
LIVE_WATCHES = 1_000_000
# Half-lives of history a refresh reads (0.5 ** 10 < 0.1%).
TRENDING_WINDOW = 10


class LiveTrending(TrendingSource):
    """Trending that follows the watches accepted while serving: :meth:`observe` takes each
    accepted event (the ingest path's hook), :meth:`refresh_live` recomputes from the loaded
    watches within ``TRENDING_WINDOW`` half-lives of the latest plus the live ones, without
    retraining (the service calls it every ``serving.trending_refresh_seconds``)."""

    def __init__(self, catalogue: Catalogue, base: pd.DataFrame, half_life_days: float,
                 min_watch_seconds: float, now: Callable[[], float] = time.time):
        super().__init__(catalogue, half_life_days, min_watch_seconds=min_watch_seconds)
        latest = int(base[c.TIMESTAMP].max()) if len(base) else 0
        window = TRENDING_WINDOW * half_life_days * SECONDS_PER_DAY
        watches = base[base[c.EVENT] == c.EVENT_WATCH]
        self._base = watches[watches[c.TIMESTAMP] >= latest - window]
        self._live: deque = deque(maxlen=LIVE_WATCHES)
        self._now = now
        self.refresh(self._base, latest)

    def observe(self, event) -> None:
        """An accepted event (``serving.state.records.Event``): a positive watch counts at the
        next refresh."""
        if is_positive_watch(event.event, event.watch_seconds, self.min_watch_seconds):
            self._live.append(event)

    def refresh_live(self, now: int | None = None) -> None:
        """Recomputes as of ``now`` (default: the later of the clock and the latest watch)."""
        live = pd.DataFrame([e.to_row() for e in list(self._live)], columns=self._base.columns)
        frame = pd.concat([self._base, live], ignore_index=True) if len(live) else self._base
        latest = int(frame[c.TIMESTAMP].max()) if len(frame) else 0
        self.refresh(frame, int(max(latest, self._now())) if now is None else int(now))


def build(ctx: BuildContext) -> LiveTrending:
    """Trending as of the last loaded interaction, renewed by the service's refresh."""
    return LiveTrending(ctx.catalogue, ctx.need_interactions("the trending source"),
                        ctx.config.trending_half_life_days, ctx.min_watch_seconds, ctx.now)
