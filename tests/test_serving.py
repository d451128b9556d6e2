"""The thin client on both backends (in-process and TF Serving's gRPC API), parity, fallback,
deadlines, the mismatch refusal and the HTTP API, on the models of a real pipeline run."""

import dataclasses
import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from components.model_pusher.push_lib import RANKER, RETRIEVAL_INDEX, versions
from marquee.artifacts import ALS_SCORE
from marquee.config import ServingConfig, SourceConfig
from marquee.data import contract as c
from marquee.dev.model_server import ModelServer
from serving.homepage.service import HomepageService
from serving.ingest.items import TitleWrites
from serving.models.grpc import GrpcBackend
from serving.models.in_process import InProcessBackend
from serving.models.index_store import IndexStore
from serving.state.catalogue import UserProfile, UserStore, load_frames
from serving.state.feature_store import EmbeddedStore
from tests.http_client import get, post, running

pytestmark = pytest.mark.slow

# Generous deadlines: correctness here, latency in bench/.
_GENEROUS = ServingConfig(k=20, candidates=100, deadline_ms=60_000, query_deadline_ms=30_000,
                          rank_deadline_ms=30_000)
_SOURCES = tuple(dataclasses.replace(s, deadline_ms=30_000) for s in _GENEROUS.sources)
# Every default source and re-rank step: the served configuration.
FULL = dataclasses.replace(_GENEROUS, sources=_SOURCES)
# Every source; re-ranking that keeps the list sorted by score and adds nothing (no MMR or
# exploration), so the contract below can check the order and the ranker's outputs.
CONFIG = dataclasses.replace(FULL, rerank=tuple(
    r for r in FULL.rerank if r["step"] not in ("mmr", "exploration")))
# The two-tower path alone: a model failure has no other source to fall back on.
COLLAB_ONLY = dataclasses.replace(
    _GENEROUS, sources=(SourceConfig("collaborative", 100, 30_000, ("new", "light", "full")),),
    rerank=(), because_you_watched=0)


@pytest.fixture(scope="module")
def world(pipeline_run):
    catalogue, users, interactions = load_frames(pipeline_run.data)
    return pipeline_run, catalogue, users, interactions


@pytest.fixture(scope="module")
def model_server(world):
    run, *_ = world
    with ModelServer(str(run.serving), port=0, host="127.0.0.1", poll_seconds=0.2) as server:
        yield server


def service(world, backend, config=CONFIG, users=None):
    run, catalogue, all_users, interactions = world
    return HomepageService(backend, IndexStore(run.serving), catalogue, users or all_users,
                           config, interactions=interactions)


@pytest.fixture(scope="module", params=["in_process", "grpc"])
def svc(request, world, model_server):
    run, *_ = world
    if request.param == "in_process":
        return service(world, InProcessBackend(run.serving))
    return service(world, GrpcBackend(model_server.address, run.serving))


def _heavy_users(users, n=5):
    return sorted(users.user_ids(), key=lambda u: -len(users.get(u).history))[:n]


# ----------------------------------------------------------------------------- contract


def test_homepage_contract(svc, world):
    run, catalogue, users, _ = world
    assert versions(run.serving / RANKER), "the e2e config pushes the ranker"
    for user in _heavy_users(users):
        page = svc.homepage(user)
        ids = [p.item_id for p in page.items]
        assert not page.fallback, page.reason
        assert page.degraded is None, page.degraded
        assert len(ids) == CONFIG.k == len(set(ids))
        assert not set(ids) & users.get(user).watched
        assert set(ids) <= set(catalogue.item_ids.tolist())
        scores = [p.score for p in page.items]
        assert scores == sorted(scores, reverse=True)
        assert all(p.p_watch is not None and 0 <= p.p_watch <= 1 for p in page.items)
        assert page.model_version == versions(run.serving / RETRIEVAL_INDEX)[-1]


def test_unknown_user_gets_a_model_answer(svc):
    page = svc.homepage(10**9)
    assert not page.fallback and len(page.items) == CONFIG.k


