"""HomepageService composition on a tiny catalogue: cold-start ladder, sources, ranker blend,
re-rank, rows, failures. The index and model base are real (a brute-force ScaNN index saved and
loaded); the model server is a test double (:class:`FixedModelBackend`)."""

import dataclasses
import json
import threading
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from components.model_pusher.push_lib import QUERY_TOWER, RETRIEVAL_INDEX
from components.scann_indexer.index_lib import build_and_evaluate, save_index
from marquee.config import ConfigError, IndexConfig, ServingConfig, SourceConfig, from_dict
from marquee.data import contract as c
from serving.homepage.ranking import blend
from serving.homepage.service import HomepageService
from serving.models.errors import ModelUnavailable
from serving.models.index_store import IndexStore
from serving.models.query import ModelMismatch
from serving.state.catalogue import Catalogue, UserProfile, UserStore
from trainer import features as f
from trainer.ranking import P_WATCH, WATCH_TIME_SECONDS

NOW = 1_700_000_000
DAY = 86_400
GENRES = ("scifi", "drama", "comedy", "romance")
ITEM_IDS = np.arange(1, 13)  # 12 items; genre of item i: GENRES[(i - 1) % 4]
ITEMS = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)  # row i - 1 = item i
QUERY = np.array([1.0, -0.5, 0.25, 0.0], np.float32)
FULL, LIGHT, NEW, KID = 1, 2, 3, 4
GENEROUS = dict(deadline_ms=60_000, query_deadline_ms=30_000, rank_deadline_ms=30_000)
ALL_STAGES = ("new", "light", "full")


def catalogue() -> Catalogue:
    n = len(ITEM_IDS)
    return Catalogue.from_frame(pd.DataFrame({
        c.ITEM_ID: ITEM_IDS, c.TITLE: [f"Title {i}" for i in ITEM_IDS],
        c.GENRES: [[GENRES[(i - 1) % 4]] for i in ITEM_IDS],
        c.CAST: [[f"actor{i % 3}"] for i in ITEM_IDS],
        c.KEYWORDS: [[f"kw{i % 2}"] for i in ITEM_IDS],
        c.DIRECTOR: [f"dir{i % 4}" for i in ITEM_IDS], c.RELEASE_YEAR: [2000] * n,
        c.DURATION_SECONDS: [6000] * n,
        # item 11 is new (the exploration pool); item 12 is rated R
        c.ADDED_AT: [NOW - 100 * DAY] * 10 + [NOW - DAY, NOW - 100 * DAY],
        c.MATURITY_RATING: ["PG"] * 11 + ["R"]}))


def interactions() -> pd.DataFrame:
    """Other users' positive watches: everyone who watched 1..5 also watched 6..12."""
    baskets = {100: [1, 6, 7], 101: [2, 7, 8, 12], 102: [3, 8, 9], 103: [4, 9, 10, 12],
               104: [5, 10, 12], 105: [1, 3, 12]}
    rows = [(u, i) for u, items in baskets.items() for i in items]
    return pd.DataFrame({c.USER_ID: [u for u, _ in rows], c.ITEM_ID: [i for _, i in rows],
                         c.TIMESTAMP: NOW - DAY, c.EVENT: c.EVENT_WATCH, c.POSITION: None,
                         c.WATCH_SECONDS: 600.0, c.DEVICE: "tv", c.RATING: None})


def users() -> UserStore:
    def p(uid, history=(), onboarding=(), age="25-34"):
        return UserProfile(uid, age_bucket=age, onboarding_genres=onboarding,
                           history=history, watched=frozenset(history))
    return UserStore({FULL: p(FULL, (1, 2, 3, 4, 5)), LIGHT: p(LIGHT, (1,)),
                      NEW: p(NEW, onboarding=("comedy",)),
                      KID: p(KID, (1, 2, 3, 4, 5), age="under-18")})


