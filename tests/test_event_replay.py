"""A restart puts back the events earlier runs logged (``serving.build.attach_logs``): on the tiny
catalogue of ``test_homepage``, with real part files of the event log, the embedded store, a real
``redis-server`` (the one of ``test_feature_store``) and real HTTP on loopback.

In the tiny world user LIGHT (2) has watched item 1; their homepage leads with item 6, and a
watch of 6 makes the first row "Because you watched Title 6" (6 is co-watched with 7 by user
100, and 7 is not watched yet).
"""

import json
import logging

import pandas as pd
import pytest
import redis

from marquee.config import Config, ServingConfig
from marquee.data import contract as c
from serving.api.legacy_http import ApiServer
from serving.build import attach_logs, build_service
from serving.homepage.service import HomepageService
from serving.ingest.events import EventLog
from serving.models.index_store import IndexStore
from serving.state.feature_store import RedisStore, UserFeatures
from serving.state.resilient_store import ResilientStore
from tests import test_feature_store, test_homepage
from tests.http_client import get, post
from tests.test_feature_store import RedisServer, impression, needs_redis, watch
from tests.test_homepage import (
    DAY,
    GENEROUS,
    LIGHT,
    NOW,
    FixedModelBackend,
    catalogue,
    interactions,
    make,
    users,
)
from tests.test_signup import _write_dataset

model_base = test_homepage.model_base  # the tiny model base fixture, shared
redis_server = test_feature_store.redis_server  # a throwaway redis-server for this module
HOUR = 3600


def close(paths) -> None:
    """What ``marquee serve`` does on exit: the open part file is closed under its name."""
    for log in paths.logs:
        log.close()