def test_concurrent_homepages_are_answered(svc, world):
    """Requests in parallel threads, as the HTTP server runs them: candidate counts differ per
    user, and concurrent model calls of different batch sizes crashed TF before each model's
    calls were serialised (the process aborted with heap corruption)."""
    from concurrent.futures import ThreadPoolExecutor

    _, _, users, _ = world
    ids = users.user_ids()
    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(svc.homepage, [ids[n % len(ids)] for n in range(40)]))
    assert all(not p.fallback and p.degraded is None for p in pages), [
        p.reason or p.degraded for p in pages if p.fallback or p.degraded][:3]


def test_parity_in_process_and_grpc(world, model_server):
    run, _, users, _ = world
    local = service(world, InProcessBackend(run.serving), FULL)
    remote = service(world, GrpcBackend(model_server.address, run.serving), FULL)
    for svc in (local, remote):  # the run's ranker takes the ALS feature: both pages send it
        assert ALS_SCORE in svc.backend.ranker_inputs(), svc.backend.name
    for user in _heavy_users(users) + [10**9]:
        a, b = local.homepage(user), remote.homepage(user)
        assert not a.fallback and a.degraded is None and a.skipped == {}
        assert b.degraded is None
        assert [p.item_id for p in a.items] == [p.item_id for p in b.items]
        np.testing.assert_allclose([p.score for p in a.items], [p.score for p in b.items],
                                   rtol=1e-5, atol=1e-6)
        assert (a.stage, a.rows) == (b.stage, b.rows)


# ----------------------------------------------------------------------------- cold start

LIGHT_USER, NEW_USER = 10**9 + 1, 10**9 + 2


@pytest.fixture(scope="module")
def cold_users(world):
    """The run's users plus a light one (two of a heavy user's watches) and a new one who picked
    the catalogue's most common genre in the onboarding quiz."""
    _, catalogue, users, _ = world
    heavy = users.get(_heavy_users(users)[0])
    genre = max({g for gs in catalogue.genres for g in gs},
                key=lambda g: (sum(g in gs for gs in catalogue.genres), g))
    profiles = {u: users.get(u) for u in users.user_ids()}
    profiles[LIGHT_USER] = UserProfile(LIGHT_USER, history=heavy.history[:2],
                                       watched=frozenset(heavy.history[:2]))
    profiles[NEW_USER] = UserProfile(NEW_USER, onboarding_genres=(genre,))
    return UserStore(profiles, users.popularity()), genre


def test_light_user_gets_content_and_item_to_item(world, cold_users):
    run, _, _, _ = world
    users, _ = cold_users
    page = service(world, InProcessBackend(run.serving), users=users).homepage(LIGHT_USER)
    assert page.stage == "light" and not page.fallback and page.model_version is None
    found = {s for p in page.items for s in p.sources}
    assert {"content", "item_to_item"} <= found and "collaborative" not in found
    assert len(page.items) == CONFIG.k
    assert not {p.item_id for p in page.items} & users.get(LIGHT_USER).watched


def test_new_user_gets_the_onboarding_genre_first(world, cold_users):
    run, catalogue, _, _ = world
    users, genre = cold_users
    page = service(world, InProcessBackend(run.serving), users=users).homepage(NEW_USER)
    assert page.stage == "new" and not page.fallback and page.rows == []
    assert {s for p in page.items for s in p.sources} == {"trending"}
    first = [catalogue.genres[catalogue.row[p.item_id]] for p in page.items[:5]]
    assert all(genre in gs for gs in first), (genre, first)


def test_full_user_gets_rows_of_unwatched_titles(world):
    run, catalogue, users, _ = world
    svc = service(world, InProcessBackend(run.serving), FULL)
    for user in _heavy_users(users):
        page = svc.homepage(user)
        watched = users.get(user).watched
        # one row per recent watch, except watches whose neighbours are all watched already
        assert page.stage == "full" and 1 <= len(page.rows) <= FULL.because_you_watched
        for row in page.rows:
            assert row.seed_item_id in watched
            title = catalogue.titles[catalogue.row[row.seed_item_id]]
            assert row.title == f"Because you watched {title}"
            assert 0 < len(row.items) <= FULL.row_k
            assert not {p.item_id for p in row.items} & watched