class FixedModelBackend:
    """Test double of the model server boundary (``serving.models.backends.ModelBackend``): the
    query tower answers :data:`QUERY` for everyone; the ranker's p_watch is ``sigmoid(item_id - 6)``
    (later items preferred). ``fail`` makes the query tower raise it."""

    name = "fixed"

    def __init__(self, ranker: bool = True, fail: Exception | None = None):
        self.ranker, self.fail, self.calls = ranker, fail, Counter()

    def query_embeddings(self, inputs, timeout_s):
        self.calls["query"] += 1
        if self.fail is not None:
            raise self.fail
        return np.tile(QUERY, (len(next(iter(inputs.values()))), 1)), 1

    def _check(self, version):
        if version not in (None, 1):
            raise ModelMismatch(f"the double serves version 1 only, not {version}")

    def rank(self, inputs, timeout_s, version=None):
        self._check(version)
        if not self.ranker:
            raise ModelUnavailable("the double has no ranker")
        self.calls["rank"] += 1
        ids = np.asarray(inputs[f.ITEM_ID], np.float64)
        return {P_WATCH: 1 / (1 + np.exp(-(ids - 6))), WATCH_TIME_SECONDS: 60 * ids}

    def has_ranker(self, version=None) -> bool:
        return self.ranker and version in (None, 1)

    def rank_by_id(self, inputs, timeout_s, version=None):
        raise ModelUnavailable("the double ranks from features only")

    def ranks_by_id(self, version=None) -> bool:
        return False

    def ranker_inputs(self, version=None) -> frozenset[str]:
        return frozenset()

    def candidate_embeddings(self, inputs, version, timeout_s):
        """Title i embeds to ``[i / 10, 0, 0, 1]`` (the index's dim 4)."""
        self._check(version)
        ids = np.asarray(inputs[f.ITEM_ID], np.float32)
        zeros = np.zeros_like(ids)
        return np.stack([ids / 10, zeros, zeros, np.ones_like(ids)], axis=1)

    def serving_version(self) -> int:
        return 1


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """A real model base: version 1 of the query tower's run marker and a saved ScaNN index."""
    base = tmp_path_factory.mktemp("serving")
    (base / QUERY_TOWER / "1" / "assets.extra").mkdir(parents=True)
    (base / QUERY_TOWER / "1" / "assets.extra" / "marquee.json").write_text(
        json.dumps({"training_run": "run-1"}))
    searcher, evaluation = build_and_evaluate(ITEMS, ITEM_IDS, ITEMS[:3], IndexConfig())
    save_index(searcher, ITEM_IDS, evaluation, base / RETRIEVAL_INDEX / "1",
               {"training_run": "run-1"})
    return base


def make(model_base, backend=None, **changes) -> HomepageService:
    config = dataclasses.replace(ServingConfig(k=6, **GENEROUS), **changes)
    config = dataclasses.replace(config, sources=tuple(
        dataclasses.replace(s, deadline_ms=30_000) for s in config.sources))
    return HomepageService(backend or FixedModelBackend(), IndexStore(model_base), catalogue(),
                           users(), config, now=lambda: NOW, interactions=interactions())


def test_full_user_gets_every_source_blended_and_reranked(model_base):
    svc = make(model_base)
    page = svc.homepage(FULL)
    ids = [p.item_id for p in page.items]
    assert page.stage == "full" and not page.fallback and page.degraded is None, page
    assert len(ids) == 6 == len(set(ids)) and not set(ids) & {1, 2, 3, 4, 5}
    assert page.model_version == 1 and page.skipped == {}
    found = {s for p in page.items for s in p.sources}
    assert "collaborative" in found and found - {"collaborative"}
    for p in page.items:
        if not p.explore:
            # the exact retrieval score of every candidate, whatever its source
            assert p.retrieval_score == pytest.approx(float(ITEMS[p.item_id - 1] @ QUERY), 1e-5)
            assert p.p_watch == pytest.approx(1 / (1 + np.exp(-(p.item_id - 6))))
    json.dumps(page.to_dict())  # the HTTP API serialises it


def test_without_rerank_the_order_is_the_blend(model_base):
    svc = make(model_base, rerank=(), ranker_weight=0.5, because_you_watched=0)
    page = svc.homepage(FULL, k=7)
    ids = np.array([p.item_id for p in page.items])
    assert sorted(ids.tolist()) == [6, 7, 8, 9, 10, 11, 12]  # every unwatched item
    final = blend(ITEMS[ids - 1] @ QUERY, 1 / (1 + np.exp(-(ids - 6.0))), 0.5)
    np.testing.assert_allclose([p.score for p in page.items], final, rtol=1e-5)
    assert list(final) == sorted(final, reverse=True)


