"""One contract test for the write path, run on every route's kind: validate -> durable log ->
state -> hooks, in that order; a bad body or a log that cannot be made durable changes nothing;
replay puts the write back through the same path; a dead replica's log is adopted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from marquee.data import contract as c
from serving.ingest import wal as wal_module
from serving.ingest.events import InvalidEvent
from serving.ingest.path import WritesUnavailable
from serving.ingest.wal import WalUnavailable
from serving.ingest.wiring import no_writes, open_writes
from tests import test_homepage
from tests.test_homepage import LIGHT, NOW, make

model_base = test_homepage.model_base  # the tiny model base fixture, shared
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
WATCH = {c.USER_ID: LIGHT, c.ITEM_ID: 7, c.TIMESTAMP: NOW, c.EVENT: "watch",
         c.WATCH_SECONDS: 300.0, c.DEVICE: "tv"}


ROW = {**WATCH, c.POSITION: None, c.RATING: None}  # as the log holds it: every column


def _watched(svc) -> bool:
    return 7 in svc.store.features(LIGHT).watched


# kind -> (params, a valid body, an invalid body, "the state holds it")
KINDS = {
    "events": ({}, WATCH, {**WATCH, c.DEVICE: "toaster"}, _watched),
    "items": ({}, {c.ITEM_ID: 77, c.TITLE: "New", c.GENRES: ["comedy"], c.CAST: [],
                   c.DIRECTOR: None, c.RELEASE_YEAR: None, c.DURATION_SECONDS: None,
                   c.MATURITY_RATING: "PG"},
              {c.ITEM_ID: 1, c.TITLE: "taken id", c.GENRES: [], c.CAST: [],
               c.MATURITY_RATING: "PG"},
              lambda svc: 77 in svc.catalogue.row),
    "users": ({}, {c.USER_ID: 501, c.COUNTRY: "US", c.SUBSCRIPTION_TIER: "basic"},
              {c.USER_ID: 502, c.COUNTRY: "US", c.SUBSCRIPTION_TIER: "gold"},
              lambda svc: 501 in svc.users),
    "onboarding": ({"user_id": 601}, {"genres": ["comedy", "drama", "romance"]},
                   {"genres": ["comedy"]},
                   lambda svc: svc.store.features(601).onboarding_genres == (
                       "comedy", "drama", "romance")),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_write_kind_keeps_the_order_and_refuses_cleanly(name, model_base, tmp_path,
                                                              monkeypatch):
    params, good, bad, holds = KINDS[name]
    svc = make(model_base)
    writes = open_writes(svc, tmp_path, compact_every_s=3600)
    kind, order = writes.path.kind(name), []
    append, apply = writes.wal.append, kind.apply
    monkeypatch.setattr(writes.wal, "append", lambda *a, **k: (order.append("log"),
                                                               append(*a, **k))[1])
    monkeypatch.setattr(kind, "apply", lambda v: (order.append("state"), apply(v)))
    writes.path.hooks[name].append(lambda v: order.append("hook"))

    with pytest.raises(InvalidEvent) as e:  # a bad body: a clear error, nothing logged
        writes.path.accept(name, bad, **params)
    assert e.value.problems and order == [] and writes.wal.stats()["appended"] == 0

    real_fsync = wal_module.os.fsync
    monkeypatch.setattr(wal_module.os, "fsync", lambda fd: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    with pytest.raises(WalUnavailable):  # not durable: a 503 that adds nothing
        writes.path.accept(name, good, **params)
    assert order == ["log"] and not holds(svc)
    monkeypatch.setattr(wal_module.os, "fsync", real_fsync)

    order.clear()
    answer = writes.path.accept(name, good, **params)
    assert order == ["log", "state", "hook"] and holds(svc), order
    assert answer  # the 200's body
    writes.close()

    restarted = make(model_base)  # the same path puts it back at start-up
    assert not holds(restarted)
    again = open_writes(restarted, tmp_path, compact_every_s=3600)
    assert holds(restarted) and again.report.applied.get(name) == 1, again.report.summary()
    again.close()


def test_without_an_event_log_every_kind_validates_then_answers_unavailable(model_base):
    svc = make(model_base)
    path = no_writes(svc).path
    for name, (params, good, bad, holds) in KINDS.items():
        with pytest.raises(InvalidEvent):
            path.accept(name, bad, **params)
        with pytest.raises(WritesUnavailable, match="--event-log"):
            path.accept(name, good, **params)
        assert not holds(svc)


def test_a_replica_that_died_without_closing_its_log_is_adopted(model_base, tmp_path):
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from serving.ingest.wal import WriteAheadLog; "
            f"w = WriteAheadLog({str(tmp_path)!r}, 'dead'); "
            f"w.append('interactions', {ROW!r}); os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == -9
    svc = make(model_base)
    writes = open_writes(svc, tmp_path, replica_id="alive", compact_every_s=3600)
    assert _watched(svc), "the dead replica's acknowledged watch is put back"
    assert list((tmp_path / c.INTERACTIONS).glob("part-w*-rdead.parquet"))
    writes.close()


def test_one_new_id_posted_at_once_from_many_threads_is_taken_once(model_base, tmp_path,
                                                                   monkeypatch):
    """The uniqueness check, the append and the apply of a title or a signup stay together:
    16 concurrent posts of one new id give one 200 and 15 409s, and one logged row (the apply
    is slowed down, so a check that ran before it finished would let a second one through)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    svc = make(model_base)
    writes = open_writes(svc, tmp_path, compact_every_s=3600)
    for name in ("items", "users"):
        params, good, _, _ = KINDS[name]
        kind = writes.path.kind(name)
        apply = kind.apply
        monkeypatch.setattr(kind, "apply", lambda v, apply=apply: (time.sleep(0.05), apply(v)))

        def post(_, name=name, good=good, params=params):
            try:
                writes.path.accept(name, dict(good), **params)
                return "ok"
            except InvalidEvent as e:
                assert e.duplicate, e
                return "dup"

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(post, range(16)))
        assert sorted(outcomes) == ["dup"] * 15 + ["ok"], (name, outcomes)
    assert writes.wal.stats()["appended"] == 2
    writes.close()