# ----------------------------------------------------------------------------- freshness


def _raw(row: dict) -> dict:
    """An items row as the JSON a client posts."""
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, float) and np.isnan(v):
            v = None
        out[k] = v
    return out


def test_a_new_title_embeds_by_its_metadata_on_both_backends(world, model_server):
    """Clones of 20 titles (same metadata, new ids, no interactions) go through POST-equivalent
    adds (``TitleWrites`` validates, ``FreshItems.add_rows`` applies): the side index embeds
    them with the pushed candidate tower, alike on both backends, each clone is retrievable,
    and its original is near it (closer than most titles)."""
    from marquee.data.validate import load_dataset

    run, *_ = world
    items = load_dataset(run.data).items
    sources = items[c.ITEM_ID].to_numpy()[np.random.default_rng(0).choice(len(items), 20,
                                                                           replace=False)]
    clones = {}
    for backend in (InProcessBackend(run.serving), GrpcBackend(model_server.address,
                                                               run.serving)):
        catalogue, users, interactions = load_frames(run.data)  # its own: titles are added
        svc = HomepageService(backend, IndexStore(run.serving), catalogue, users, CONFIG,
                              interactions=interactions)
        titles = TitleWrites(svc.fresh)
        for n, src in enumerate(sources):
            row = _raw(items[items[c.ITEM_ID] == src].iloc[0].to_dict())
            svc.fresh.add_rows(titles.validate({**row, c.ITEM_ID: 10**8 + n}, int(time.time())))
        version = versions(run.serving / RETRIEVAL_INDEX)[-1]
        main = svc.indexes.get(version)
        live = svc.fresh.live_index(version, main)
        assert live.side_ids.tolist() == [10**8 + n for n in range(20)]
        clones[backend.name] = live.side_embeddings
        q = np.random.default_rng(1).normal(size=main.dim).astype(np.float32)
        ids, _ = live.search(q, main.num_items + 20)
        assert set(live.side_ids.tolist()) <= set(ids.tolist())  # every clone is retrievable
    np.testing.assert_allclose(clones["in_process"], clones["tf_serving"], rtol=1e-4, atol=1e-5)
    unit = main.embeddings / np.linalg.norm(main.embeddings, axis=1, keepdims=True)
    ranks = []
    for n, src in enumerate(sources):
        cos = unit @ (clones["in_process"][n] / np.linalg.norm(clones["in_process"][n]))
        ranks.append(int((cos > cos[main.rows([src])[0]]).sum()))
    # A random title would rank about len/2 on average; the metadata pulls the original close.
    assert np.median(ranks) < 0.25 * main.num_items, ranks


# ----------------------------------------------------------------------------- failure


def test_model_server_down_leaves_the_other_sources(world):
    run, _, users, _ = world
    svc = service(world, GrpcBackend("127.0.0.1:1", run.serving, timeout_s=0.2))
    user = _heavy_users(users)[0]
    page = svc.homepage(user)
    assert not page.fallback and page.stage == "full"
    assert "ServerUnavailable" in page.degraded and "collaborative" in page.skipped
    assert len(page.items) == CONFIG.k and not {p.item_id for p in page.items} & users.get(
        user).watched
    assert {s for p in page.items for s in p.sources} <= {"content", "item_to_item", "trending"}


def test_model_server_down_falls_back_with_reason(world):
    run, _, users, _ = world
    svc = service(world, GrpcBackend("127.0.0.1:1", run.serving, timeout_s=0.2), COLLAB_ONLY)
    user = _heavy_users(users)[0]
    page = svc.homepage(user)
    assert page.fallback and "ServerUnavailable" in page.reason
    assert len(page.items) == COLLAB_ONLY.k and not {p.item_id for p in page.items} & users.get(
        user).watched
    # after breaker_failures failures the breaker opens: no more calls, still answered
    for _ in range(COLLAB_ONLY.breaker_failures):
        svc.homepage(user)
    assert svc.query_breaker.state == "open"
    page = svc.homepage(user)
    assert page.fallback and "CircuitOpen" in page.reason


