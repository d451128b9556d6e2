"""Signup while serving (``POST /v1/users``, ``serving/ingest/signup.py``) on the tiny catalogue of
``test_homepage``: validation, the user store growing under readers, the users log as a contract
table the validator reads with the events that refer to it, restart, and the route over HTTP.
Writes take the one write path (``serving.ingest.wiring.open_writes``)."""

import csv
import errno
import json
import threading

import pandas as pd
import pytest

from marquee.data import contract as c
from marquee.data.validate import load_dataset, validate_dataset
from serving.ingest import wal
from serving.ingest.signup import InvalidUser, validate_user
from serving.ingest.wiring import open_writes
from serving.state.catalogue import UserProfile, UserStore
from serving.state.feature_store import StoreUnavailable
from tests import test_homepage
from tests.http_client import get, post, running
from tests.test_homepage import (
    DAY,
    FULL,
    GENRES,
    ITEM_IDS,
    NOW,
    FixedModelBackend,
    interactions,
    make,
)

model_base = test_homepage.model_base  # the tiny model base fixture, shared
NEW_USER = 500
KNOWN = {FULL, 2, 3, 4}  # the users of test_homepage.users()
# The maturity filter alone: the page's order is the sources', so genres can be read off it.
MATURITY_ONLY = ({"step": "exclude_watched"}, {"step": "maturity"})


def user(user_id=NEW_USER, **changes) -> dict:
    """A signup: a teenager (the maturity filter keeps the R-rated item 12 out) who picked
    romance, drama and scifi."""
    return {c.USER_ID: user_id, c.SIGNUP_AT: NOW - 60, c.COUNTRY: "SE",
            c.SUBSCRIPTION_TIER: "premium", c.AGE_BUCKET: "under-18",
            c.ONBOARDING_GENRES: ["romance", "drama", "scifi"], **changes}


def watch(user_id=NEW_USER, item_id=7) -> dict:
    return {c.USER_ID: user_id, c.ITEM_ID: item_id, c.TIMESTAMP: NOW, c.EVENT: c.EVENT_WATCH,
            c.WATCH_SECONDS: 600.0, c.DEVICE: "tv"}


def genre(item_id: int) -> str:
    return GENRES[(item_id - 1) % 4]


# ----------------------------------------------------------------------------- validation


def test_a_bad_user_lists_every_problem_naming_the_field():
    raw = {c.USER_ID: "abc", c.COUNTRY: "", c.SUBSCRIPTION_TIER: "gold", c.AGE_BUCKET: "kid",
           c.ONBOARDING_GENRES: ["western", "drama", "drama"], "plan": "family"}
    with pytest.raises(InvalidUser) as e:
        validate_user(raw, KNOWN, GENRES, NOW)
    assert e.value.problems == [
        "plan: not a field of a user (its fields: user_id, signup_at, country, "
        "subscription_tier, age_bucket, onboarding_genres)",
        "user_id: expected a number, got 'abc'",
        "country: is empty; use 'unknown'",
        "subscription_tier: 'gold' is not one of basic, standard, premium, unknown",
        "age_bucket: 'kid' is not one of under-18, 18-24, 25-34, 35-44, 45-54, 55+",
        "onboarding_genres: ['drama'] picked more than once; list each genre once",
        "onboarding_genres: ['western'] are not genres of any title; pick from "
        "['comedy', 'drama', 'romance', 'scifi']"]
    assert not e.value.duplicate


def test_a_missing_column_a_json_true_and_a_wrong_list_are_named():
    raw = {c.USER_ID: True, c.SUBSCRIPTION_TIER: "basic", c.ONBOARDING_GENRES: "comedy"}
    with pytest.raises(InvalidUser) as e:
        validate_user(raw, KNOWN, GENRES, NOW)
    assert e.value.problems == [
        "country: missing; expected ISO 3166-1 alpha-2 code, or 'unknown'",
        "user_id: expected a number, got 'true'",  # not user 1
        "onboarding_genres: expected a list of text, got 'comedy'"]


