"""Candidate sources (one contract, every source), the merge, parallel querying, cold start.

Everything runs on a 6-item toy catalogue with hand-checkable co-watches and decay weights.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from marquee.als import AlsModel
from marquee.data import contract as c
from serving.homepage.cold_start import BecauseYouWatched, ColdStartThresholds, stage
from serving.sources import base
from serving.sources.als import AlsSource
from serving.sources.base import (
    Candidate,
    CandidateSource,
    SourceRequest,
    merge_candidates,
    query_sources,
)
from serving.sources.collaborative import CollaborativeSource
from serving.sources.content import ContentSource
from serving.sources.item_to_item import ItemToItemSource
from serving.sources.trending import TrendingSource, decay_weights
from serving.state.catalogue import Catalogue, UserProfile

NOW = 1_700_000_000
DAY = 86_400


def toy_catalogue() -> Catalogue:
    return Catalogue.from_frame(pd.DataFrame({
        c.ITEM_ID: [1, 2, 3, 4, 5, 6],
        c.TITLE: ["The Space Race", "Space Wars", "Love in Paris", "Paris Nights", "Laugh Out",
                  "Deep Space"],
        c.GENRES: [["scifi", "drama"], ["scifi", "action"], ["romance", "drama"], ["romance"],
                   ["comedy"], ["scifi"]],
        c.CAST: [["Ann"], ["Ann", "Bob"], ["Cat"], ["Cat"], [], ["Bob"]],
        c.KEYWORDS: [["space"], ["space"], ["paris"], ["paris"], None, ["space"]],
        c.DIRECTOR: ["Dan", "Dan", "Eve", None, None, "Fay"],
        c.RELEASE_YEAR: [2000] * 6, c.DURATION_SECONDS: [6000] * 6,
        c.ADDED_AT: [NOW - 100 * DAY] * 5 + [NOW - 2 * DAY],
        c.MATURITY_RATING: ["PG", "PG-13", "G", "R", "NC-17", "unrated"],
    }))


def watches(rows, event=c.EVENT_WATCH, seconds=600.0) -> pd.DataFrame:
    """``rows``: (user, item, timestamp) -> contract interactions."""
    return pd.DataFrame({
        c.USER_ID: [u for u, _, _ in rows], c.ITEM_ID: [i for _, i, _ in rows],
        c.TIMESTAMP: [t for _, _, t in rows], c.EVENT: event, c.POSITION: None,
        c.WATCH_SECONDS: seconds, c.DEVICE: "tv", c.RATING: None})


def co_watches() -> pd.DataFrame:
    """Users 10: {1, 2}, 11: {1, 2, 6}, 12: {3, 4}, 13: {1, 3}, 14: {5}; 10 watches 1 twice (a
    co-watch counts users, so once). Rows that must not count: a short watch, an impression and
    a watch of an item outside the catalogue."""
    baskets = {10: [1, 1, 2], 11: [1, 2, 6], 12: [3, 4], 13: [1, 3], 14: [5]}
    rows = [(u, i, NOW - DAY) for u, items in baskets.items() for i in items]
    return pd.concat([watches(rows), watches([(14, 2, NOW)], seconds=60.0),
                      watches([(14, 6, NOW)], event=c.EVENT_IMPRESSION, seconds=0.0),
                      watches([(14, 99, NOW)])], ignore_index=True)


def profile(user_id=1, history=(), watched=None, onboarding=(), age="25-34") -> UserProfile:
    return UserProfile(user_id, age_bucket=age, onboarding_genres=tuple(onboarding),
                       history=tuple(history),
                       watched=frozenset(history if watched is None else watched))


EMBEDDINGS = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5], [0.7, 0.3]])


def fake_search():
    """Brute-force ``search(q [dim], n)``; item 99 is in the index but not the catalogue."""
    ids, emb = np.array([1, 2, 3, 4, 5, 6, 99]), np.vstack([EMBEDDINGS, [[9.0, 9.0]]])

    def search(q, n):
        scores = emb @ q
        top = np.argsort(-scores, kind="stable")[:n]
        return ids[top], scores[top]
    return search


CATALOGUE = toy_catalogue()
# Item factors of 1..6 and of 99 (not in the catalogue, the best for everyone: never a candidate).
TOY_ALS = AlsModel(np.array([1, 2, 3, 4, 5, 6, 99]),
                   np.vstack([EMBEDDINGS, [[5.0, 5.0]]]), regularization=1.0, alpha=2.0)
SOURCES = {
    "als": lambda: AlsSource(CATALOGUE, lambda version: TOY_ALS, lambda: 1,
                             AlsSource.positives_of(co_watches(), CATALOGUE, 120.0)),
    "collaborative": lambda: CollaborativeSource(fake_search(), CATALOGUE),
    "content": lambda: ContentSource(CATALOGUE, recent=2),
    "trending": lambda: TrendingSource.from_interactions(co_watches(), CATALOGUE, NOW),
    "item_to_item": lambda: ItemToItemSource.from_interactions(co_watches(), CATALOGUE,
                                                               neighbours=3, shrink=1.0),
}
REQUESTS = [
    SourceRequest.from_profile(profile(), NOW, query_embedding=np.array([1.0, 0.0])),
    SourceRequest.from_profile(profile(history=[3], onboarding=["scifi"]), NOW, seed=1,
                               query_embedding=np.array([0.0, 1.0])),
    SourceRequest.from_profile(profile(history=[2, 6, 1], watched=[2, 6, 1, 5]), NOW, seed=2,
                               query_embedding=np.array([0.6, 0.4])),
]


# ---------------------------------------------------------------------------- the contract

@pytest.fixture(params=sorted(SOURCES))
def source(request) -> CandidateSource:
    return SOURCES[request.param]()


@pytest.mark.parametrize("k", [0, 1, 3, 10])
@pytest.mark.parametrize("req", range(len(REQUESTS)))
def test_contract(source, req, k):
    request = REQUESTS[req]
    assert isinstance(source, CandidateSource)
    out = source.candidates(request, k)
    ids = [x.item_id for x in out]
    assert len(out) <= k
    assert len(set(ids)) == len(ids), "duplicates"
    assert not set(ids) & request.profile.watched, "watched items"
    assert set(ids) <= set(CATALOGUE.item_ids.tolist()), "items outside the catalogue"
    assert all(x.source == source.name and np.isfinite(x.score) for x in out)
    assert source.candidates(request, k) == out, "not deterministic"


def test_contract_k_negative_is_an_error(source):
    with pytest.raises(ValueError, match="k must be >= 0"):
        source.candidates(REQUESTS[1], -1)


def test_contract_sources_answer_someone():  # so the contract above is not vacuous
    for make in SOURCES.values():
        assert any(make().candidates(r, 3) for r in REQUESTS)


# ---------------------------------------------------------------------------- each source

def test_collaborative_excludes_watched_drops_unknown_and_needs_an_embedding():
    s = CollaborativeSource(fake_search(), CATALOGUE)
    # q = (1, 0): 99 scores 9, then 1: 1.0, 2: 0.9, 6: 0.7, 5: 0.5. With 1 watched it asks for
    # k + 1 = 4: 99 (not in the catalogue, dropped), 1 (watched), 2, 6.
    req = SourceRequest(profile(history=[1]), NOW, query_embedding=np.array([1.0, 0.0]))
    assert [(x.item_id, x.score) for x in s.candidates(req, 3)] == [(2, 0.9), (6, 0.7)]
    assert s.candidates(SourceRequest(profile(), NOW), 3) == []


def test_collaborative_orders_ties_by_item_id():
    reverse = CollaborativeSource(lambda q, n: (np.array([3, 2, 1]), np.ones(3)), CATALOGUE)
    req = SourceRequest(profile(), NOW, query_embedding=np.zeros(2))
    assert [x.item_id for x in reverse.candidates(req, 3)] == [1, 2, 3]


def test_content_tfidf_rows_and_profile():
    s = ContentSource(CATALOGUE, recent=2)
    np.testing.assert_allclose(np.linalg.norm(s.matrix.toarray(), axis=1), 1.0)
    # "Love in Paris" (romance, drama, Cat, Eve, paris) is closest to "Paris Nights" (romance,
    # Cat, paris, "paris"), then to the drama "The Space Race"; "Laugh Out" shares nothing.
    out = s.candidates(SourceRequest(profile(history=[3]), NOW), 10)
    assert [x.item_id for x in out] == [4, 1]
    # The profile is the mean of the last `recent` rows (item 5 is third, so not in it):
    # score = cosine(row, mean), checked against numpy on the dense matrix.
    out = s.candidates(SourceRequest(profile(history=[3, 2, 5]), NOW), 10)
    dense = s.matrix.toarray()
    mean = dense[[2, 1]].mean(axis=0)
    expected = dense @ (mean / np.linalg.norm(mean))
    assert {x.item_id for x in out} == {1, 4, 6}  # 5 shares nothing with 3 or 2
    for x in out:
        assert x.score == pytest.approx(expected[x.item_id - 1])
    assert [x.score for x in out] == sorted((x.score for x in out), reverse=True)


@pytest.mark.parametrize("blocks", [2, 3, 6])
def test_content_scores_split_into_row_blocks_equal_one_block(blocks):
    one = ContentSource(CATALOGUE, recent=2, blocks=1)
    split = ContentSource(CATALOGUE, recent=2, blocks=blocks)
    assert [b.shape[0] for b in split._columns] == {2: [3, 3], 3: [2, 2, 2],
                                                    6: [1] * 6}[blocks]
    for history in ([3], [3, 2, 5], [1, 6], [5]):
        req = SourceRequest(profile(history=history), NOW)
        assert split.candidates(req, 10) == one.candidates(req, 10)
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        ContentSource(CATALOGUE, blocks=0)


def test_column_scores_is_the_product_over_the_selected_columns():
    import scipy.sparse as sp

    from serving.sources.content import column_scores

    # [[1, 0, 2], [0, 3, 0], [4, 0, 0]] @ x with x = 0.5 at column 0 and 2 at column 2:
    # row 0: 0.5 + 4, row 1: 0 (column 1 not selected), row 2: 2.
    block = sp.csc_matrix(np.array([[1, 0, 2], [0, 3, 0], [4, 0, 0]], np.float32))
    out = column_scores(block, np.array([0, 2]), np.array([0.5, 2.0], np.float32))
    assert out.dtype == np.float32 and out.tolist() == [4.5, 0.0, 2.0]
    # Random sparse blocks, empty columns included: the same floats as selecting the columns.
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = sp.random(50, 40, density=0.1, random_state=rng, dtype=np.float32).tocsc()
        tokens = np.sort(rng.choice(40, 7, replace=False))
        weights = rng.random(7).astype(np.float32)
        np.testing.assert_array_equal(column_scores(m, tokens, weights),
                                      np.asarray(m[:, tokens] @ weights).ravel())
    assert column_scores(block, np.array([], np.int64), np.array([], np.float32)).tolist() == [
        0.0, 0.0, 0.0]
    # Into a given array (a request thread's scratch): overwritten, not added to.
    out = np.full(3, 7.0, np.float32)
    assert column_scores(block, np.array([0]), np.array([1.0], np.float32), out) is out
    assert out.tolist() == [1.0, 0.0, 4.0]
    with pytest.raises(ValueError, match=r"out must be a contiguous \[3\] float32 array"):
        column_scores(block, np.array([0]), np.array([1.0], np.float32), np.zeros(3))


def test_content_splits_only_large_catalogues():
    from serving.sources.content import SPLIT_FROM_ROWS, default_blocks

    assert default_blocks(SPLIT_FROM_ROWS - 1) == 1
    assert 1 <= default_blocks(SPLIT_FROM_ROWS) <= 4


def test_trending_decay_hand_checked():
    # half-life 3 days: a watch now weighs 1, one 3 days ago 0.5, two 6 days ago 0.25 each.
    np.testing.assert_allclose(decay_weights(np.array([NOW, NOW - 3 * DAY]), NOW, 3.0), [1, 0.5])
    df = watches([(1, 1, NOW), (2, 2, NOW - 3 * DAY), (3, 3, NOW - 6 * DAY),
                  (4, 3, NOW - 6 * DAY)])
    s = TrendingSource.from_interactions(df, CATALOGUE, NOW, half_life_days=3.0)
    np.testing.assert_allclose(s.scores, [1.0, 0.5, 0.5, 0, 0, 0])
    out = s.candidates(SourceRequest(profile(), NOW), 10)
    assert [(x.item_id, x.score) for x in out] == [(1, 1.0), (2, 0.5), (3, 0.5)]  # tie: lower id
    # refresh a day later with a new watch of 6: no retraining, new weights.
    s.refresh(pd.concat([df, watches([(5, 6, NOW + DAY)])]), NOW + DAY)
    np.testing.assert_allclose(s.scores, [0.5 ** (1 / 3), 0.5 ** (4 / 3), 2 * 0.5 ** (7 / 3),
                                          0, 0, 1.0])
    assert [x.item_id for x in s.candidates(SourceRequest(profile(), NOW), 2)] == [6, 1]


def test_trending_per_genre_interleaves_then_fills():
    s = TrendingSource.from_interactions(co_watches(), CATALOGUE, NOW)
    # positives a day ago: 1 x3, 2 x2, 3 x2, 4, 5, 6 -> overall 1, 2, 3, 4, 5, 6.
    overall = s.candidates(SourceRequest(profile(), NOW), 6)
    assert [x.item_id for x in overall] == [1, 2, 3, 4, 5, 6]
    # romance: 3, 4; comedy: 5 -> interleaved 3, 5, 4, then the overall order.
    req = SourceRequest(profile(), NOW, genres=("romance", "comedy", "unknown-genre"))
    assert [x.item_id for x in s.candidates(req, 5)] == [3, 5, 4, 1, 2]
    req = SourceRequest.from_profile(profile(onboarding=["scifi"], history=[1]), NOW)
    assert [x.item_id for x in s.candidates(req, 3)] == [2, 6, 3]


def test_item_to_item_neighbours_hand_checked():
    s = ItemToItemSource.from_interactions(co_watches(), CATALOGUE, neighbours=3, shrink=1.0)
    # n_1 = 3 users, n_2 = n_3 = 2, n_4 = n_6 = 1 (the short watch, impression and item 99 do
    # not count); sim(i, j) = n_ij / (sqrt(n_i) sqrt(n_j) + 1):
    s12 = 2 / (np.sqrt(3) * np.sqrt(2) + 1)  # 0.580
    s16 = 1 / (np.sqrt(3) + 1)  # 0.366
    s13 = 1 / (np.sqrt(3) * np.sqrt(2) + 1)  # 0.290
    s26 = s34 = 1 / (np.sqrt(2) + 1)  # 0.414
    byw = s.because_you_watched(1, 5)
    assert [x.item_id for x in byw] == [2, 6, 3]
    np.testing.assert_allclose([x.score for x in byw], [s12, s16, s13], rtol=1e-6)
    assert [x.item_id for x in s.because_you_watched(1, 5, exclude={2})] == [6, 3]
    assert s.because_you_watched(5, 5) == []  # only user 14 watched 5
    np.testing.assert_array_equal(s.neighbour_rows[4], [-1, -1, -1])
    # history 2 then 3: 1 gets s12 + s13, 6 gets s26, 4 gets s34 (a tie: lower id first).
    out = s.candidates(SourceRequest(profile(history=[2, 3]), NOW), 10)
    assert [x.item_id for x in out] == [1, 4, 6]
    np.testing.assert_allclose([x.score for x in out], [s12 + s13, s34, s26], rtol=1e-6)


def test_item_to_item_uses_only_the_last_watches():
    s = ItemToItemSource.from_interactions(co_watches(), CATALOGUE, shrink=1.0, recent=1)
    out = s.candidates(SourceRequest(profile(history=[6, 3]), NOW), 10)
    assert [x.item_id for x in out] == [2, 1]  # neighbours of 6 only (3 would add 4)


# ---------------------------------------------------------------------------- merge

def cands(source, pairs):
    return [Candidate(i, source, s) for i, s in pairs]


def test_merge_round_robin_quotas_dedupe_and_scores():
    results = {"a": cands("a", [(1, 0.9), (2, 0.8), (3, 0.7)]),
               "b": cands("b", [(2, 5.0), (4, 4.0), (5, 3.0)])}
    merged = merge_candidates(results, {"a": 2, "b": 2, "skipped": 7})
    # a: 1; b: 2; a: 2 is taken -> 3 (a's quota used); b: 4 (b's quota used). 5 is over quota.
    assert [(m.item_id, m.source) for m in merged] == [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
    assert merged[1].scores == {"a": 0.8, "b": 5.0}  # both scores kept as features
    assert merged[3].scores == {"b": 4.0}
    # quotas order is the turn order; quota 0 adds nothing but its scores are still kept.
    merged = merge_candidates(results, {"b": 3, "a": 0})
    assert [m.item_id for m in merged] == [2, 4, 5]
    assert merged[0].scores == {"a": 0.8, "b": 5.0}
    assert merge_candidates(results, {"b": 1, "a": 1}) == merge_candidates(
        results, {"b": 1, "a": 1})


def test_merge_without_a_quota_names_the_source():
    with pytest.raises(ValueError, match=r"no quota for source\(s\) \['b'\]"):
        merge_candidates({"a": [], "b": []}, {"a": 1})


class Fixed:
    def __init__(self, name, ids, release: threading.Event | None = None, error=None):
        self.name, self.ids, self.release, self.error = name, ids, release, error

    def candidates(self, request, k):
        if self.release is not None:
            self.release.wait(10)
        if self.error:
            raise self.error
        return cands(self.name, [(i, 1.0) for i in self.ids])[:k]


def test_query_sources_skips_slow_and_failing_sources_with_the_reason():
    release = threading.Event()
    sources = [Fixed("fast", [1, 2]), Fixed("slow", [3], release=release),
               Fixed("broken", [4], error=RuntimeError("index not loaded")), Fixed("also", [2, 5])]
    quotas = {"fast": 2, "slow": 1, "broken": 1, "also": 2}
    deadlines = {"fast": 100.0, "slow": 50.0, "broken": 100.0, "also": 100.0}
    with ThreadPoolExecutor(max_workers=4) as pool:
        start = time.perf_counter()
        out = query_sources(sources, REQUESTS[0], quotas, deadlines, pool)
        elapsed = time.perf_counter() - start
        release.set()
    assert elapsed < 1.0  # the slow source (10 s) was not waited for
    assert out.skipped == {"slow": "missed its 50 ms deadline",
                           "broken": "RuntimeError: index not loaded"}
    assert sorted(out.answers) == ["also", "fast"] and sorted(out.timings_ms) == ["also", "fast"]
    assert [(m.item_id, m.source) for m in out.merged] == [(1, "fast"), (2, "also"), (5, "also")]


class Sleeps(Fixed):
    def candidates(self, request, k):
        time.sleep(0.06)
        return super().candidates(request, k)


def test_inline_sources_answer_in_turn_and_keep_a_late_answer(caplog):
    sources = [Fixed("fast", [1, 2]), Sleeps("late", [3]),
               Fixed("broken", [4], error=RuntimeError("index not loaded")), Fixed("also", [2, 5])]
    quotas = {"fast": 2, "late": 1, "broken": 1, "also": 2}
    deadlines = {"fast": 100.0, "late": 50.0, "broken": 100.0, "also": 100.0}
    caught = []
    sources.append(type("Records", (), {  # the thread a source runs on: the caller's
        "name": "where", "candidates": lambda self, r, k: caught.append(
            threading.get_ident()) or []})())
    quotas["where"], deadlines["where"] = 1, 100.0
    with caplog.at_level("WARNING"):
        out = query_sources(sources, REQUESTS[0], quotas, deadlines, base.InlineExecutor())
    assert caught == [threading.get_ident()]
    # The late source ran to the end on this thread: its answer is kept, and the lateness said.
    assert out.skipped == {"broken": "RuntimeError: index not loaded"}
    assert out.timings_ms["late"] >= 60
    assert "late answered in" in caplog.text and "past its 50 ms deadline; kept" in caplog.text
    assert [(m.item_id, m.source) for m in out.merged] == [
        (1, "fast"), (3, "late"), (2, "also"), (5, "also")]


def test_query_sources_checks_names_quotas_and_deadlines():
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ValueError, match=r"missing for \['b'\]"):
            query_sources([Fixed("a", []), Fixed("b", [])], REQUESTS[0], {"a": 1, "b": 1},
                          {"a": 10.0}, pool)
        with pytest.raises(ValueError, match="distinct names"):
            query_sources([Fixed("a", []), Fixed("a", [])], REQUESTS[0], {"a": 1}, {"a": 1.0},
                          pool)


# ---------------------------------------------------------------------------- cold start

@pytest.mark.parametrize("n, expected", [(0, "new"), (1, "light"), (4, "light"), (5, "full"),
                                         (50, "full")])
def test_cold_start_stage(n, expected):
    assert stage(profile(history=range(100, 100 + n))) == expected


def test_cold_start_thresholds_are_configurable_and_checked():
    t = ColdStartThresholds(light_from=2, full_from=3)
    assert [stage(profile(history=range(n)), t) for n in range(4)] == [
        "new", "new", "light", "full"]
    with pytest.raises(ValueError, match="light_from <= full_from"):
        ColdStartThresholds(light_from=6, full_from=5)


def test_because_you_watched_rows():
    i2i = ItemToItemSource.from_interactions(co_watches(), CATALOGUE, shrink=1.0)
    byw = BecauseYouWatched(i2i, CATALOGUE, seeds=3, k=2)
    # history (most recent first): 6, 6 again, 99 (gone from the catalogue), 5, 1. Seeds are
    # 6, 5, 1. 6's neighbours: 2, 1 (watched); 5 has none (no row); 1's: 2, 6 (watched), 3.
    rows = byw.rows(profile(history=[6, 6, 99, 5, 1]))
    assert [(r.title, r.seed_item_id) for r in rows] == [
        ("Because you watched Deep Space", 6), ("Because you watched The Space Race", 1)]
    assert [[x.item_id for x in r.items] for r in rows] == [[2], [2, 3]]
    assert len(byw.rows(profile(history=[3, 1, 6]))) == 3
    assert BecauseYouWatched(i2i, CATALOGUE, seeds=1).rows(profile(history=[3, 1])) != []
    assert byw.rows(profile()) == []


@pytest.mark.parametrize("seed", range(5))
def test_best_on_a_long_list_equals_a_full_sort(seed):
    """Long lists sort only their head (np.partition); ties at the cut must still go to the lower
    id, excluded ids must not cost places: the same answer as sorting everything."""
    from serving.sources.base import _best, _take_best

    rng = np.random.default_rng(seed)
    n = 20_000
    ids = rng.permutation(n) + 1
    scores = rng.integers(0, 50, n).astype(np.float64)  # many ties
    scores[rng.integers(n, size=10)] = np.nan
    exclude = set(rng.choice(ids, 30).tolist())
    finite = np.isfinite(scores)
    want = _take_best("x", ids[finite], scores[finite], exclude, 40)
    got = _best("x", ids, scores, exclude, 40)
    assert [(x.item_id, x.score) for x in got] == [(x.item_id, x.score) for x in want]
    assert len(got) == 40 and not {x.item_id for x in got} & exclude


@pytest.mark.parametrize("neighbours", [2, 5])
def test_item_to_item_matches_a_dense_numpy_reference(neighbours):
    """The sparse neighbour search against the dense definition: sim = n_ij / (sqrt(n_i n_j) +
    shrink), self excluded, top-M by (similarity desc, row asc), non-positive ones padded -1."""
    rng = np.random.default_rng(3)
    rows = [(u, int(i), NOW - DAY) for u in range(40)
            for i in rng.choice(CATALOGUE.item_ids, rng.integers(1, 5), replace=False)]
    s = ItemToItemSource.from_interactions(watches(rows), CATALOGUE, neighbours=neighbours,
                                           shrink=1.0)
    x = np.zeros((40, len(CATALOGUE.item_ids)))
    for u, i, _ in rows:
        x[u, CATALOGUE.row[i]] = 1.0
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    sim = co / (norms[:, None] * norms[None, :] + 1.0 + 1e-12)
    np.fill_diagonal(sim, 0.0)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :neighbours]
    val = np.take_along_axis(sim, top, axis=1)
    np.testing.assert_array_equal(s.neighbour_rows, np.where(val > 0, top, -1))
    np.testing.assert_allclose(s.neighbour_sims, np.where(val > 0, val, 0.0), rtol=1e-6)


def test_item_to_item_score_matches_its_candidates():
    s = ItemToItemSource.from_interactions(co_watches(), CATALOGUE, shrink=1.0)
    profile = UserProfile(1, history=(2, 1), watched=frozenset({1, 2}))
    found = s.candidates(SourceRequest.from_profile(profile, NOW), 10)
    assert found  # items co-watched with 1 or 2
    ids = [x.item_id for x in found] + [5]  # 5 is nobody's co-watch of 1 or 2
    np.testing.assert_allclose(s.score(profile.history, ids),
                               [x.score for x in found] + [0.0])


@pytest.mark.parametrize("n, m, levels", [(10, 3, 4), (200_000, 50, 10**6), (200_000, 50, 7),
                                          (200_000, 3_000, 100)])
def test_head_is_the_head_of_a_full_sort(n, m, levels):
    # _head (a sampled bound, then a partition) against numpy's full sort by (-score, id), with
    # ties: few distinct levels make many titles share the m-th score.
    rng = np.random.default_rng(n + m + levels)
    ids = rng.permutation(n) + 1
    scores = rng.integers(0, levels, n).astype(np.float32) / levels
    expected = np.lexsort((ids, -scores))[:m]
    got = base._head(ids, scores, m)
    assert sorted(ids[got].tolist()) == sorted(ids[expected].tolist())
    assert base._head(np.array([5, 3, 9]), np.array([0.5, 0.5, 0.1]), 1).tolist() == [1]