def test_deadline_miss_falls_back(world):
    run, _, users, _ = world
    tight = dataclasses.replace(COLLAB_ONLY, k=10, deadline_ms=200.0, query_deadline_ms=1e-6)
    page = service(world, InProcessBackend(run.serving), tight).homepage(_heavy_users(users)[0])
    assert page.fallback and "DeadlineExceeded" in page.reason


def test_index_from_another_run_is_refused(world, tmp_path):
    run, _, users, _ = world
    base = tmp_path / "serving"
    shutil.copytree(run.serving, base)
    (index_dir,) = [p for p in (base / RETRIEVAL_INDEX).iterdir() if p.name.isdigit()]
    meta = json.loads((index_dir / "index.json").read_text())
    meta["metadata"]["training_run"] = "another-run"
    (index_dir / "index.json").write_text(json.dumps(meta))
    svc = HomepageService(InProcessBackend(base), IndexStore(base), world[1], users, COLLAB_ONLY)
    page = svc.homepage(_heavy_users(users)[0])
    assert page.fallback and "ModelMismatch" in page.reason and "another-run" in page.reason


# ----------------------------------------------------------------------------- HTTP


def test_http_api(world):
    run, _, users, _ = world
    with running(service(world, InProcessBackend(run.serving))) as api:
        user = _heavy_users(users)[0]
        status, body = get(api.port, f"/v1/users/{user}/homepage?k=5")
        page = json.loads(body)
        assert status == 200 and page["user_id"] == user and len(page["items"]) == 5
        assert page["fallback"] is False
        status, body = get(api.port, "/v1/users/abc/homepage")
        assert status == 400 and "user id must be a non-negative integer" in body
        assert "got 'abc'" in body
        status, body = get(api.port, f"/v1/users/{user}/homepage?k=0")
        assert status == 400 and "k must be an integer between 1 and 500" in body
        assert get(api.port, "/nope")[0] == 404
        status, body = get(api.port, "/healthz")
        assert status == 200 and json.loads(body)["query_breaker"] == "closed"
        assert json.loads(body)["writes"] == "off"  # no event log
        status, body = get(api.port, "/metrics")
        assert 'marquee_homepage_total{outcome="personal"} 1.0' in body
        home = 'route="/v1/users/{user_id}/homepage"'
        assert f'marquee_http_requests_total{{method="GET",{home},status="200"}} 1.0' in body
        assert f'marquee_http_requests_total{{method="GET",{home},status="400"}} 2.0' in body
        assert ('marquee_http_requests_total{method="GET",route="unmatched",status="404"} 1.0'
                in body)


