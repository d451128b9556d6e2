"""Circuit breaker (fake clock) and popularity-by-genre fallback on a hand-made catalogue."""

import pandas as pd
import pytest

from marquee.data import contract as c
from serving.homepage.fallback import PopularityFallback
from serving.models.breaker import CircuitBreaker, CircuitOpen
from serving.state.catalogue import Catalogue


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def boom():
    raise ConnectionError("down")


def test_breaker_opens_refuses_then_probes():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_seconds=10, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            b.call(boom)
    assert b.state == "open"
    with pytest.raises(CircuitOpen, match="next probe in 10.0 s"):
        b.call(lambda: "never called")
    clock.t = 10.0
    assert b.state == "half_open"
    with pytest.raises(ConnectionError):  # the probe fails: open again for 10 s
        b.call(boom)
    assert b.state == "open"
    clock.t = 20.0
    assert b.call(lambda: "ok") == "ok"  # the probe succeeds: closed
    assert b.state == "closed"


def test_breaker_counts_consecutive_failures_only():
    b = CircuitBreaker(failure_threshold=2, reset_seconds=10, clock=Clock())
    with pytest.raises(ConnectionError):
        b.call(boom)
    b.call(lambda: None)  # a success resets the count
    with pytest.raises(ConnectionError):
        b.call(boom)
    assert b.state == "closed"


def catalogue():
    items = pd.DataFrame({
        c.ITEM_ID: [1, 2, 3, 4, 5, 6],
        c.TITLE: list("abcdef"),
        c.GENRES: [["drama"], ["comedy"], ["drama"], ["horror"], ["comedy"], ["drama"]],
        c.CAST: [[]] * 6, c.KEYWORDS: [None] * 6, c.DIRECTOR: [None] * 6,
        c.RELEASE_YEAR: [2000] * 6, c.DURATION_SECONDS: [100] * 6, c.ADDED_AT: [0] * 6,
        c.MATURITY_RATING: ["PG"] * 6,
    })
    return Catalogue.from_frame(items)


def test_fallback_by_genre_round_robin_then_overall():
    # popularity: 6 > 5 > 4 > 3 > 2 > 1
    fb = PopularityFallback(catalogue(), {i: float(i) for i in range(1, 7)})
    assert fb.recommend(3, set()) == [6, 5, 4]
    # drama (6, 3, 1) and comedy (5, 2) interleaved, then the rest by popularity
    assert fb.recommend(6, set(), ["drama", "comedy"]) == [6, 5, 3, 2, 1, 4]
    assert fb.recommend(3, {6}, ["drama"]) == [3, 1, 5]  # watched items are excluded


def test_fallback_genres_from_onboarding_then_history():
    fb = PopularityFallback(catalogue(), {})
    # history: items 2 and 5 are comedy, 4 horror; the quiz said drama
    assert fb.genres_of([2, 5, 4], ["drama"]) == ["drama", "comedy", "horror"]
    assert fb.genres_of([], ["western"]) == []  # a genre nobody has is dropped
