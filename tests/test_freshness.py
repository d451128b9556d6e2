"""Freshness and onboarding on the tiny catalogue of ``test_homepage``: a title added while serving
(validation, catalogue growth, the side index beside ScaNN, the items log), the onboarding quiz,
trending refreshed from live events, and both write routes over real HTTP. Writes take the one
write path (``serving.ingest.wiring.open_writes``): validate -> write-ahead log -> state."""

import json

import numpy as np
import pandas as pd
import pytest

from components.scann_indexer.index_lib import build_and_evaluate, save_index
from marquee.config import IndexConfig
from marquee.data import contract as c
from serving.ingest.events import InvalidEvent
from serving.ingest.items import InvalidItem, TitleWrites, validate_item
from serving.ingest.onboarding import validate_onboarding
from serving.ingest.wiring import open_writes
from serving.models.errors import ModelUnavailable
from serving.models.live_index import LiveIndex
from serving.sources.base import SourceRequest
from serving.state.records import Event
from tests import test_homepage
from tests.http_client import get, post, running
from tests.test_homepage import (
    FULL,
    ITEM_IDS,
    ITEMS,
    LIGHT,
    NEW,
    NOW,
    QUERY,
    FixedModelBackend,
    catalogue,
    make,
)
from trainer import features as f

model_base = test_homepage.model_base  # the tiny model base fixture, shared
NEW_ITEM = 99
SIDE = QUERY * 3  # the double's candidate tower puts every new title right on the query


def title(item_id=NEW_ITEM, **changes) -> dict:
    """A title like item 1 (scifi, actor1, kw1, dir1): the light user's one watch."""
    return {c.ITEM_ID: item_id, c.TITLE: "Title Fresh", c.GENRES: ["scifi"],
            c.CAST: ["actor1"], c.DIRECTOR: "dir1", c.RELEASE_YEAR: 2024,
            c.DURATION_SECONDS: 5400, c.ADDED_AT: NOW - 60, c.MATURITY_RATING: "PG",
            c.KEYWORDS: ["kw1"], **changes}


def add_title(svc, raw: dict) -> None:
    """What ``POST /v1/items`` does to the state, without the log: validate, then apply."""
    svc.fresh.add_rows(TitleWrites(svc.fresh).validate(raw, NOW))


def parts(folder) -> list:
    """The Parquet parts compaction wrote into ``folder``, in name (logging) order."""
    return sorted(folder.glob("*.parquet"))


class FreshBackend(FixedModelBackend):
    """The double plus a candidate tower: every title embeds to :data:`SIDE`. ``fail_embed``
    makes it raise."""

    def __init__(self, fail_embed: Exception | None = None, **kwargs):
        super().__init__(**kwargs)
        self.fail_embed = fail_embed

    def candidate_embeddings(self, inputs, version, timeout_s):
        self.calls["candidate"] += 1
        self.calls[f"candidate_rows_{version}"] += len(inputs[f.ITEM_ID])
        if self.fail_embed is not None:
            raise self.fail_embed
        return np.tile(SIDE, (len(inputs[f.ITEM_ID]), 1))


# ----------------------------------------------------------------------------- validation


def test_a_bad_title_lists_every_problem():
    raw = title(**{c.MATURITY_RATING: "X", c.DURATION_SECONDS: -5, "studio": "acme"})
    del raw[c.TITLE]
    with pytest.raises(InvalidItem) as e:
        validate_item(raw, catalogue(), NOW)
    problems = e.value.problems
    assert len(problems) == 4, problems
    assert problems[0].startswith("studio: not a field of a title (its fields: item_id")
    assert problems[1].startswith("title: missing")
    assert any(p.startswith("duration_seconds: -5") for p in problems)
    assert any(p.startswith("maturity_rating: 'X' is not one of G, PG") for p in problems)
    assert not e.value.duplicate


def test_a_taken_id_is_a_duplicate_and_added_at_defaults_to_now():
    with pytest.raises(InvalidItem, match="1 is already in the catalogue") as e:
        validate_item(title(1), catalogue(), NOW)
    assert e.value.duplicate
    raw = title()
    del raw[c.ADDED_AT]
    row = validate_item(raw, catalogue(), NOW)
    assert row[c.ADDED_AT].tolist() == [NOW] and row[c.ITEM_ID].tolist() == [NEW_ITEM]


