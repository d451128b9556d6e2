"""The thin client on both backends (in-process and TF Serving's gRPC API), parity, fallback,
deadlines, the mismatch refusal and the HTTP API, on the models of a real pipeline run."""

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from components.model_pusher.push_lib import RANKER, RETRIEVAL_INDEX, versions
from marquee.config import ServingConfig
from serving.api import ApiServer
from serving.backends import GrpcBackend, IndexStore, InProcessBackend
from serving.catalogue import load
from serving.homepage import HomepageService
from serving.model_server import ModelServer

pytestmark = pytest.mark.slow

# Generous deadlines: correctness here, latency in bench/.
CONFIG = ServingConfig(k=20, candidates=100, deadline_ms=60_000, query_deadline_ms=30_000,
                       rank_deadline_ms=30_000)


@pytest.fixture(scope="module")
def world(pipeline_run):
    catalogue, users = load(pipeline_run.data)
    return pipeline_run, catalogue, users


@pytest.fixture(scope="module")
def model_server(world):
    run, _, _ = world
    with ModelServer(str(run.serving), port=0, host="127.0.0.1", poll_seconds=0.2) as server:
        yield server


def service(world, backend, config=CONFIG):
    run, catalogue, users = world
    return HomepageService(backend, IndexStore(run.serving), catalogue, users, config)


@pytest.fixture(scope="module", params=["in_process", "grpc"])
def svc(request, world, model_server):
    run, _, _ = world
    if request.param == "in_process":
        return service(world, InProcessBackend(run.serving))
    return service(world, GrpcBackend(model_server.address, run.serving))


def _heavy_users(users, n=5):
    return sorted(users.user_ids(), key=lambda u: -len(users.get(u).history))[:n]


# ----------------------------------------------------------------------------- contract


def test_homepage_contract(svc, world):
    run, catalogue, users = world
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


def test_parity_in_process_and_grpc(world, model_server):
    run, _, users = world
    local = service(world, InProcessBackend(run.serving))
    remote = service(world, GrpcBackend(model_server.address, run.serving))
    for user in _heavy_users(users) + [10**9]:
        a, b = local.homepage(user), remote.homepage(user)
        assert [p.item_id for p in a.items] == [p.item_id for p in b.items]
        np.testing.assert_allclose([p.score for p in a.items], [p.score for p in b.items],
                                   rtol=1e-5)


# ----------------------------------------------------------------------------- failure


def test_model_server_down_falls_back_with_reason(world):
    run, _, users = world
    svc = service(world, GrpcBackend("127.0.0.1:1", run.serving, timeout_s=0.2))
    user = _heavy_users(users)[0]
    page = svc.homepage(user)
    assert page.fallback and "ServerUnavailable" in page.reason
    assert len(page.items) == CONFIG.k and not {p.item_id for p in page.items} & users.get(
        user).watched
    # after breaker_failures failures the breaker opens: no more calls, still answered
    for _ in range(CONFIG.breaker_failures):
        svc.homepage(user)
    assert svc.query_breaker.state == "open"
    page = svc.homepage(user)
    assert page.fallback and "CircuitOpen" in page.reason


def test_deadline_miss_falls_back(world):
    run, _, users = world
    tight = ServingConfig(k=10, query_deadline_ms=1e-6)
    page = service(world, InProcessBackend(run.serving), tight).homepage(_heavy_users(users)[0])
    assert page.fallback and "DeadlineExceeded" in page.reason


def test_index_from_another_run_is_refused(world, tmp_path):
    run, _, users = world
    base = tmp_path / "serving"
    shutil.copytree(run.serving, base)
    (index_dir,) = [p for p in (base / RETRIEVAL_INDEX).iterdir() if p.name.isdigit()]
    meta = json.loads((index_dir / "index.json").read_text())
    meta["metadata"]["training_run"] = "another-run"
    (index_dir / "index.json").write_text(json.dumps(meta))
    _, catalogue, _ = world
    svc = HomepageService(InProcessBackend(base), IndexStore(base), catalogue, users, CONFIG)
    page = svc.homepage(_heavy_users(users)[0])
    assert page.fallback and "ModelMismatch" in page.reason and "another-run" in page.reason


# ----------------------------------------------------------------------------- HTTP


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_api(world):
    run, _, users = world
    with ApiServer(service(world, InProcessBackend(run.serving)), port=0,
                   host="127.0.0.1") as api:
        user = _heavy_users(users)[0]
        status, body = _get(api.port, f"/v1/users/{user}/homepage?k=5")
        page = json.loads(body)
        assert status == 200 and page["user_id"] == user and len(page["items"]) == 5
        assert page["fallback"] is False
        status, body = _get(api.port, "/v1/users/abc/homepage")
        assert status == 400 and "user id must be an integer, got 'abc'" in body
        status, body = _get(api.port, f"/v1/users/{user}/homepage?k=0")
        assert status == 400 and "k must be an integer between 1 and 500" in body
        assert _get(api.port, "/nope")[0] == 404
        status, body = _get(api.port, "/healthz")
        assert status == 200 and json.loads(body)["query_breaker"] == "closed"
        status, body = _get(api.port, "/metrics")
        assert "marquee_homepage_requests_total 1" in body
        assert "marquee_http_errors_total 2" in body