def test_light_user_gets_content_and_item_to_item_without_the_query_tower(model_base):
    backend = FixedModelBackend()
    page = make(model_base, backend).homepage(LIGHT)
    assert page.stage == "light" and not page.fallback
    assert backend.calls["query"] == 0 and page.model_version is None
    found = {s for p in page.items for s in p.sources}
    assert {"content", "item_to_item"} <= found and "collaborative" not in found
    assert 1 not in {p.item_id for p in page.items}


def test_new_user_gets_trending_in_the_onboarding_genres_first(model_base):
    page = make(model_base, rerank=()).homepage(NEW)
    assert page.stage == "new" and not page.fallback and page.rows == []
    comedy = [i for i in ITEM_IDS if GENRES[(i - 1) % 4] == "comedy"]  # 3, 7, 11
    trending_comedy = [i for i in comedy if i in interactions()[c.ITEM_ID].tolist()]
    assert [p.item_id for p in page.items][:len(trending_comedy)] == trending_comedy
    assert all(set(p.sources) == {"trending"} for p in page.items)


def test_query_tower_failure_degrades_to_the_other_sources(model_base):
    page = make(model_base, FixedModelBackend(fail=ModelUnavailable("tower down"))).homepage(FULL)
    assert not page.fallback and "tower down" in page.degraded
    assert "tower down" in page.skipped["collaborative"] and page.items


def test_only_the_collaborative_source_falls_back_when_the_tower_fails(model_base):
    only = (SourceConfig("collaborative", 10, stages=ALL_STAGES),)
    svc = make(model_base, FixedModelBackend(fail=ModelUnavailable("tower down")), sources=only,
               rerank=(), because_you_watched=0)
    page = svc.homepage(FULL)
    assert page.fallback and page.reason == "ModelUnavailable: tower down"
    assert not {p.item_id for p in page.items} & {1, 2, 3, 4, 5}


def test_sources_without_the_embedding_run_while_the_query_tower_does(model_base):
    started = threading.Event()

    class WaitingTower(FixedModelBackend):
        """The tower answers only once the content source has started (at most 10 s)."""

        def query_embeddings(self, inputs, timeout_s):
            self.calls["overlapped"] += started.wait(10)
            return super().query_embeddings(inputs, timeout_s)

    backend = WaitingTower()
    svc = make(model_base, backend, parallel_sources=True)
    content = svc.sources["content"]

    class Recorded:
        name, needs_query_embedding = content.name, content.needs_query_embedding

        def candidates(self, request, k):
            started.set()
            assert request.query_embedding is None and request.index is None
            return content.candidates(request, k)

    svc.sources["content"] = Recorded()
    page = svc.homepage(FULL)
    assert backend.calls["overlapped"] == 1 and not page.fallback and page.degraded is None
    assert "collaborative" in {s for p in page.items for s in p.sources}


def test_by_default_sources_run_in_turn_on_the_request_thread(model_base):
    order = []

    class Tower(FixedModelBackend):
        def query_embeddings(self, inputs, timeout_s):
            order.append(("tower", threading.get_ident()))
            return super().query_embeddings(inputs, timeout_s)

    svc = make(model_base, Tower())
    assert svc.config.parallel_sources is False
    for name, source in list(svc.sources.items()):
        class Recorded:
            def __init__(self, inner):
                self.inner, self.name = inner, inner.name
                self.needs_query_embedding = inner.needs_query_embedding

            def candidates(self, request, k):
                order.append((self.name, threading.get_ident()))
                return self.inner.candidates(request, k)

        svc.sources[name] = Recorded(source)
    page = svc.homepage(FULL)
    assert not page.fallback and page.degraded is None
    # The tower first (a slow source cannot spend its budget), then the sources in config order.
    assert [n for n, _ in order] == ["tower", "collaborative", "als", "item_to_item", "content",
                                     "trending"]
    assert {t for _, t in order} == {threading.get_ident()}


def test_on_the_request_thread_a_slow_source_spends_only_what_comes_after_it(model_base):
    import time

    svc = make(model_base)
    svc.config = dataclasses.replace(svc.config, deadline_ms=150.0)  # the request's budget
    als = svc.sources["als"]

    class Slow:
        name, needs_query_embedding = als.name, als.needs_query_embedding

        def candidates(self, request, k):
            time.sleep(0.2)  # past the whole request's budget
            return als.candidates(request, k)

    svc.sources["als"] = Slow()
    page = svc.homepage(FULL)
    # The tower ran first, in time: collaborative answered and the tower is not blamed. The
    # slow source's answer is kept; the sources after it were not started, and say why.
    assert page.degraded is None or "query tower" not in page.degraded
    assert "collaborative" not in page.skipped and page.timings_ms["source_als"] >= 200
    assert {n: page.skipped[n] for n in ("item_to_item", "content", "trending")} == dict.fromkeys(
        ("item_to_item", "content", "trending"),
        "the request's 150 ms budget was spent before it started")
    assert not page.fallback and {s for p in page.items for s in p.sources} >= {"collaborative"}