def logged(event_log) -> pd.DataFrame:
    files = sorted((event_log / c.INTERACTIONS).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.fixture
def info(caplog):
    caplog.set_level(logging.INFO, logger="serving")
    return caplog


# ----------------------------------------------------------------------------- embedded store


def test_a_watch_is_still_excluded_and_named_after_a_restart_over_http(model_base, tmp_path):
    svc = make(model_base)
    w = attach_logs(svc, tmp_path)
    home = f"/v1/users/{LIGHT}/homepage"
    with ApiServer(svc, 0, "127.0.0.1", ingest=w.ingest) as api:
        before = json.loads(get(api.port, home)[1])
        assert before["items"][0]["item_id"] == 6, before  # what the watch must remove
        status, body = post(api.port, "/v1/events", watch(LIGHT, 6, NOW).to_row())
        assert status == 200, body
    close(w)

    restarted = make(model_base)  # the same data, the same event log folder
    w2 = attach_logs(restarted, tmp_path)
    with ApiServer(restarted, 0, "127.0.0.1", ingest=w2.ingest) as api:
        page = json.loads(get(api.port, home)[1])
    close(w2)
    assert not page["fallback"] and page["stage"] == "light", page
    assert 6 not in [p["item_id"] for p in page["items"]]
    assert page["rows"][0]["title"] == "Because you watched Title 6"
    assert [p["item_id"] for p in page["rows"][0]["items"]] == [7]
    # trending counts the watch once: user 100's at NOW - 1 day (0.5 ** (1/3) with the 3-day
    # half-life) plus this one at NOW (1)
    scores = restarted.sources["trending"].scores
    assert scores[restarted.catalogue.row[6]] == pytest.approx(1 + 0.5 ** (1 / 3))
    # put back, not logged again: the next pipeline run reads the watch once
    rows = logged(tmp_path)
    assert rows[[c.USER_ID, c.ITEM_ID]].values.tolist() == [[LIGHT, 6]]


# Arrival order, with a late event (4) and a new session (6). By hand: positive watches 6, 7,
# 8, 9 (10 is too short) -> recent (9, 8, 7, 6) in arrival order; five watches -> generation 5;
# the last event is 3 h after the others -> session 1, device tv.
EVENTS = [
    watch(LIGHT, 6, NOW),
    impression(LIGHT, 9, NOW + 60, device="mobile"),
    watch(LIGHT, 7, NOW + 120, device="mobile"),
    watch(LIGHT, 8, NOW - 100, device="tablet"),  # late: in the session, not the latest
    watch(LIGHT, 10, NOW + 180, seconds=5.0),
    watch(LIGHT, 9, NOW + 3 * HOUR, device="tv"),
]


def test_a_restart_puts_the_online_features_back_as_they_were(model_base, tmp_path, info):
    svc = make(model_base)
    w = attach_logs(svc, tmp_path)
    for event in EVENTS:
        w.ingest.accept(event.to_row())
    close(w)
    expected = UserFeatures(LIGHT, recent_watches=(9, 8, 7, 6), watched=frozenset({6, 7, 8, 9, 10}),
                            session_length=1, last_device="tv", last_event_at=NOW + 3 * HOUR,
                            generation=5)
    assert svc.store.features(LIGHT) == expected

    restarted = make(model_base)
    close(attach_logs(restarted, tmp_path))
    assert restarted.store.features(LIGHT) == expected
    assert "put back 6 event(s) logged by earlier runs (1 part file(s)" in info.text
    assert "feature store: 6 recorded, 0 held already" in info.text
    assert len(logged(tmp_path)) == 6  # nothing appended by the restart
    # attaching again finds everything in the store: nothing is recorded twice
    close(attach_logs(restarted, tmp_path))
    assert restarted.store.features(LIGHT) == expected
    assert "feature store: 0 recorded, 6 held already" in info.text


def test_events_the_data_loaded_are_not_put_back_again(model_base, tmp_path, info):
    """``--event-log`` = ``--data``: the restart loads the logged watch with the dataset."""
    _write_dataset(tmp_path)  # users 1-4 and 100-105; item 11 nobody watched
    config = ServingConfig(k=6, **GENEROUS)
    svc = build_service(Config(serving=config), tmp_path, model_base)
    w = attach_logs(svc, tmp_path, data_dir=tmp_path)
    w.ingest.accept(watch(LIGHT, 11, NOW).to_row())
    close(w)

    restarted = build_service(Config(serving=config), tmp_path, model_base)
    assert restarted.users.get(LIGHT).history == (11,)  # loaded from the dataset folder
    close(attach_logs(restarted, tmp_path, data_dir=tmp_path))
    assert "were loaded with the serving data" in info.text
    assert restarted.store.features(LIGHT).recent_watches == ()
    assert restarted.profile(LIGHT)[0].history == (11,)  # once, not (11, 11)
    restarted.refresh_trending(NOW)
    # one watch at NOW, weight 1; counted twice it would be 2
    assert restarted.sources["trending"].scores[restarted.catalogue.row[11]] == 1.0


def test_a_damaged_file_and_a_row_that_no_longer_validates_are_skipped_and_named(
        model_base, tmp_path, info):
    with EventLog(tmp_path) as log:
        log.append(watch(LIGHT, 6, NOW))
        log.append(watch(LIGHT, 99, NOW + 1))  # a title the catalogue no longer holds
        log.append(watch(LIGHT, 7, NOW + 2))
    good = log.files[0]
    folder = tmp_path / c.INTERACTIONS
    (folder / "part-0000000001-0000.parquet").write_bytes(b"PAR1 half a file")
    (folder / "part-9999999999-0000.parquet.inprogress").write_bytes(b"PAR1 no footer")

    svc = make(model_base)
    close(attach_logs(svc, tmp_path))  # does not raise
    assert svc.store.features(LIGHT).recent_watches == (7, 6)  # the two good rows
    assert (f"{folder / 'part-0000000001-0000.parquet'}: unreadable from row 0 on"
            in info.text)
    assert f"{good} row 1: item_id: 99 is not in the catalogue" in info.text
    assert "part-9999999999-0000.parquet.inprogress was never closed" in info.text
    assert ("put back 2 event(s) logged by earlier runs (2 part file(s)" in info.text)
    assert "skipped 1 row(s) that no longer validate and 2 unreadable file(s)" in info.text
    warned = [r.message for r in info.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and warned[-1].startswith("put back 2 event(s)"), warned


# ----------------------------------------------------------------------------- redis


def on_redis(model_base, url: str) -> HomepageService:
    """A service whose features are in Redis (as ``marquee serve --redis``)."""
    store = ResilientStore(RedisStore.connect(url, timeout_s=1.0))
    return HomepageService(FixedModelBackend(), IndexStore(model_base), catalogue(), users(),
                           ServingConfig(k=6, **GENEROUS), now=lambda: NOW,
                           interactions=interactions(), store=store)


@needs_redis
def test_redis_that_outlived_the_restart_gets_no_event_twice(model_base, redis_server,
                                                              tmp_path, info):
    redis.Redis.from_url(redis_server.url).flushall()
    svc = on_redis(model_base, redis_server.url)
    w = attach_logs(svc, tmp_path)
    w.ingest.accept(watch(LIGHT, 6, NOW).to_row())
    w.ingest.accept(watch(LIGHT, 7, NOW + 60).to_row())
    close(w)
    svc.store.close()
    # A watch the log holds and Redis does not (accepted while Redis was down; the process
    # stopped before its queue drained): logged here without the store.
    with EventLog(tmp_path) as log:
        log.append(watch(LIGHT, 8, NOW + 120))

    restarted = on_redis(model_base, redis_server.url)
    close(attach_logs(restarted, tmp_path))
    # By hand: Redis held 6 and 7 (last event NOW + 60); only 8 is later, so only 8 is
    # recorded: one more watch (generation 3) in the same session (3 events).
    features = restarted.store.features(LIGHT)
    assert features.recent_watches == (8, 7, 6)  # not (8, 7, 6, 7, 6)
    assert (features.generation, features.session_length) == (3, 3)
    assert "feature store: 1 recorded, 2 held already" in info.text
    # this process's copy (served while Redis is down) has all three, once
    assert restarted.store.fallback.features(LIGHT).recent_watches == (8, 7, 6)
    # live trending is per process: the three watches are back in it, once each. Over a
    # service that never saw them, refreshed as of the latest (NOW + 120), each adds
    # 0.5 ** (age / 3 days): 6 at age 120 s, 7 at 60 s, 8 at 0 s.
    unseen = on_redis(model_base, redis_server.url)
    unseen.refresh_trending(NOW + 120)
    added = restarted.sources["trending"].scores - unseen.sources["trending"].scores
    assert [added[restarted.catalogue.row[i]] for i in (6, 7, 8)] == pytest.approx(
        [0.5 ** (120 / (3 * DAY)), 0.5 ** (60 / (3 * DAY)), 1.0])
    assert added.sum() == pytest.approx(sum(added[restarted.catalogue.row[i]] for i in (6, 7, 8)))
    for s in (restarted, unseen):
        s.store.close()

    # Redis lost everything (restarted without persistence): every event goes back, once.
    redis.Redis.from_url(redis_server.url).flushall()
    again = on_redis(model_base, redis_server.url)
    close(attach_logs(again, tmp_path))
    features = again.store.features(LIGHT)
    assert features.recent_watches == (8, 7, 6) and features.generation == 3
    again.store.close()
    assert len(logged(tmp_path)) == 3



@needs_redis
def test_when_redis_cannot_be_read_nothing_is_queued_for_it(model_base, tmp_path, info):
    """Redis may hold the logged events: unread, they must not be queued to be recorded there
    again when it is back, only kept in this process's copy."""
    with EventLog(tmp_path) as log:
        log.append(watch(LIGHT, 6, NOW))
        log.append(watch(LIGHT, 7, NOW + 60))
    server = RedisServer(tmp_path / "redis").start()
    svc = on_redis(model_base, server.url)
    server.stop()  # after start-up's check, before the replay reads Redis
    try:
        close(attach_logs(svc, tmp_path))
        assert svc.store.stats()["replay_pending"] == 0
        assert svc.store.fallback.features(LIGHT).recent_watches == (7, 6)
        assert ("feature store: 0 recorded, 0 held already, 2 not recorded (Redis could not "
                "be read; they are in this process's copy only)") in info.text
    finally:
        svc.store.close()