def test_the_catalogue_grows_every_structure_and_pads_wider_lists():
    cat = catalogue()
    rows = cat.add(validate_item(title(genres=["scifi", "drama", "comedy"]), cat, NOW))
    assert rows == [12] and cat.row[NEW_ITEM] == 12 and cat.item_ids[-1] == NEW_ITEM
    assert cat.features[f.GENRES].shape == (13, 3)  # the catalogue's lists held one genre
    assert cat.features[f.GENRES][0].tolist() == ["scifi", "", ""]
    assert cat.features[f.GENRES][12].tolist() == ["scifi", "drama", "comedy"]
    assert cat.titles[12] == "Title Fresh" and cat.added_at[12] == NOW - 60
    assert {k: len(v) for k, v in cat.features.items()} == dict.fromkeys(cat.features, 13)
    with pytest.raises(ValueError, match=r"\[99\] are already in the catalogue"):
        cat.add(validate_item(title(), catalogue(), NOW))


# ----------------------------------------------------------------------------- side index


@pytest.mark.parametrize("k", [1, 5, 12, 17])
def test_the_live_index_matches_brute_force_over_both(k):
    rng = np.random.default_rng(k)
    searcher, evaluation = build_and_evaluate(ITEMS, ITEM_IDS, ITEMS[:3], IndexConfig())
    main = _loaded(searcher, evaluation)
    side_ids = np.array([50, 40, 60, 45, 55])
    side = rng.normal(size=(5, 4)).astype(np.float32)
    live = LiveIndex(main, side_ids, side)
    q = rng.normal(size=4).astype(np.float32)
    all_ids = np.concatenate([ITEM_IDS, side_ids])
    exact = np.concatenate([ITEMS, side]) @ q
    ids, scores = live.search(q, k)
    order = np.lexsort((all_ids, -exact))[:k]
    assert ids.tolist() == all_ids[order].tolist()
    np.testing.assert_allclose(scores, exact[order], rtol=1e-5)
    mixed = [45, 3, 60, 12]
    np.testing.assert_allclose(live.score(q, mixed), exact[[15, 2, 14, 11]], rtol=1e-5)
    np.testing.assert_array_equal(live.embeddings_of(mixed), np.concatenate([ITEMS, side])[
        [15, 2, 14, 11]])
    assert live.contains([45, 3, 1000]).tolist() == [True, True, False]
    assert live.embeddings_of([45, 1000]) is None


def _loaded(searcher, evaluation):
    import tempfile

    from components.scann_indexer.index_lib import load_index

    with tempfile.TemporaryDirectory() as d:
        save_index(searcher, ITEM_IDS, evaluation, d, {"training_run": "run-1"})
        return load_index(d)


# ----------------------------------------------------------------------------- the homepage


def test_a_new_title_is_retrieved_by_its_metadata_embedding_without_a_pipeline_run(model_base):
    backend = FreshBackend()
    svc = make(model_base, backend, because_you_watched=0)
    assert NEW_ITEM not in [p.item_id for p in svc.homepage(FULL, k=7).items]
    add_title(svc, title())
    page = svc.homepage(FULL, k=7)
    pick = next(p for p in page.items if p.item_id == NEW_ITEM)
    assert not page.fallback and page.degraded is None, page
    assert "collaborative" in pick.sources  # from the side index, beside ScaNN
    assert pick.retrieval_score == pytest.approx(float(SIDE @ QUERY), rel=1e-5)
    assert pick.p_watch is not None  # the ranker scored it from the catalogue's new row
    # the content source knows it too: it shares genre, cast, keyword, director with item 1
    light = svc.profile(LIGHT)[0]
    found = svc.sources["content"].candidates(SourceRequest.from_profile(light, NOW), 20)
    assert NEW_ITEM in [x.item_id for x in found]
    # and it is new: the exploration pool holds it
    assert NEW_ITEM in [x.item_id for x in svc.exploration_pool(NOW)]
    # embedded once for this version, however many requests follow
    svc.homepage(FULL, k=7)
    assert backend.calls["candidate"] == 1 and backend.calls["candidate_rows_1"] == 1


def test_a_failed_embedding_keeps_serving_and_is_retried(model_base):
    backend = FreshBackend(fail_embed=ModelUnavailable("model server down"))
    svc = make(model_base, backend, because_you_watched=0)
    add_title(svc, title())
    page = svc.homepage(FULL, k=7)
    assert not page.fallback and page.degraded is None
    assert "collaborative" not in next((p.sources for p in page.items
                                        if p.item_id == NEW_ITEM), {})
    backend.fail_embed = None
    svc.fresh.retry_s = 0.0
    page = svc.homepage(FULL, k=7)
    assert "collaborative" in next(p.sources for p in page.items if p.item_id == NEW_ITEM)