def test_a_source_that_does_not_say_gets_the_query_embedding(model_base):
    from serving.sources.base import needs_query_embedding

    seen = []

    class Custom:
        name = "content"  # in the config's place of the content source

        def candidates(self, request, k):
            seen.append(request.query_embedding)
            return []

    assert needs_query_embedding(Custom())
    svc = make(model_base)
    assert not needs_query_embedding(svc.sources["trending"])
    assert needs_query_embedding(svc.sources["collaborative"])
    svc.sources["content"] = Custom()
    svc.homepage(FULL)
    np.testing.assert_allclose(seen[0], QUERY)


def test_rows_are_filtered_like_the_page(model_base):
    svc = make(model_base)
    rows = svc.homepage(FULL).rows
    assert [r.seed_item_id for r in rows] == [1, 2, 3]  # because_you_watched=3, newest first
    assert rows[0].title == "Because you watched Title 1"
    assert all(p.item_id not in {1, 2, 3, 4, 5} for r in rows for p in r.items)
    assert 12 in {p.item_id for r in rows for p in r.items}
    kid = svc.homepage(KID)  # the maturity filter keeps the R-rated item 12 out, rows included
    assert 12 not in {p.item_id for r in kid.rows for p in r.items} | {
        p.item_id for p in kid.items}


def test_exploration_is_reproducible_per_user_and_seed(model_base):
    # retrieval order of the unwatched items (ITEMS @ QUERY): 12, 7, 9, 10, 8, 6, 11
    only = (SourceConfig("collaborative", 3, stages=ALL_STAGES),)
    svc = make(model_base, sources=only, rerank=({"step": "exploration", "share": 0.5},))
    a, b = svc.homepage(FULL, seed=3), svc.homepage(FULL, seed=3)
    assert [p.item_id for p in a.items] == [p.item_id for p in b.items]
    # candidates 12, 7, 9, ranked by p_watch (ranker_weight 1: higher ids first): 12, 9, 7;
    # item 11 is the only title added within 14 days; share 0.5 fills slots 1 and 3
    assert [(p.item_id, p.explore) for p in a.items] == [
        (12, False), (11, True), (9, False), (7, False)]
    assert a.items[1].p_watch is None and a.items[1].sources == {}


def test_bad_config_fails_at_start_up_naming_the_fix(model_base):
    with pytest.raises(ValueError, match="serving.rerank: .*one of"):
        make(model_base, rerank=({"step": "shuffle"},))
    with pytest.raises(ValueError, match="unknown source 'popular'"):
        make(model_base, sources=(SourceConfig("popular", 5),))
    with pytest.raises(ValueError, match="load_frames"):
        HomepageService(FixedModelBackend(), IndexStore(model_base), catalogue(), users(),
                        ServingConfig())


def test_serving_config_reads_sources_and_rerank_from_yaml_dicts():
    config = from_dict({"serving": {
        "sources": [{"name": "trending", "quota": 5, "stages": ["new"]}],
        "rerank": [{"step": "max_per_genre", "n": 2}]}}).serving
    assert config.sources == (SourceConfig("trending", 5, 40.0, ("new",)),)
    assert config.rerank == ({"step": "max_per_genre", "n": 2},)
    with pytest.raises(ConfigError, match=r"serving.sources\[0\]: unknown setting\(s\) quota_"):
        from_dict({"serving": {"sources": [{"name": "trending", "quota_": 5}]}})
    with pytest.raises(ConfigError, match=r"serving.rerank\[0\]: expected a mapping"):
        from_dict({"serving": {"rerank": ["mmr"]}})