def test_signup_at_defaults_to_now_the_nullable_fields_may_be_absent_and_a_known_id_is_taken():
    raw = user()
    del raw[c.SIGNUP_AT], raw[c.AGE_BUCKET], raw[c.ONBOARDING_GENRES]
    assert validate_user(raw, KNOWN, GENRES, NOW) == {
        c.USER_ID: NEW_USER, c.SIGNUP_AT: NOW, c.COUNTRY: "SE", c.SUBSCRIPTION_TIER: "premium",
        c.AGE_BUCKET: None, c.ONBOARDING_GENRES: None}
    with pytest.raises(InvalidUser, match="user_id: 3 is already a user") as e:
        validate_user(user(3), KNOWN, GENRES, NOW)
    assert e.value.duplicate


# ----------------------------------------------------------------------------- the user store


def test_the_user_store_adds_users_once_and_readers_see_them_whole():
    users = UserStore({1: UserProfile(1)})
    assert users.add(pd.DataFrame([user(7), user(8, **{c.AGE_BUCKET: None})])) == [7, 8]
    assert users.get(7) == UserProfile(7, "SE", "premium", "under-18", "unknown",
                                       ("romance", "drama", "scifi"))
    assert users.get(8).age_bucket == "" and users.user_ids() == [1, 7, 8]
    with pytest.raises(ValueError, match=r"\[1, 9\] are already known or repeated"):
        users.add(pd.DataFrame([user(1), user(9), user(9)]))
    assert 9 not in users  # nothing of a refused batch is added

    # Readers take no lock while a writer adds 500 users one by one: a user a reader finds
    # has its whole profile, and the ids a reader lists only grow.
    seen: list[str] = []
    done = threading.Event()

    def read():
        last = 0
        while not done.is_set():
            ids = users.user_ids()
            if len(ids) < last or any(users.get(u).country != "SE" for u in ids[-3:] if u > 9):
                seen.append(f"{len(ids)} ids after {last}")
            last = len(ids)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for uid in range(10, 510):
        users.add(pd.DataFrame([user(uid)]))
    done.set()
    for t in readers:
        t.join()
    assert seen == [] and len(users.user_ids()) == 3 + 500


# ----------------------------------------------------------------------------- over HTTP


def test_a_signup_is_known_at_once_and_shapes_the_next_homepage(model_base, tmp_path):
    svc = make(model_base, FixedModelBackend(), because_you_watched=0, rerank=MATURITY_ONLY)
    with running(svc, event_log=tmp_path) as api:
        status, body = post(api.port, "/v1/events", watch())
        assert status == 400 and "500 is not a known user" in body["error"]
        home = f"/v1/users/{NEW_USER}/homepage"
        before = json.loads(get(api.port, home)[1])
        # no profile: trending for everyone, led by item 12 (R-rated; watched by 4 users)
        assert before["stage"] == "new" and before["items"][0]["item_id"] == 12, before
        assert json.loads(get(api.port, home)[1])["cached"]  # the cache is on

        status, body = post(api.port, "/v1/users", user())
        assert status == 200 and body["user"] == user(), body

        after = json.loads(get(api.port, home)[1])
        ids = [p["item_id"] for p in after["items"]]
        assert not after["cached"] and not after["fallback"] and after["stage"] == "new"
        assert 12 not in ids  # the profile's age bucket turns the maturity filter on
        # trending in the picked genres first, one of each (round robin), before comedy
        assert {genre(i) for i in ids[:3]} == {"romance", "drama", "scifi"}, ids

        status, body = post(api.port, "/v1/events", watch())
        assert status == 200 and body["event"][c.USER_ID] == NEW_USER, body
        page = json.loads(get(api.port, home)[1])
        assert page["stage"] == "light" and 7 not in [p["item_id"] for p in page["items"]]

        assert post(api.port, "/v1/users", user())[0] == 409
        status, body = post(api.port, "/v1/users", user(FULL))  # in the loaded users table
        assert status == 409 and "1 is already a user" in body["error"]
        status, body = post(api.port, "/v1/users", user(501, **{c.SUBSCRIPTION_TIER: 3}))
        # one problem, naming the field and what arrived (the body schema's wording)
        assert status == 400 and len(body["problems"]) == 1, body
        assert body["problems"][0].startswith("subscription_tier: "), body
        assert body["problems"][0].endswith("(got 3)"), body
        status, body = post(api.port, "/v1/users", [user(502)])
        assert status == 400 and "expected one JSON object, got list" in body["error"], body
        assert body["problems"][0].startswith("body: expected a JSON object with the fields "
                                              "user_id, signup_at"), body
        metrics = get(api.port, "/metrics")[1]
        assert 'marquee_writes_total{outcome="accepted",route="users"} 1.0' in metrics
        assert 'marquee_writes_total{outcome="duplicate",route="users"} 2.0' in metrics
        assert 'marquee_writes_total{outcome="invalid",route="users"} 2.0' in metrics
    assert 501 not in svc.users and 502 not in svc.users
    # only the accepted signup is logged
    assert pd.read_parquet(tmp_path / c.USERS)[c.USER_ID].tolist() == [NEW_USER]