def test_added_titles_are_logged_in_the_contract_and_put_back_on_restart(model_base, tmp_path):
    svc = make(model_base, FreshBackend())
    w = open_writes(svc, tmp_path)
    w.path.accept("items", title())
    w.path.accept("items", title(100, title="Another"))
    # durable when acknowledged: both are in the write-ahead log (seqs 1 and 2) already
    assert [(r.seq, r.row[c.ITEM_ID]) for r in w.wal.records()] == [(1, NEW_ITEM), (2, 100)]
    assert {NEW_ITEM, 100} <= set(svc.catalogue.row)
    w.close()  # compacts the log: one contract part for the seq range 1-2
    assert [p.name for p in parts(tmp_path / c.ITEMS)] == [
        "part-w0000000000000001-0000000000000002-r0.parquet"]
    back = pd.read_parquet(tmp_path / c.ITEMS)
    assert back[c.ITEM_ID].tolist() == [NEW_ITEM, 100]
    assert back[c.TITLE].tolist() == ["Title Fresh", "Another"]
    assert back[c.GENRES].map(list).tolist() == [["scifi"], ["scifi"]]

    restarted = make(model_base, FreshBackend())
    w2 = open_writes(restarted, tmp_path)
    assert w2.report.applied == {"items": 2}
    assert {NEW_ITEM, 100} <= set(restarted.catalogue.row)
    assert restarted.fresh.item_ids == [NEW_ITEM, 100]
    w2.close()
    # put back, not logged again: still the two rows of the first run
    assert pd.read_parquet(tmp_path / c.ITEMS)[c.ITEM_ID].tolist() == [NEW_ITEM, 100]


# ----------------------------------------------------------------------------- onboarding


def test_an_onboarding_answer_needs_three_distinct_known_genres():
    known = ["comedy", "drama", "romance", "scifi"]
    with pytest.raises(InvalidEvent) as e:
        validate_onboarding(1, {"genres": ["comedy", "comedy", "western"]}, known, 3, NOW)
    assert e.value.problems == [
        "genres: expected 3 distinct genres, got 3 (2 distinct): ['comedy', 'comedy', 'western']",
        "genres: ['western'] are not genres of any title; pick from "
        "['comedy', 'drama', 'romance', 'scifi']"]
    with pytest.raises(InvalidEvent, match="expected a JSON object like"):
        validate_onboarding(1, ["comedy"], known, 3, NOW)
    answer = validate_onboarding(1, {"genres": ["drama", "scifi", "comedy"]}, known, 3, NOW)
    assert answer.genres == ("drama", "scifi", "comedy") and answer.timestamp == NOW


def test_the_quiz_answer_shapes_the_next_homepage_of_a_new_user(model_base, tmp_path):
    svc = make(model_base, FreshBackend(), cache_ttl_seconds=600, because_you_watched=0,
               rerank=())
    before = svc.homepage(NEW)
    assert before.stage == "new" and svc.homepage(NEW).cached
    w = open_writes(svc, tmp_path)
    w.path.accept("onboarding", {"genres": ["romance", "drama", "scifi"]}, user_id=NEW)
    w.close()
    after = svc.homepage(NEW)
    assert not after.cached  # the answer invalidated the cached page
    genres = [svc.catalogue.genres[svc.catalogue.row[p.item_id]][0] for p in after.items]
    # trending in the picked genres first (round robin), before any other genre
    assert set(genres[:3]) == {"romance", "drama", "scifi"}, genres
    assert "comedy" in [svc.catalogue.genres[svc.catalogue.row[p.item_id]][0]
                        for p in before.items[:1]]  # the dataset's own answer was comedy


def test_onboarding_answers_are_logged_and_replayed(model_base, tmp_path):
    svc = make(model_base, FreshBackend())
    w = open_writes(svc, tmp_path)
    answer = w.path.accept("onboarding", {"genres": ["drama", "scifi", "comedy"]}, user_id=7)
    assert answer["onboarding"][c.USER_ID] == 7
    w.close()  # compacted into DIR/onboarding/, the write-ahead log's table of answers
    back = pd.read_parquet(tmp_path / "onboarding")
    assert back[c.USER_ID].tolist() == [7]
    assert back[c.ONBOARDING_GENRES].map(list).tolist() == [["drama", "scifi", "comedy"]]
    fresh = make(model_base, FreshBackend())
    w2 = open_writes(fresh, tmp_path)
    w2.close()
    assert w2.report.applied == {"onboarding": 1}
    assert fresh.profile(7)[0].onboarding_genres == ("drama", "scifi", "comedy")