def test_events_update_the_homepage_and_its_cache(world, tmp_path):
    run, catalogue, users, _ = world
    svc = service(world, InProcessBackend(run.serving))
    assert isinstance(svc.store, EmbeddedStore)  # the default
    user = _heavy_users(users)[0]
    path = f"/v1/users/{user}/homepage"
    with running(svc, event_log=tmp_path / "events") as api:
        first = json.loads(get(api.port, path)[1])
        second = json.loads(get(api.port, path)[1])
        assert not first["cached"] and second["cached"]
        assert second["items"] == first["items"]
        top = first["items"][0]["item_id"]
        # in the past of the server's clock (an event far ahead of it is refused)
        event = {c.USER_ID: user, c.ITEM_ID: top, c.TIMESTAMP: 1_700_000_000,
                 c.EVENT: c.EVENT_IMPRESSION, c.WATCH_SECONDS: 0, c.DEVICE: "tv", c.POSITION: 1}
        assert post(api.port, "/v1/events", event)[0] == 200
        assert json.loads(get(api.port, path)[1])["cached"]  # an impression keeps the page
        status, _ = post(api.port, "/v1/events", {**event, c.EVENT: c.EVENT_WATCH,
                                                   c.WATCH_SECONDS: 600, c.POSITION: None})
        assert status == 200
        third = json.loads(get(api.port, path)[1])
        assert not third["cached"] and top not in [p["item_id"] for p in third["items"]]
        status, body = post(api.port, "/v1/events", {**event, c.WATCH_SECONDS: -1})
        # refused and named: one problem, of the field, saying what arrived
        assert status == 400 and len(body["problems"]) == 1, body
        assert body["problems"][0].startswith("watch_seconds: ") and "-1" in body["problems"][0]
        metrics = get(api.port, "/metrics")[1]
    assert 'marquee_homepage_total{outcome="cached"} 2.0' in metrics
    assert 'marquee_writes_total{outcome="accepted",route="events"} 2.0' in metrics
    assert 'marquee_writes_total{outcome="invalid",route="events"} 1.0' in metrics
    assert "marquee_feature_store_embedded_users 1.0" in metrics
    # every page served (cached ones too) is one record of the log, beside the two events
    assert "marquee_impressions_logged 4.0" in metrics
    assert "marquee_wal_appended 6.0" in metrics
    # the log is compacted on close: both accepted events, in order, as a contract part...
    folder = tmp_path / "events" / "interactions"
    logged = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("part-w*.parquet"))])
    assert logged[c.EVENT].tolist() == [c.EVENT_IMPRESSION, c.EVENT_WATCH]
    # ...and the four pages' impressions, one row per title at positions 1..k, by page
    shown = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("part-x*.parquet"))])
    pages = [first, second, second, third]
    assert len(shown) == sum(len(p["items"]) for p in pages)
    assert (shown[c.EVENT] == c.EVENT_IMPRESSION).all() and (shown[c.USER_ID] == user).all()
    assert shown[c.PAGE_ID].nunique() == 4 and shown[c.EXPERIMENT].isna().all()
    assert shown.groupby(c.PAGE_ID, sort=False)[c.POSITION].apply(list).tolist()[0] == list(
        range(1, len(first["items"]) + 1))
    assert shown[c.ITEM_ID].tolist()[: len(first["items"])] == [
        p["item_id"] for p in first["items"]]


# ----------------------------------------------------------------------------- evaluated = served


def test_the_evaluated_stack_is_the_served_stack_in_process_and_over_grpc(world, model_server,
                                                                         tmp_path):
    """``marquee evaluate``'s stack (StackScores) and ``build_service`` of the same config give
    every user the same list, with the models in-process and behind the gRPC API, the blend's
    calibrated-exposure term read from the table the evaluation saved."""
    from marquee.config import Config
    from marquee.evaluation.protocol import leave_last_out
    from marquee.evaluation.stack import RETRIEVAL_K, Blend, StackScores
    from serving.build import build_service

    run, _, users, interactions = world
    split = leave_last_out(interactions)
    stack = StackScores(run.data, run.serving, split, Config())
    weights = Blend(0.4, 0.15, 0.25, exposure=0.5)  # a blend as marquee evaluate chooses
    table = stack.calibrated(split.users, weights)
    assert len(table) > 0
    config = stack.served_config(weights, exposure_file=str(table.save(tmp_path / "e.parquet")))
    served = {"in_process": build_service(config, run.data, run.serving),
              "grpc": build_service(config, run.data, run.serving, model_server.address)}
    picked = _heavy_users(users)[:10]
    expected = stack.recommend(np.array(picked), weights, exposure=table)
    plain = stack.recommend(np.array(picked), dataclasses.replace(weights, exposure=0.0))
    assert (expected != plain).any()  # the term changes some lists: the parity below is not moot
    for name, svc in served.items():
        for row, user in enumerate(picked):
            page = svc.homepage(user, RETRIEVAL_K, timestamp=int(stack.first.get(user, 0)))
            assert not page.fallback and page.degraded is None, (name, page.reason)
            ids = [p.item_id for p in page.items if p.item_id in stack.allowed]
            want = [i for i in expected[row].tolist() if i >= 0]
            assert ids[:len(want)] == want, (name, user)
        svc.stop()