def test_blend_adds_item_to_item_and_subtracts_popularity_hand_checked():
    r = np.array([1.0, 0.0, -1.0])  # z = (1.2247, 0, -1.2247)
    p = np.array([0.5, 0.5, 0.5])  # constant: its z-score is 0
    i2i = np.array([0.0, 2.0, 4.0])  # z = (-1.2247, 0, 1.2247)
    pop = np.expm1(np.array([3.0, 2.0, 1.0]))  # log1p -> (3, 2, 1): z = (1.2247, 0, -1.2247)
    z = np.sqrt(1.5)
    np.testing.assert_allclose(blend(r, p, 0.5), [0.5 * z, 0, -0.5 * z])
    np.testing.assert_allclose(blend(r, None, 0.5, i2i, 1.0), [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(blend(r, p, 0.0, i2i, 0.5, pop, 0.5),
                               [z - 0.5 * z - 0.5 * z, 0, -z + 0.5 * z + 0.5 * z], atol=1e-12)
    np.testing.assert_allclose(blend(r, p, 0.0, i2i, 0.0, pop, 0.0), [z, 0, -z])


def test_the_served_blend_uses_item_to_item_and_popularity(model_base):
    svc = make(model_base, rerank=(), ranker_weight=0.5, because_you_watched=0,
               item_to_item_weight=0.7, popularity_weight=0.4)
    page = svc.homepage(FULL, k=7)
    ids = [p.item_id for p in page.items]
    i2i = svc.item_to_item.score(svc.profile(FULL)[0].history, ids)
    assert [p.item_to_item for p in page.items] == pytest.approx(i2i.tolist())
    assert any(x > 0 for x in i2i)  # co-watched with the user's history
    pop = np.array([svc.fallback.score(i) for i in ids])
    assert [p.popularity for p in page.items] == pytest.approx(pop.tolist())
    ids_a = np.array(ids)
    final = blend(ITEMS[ids_a - 1] @ QUERY, 1 / (1 + np.exp(-(ids_a - 6.0))), 0.5, i2i, 0.7,
                  pop, 0.4)
    np.testing.assert_allclose([p.score for p in page.items], final, rtol=1e-5, atol=1e-6)
    assert list(final) == sorted(final, reverse=True)


def test_page_to_dict_is_asdict_and_a_copy():
    from serving.homepage.page import Homepage, PageRow, Pick

    picks = [Pick(7, "Seven", 1.5, 0.25, 0.5, 60.0, sources={"content": 0.1}, explore=True,
                  team="b"), Pick(8, "Eight", -0.5)]
    page = Homepage(3, picks, degraded="x", model_version=2, timings_ms={"total": 4.0},
                    stage="full", rows=[PageRow("Because you watched Seven", 7, picks[1:])],
                    skipped={"trending": "slow"}, page_id="p1", experiments={"e": "a"},
                    device="tv")
    d = page.to_dict()
    assert d == dataclasses.asdict(page)
    assert list(d) == list(dataclasses.asdict(page))  # the same key order
    assert list(d["items"][0]) == list(dataclasses.asdict(picks[0]))
    d["items"][0]["sources"]["content"] = 9.0
    d["timings_ms"]["total"] = 0.0
    d["rows"][0]["items"].clear()
    assert picks[0].sources == {"content": 0.1} and page.timings_ms == {"total": 4.0}
    assert page.rows[0].items == picks[1:]
    assert Homepage.from_dict(page.to_dict()) == page


def test_the_served_blend_subtracts_calibrated_exposure(model_base, tmp_path):
    from serving.homepage.exposure import ExposureTable

    plain = make(model_base, rerank=(), ranker_weight=0.5, because_you_watched=0)
    first = [p.item_id for p in plain.homepage(FULL, k=7).items]
    # the plain page's top title shown to everyone, the rest to no one
    path = ExposureTable({first[0]: 1000.0}).save(tmp_path / "exposure.parquet")
    svc = make(model_base, rerank=(), ranker_weight=0.5, because_you_watched=0,
               exposure_weight=0.8, exposure_file=str(path))
    page = svc.homepage(FULL, k=7)
    ids = np.array([p.item_id for p in page.items])
    exposure = np.where(ids == first[0], 1000.0, 0.0)
    final = blend(ITEMS[ids - 1] @ QUERY, 1 / (1 + np.exp(-(ids - 6.0))), 0.5,
                  exposure=exposure, exposure_weight=0.8)
    np.testing.assert_allclose([p.score for p in page.items], final, rtol=1e-5, atol=1e-6)
    assert ids[0] != first[0]  # the over-shown title is pushed down
