"""The feature store contract on every implementation (embedded, Redis, Redis behind the resilient
wrapper), the wrapper through a real Redis outage and restart, event validation, the event log
and the batch features loader.

Redis tests run a real ``redis-server`` on a free loopback port in a temporary folder (no
persistence; ``tests/redis_server.py``); they are skipped when the binary is missing (CI's
``.ci/run`` installs it). Redis restarting empty or flushed: ``tests/test_redis_restart.py``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from marquee.data import contract as c
from marquee.data.validate import validate_dataset
from marquee.features_load import (
    NoPushedVersion,
    compute_batch_features,
    latest_pushed_version,
    load_features,
)
from serving.ingest.events import EventValidator, EventWrites, InvalidEvent
from serving.ingest.sinks import ParquetSink
from serving.ingest.wal import WriteAheadLog
from serving.state.feature_store import (
    NO_GENERATION,
    BatchFeatures,
    EmbeddedStore,
    FeatureStore,
    StoreUnavailable,
)
from serving.state.records import Event, Onboarding
from serving.state.redis_store import RedisStore
from serving.state.resilient_store import ResilientStore
from tests.redis_server import RedisServer, free_port, needs_redis

T0 = 1_700_000_000
RECENT = 3  # recent watches kept, small enough to see the cap by hand
PAGE = {"user_id": 1, "items": [{"item_id": 10, "score": 0.5}], "model_version": 7}


def watch(user: int, item: int, ts: int, seconds: float = 600.0, device: str = "tv") -> Event:
    return Event(user, item, ts, c.EVENT_WATCH, seconds, device)


def impression(user: int, item: int, ts: int, device: str = "tv") -> Event:
    return Event(user, item, ts, c.EVENT_IMPRESSION, 0.0, device, position=1)


# ----------------------------------------------------------------------------- fixtures


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class Harness:
    store: FeatureStore
    advance: Callable[[float], None]  # lets TTLs run out: a fake clock, or real time on Redis


@pytest.fixture(params=["embedded", "redis", "resilient"])
def harness(request):
    if request.param == "embedded":
        clock = FakeClock()
        yield Harness(EmbeddedStore(recent_length=RECENT, clock=clock), clock.advance)
        return
    server = request.getfixturevalue("redis_server")
    redis.Redis.from_url(server.url).flushall()
    # A generous socket timeout: a slow reply on a busy machine must not look like an outage.
    store = RedisStore.connect(server.url, timeout_s=1.0, recent_length=RECENT)
    if request.param == "resilient":
        store = ResilientStore(store)
    yield Harness(store, time.sleep)
    assert request.param != "resilient" or store.stats()["fallbacks_total"] == 0
    store.close()


# ----------------------------------------------------------------------------- the contract


def test_events_update_online_features_in_the_same_call(harness):
    s = harness.store
    s.record_event(watch(1, 10, T0, 600))
    s.record_event(watch(1, 11, T0 + 100, 30, device="mobile"))  # under 120 s: not a positive
    s.record_event(watch(1, 12, T0 + 200, 300, device="web"))
    f = s.features(1)
    assert f.recent_watches == (12, 10)  # positives, most recent first
    assert f.watched == {10, 11, 12}  # every watch is excluded, positive or not
    assert f.session_length == 3
    assert f.last_device == "web" and f.last_event_at == T0 + 200
    assert f.generation == 3
    assert s.features(2) == dataclasses.replace(s.features(2), recent_watches=(), watched=set(),
                                                session_length=0, last_device=None,
                                                generation=0, batch=None)


def test_an_onboarding_answer_is_a_feature_and_invalidates_the_cache(harness):
    s = harness.store
    s.record_event(watch(1, 10, T0))
    assert s.put_cached(1, 7, {"page": "before the quiz"}, 60)
    s.record_event(Onboarding(1, ("comedy", "drama", "horror"), T0 + 1))
    f = s.features(1)
    assert f.onboarding_genres == ("comedy", "drama", "horror")  # in the order picked
    assert f.generation == 2 and f.recent_watches == (10,) and f.session_length == 1
    assert s.get_cached(1, 7) is None  # what the user should see changed
    s.record_event(Onboarding(1, ("scifi", "drama", "horror"), T0 + 3))
    assert s.features(1).onboarding_genres == ("scifi", "drama", "horror")  # the latest wins
    s.record_event(Onboarding(1, ("comedy", "scifi", "drama"), T0 + 2))  # arrives late
    assert s.features(1).onboarding_genres == ("scifi", "drama", "horror")  # by timestamp
    assert s.features(1).generation == 4  # each answer still counts as a change
    assert s.features(2).onboarding_genres == ()


def test_recent_watches_keep_the_last_n(harness):
    for n, item in enumerate([10, 11, 12, 13, 11]):
        harness.store.record_event(watch(1, item, T0 + n))
    f = harness.store.features(1)
    assert f.recent_watches == (11, 13, 12)  # RECENT = 3; a rewatch counts again
    assert f.watched == {10, 11, 12, 13}


def test_impressions_do_not_change_watches(harness):
    s = harness.store
    s.record_event(watch(1, 10, T0))
    before = s.features(1)
    s.record_event(impression(1, 20, T0 + 60, device="tablet"))
    after = s.features(1)
    assert after.recent_watches == before.recent_watches == (10,)
    assert after.watched == before.watched == {10}
    assert after.generation == before.generation == 1
    assert after.session_length == 2 and after.last_device == "tablet"


def test_session_length_splits_at_30_minutes(harness):
    s = harness.store
    # t = 0, 600, 1800 (+1200): one session of 3; 1800 + 1801: a new session of 1;
    # then a late event 10 s before the latest joins it (2); one from an hour ago changes nothing.
    for ts in (T0, T0 + 600, T0 + 1800):
        s.record_event(impression(1, 10, ts))
    assert s.features(1).session_length == 3
    s.record_event(impression(1, 10, T0 + 1800 + 1801, device="mobile"))
    assert s.features(1).session_length == 1
    s.record_event(impression(1, 10, T0 + 3591, device="web"))
    s.record_event(impression(1, 10, T0, device="web"))
    f = s.features(1)
    assert f.session_length == 2
    assert f.last_event_at == T0 + 3601 and f.last_device == "mobile"  # late events: not latest


def test_cache_hit_returns_the_payload(harness):
    s = harness.store
    assert s.get_cached(1, 7) is None
    assert s.put_cached(1, 7, PAGE, 60)
    assert s.get_cached(1, 7) == PAGE
    assert s.get_cached(2, 7) is None


def test_cache_is_keyed_by_model_version(harness):
    s = harness.store
    s.put_cached(1, 7, PAGE, 60)
    assert s.get_cached(1, 8) is None  # a new push never reads version 7's page
    s.put_cached(1, 8, {**PAGE, "model_version": 8}, 60)
    assert s.get_cached(1, 7) == PAGE
    assert s.get_cached(1, 8)["model_version"] == 8


def test_a_watch_invalidates_the_cache_an_impression_does_not(harness):
    s = harness.store
    s.put_cached(1, 7, PAGE, 60)
    s.put_cached(2, 7, PAGE, 60)
    s.record_event(impression(1, 20, T0))
    assert s.get_cached(1, 7) == PAGE
    s.record_event(watch(1, 20, T0 + 60, seconds=10))  # even a short watch: 20 is now excluded
    assert s.get_cached(1, 7) is None
    assert s.get_cached(2, 7) == PAGE  # other users keep theirs


def test_a_page_computed_before_a_watch_is_not_cached(harness):
    s = harness.store
    f = s.features(1)  # the page is computed from these...
    s.record_event(watch(1, 20, T0))  # ...while a watch arrives
    assert not s.put_cached(1, 7, PAGE, 60, generation=f.generation)
    assert s.get_cached(1, 7) is None
    assert s.put_cached(1, 7, PAGE, 60, generation=s.features(1).generation)
    assert s.get_cached(1, 7) == PAGE


def test_cache_entries_expire(harness):
    s = harness.store
    s.put_cached(1, 7, PAGE, 0.3)
    s.put_cached(2, 7, PAGE, 60)
    assert s.get_cached(1, 7) == PAGE
    harness.advance(0.5)
    assert s.get_cached(1, 7) is None
    assert s.get_cached(2, 7) == PAGE


def test_batch_features_carry_their_version_and_expire(harness):
    s = harness.store
    assert s.batch_version() is None and s.features(1).batch is None
    v7 = BatchFeatures({"drama": 1.0, "comedy": 0.5}, 2, 400.0)
    assert s.load_batch_features(7, {1: v7, 2: BatchFeatures({}, 1, 130.0)}, ttl_s=60) == 2
    f = s.features(1)
    assert (f.batch, f.batch_version, s.batch_version()) == (v7, 7, 7)
    v8 = BatchFeatures({"horror": 1.0}, 1, 200.0)
    s.load_batch_features(8, {1: v8}, ttl_s=0.3)
    assert (s.features(1).batch, s.features(1).batch_version) == (v8, 8)
    assert s.features(2).batch_version == 7  # not in the new load: keeps its row until expiry
    assert s.batch_version() == 8
    harness.advance(0.5)
    assert s.features(1).batch is None and s.batch_version() is None
    assert s.features(2).batch_version == 7


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_a_bad_ttl_is_refused(harness, ttl):
    with pytest.raises(ValueError, match="ttl_s must be a positive number of seconds"):
        harness.store.put_cached(1, 7, PAGE, ttl)
    with pytest.raises(ValueError, match="ttl_s must be a positive number of seconds"):
        harness.store.load_batch_features(7, {}, ttl)


def test_a_payload_that_is_not_json_is_refused(harness):
    with pytest.raises(ValueError, match="JSON"):
        harness.store.put_cached(1, 7, {"score": math.nan}, 60)


# ----------------------------------------------------------------------------- Redis outages


@needs_redis
def test_redis_unreachable_at_startup_says_how_to_fix_it():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(StoreUnavailable, match="redis-server") as e:
        RedisStore.connect(url)
    assert url in str(e.value)


@needs_redis
def test_redis_store_without_the_wrapper_raises_when_redis_dies(tmp_path):
    server = RedisServer(tmp_path).start()
    store = RedisStore.connect(server.url)
    store.record_event(watch(1, 10, T0))
    server.stop()
    with pytest.raises(StoreUnavailable, match=server.url):
        store.record_event(watch(1, 11, T0 + 1))
    store.close()


@needs_redis
def test_resilient_store_falls_back_when_redis_dies_and_recovers_when_it_returns(tmp_path):
    server = RedisServer(tmp_path).start()
    store = ResilientStore(RedisStore.connect(server.url, timeout_s=0.25), probe_interval_s=0.2)
    try:
        store.record_event(watch(1, 10, T0))
        f = store.features(1)
        assert store.put_cached(1, 7, PAGE, 60, generation=f.generation)
        assert store.get_cached(1, 7) == PAGE

        server.stop()  # mid-test: terminate the process
        started = time.perf_counter()
        f = store.features(1)  # 1st fallback: finds Redis down, answers from the embedded copy
        first_call_s = time.perf_counter() - started
        assert f.recent_watches == (10,) and f.generation == NO_GENERATION
        assert first_call_s < 1.0, f"first call after the kill took {first_call_s:.3f} s"
        assert store.get_cached(1, 7) is None  # 2: no cache while Redis is down
        assert not store.put_cached(1, 7, PAGE, 60)  # 3
        store.record_event(watch(1, 20, T0 + 60))  # 4: embedded now, queued for Redis
        assert store.features(1).recent_watches == (20, 10)  # 5
        stats = store.stats()
        assert stats["redis_up"] == 0 and stats["redis_outages_total"] == 1
        assert stats["fallbacks_total"] == 5 and stats["replay_pending"] == 1
        assert stats["fallbacks_features_total"] == 2

        server.start()  # same port, empty (no persistence)
        deadline = time.monotonic() + 10
        while not store.redis_up and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.redis_up, "the wrapper did not reconnect within 10 s"
        # From Redis, re-seeded from the copy (its sentinel died with the data): both watches,
        # not only the queued one; generation one above the copy's 2.
        f = store.features(1)
        assert f.recent_watches == (20, 10) and f.generation == 3
        assert store.put_cached(1, 7, PAGE, 60, generation=f.generation)
        assert store.get_cached(1, 7) == PAGE  # the cache is used again
        stats = store.stats()
        assert stats["fallbacks_total"] == 5 and stats["replay_pending"] == 0
        assert stats["redis_up"] == 1 and stats["redis_reseeds_total"] == 1
    finally:
        store.close()
        server.stop()


@needs_redis
def test_resilient_store_refuses_events_when_the_replay_queue_is_full(tmp_path):
    server = RedisServer(tmp_path).start()
    store = ResilientStore(RedisStore.connect(server.url), probe_interval_s=60, max_pending=2)
    try:
        server.stop()
        store.record_event(watch(1, 10, T0))
        store.record_event(watch(1, 11, T0 + 1))
        with pytest.raises(StoreUnavailable, match="max_pending 2"):
            store.record_event(watch(1, 12, T0 + 2))
        assert store.features(1).recent_watches == (11, 10)
    finally:
        store.close()


# ----------------------------------------------------------------------------- events


def test_a_valid_event_is_typed():
    v = EventValidator({1}, {10})
    raw = {c.USER_ID: "1", c.ITEM_ID: 10, c.TIMESTAMP: T0, c.EVENT: c.EVENT_WATCH,
           c.WATCH_SECONDS: 300, c.DEVICE: "tv"}
    assert v.validate(raw) == Event(1, 10, T0, c.EVENT_WATCH, 300.0, "tv")


def test_an_invalid_event_lists_every_problem():
    v = EventValidator({1}, {10})
    raw = {c.USER_ID: 1, c.ITEM_ID: 999, c.TIMESTAMP: float("nan"), c.EVENT: "click",
           c.WATCH_SECONDS: -5, c.DEVICE: "tv"}
    with pytest.raises(ValueError) as e:
        v.validate(raw)
    assert e.value.problems == [
        "item_id: 999 is not in the catalogue; send events only for titles the catalogue holds",
        "timestamp: is NaN or null; a value is required",
        "event: 'click' is not one of impression, watch",
        "watch_seconds: -5 is negative",
    ]
    assert "4 problem(s)" in str(e.value)


def test_missing_unknown_and_cross_field_problems():
    v = EventValidator({1}, {10})
    raw = {c.USER_ID: 2, c.ITEM_ID: 10, c.EVENT: c.EVENT_IMPRESSION, c.WATCH_SECONDS: 30,
           c.DEVICE: "tv", "clicked": True}
    with pytest.raises(InvalidEvent) as e:
        v.validate(raw)
    problems = e.value.problems
    assert problems[0].startswith("clicked: not a field of an interaction (its fields: user_id")
    assert problems[1] == "timestamp: missing; expected UTC seconds since the epoch"
    assert problems[2].startswith("user_id: 2 is not a known user")
    assert problems[3].startswith("watch_seconds: 30 on an impression; log the watch as its own")
    assert len(problems) == 4


def tiny_dataset(path: Path) -> Path:
    c.write_table(path, c.USERS, {
        c.USER_ID: [1, 2], c.SIGNUP_AT: [T0] * 2, c.COUNTRY: ["US"] * 2,
        c.SUBSCRIPTION_TIER: ["basic"] * 2, c.AGE_BUCKET: [None] * 2,
        c.ONBOARDING_GENRES: [None] * 2})
    c.write_table(path, c.ITEMS, {
        c.ITEM_ID: [10, 20, 30], c.TITLE: ["A", "B", "C"],
        c.GENRES: [["drama", "comedy"], ["drama"], []], c.CAST: [[]] * 3,
        c.DIRECTOR: [None] * 3, c.RELEASE_YEAR: [2001] * 3, c.DURATION_SECONDS: [5400] * 3,
        c.ADDED_AT: [T0] * 3, c.MATURITY_RATING: ["PG"] * 3})
    return path


def test_logged_events_compact_into_part_files_the_validator_accepts(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    events = [watch(1 + n % 2, (10, 20, 30)[n % 3], T0 + n) for n in range(6)]
    events.append(impression(2, 30, T0 + 10))
    sinks = {c.INTERACTIONS: ParquetSink(data, c.INTERACTIONS)}  # users, items: single files
    with WriteAheadLog(data) as log:
        for e in events[:4]:
            log.append(c.INTERACTIONS, e.to_row())
        assert log.compact(sinks, seal=True) == 4
        for e in events[4:]:
            log.append(c.INTERACTIONS, e.to_row())
        assert log.compact(sinks, seal=True) == 3
    files = c.table_files(data, c.INTERACTIONS)
    assert [pq.read_metadata(p).num_rows for p in files] == [4, 3]
    report = validate_dataset(data)
    assert report.ok and report.tables[c.INTERACTIONS].rows == 7
    assert report.tables[c.INTERACTIONS].rejected == 0
    back = pd.concat([pd.read_parquet(p) for p in files])
    assert back[c.ITEM_ID].tolist() == [e.item_id for e in events]
    assert back[c.POSITION].isna().tolist() == [True] * 6 + [False]


def test_the_log_refuses_a_single_file_table_and_says_how_to_move_it(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    c.write_table(data, c.INTERACTIONS, {k: [v] for k, v in watch(1, 10, T0).to_row().items()})
    with pytest.raises(ValueError, match=r"interactions.parquet is a single file.*move it into "
                                         r"the folder first \(as .*interactions/part-0"):
        ParquetSink(data, c.INTERACTIONS)


def test_the_events_kind_validates_and_records_an_accepted_event():
    store = EmbeddedStore()
    kind = EventWrites(EventValidator({1, 2}, {10, 20, 30}), store)
    event = kind.validate(watch(1, 10, T0).to_row(), now=T0)
    with pytest.raises(InvalidEvent, match="not in the catalogue"):
        kind.validate({**watch(1, 10, T0).to_row(), c.ITEM_ID: 99}, now=T0)
    with pytest.raises(InvalidEvent, match="ahead of the server's clock"):
        kind.validate(watch(1, 10, T0 + 3600).to_row(), now=T0)
    kind.apply(event)
    assert store.features(1).recent_watches == (10,)


# ----------------------------------------------------------------------------- batch loader


def test_batch_features_by_hand():
    interactions = pd.DataFrame([
        # user 1: positives 10 (drama, comedy; 600 s) and 20 (drama; 200 s); 30 s is not one
        {c.USER_ID: 1, c.ITEM_ID: 10, c.EVENT: c.EVENT_WATCH, c.WATCH_SECONDS: 600.0},
        {c.USER_ID: 1, c.ITEM_ID: 20, c.EVENT: c.EVENT_WATCH, c.WATCH_SECONDS: 200.0},
        {c.USER_ID: 1, c.ITEM_ID: 30, c.EVENT: c.EVENT_WATCH, c.WATCH_SECONDS: 30.0},
        # user 2: one positive of a title with no genres; an impression does not count
        {c.USER_ID: 2, c.ITEM_ID: 30, c.EVENT: c.EVENT_WATCH, c.WATCH_SECONDS: 120.0},
        {c.USER_ID: 2, c.ITEM_ID: 10, c.EVENT: c.EVENT_IMPRESSION, c.WATCH_SECONDS: 0.0},
        # user 3: no positive watch, no row
        {c.USER_ID: 3, c.ITEM_ID: 10, c.EVENT: c.EVENT_WATCH, c.WATCH_SECONDS: 119.0},
    ])
    items = pd.DataFrame({c.ITEM_ID: [10, 20, 30],
                          c.GENRES: [["drama", "comedy"], ["drama", "drama"], []]})
    assert compute_batch_features(interactions, items) == {
        1: BatchFeatures({"drama": 2 / 2, "comedy": 1 / 2}, 2, (600 + 200) / 2),
        2: BatchFeatures({}, 1, 120.0),
    }


def test_load_features_versions_by_the_latest_push(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    rows = [e.to_row() for e in (watch(1, 10, T0, 600), watch(1, 20, T0 + 1, 200),
                                 watch(2, 30, T0, 50))]
    (data / c.INTERACTIONS).mkdir()
    with c.TableWriter(data / c.INTERACTIONS / "part-0.parquet", c.INTERACTIONS) as w:
        w.write({k: [r[k] for r in rows] for k in rows[0]})
    run = tmp_path / "run"
    with pytest.raises(NoPushedVersion, match="marquee pipeline run"):
        latest_pushed_version(run)
    for v in ("5", "12", "9", "tmp-13"):
        (run / "serving" / "query_tower" / v).mkdir(parents=True)
    store = EmbeddedStore()
    summary = load_features(run, data, store, ttl_s=3600)
    assert (summary.version, summary.users, summary.positive_watches) == (12, 1, 2)
    f = store.features(1)
    assert f.batch_version == 12 and f.batch.genre_affinity == {"drama": 1.0, "comedy": 0.5}
    assert "version 12" in str(summary) and "expire in 1 h" in str(summary)