def test_the_legacy_onboarding_log_is_still_put_back(model_base, tmp_path):
    """Answers logged by earlier versions (``DIR/onboarding.jsonl``) are read at replay, before
    the write-ahead log's, so a later answer of the same user wins."""
    lines = [{c.USER_ID: 7, c.ONBOARDING_GENRES: ["drama", "scifi", "comedy"], c.TIMESTAMP: NOW},
             {c.USER_ID: 8, c.ONBOARDING_GENRES: ["romance", "drama", "scifi"], c.TIMESTAMP: NOW}]
    (tmp_path / "onboarding.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    svc = make(model_base, FreshBackend())
    w = open_writes(svc, tmp_path)
    assert w.report.applied == {"onboarding": 2}
    w.path.accept("onboarding", {"genres": ["comedy", "romance", "scifi"]}, user_id=8)
    w.close()
    fresh = make(model_base, FreshBackend())
    w2 = open_writes(fresh, tmp_path)
    w2.close()
    assert w2.report.applied == {"onboarding": 3}  # two legacy lines, one compacted answer
    assert fresh.profile(7)[0].onboarding_genres == ("drama", "scifi", "comedy")
    assert fresh.profile(8)[0].onboarding_genres == ("comedy", "romance", "scifi")


# ----------------------------------------------------------------------------- trending


def test_trending_refreshes_from_live_watches_without_retraining(model_base):
    svc = make(model_base, FreshBackend())
    trending = svc.sources["trending"]
    top = int(svc.catalogue.item_ids[trending._trend.order[0]])
    assert top == 12  # watched by 4 of the 6 users in the loaded data
    for n in range(5):  # item 11 is watched 5 times just now
        svc.observe(Event(100 + n, 11, NOW, c.EVENT_WATCH, 600.0, "tv"))
    svc.observe(Event(200, 6, NOW, c.EVENT_IMPRESSION, 0.0, "tv"))  # impressions do not count
    svc.refresh_trending(NOW)
    assert int(svc.catalogue.item_ids[trending._trend.order[0]]) == 11


# ----------------------------------------------------------------------------- over HTTP


def test_titles_and_quiz_answers_over_http(model_base, tmp_path):
    svc = make(model_base, FreshBackend(), because_you_watched=0)
    with running(svc, event_log=tmp_path) as api:
        status, body = post(api.port, "/v1/items", title())
        assert status == 200 and body["item"][c.ITEM_ID] == NEW_ITEM, body
        page = json.loads(get(api.port, f"/v1/users/{FULL}/homepage?k=7")[1])
        assert NEW_ITEM in [p["item_id"] for p in page["items"]]
        status, body = post(api.port, "/v1/items", title())
        assert status == 409 and "already in the catalogue" in body["error"]
        status, body = post(api.port, "/v1/items", {c.ITEM_ID: 5000})
        assert status == 400 and len(body["problems"]) >= 4, body  # every missing field named
        assert all("Field required" in p for p in body["problems"]), body
        status, body = post(api.port, "/v1/users/77/onboarding",
                             {"genres": ["drama", "scifi", "comedy"]})
        assert status == 200 and body["onboarding"][c.ONBOARDING_GENRES] == [
            "drama", "scifi", "comedy"]
        status, body = post(api.port, "/v1/users/77/onboarding", {"genres": ["drama"]})
        assert status == 400 and "expected 3 distinct genres" in body["problems"][0]
        status, body = post(api.port, "/v1/users/abc/onboarding", {"genres": []})
        assert status == 400 and "user id must be a non-negative integer" in body["error"]
        metrics = get(api.port, "/metrics")[1]
        assert 'marquee_writes_total{outcome="accepted",route="items"} 1.0' in metrics
        assert 'marquee_writes_total{outcome="duplicate",route="items"} 1.0' in metrics
        assert 'marquee_writes_total{outcome="invalid",route="items"} 1.0' in metrics
        assert 'marquee_writes_total{outcome="accepted",route="onboarding"} 1.0' in metrics
        assert 'marquee_writes_total{outcome="invalid",route="onboarding"} 2.0' in metrics
    # only the accepted writes are logged
    assert pd.read_parquet(tmp_path / c.ITEMS)[c.ITEM_ID].tolist() == [NEW_ITEM]
    assert pd.read_parquet(tmp_path / "onboarding")[c.USER_ID].tolist() == [77]

    # marquee serve without --event-log: valid writes are answered 503 and change nothing
    bare = make(model_base, FreshBackend())
    event = {c.USER_ID: FULL, c.ITEM_ID: 6, c.TIMESTAMP: NOW, c.EVENT: c.EVENT_WATCH,
             c.WATCH_SECONDS: 600.0, c.DEVICE: "tv"}
    with running(bare) as api:
        for path, body in (("/v1/items", title(101)), ("/v1/events", event),
                           ("/v1/users/5/onboarding", {"genres": ["drama", "scifi", "comedy"]})):
            status, answer = post(api.port, path, body)
            assert status == 503 and "--event-log" in answer["error"], (path, answer)
    assert 101 not in bare.catalogue.row
    assert bare.store.features(FULL).watched == frozenset()
    assert bare.store.features(5).onboarding_genres == ()
