"""A restart puts back the events earlier runs logged (``serving.ingest.wiring.open_writes``: the
write-ahead log compacted into Parquet parts, each row put back through the write path minus the
log append): on the tiny catalogue of ``test_homepage``, with a real write-ahead log and its
parts, the embedded store, a real ``redis-server`` (the one of ``test_feature_store``) and real
HTTP on loopback.

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
from serving.build import build_service
from serving.homepage.service import HomepageService
from serving.ingest.wal import WriteAheadLog
from serving.ingest.wiring import open_writes
from serving.models.index_store import IndexStore
from serving.state.feature_store import UserFeatures
from serving.state.records import Event
from serving.state.redis_store import RedisStore
from serving.state.resilient_store import ResilientStore
from tests import test_homepage
from tests.http_client import get, post, running
from tests.redis_server import RedisServer, needs_redis
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
HOUR = 3600


def watch(user: int, item: int, ts: int, seconds: float = 600.0, device: str = "tv") -> Event:
    return Event(user, item, ts, c.EVENT_WATCH, seconds, device)


def impression(user: int, item: int, ts: int, device: str = "tv") -> Event:
    return Event(user, item, ts, c.EVENT_IMPRESSION, 0.0, device, position=1)


def restart(service: HomepageService, event_log, data_dir=None):
    """What ``marquee serve --event-log`` does at start-up and on exit, with no request between:
    compact and put back what the log holds, then drain and close it. Returns the Writes."""
    writes = open_writes(service, event_log, data_dir=data_dir)
    writes.close()
    return writes


def log_directly(event_log, *events) -> None:
    """Logs ``events`` as an earlier run did, without applying them to any state (the process
    stopped before its store took them), and leaves them in the log uncompacted."""
    with WriteAheadLog(event_log) as wal:
        for event in events:
            wal.append(c.INTERACTIONS, event.to_row())


def logged(event_log) -> pd.DataFrame:
    """The accepted events (not the served pages' impressions, in part-x files)."""
    files = sorted(f for f in (event_log / c.INTERACTIONS).glob("*.parquet")
                   if not f.name.startswith("part-x"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.fixture
def info(caplog):
    caplog.set_level(logging.INFO, logger="serving")
    return caplog


# ----------------------------------------------------------------------------- embedded store


def test_a_watch_is_still_excluded_and_named_after_a_restart_over_http(model_base, tmp_path):
    svc = make(model_base)
    home = f"/v1/users/{LIGHT}/homepage"
    with running(svc, event_log=tmp_path) as api:
        before = json.loads(get(api.port, home)[1])
        assert before["items"][0]["item_id"] == 6, before  # what the watch must remove
        status, body = post(api.port, "/v1/events", watch(LIGHT, 6, NOW).to_row())
        assert status == 200, body

    restarted = make(model_base)  # the same data, the same event log folder
    with running(restarted, event_log=tmp_path) as api:
        assert api.writes.report.applied == {"events": 1}
        page = json.loads(get(api.port, home)[1])
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
    w = open_writes(svc, tmp_path)
    for event in EVENTS:
        w.path.accept("events", event.to_row())
    w.close()
    expected = UserFeatures(LIGHT, recent_watches=(9, 8, 7, 6), watched=frozenset({6, 7, 8, 9, 10}),
                            session_length=1, last_device="tv", last_event_at=NOW + 3 * HOUR,
                            generation=5)
    assert svc.store.features(LIGHT) == expected

    restarted = make(model_base)
    assert restart(restarted, tmp_path).report.applied == {"events": 6}
    assert restarted.store.features(LIGHT) == expected
    assert f"event log {tmp_path}: put back 6 events" in info.text
    assert "feature store: 6 recorded, 0 held already" in info.text
    assert len(logged(tmp_path)) == 6  # nothing appended by the restart
    # opening again finds everything in the store: nothing is recorded twice
    restart(restarted, tmp_path)
    assert restarted.store.features(LIGHT) == expected
    assert "feature store: 0 recorded, 6 held already" in info.text
    assert len(logged(tmp_path)) == 6


def test_events_the_data_loaded_are_not_put_back_again(model_base, tmp_path, info):
    """``--event-log`` = ``--data``: the restart loads the logged watch with the dataset."""
    _write_dataset(tmp_path)  # users 1-4 and 100-105; item 11 nobody watched
    config = ServingConfig(k=6, **GENEROUS)
    svc = build_service(Config(serving=config), tmp_path, model_base)
    w = open_writes(svc, tmp_path, data_dir=tmp_path)
    w.path.accept("events", watch(LIGHT, 11, NOW).to_row())
    w.close()  # compacted into the dataset's interactions folder, beside its part

    restarted = build_service(Config(serving=config), tmp_path, model_base)
    assert restarted.users.get(LIGHT).history == (11,)  # loaded from the dataset folder
    assert "events" not in restart(restarted, tmp_path, data_dir=tmp_path).report.applied
    assert "were loaded with the serving data" in info.text
    assert restarted.store.features(LIGHT).recent_watches == ()
    assert restarted.profile(LIGHT)[0].history == (11,)  # once, not (11, 11)
    restarted.refresh_trending(NOW)
    # one watch at NOW, weight 1; counted twice it would be 2
    assert restarted.sources["trending"].scores[restarted.catalogue.row[11]] == 1.0


def test_a_damaged_file_and_a_row_that_no_longer_validates_are_skipped_and_named(
        model_base, tmp_path, info):
    log_directly(tmp_path, watch(LIGHT, 6, NOW),
                 watch(LIGHT, 99, NOW + 1),  # a title the catalogue no longer holds
                 watch(LIGHT, 7, NOW + 2))
    # the earlier run was killed in the middle of its next append: a torn record at the tail
    (segment,) = (tmp_path / "wal" / "0").glob("seg-*.wal")
    size = segment.stat().st_size
    with open(segment, "ab") as fh:
        fh.write(b"\x40\x00")  # 2 of the 8 header bytes
    folder = tmp_path / c.INTERACTIONS
    folder.mkdir()
    (folder / "part-0000000001-0000.parquet").write_bytes(b"PAR1 half a file")

    svc = make(model_base)
    restart(svc, tmp_path)  # does not raise
    assert svc.store.features(LIGHT).recent_watches == (7, 6)  # the two good rows
    assert f"{segment.name} at byte {size}: partial header (2 of 8 bytes); truncated" in info.text
    assert not segment.exists()  # compacted at open: the three good records
    good = folder / "part-w0000000000000001-0000000000000003-r0.parquet"
    assert pd.read_parquet(good)[c.ITEM_ID].tolist() == [6, 99, 7]
    assert f"{folder / 'part-0000000001-0000.parquet'} is unreadable" in info.text
    assert any(f"{good} row 1: " in m and "item_id: 99 is not in the catalogue" in m
               for m in info.messages), info.messages
    assert ("put back 2 events; skipped 1 that no longer validate; 1 part file(s) unreadable"
            in info.text)
    warned = [r.message for r in info.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and warned[-1].startswith(f"event log {tmp_path}: put back 2"), warned


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
    w = open_writes(svc, tmp_path)
    w.path.accept("events", watch(LIGHT, 6, NOW).to_row())
    w.path.accept("events", watch(LIGHT, 7, NOW + 60).to_row())
    w.close()
    svc.store.close()
    # A watch the log holds and Redis does not (accepted while Redis was down; the process
    # stopped before its queue drained): logged here without the store.
    log_directly(tmp_path, watch(LIGHT, 8, NOW + 120))

    restarted = on_redis(model_base, redis_server.url)
    restart(restarted, tmp_path)
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
    restart(again, tmp_path)
    features = again.store.features(LIGHT)
    assert features.recent_watches == (8, 7, 6) and features.generation == 3
    again.store.close()
    assert len(logged(tmp_path)) == 3


@needs_redis
def test_when_redis_cannot_be_read_nothing_is_queued_for_it(model_base, tmp_path, info):
    """Redis may hold the logged events: unread, they must not be queued to be recorded there
    again when it is back, only kept in this process's copy."""
    log_directly(tmp_path, watch(LIGHT, 6, NOW), watch(LIGHT, 7, NOW + 60))
    server = RedisServer(tmp_path / "redis").start()
    svc = on_redis(model_base, server.url)
    server.stop()  # after start-up's check, before the replay reads Redis
    try:
        restart(svc, tmp_path)
        assert svc.store.stats()["replay_pending"] == 0
        assert svc.store.fallback.features(LIGHT).recent_watches == (7, 6)
        assert ("feature store: 0 recorded, 0 held already, 2 not recorded (Redis could not "
                "be read; they are in this process's copy only)") in info.text
    finally:
        svc.store.close()
