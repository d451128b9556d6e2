"""Redis losing its data while the server runs (restarted empty with SIGKILL, FLUSHALL): the
resilient store sees its sentinel gone, answers from its copy meanwhile and re-seeds Redis, so
a title the user just watched stays off their page. Real ``redis-server`` processes on loopback
(``tests/redis_server.py``), read back with a plain redis client.

Small probe intervals keep every wait short; a wait is a poll with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable

import pytest
import redis

from marquee.data import contract as c
from serving.state.feature_store import NO_GENERATION, BatchFeatures, EmbeddedStore, UserSnapshot
from serving.state.records import Event, Onboarding
from serving.state.redis_store import RedisStore
from serving.state.resilient_store import ResilientStore
from tests.redis_server import REDIS_SERVER, RedisServer

T0 = 1_700_000_000
RECENT = 3
PROBE_S = 0.05


def watch(user: int, item: int, ts: int, seconds: float = 600.0, device: str = "tv") -> Event:
    return Event(user, item, ts, c.EVENT_WATCH, seconds, device)


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)


@pytest.fixture
def server(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: `apt-get install -y redis-server`")
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop()


@pytest.fixture
def warnings(caplog):
    caplog.set_level(logging.WARNING, logger="serving.state.resilient_store")
    return caplog


def resilient(url: str, probe_interval_s: float = PROBE_S) -> ResilientStore:
    return ResilientStore(RedisStore.connect(url, timeout_s=0.25, recent_length=RECENT),
                          probe_interval_s=probe_interval_s)


def reseeded(*stores: ResilientStore, times: int = 1) -> Callable[[], bool]:
    return lambda: all(s.stats()["redis_reseeds_total"] == times and s.redis_up for s in stores)


def lost_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lost its data" in r.getMessage()]


def key(user: int, part: str) -> str:
    return f"marquee:u:{{{user}}}:{part}"


def test_the_copy_exports_what_a_reseed_needs():
    now = [1000.0]
    store = EmbeddedStore(recent_length=RECENT, clock=lambda: now[0])
    store.record_event(watch(1, 10, T0))
    store.record_event(watch(1, 11, T0 + 60, seconds=30))  # not a positive: not in recent
    store.record_event(watch(1, 12, T0 - 60))  # late: first in recent (arrival order)
    store.record_event(Onboarding(1, ("drama",), T0 + 10))
    store.record_event(Onboarding(1, ("comedy",), T0 + 5))  # answered earlier: not taken
    assert store.snapshot(1) == UserSnapshot(
        1, recent=((12, T0 - 60), (10, T0)), watched=frozenset({10, 11, 12}), session_length=3,
        last_event_at=T0 + 60, last_device="tv", generation=5, onboarding=("drama",),
        onboarding_at=T0 + 10)
    assert store.snapshot(2) is None and store.user_ids() == [1]
    row = BatchFeatures({"drama": 1.0}, 1, 600.0)
    store.load_batch_features(7, {1: row}, ttl_s=60)
    now[0] += 20
    batch = store.export_batch()  # the time left: 60 - 20
    assert (batch.version, batch.version_ttl_s, dict(batch.rows)) == (7, 40.0, {1: (7, 40.0, row)})
    now[0] += 41
    assert store.export_batch() == type(batch)(None, 0.0, {})


def test_a_watch_survives_redis_restarting_empty(server, warnings):
    store = resilient(server.url)
    plain = redis.Redis(port=server.port, decode_responses=True)
    try:
        store.record_event(watch(1, 10, T0))
        store.record_event(watch(1, 11, T0 + 60, seconds=30))  # watched, not a positive
        store.record_event(Onboarding(1, ("drama", "comedy"), T0 + 120))
        f = store.features(1)
        assert (f.recent_watches, f.watched, f.generation) == ((10,), {10, 11}, 3)
        run_id = plain.info("server")["run_id"]

        server.kill()  # SIGKILL: nothing saved
        f = store.features(1)  # Redis is down: from the copy
        assert f.watched == {10, 11} and f.generation == NO_GENERATION
        store.record_event(watch(1, 12, T0 + 90))  # queued for Redis, and in the copy
        assert store.stats()["replay_pending"] == 1
        server.start()  # a new, empty redis-server on the same port
        assert plain.info("server")["run_id"] != run_id
        wait_for("a re-seed", reseeded(store))

        # From Redis again. The queued watch came with the copy, so it is not replayed on top
        # (that would make the recent watches 12, 12, 10).
        f = store.features(1)
        assert f.watched == {10, 11, 12} and f.recent_watches == (12, 10)
        assert f.onboarding_genres == ("drama", "comedy")
        assert (f.session_length, f.last_event_at, f.last_device) == (3, T0 + 90, "tv")
        assert f.generation == 5  # one above the copy's 4: a page cached meanwhile is stale
        assert plain.smembers(key(1, "watched")) == {"10", "11", "12"}  # in Redis, directly
        assert plain.lrange(key(1, "recent"), 0, -1) == ["12", "10"]
        assert plain.lrange(key(1, "recent_at"), 0, -1) == [str(T0 + 90), str(T0)]
        assert json.loads(plain.hget(key(1, "state"), "onboarding")) == ["drama", "comedy"]
        assert plain.get("marquee:epoch") == store.primary.epoch is not None
        stats = store.stats()
        assert stats["redis_outages_total"] == 1 and stats["reseeded_users_total"] == 1
        assert stats["redis_reseeding"] == 0 and stats["replay_pending"] == 0
        (line,) = lost_lines(warnings)
        assert "sentinel marquee:epoch was gone" in line and "re-seeded 1 user(s)" in line
    finally:
        store.close()
        plain.close()


def test_flushall_is_seen_by_the_next_read_and_no_event_counts_twice(server, warnings,
                                                                     monkeypatch):
    # A long probe interval: the read is what sees the loss (the probe is then woken).
    store = resilient(server.url, probe_interval_s=60)
    plain = redis.Redis(port=server.port, decode_responses=True)
    row = BatchFeatures({"drama": 1.0}, 2, 400.0)
    try:
        store.record_event(watch(1, 10, T0))
        store.record_event(watch(1, 12, T0 + 60))
        store.record_event(watch(2, 10, T0))
        store.load_batch_features(7, {1: row}, ttl_s=60)
        plain.flushall()
        store.record_event(watch(1, 13, T0 + 120))  # into the emptied Redis, and the copy
        assert plain.lrange(key(1, "recent"), 0, -1) == ["13"]

        gate, merging = threading.Event(), threading.Event()
        merge = store.primary.merge_users

        def held_merge(snapshots):
            merging.set()
            assert gate.wait(5)
            return merge(snapshots)

        monkeypatch.setattr(store.primary, "merge_users", held_merge)
        f = store.features(1)  # sees the sentinel gone: answered from the copy
        assert f.recent_watches == (13, 12, 10) and f.generation == NO_GENERATION
        assert merging.wait(5)  # the re-seed is under way, held: reads still go to the copy
        assert store.stats()["redis_reseeding"] == 1 and not store.redis_up
        assert store.features(2).generation == NO_GENERATION
        assert store.get_cached(1, 7) is None and store.batch_version() == 7  # the copy's
        # user 2's lock is free (the re-seed holds user 1's): into Redis and the copy
        store.record_event(watch(2, 14, T0 + 180))
        gate.set()
        wait_for("a re-seed", reseeded(store))

        # By hand, user 1: Redis held 13 (generation 1, session 1), the copy 13, 12, 10
        # (generation 3, session 3, same last event): 13 once, generation max(1, 3) + 1.
        f = store.features(1)
        assert f.recent_watches == (13, 12, 10) and f.watched == {10, 12, 13}
        assert (f.generation, f.session_length, f.last_event_at) == (4, 3, T0 + 120)
        assert (f.batch, f.batch_version, store.batch_version()) == (row, 7, 7)
        # user 2: 14 reached Redis during the re-seed and is in the copy too: once
        f = store.features(2)
        assert f.recent_watches == (14, 10) and f.generation == 3
        stats = store.stats()
        assert stats["redis_reseeds_total"] == 1 and stats["reseeded_users_total"] == 2
        assert stats["reseeded_batch_rows_total"] == 1 and stats["redis_outages_total"] == 0
        assert stats["reseed_batch_lost_version"] == 0
        (line,) = lost_lines(warnings)
        assert "re-seeded 2 user(s) and 1 batch feature row(s) (batch features version 7)" \
            in line
    finally:
        store.close()
        plain.close()


def test_batch_features_loaded_by_another_process_are_reported_lost(server, warnings):
    loader = RedisStore.connect(server.url)  # as `marquee features load`
    store = resilient(server.url)
    try:
        store.record_event(watch(1, 10, T0))
        loader.load_batch_features(9, {1: BatchFeatures({"drama": 1.0}, 1, 600.0)}, ttl_s=60)
        wait_for("the probe to see version 9", lambda: store.stats()["redis_batch_version"] == 9)
        loader.client.flushall()
        wait_for("a re-seed", reseeded(store))
        assert store.features(1).recent_watches == (10,) and store.features(1).batch is None
        assert store.stats()["reseed_batch_lost_version"] == 9
        (line,) = lost_lines(warnings)
        assert "batch features version 9 (loaded by another process) are gone" in line
        assert "run `marquee features load` again" in line
        loader.load_batch_features(10, {1: BatchFeatures({}, 1, 130.0)}, ttl_s=60)
        wait_for("the loss to clear", lambda: store.stats()["reseed_batch_lost_version"] == 0)
    finally:
        store.close()
        loader.close()


def test_a_restart_that_kept_the_data_replays_the_queue_and_does_not_reseed(server):
    store = resilient(server.url)
    plain = redis.Redis(port=server.port, decode_responses=True)
    try:
        store.record_event(watch(1, 10, T0))
        plain.save()  # dump.rdb in the server's folder, sentinel included
        server.kill()
        store.record_event(watch(1, 11, T0 + 60))  # Redis is down: queued
        assert store.stats()["replay_pending"] == 1
        server.start()  # loads dump.rdb: the sentinel is there
        wait_for("Redis to serve again", lambda: store.redis_up)
        # The reconnect's check found the sentinel: the queue was replayed, no re-seed (one
        # would give generation max(1, 2) + 1 = 3).
        f = store.features(1)
        assert f.recent_watches == (11, 10) and f.generation == 2
        stats = store.stats()
        assert stats["redis_reseeds_total"] == 0 and stats["redis_outages_total"] == 1
        assert stats["replay_pending"] == 0
    finally:
        store.close()
        plain.close()


def test_two_replicas_reseeding_one_user_converge(server, warnings):
    a, b = resilient(server.url), resilient(server.url)
    plain = redis.Redis(port=server.port, decode_responses=True)
    try:
        assert a.primary.epoch == b.primary.epoch  # b adopted a's sentinel
        a.record_event(watch(1, 10, T0))
        b.record_event(watch(1, 20, T0 + 60, device="mobile"))
        a.record_event(Onboarding(1, ("drama",), T0 + 120))
        b.record_event(Onboarding(1, ("comedy",), T0 + 30))  # arrives last, answered earlier
        assert a.features(1).onboarding_genres == ("drama",)
        plain.flushall()
        wait_for("both replicas to re-seed", reseeded(a, b))

        # By hand: a's copy holds 10 @ T0, drama @ T0 + 120 (generation 2, session 1); b's 20 @
        # T0 + 60 on mobile, comedy @ T0 + 30 (generation 2, session 1). Either order: the first
        # merge gives generation 3, the second 4; the later answer and the later last event win;
        # the session is b's 1 (each replica saw one event of the session of 2).
        f = a.features(1)
        assert f == b.features(1)
        assert f.recent_watches == (20, 10) and f.watched == {10, 20}
        assert f.onboarding_genres == ("drama",) and f.generation == 4
        assert (f.last_event_at, f.last_device, f.session_length) == (T0 + 60, "mobile", 1)
        assert plain.lrange(key(1, "recent"), 0, -1) == ["20", "10"]
        assert a.primary.epoch == b.primary.epoch == plain.get("marquee:epoch")
        assert len(lost_lines(warnings)) == 2  # one line per replica
    finally:
        for s in (a, b):
            s.close()
        plain.close()


def test_merge_users_by_hand(server):
    store = RedisStore.connect(server.url, recent_length=RECENT)
    try:
        store.record_event(watch(1, 12, T0 + 60))
        store.record_event(watch(1, 13, T0 + 120))  # Redis: 13 @ 120, 12 @ 60; generation 2
        ours = UserSnapshot(1, recent=((14, T0 + 90), (12, T0 + 60), (10, T0)),
                            watched=frozenset({10, 12, 14, 15}), session_length=3,
                            last_event_at=T0 + 90, last_device="web", generation=5,
                            onboarding=("horror",), onboarding_at=T0)
        assert store.merge_users([ours]) == 1
        # 12 @ 60 is in both: once. Merged by time: 13 (120), 14 (90), 12 (60); 10 is 4th of 3.
        f = store.features(1)
        assert f.recent_watches == (13, 14, 12) and f.watched == {10, 12, 13, 14, 15}
        # Redis's last event (120) is later than ours (90): its device and session stay.
        assert (f.last_event_at, f.last_device, f.session_length) == (T0 + 120, "tv", 2)
        assert f.onboarding_genres == ("horror",) and f.generation == 6  # max(2, 5) + 1
        store.merge_users([ours])  # again: the same but for the generation
        assert store.features(1) == dataclasses.replace(f, generation=7)
    finally:
        store.close()


def test_a_reseed_that_fails_keeps_reads_on_the_copy_and_is_tried_again(server, warnings):
    store = resilient(server.url)
    plain = redis.Redis(port=server.port, decode_responses=True)
    try:
        store.record_event(watch(1, 10, T0))
        plain.acl_setuser("default", reset=False, commands=["-evalsha", "-eval"])  # NOPERM
        plain.flushall()  # the merge scripts are refused: a ResponseError, not an outage
        wait_for("two failed probes", lambda: store.stats()["probe_errors_total"] >= 2)
        f = store.features(1)  # not the emptied Redis: the copy
        assert f.watched == {10} and f.generation == NO_GENERATION
        assert store.stats()["redis_reseeding"] == 1 and store.stats()["redis_outages_total"] == 0
        plain.acl_setuser("default", reset=False, commands=["+evalsha", "+eval"])
        wait_for("a re-seed", reseeded(store))
        f = store.features(1)
        assert f.watched == {10} and f.generation == 2
        failed = [r for r in warnings.records if "the Redis probe failed" in r.getMessage()]
        assert len(failed) == 1  # logged once, not at every probe
    finally:
        store.close()
        plain.close()