def test_without_an_event_log_or_when_the_log_fails_nobody_is_added(model_base, tmp_path,
                                                                    monkeypatch):
    svc = make(model_base, FixedModelBackend())
    with running(svc) as api:  # marquee serve without --event-log
        status, body = post(api.port, "/v1/users", user())
        assert status == 503 and "--event-log" in body["error"]

    real_fsync, failing = wal.os.fsync, []

    def fsync(fd):  # the next fsync after failing.append(...) fails: the disk is full
        if failing:
            failing.clear()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(wal.os, "fsync", fsync)
    with running(svc, event_log=tmp_path) as api:
        failing.append(True)
        status, body = post(api.port, "/v1/users", user())
        assert status == 503 and "No space left on device" in body["error"], body
        assert 'marquee_writes_total{outcome="unavailable",route="users"} 1.0' in get(
            api.port, "/metrics")[1]
        assert NEW_USER not in svc.users and svc.store.features(NEW_USER).generation == 0
        assert api.writes.wal.stats()["failed"] == 1 and list(api.writes.wal.records()) == []
        # one failed append blocks nothing: the retry is logged and applied
        assert post(api.port, "/v1/users", user())[0] == 200
        assert NEW_USER in svc.users
    assert pd.read_parquet(tmp_path / c.USERS)[c.USER_ID].tolist() == [NEW_USER]  # once


def test_a_store_that_fails_after_the_log_still_signs_the_user_up(model_base, tmp_path, caplog,
                                                                   monkeypatch):
    def down(event):
        raise StoreUnavailable("Redis at redis://cache is down")

    svc = make(model_base, FixedModelBackend())
    w = open_writes(svc, tmp_path)
    monkeypatch.setattr(svc.store, "record_event", down)
    assert w.path.accept("users", user())["user"][c.USER_ID] == NEW_USER
    assert NEW_USER in svc.users
    assert "did not take the signup (Redis at redis://cache is down)" in caplog.text
    w.close()
    assert pd.read_parquet(tmp_path / c.USERS)[c.USER_ID].tolist() == [NEW_USER]


# ----------------------------------------------------------------------------- the users log


def _write_dataset(data_dir):
    """The tiny world of test_homepage as a dataset folder of part files (a folder the event
    log can append to): its users, titles and watches."""
    ids = [FULL, 2, 3, 4, *sorted(set(interactions()[c.USER_ID]))]
    tables = {
        c.USERS: {c.USER_ID: ids, c.SIGNUP_AT: [NOW - 400 * DAY] * len(ids),
                  c.COUNTRY: ["US"] * len(ids), c.SUBSCRIPTION_TIER: ["basic"] * len(ids),
                  c.AGE_BUCKET: [None] * len(ids), c.ONBOARDING_GENRES: [None] * len(ids)},
        c.ITEMS: {c.ITEM_ID: ITEM_IDS, c.TITLE: [f"Title {i}" for i in ITEM_IDS],
                  c.GENRES: [[genre(i)] for i in ITEM_IDS], c.CAST: [[]] * len(ITEM_IDS),
                  c.DIRECTOR: [None] * len(ITEM_IDS), c.RELEASE_YEAR: [None] * len(ITEM_IDS),
                  c.DURATION_SECONDS: [None] * len(ITEM_IDS),
                  c.ADDED_AT: [NOW - 100 * DAY] * len(ITEM_IDS),
                  c.MATURITY_RATING: ["PG"] * 11 + ["R"]},
        c.INTERACTIONS: {k: v.tolist() for k, v in interactions().items()}}
    for table, columns in tables.items():
        with c.TableWriter(data_dir / table / "part-0000000000-0000.parquet", table) as t:
            t.write(columns)


def test_the_users_log_is_a_contract_table_the_validator_reads_with_their_events(
        model_base, tmp_path):
    _write_dataset(tmp_path)
    svc = make(model_base, FixedModelBackend())
    with running(svc, event_log=tmp_path) as api:
        assert post(api.port, "/v1/users", user())[0] == 200
        assert post(api.port, "/v1/users", user(501, **{c.AGE_BUCKET: None,
                                                        c.ONBOARDING_GENRES: None}))[0] == 200
        assert post(api.port, "/v1/events", watch(NEW_USER, 7))[0] == 200
        assert post(api.port, "/v1/events", watch(501, 3))[0] == 200
    # closing the log compacted it: the four writes (seqs 1-4) into one part per table

    logged = sorted((tmp_path / c.USERS).glob("part-*.parquet"))
    assert [p.name for p in logged] == ["part-0000000000-0000.parquet",  # the dataset's
                                        "part-w0000000000000001-0000000000000004-r0.parquet"]
    assert pd.read_parquet(logged[1])[c.USER_ID].tolist() == [NEW_USER, 501]
    report = validate_dataset(tmp_path, rejects_path=tmp_path / "rejects.csv")
    assert report.ok and {t: r.rejected for t, r in report.tables.items()} == {
        c.USERS: 0, c.ITEMS: 0, c.INTERACTIONS: 0}, report.summary()
    ds = load_dataset(tmp_path, rejects_path=tmp_path / "rejects.csv")
    signed = ds.users[ds.users[c.USER_ID].isin([NEW_USER, 501])].sort_values(c.USER_ID)
    assert signed[c.AGE_BUCKET].tolist() == ["under-18", None]
    assert [None if g is None else list(g) for g in signed[c.ONBOARDING_GENRES]] == [
        ["romance", "drama", "scifi"], None]
    theirs = ds.interactions[ds.interactions[c.USER_ID].isin([NEW_USER, 501])]
    assert sorted(zip(theirs[c.USER_ID], theirs[c.ITEM_ID], strict=True)) == [
        (NEW_USER, 7), (501, 3)]

    # Without the users log the same events break referential integrity.
    for path in logged[1:]:
        path.unlink()
    report = validate_dataset(tmp_path, rejects_path=tmp_path / "rejects.csv")
    with open(tmp_path / "rejects.csv") as fh:
        reasons = sorted(r["reason"] for r in csv.DictReader(fh))
    assert reasons == ["user_id: 500 is not in users", "user_id: 501 is not in users"]


def test_a_restart_puts_the_signups_back_and_the_quiz_answer_keeps_its_rank(model_base,
                                                                             tmp_path):
    svc = make(model_base, FixedModelBackend())
    w = open_writes(svc, tmp_path)
    # the quiz first (any id may answer it), then the signup with other genres: the answer
    # outranks the row's genres, before the restart and after
    w.path.accept("onboarding", {"genres": ["comedy", "drama", "scifi"]}, user_id=NEW_USER)
    w.path.accept("users", user())
    w.path.accept("users", user(501, **{c.ONBOARDING_GENRES: ["romance", "comedy", "drama"]}))
    expected = {NEW_USER: ("comedy", "drama", "scifi"), 501: ("romance", "comedy", "drama")}
    assert {u: svc.profile(u)[0].onboarding_genres for u in expected} == expected
    w.close()

    restarted = make(model_base, FixedModelBackend())
    w2 = open_writes(restarted, tmp_path)
    assert w2.report.applied == {"users": 2, "onboarding": 1}
    assert {NEW_USER, 501} <= set(restarted.users.user_ids())
    assert restarted.users.get(NEW_USER) == UserProfile(
        NEW_USER, "SE", "premium", "under-18", "unknown", ("romance", "drama", "scifi"))
    assert {u: restarted.profile(u)[0].onboarding_genres for u in expected} == expected
    # their events are accepted
    assert w2.path.accept("events", watch())["event"][c.USER_ID] == NEW_USER
    w2.close()
    # users the state already holds are not added twice: a second replay into the same
    # process finds both held
    known = len(restarted.users.user_ids())
    w3 = open_writes(restarted, tmp_path)
    w3.close()
    assert "users" not in w3.report.applied and w3.report.held == 2
    assert len(restarted.users.user_ids()) == known
    assert pd.read_parquet(tmp_path / c.USERS)[c.USER_ID].tolist() == [NEW_USER, 501]
