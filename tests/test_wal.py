"""The write-ahead log on real files: round trip, group commit, kill -9, damage, lock, failed
writes, compaction to contract Parquet parts."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest

from marquee.data import contract as c
from serving.ingest import wal as w
from serving.ingest.sinks import ParquetSink, parquet_sinks
from serving.ingest.wal import (
    WalClosed,
    WalError,
    WalLocked,
    WalUnavailable,
    WriteAheadLog,
)

REPO = Path(__file__).resolve().parents[1]


def frame(seq: int, table: str, row: dict) -> bytes:
    """One record as the module doc specifies it, built by hand."""
    payload = json.dumps({"seq": seq, "table": table, "row": row}, separators=(",", ":")).encode()
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def seg(folder: Path, first: int, replica: str = "0") -> Path:
    return folder / "wal" / replica / f"seg-{first:016d}.wal"


def seqs(log: WriteAheadLog, after: int = 0) -> list[int]:
    return [r.seq for r in log.records(after)]


def fill(folder: Path, n: int, **kw) -> None:
    with WriteAheadLog(folder, commit_interval_ms=0, **kw) as log:
        for i in range(n):
            assert log.append("t", {"i": i}) == i + 1


def interaction(user: int, item: int, ts: int) -> dict:
    return {c.USER_ID: user, c.ITEM_ID: item, c.TIMESTAMP: ts, c.EVENT: c.EVENT_WATCH,
            c.POSITION: None, c.WATCH_SECONDS: 300.0, c.DEVICE: "tv", c.RATING: None}


def test_file_format_is_the_documented_framing(tmp_path):
    fill(tmp_path, 2)
    assert seg(tmp_path, 1).read_bytes() == frame(1, "t", {"i": 0}) + frame(2, "t", {"i": 1})


def test_round_trip_from_threads(tmp_path):
    got: dict[int, dict] = {}
    lock = threading.Lock()

    def run(k: int) -> None:
        for i in range(100):
            seq = log.append("t", {"k": k, "i": i})
            with lock:
                got[seq] = {"k": k, "i": i}

    with WriteAheadLog(tmp_path) as log:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(got) == list(range(1, 401))  # 400 distinct seqs, no gap
    with WriteAheadLog(tmp_path) as log:
        assert log.recovery.records == 400 and log.recovery.problems == []
        assert [(r.seq, r.row) for r in log.records()] == sorted(got.items())
        assert seqs(log, after=390) == list(range(391, 401))
        assert log.append("t", {}) == 401  # seqs go on across a restart


def test_group_commit_fsyncs_fewer_than_appends(tmp_path):
    with WriteAheadLog(tmp_path) as log:
        threads = [threading.Thread(target=lambda: [log.append("t", {"i": i}) for i in range(50)])
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = log.stats()
    # 8 threads each waiting on its append: a batch collects several; one fsync per batch
    assert stats["appended"] == 400 and stats["fsyncs"] == stats["batches"]
    assert stats["fsyncs"] < 400 / 2, stats


CHILD = """
import sys, threading
sys.path.insert(0, {repo!r})
from serving.ingest.wal import WriteAheadLog
log = WriteAheadLog({folder!r}, commit_interval_ms=20)  # a wide window for an early ack
out = threading.Lock()
def run(k):
    for i in range(1_000_000):
        seq = log.append("t", {{"k": k, "i": i}})
        with out:
            sys.stdout.write(f"{{seq}}\\n")
            sys.stdout.flush()
for k in range(4):
    threading.Thread(target=run, args=(k,)).start()
"""


def test_every_acknowledged_append_survives_kill_9(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO),
                                                                 folder=str(tmp_path))],
                             stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in child.stdout:
            acked.append(int(line))
            if len(acked) == 100:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait(10)
    acked += [int(x) for x in rest.split("\n")[:-1]]  # the last piece may be cut mid-line
    assert child.returncode == -signal.SIGKILL and len(acked) >= 100
    with WriteAheadLog(tmp_path) as log:
        found = set(seqs(log))
    assert set(acked) <= found, sorted(set(acked) - found)[:10]


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b + b"\x07\x00\x00", "partial header (3 of 8 bytes)"),
    (lambda b: b + frame(4, "t", {"i": 3})[:20], "partial record (12 of"),
    (lambda b: b + frame(4, "t", {"i": 3}).replace(b"\"i\":3", b"\"i\":4"), "CRC mismatch"),
    (lambda b: b + struct.pack("<II", 5, zlib.crc32(b"{nope")) + b"{nope", "not a record"),
])
def test_torn_tail_is_truncated_and_reported(tmp_path, damage, reason):
    fill(tmp_path, 3)
    path = seg(tmp_path, 1)
    good = path.read_bytes()
    path.write_bytes(damage(good))
    dropped = path.stat().st_size - len(good)
    with WriteAheadLog(tmp_path) as log:
        [problem] = log.recovery.problems
        assert problem.path == path and problem.offset == len(good) and problem.truncated
        assert reason in problem.reason
        assert problem.bytes_dropped == log.recovery.bytes_dropped == dropped
        assert path.read_bytes() == good  # cut back to the last good record
        assert f"{path.name} at byte {len(good)}" in log.recovery.summary()
        assert seqs(log) == [1, 2, 3]
        assert log.append("t", {"i": 3}) == 4
    with WriteAheadLog(tmp_path) as log:
        assert log.recovery.problems == [] and seqs(log) == [1, 2, 3, 4]


def test_corruption_in_an_older_segment_loses_only_its_rest(tmp_path):
    size = len(frame(1, "t", {"i": 0}))  # seqs 1-9 and i 0-8 all frame to this length
    fill(tmp_path, 9, segment_bytes=3 * size)  # sealed after every third record
    segments = sorted((tmp_path / "wal" / "0").glob("seg-*.wal"))
    assert [p.name for p in segments] == [seg(tmp_path, n).name for n in (1, 4, 7)]
    middle = bytearray(segments[1].read_bytes())
    middle[size + 20] ^= 0xFF  # inside the payload of seq 5, the second record of seg 4
    segments[1].write_bytes(bytes(middle))
    with WriteAheadLog(tmp_path, segment_bytes=3 * size) as log:
        [problem] = log.recovery.problems
        assert (problem.path, problem.offset, problem.reason) == (segments[1], size, "CRC mismatch")
        assert not problem.truncated and problem.bytes_dropped == 2 * size  # seqs 5 and 6 lost
        assert seqs(log) == [1, 2, 3, 4, 7, 8, 9]
        assert log.append("t", {"i": 9}) == 10
    with WriteAheadLog(tmp_path) as log:  # the older segment is reported again, left as it is
        assert len(log.recovery.problems) == 1 and seqs(log) == [1, 2, 3, 4, 7, 8, 9, 10]


def test_lock_in_process(tmp_path):
    log = WriteAheadLog(tmp_path)
    with pytest.raises(WalLocked) as e:
        WriteAheadLog(tmp_path)
    message = str(e.value)
    assert str(tmp_path / "wal" / "0") in message and f"process {os.getpid()}" in message
    assert "each replica needs its own --replica-id or log folder" in message
    with WriteAheadLog(tmp_path, replica_id="1") as other:
        assert other.append("t", {}) == 1
    log.close()
    log.close()  # idempotent
    with pytest.raises(WalClosed):
        log.append("t", {})
    with WriteAheadLog(tmp_path) as again:
        assert again.append("t", {}) == 1


HOLDER = """
import sys
sys.path.insert(0, {repo!r})
from serving.ingest.wal import WriteAheadLog
log = WriteAheadLog({folder!r})
print("ready", flush=True)
sys.stdin.readline()
log.close()
"""


def test_lock_across_processes(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO),
                                                                  folder=str(tmp_path))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        with pytest.raises(WalLocked, match=f"process {child.pid}"):
            WriteAheadLog(tmp_path)
    finally:
        child.communicate("\n", timeout=10)
    assert child.returncode == 0
    with WriteAheadLog(tmp_path) as log:
        assert log.append("t", {}) == 1


@pytest.mark.parametrize("broken", ["write", "fsync"])
def test_failed_write_adds_nothing(tmp_path, monkeypatch, broken):
    real_write, real_fsync, calls = os.write, os.fsync, []

    def write(fd, data):  # half the bytes reach the file, then the disk is full
        if calls == ["fail"]:
            calls.append("done")
            real_write(fd, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def fsync(fd):
        if calls == ["fail"]:
            calls.append("done")
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(w.os, broken, write if broken == "write" else fsync)
    with WriteAheadLog(tmp_path, commit_interval_ms=0) as log:
        assert log.append("t", {"i": 0}) == 1
        calls.append("fail")
        with pytest.raises(WalUnavailable, match=f"could not {broken} .*free space"):
            log.append("t", {"i": 1})
        assert calls == ["fail", "done"]
        assert log.append("t", {"i": 2}) == 2  # the failed record's seq is given to the next
        assert log.stats()["failed"] == 1 and log.stats()["appended"] == 2
    assert seg(tmp_path, 1).read_bytes() == frame(1, "t", {"i": 0}) + frame(2, "t", {"i": 2})
    with WriteAheadLog(tmp_path) as log:
        assert log.recovery.problems == []
        assert [r.row for r in log.records()] == [{"i": 0}, {"i": 2}]


def crash(*args):
    raise RuntimeError("crash")


def test_a_failed_undo_moves_to_a_new_segment(tmp_path, monkeypatch):
    fail = {"fsync": 0, "ftruncate": 0}

    def failing(name):
        real = getattr(os, name)

        def call(*args):
            if fail[name]:
                fail[name] -= 1
                raise OSError(errno.EIO, "Input/output error")
            return real(*args)
        return call

    for name in fail:
        monkeypatch.setattr(w.os, name, failing(name))
    with WriteAheadLog(tmp_path, commit_interval_ms=0) as log:
        assert log.append("t", {"i": 0}) == 1
        fail.update(fsync=1, ftruncate=1)  # the fsync fails, then cutting the file back too
        with pytest.raises(WalUnavailable, match="could not fsync"):
            log.append("t", {"i": 1})
        assert log.append("t", {"i": 2}) == 3  # seq 2 may be on disk in seg 1: never reused
    assert seg(tmp_path, 3).read_bytes() == frame(3, "t", {"i": 2})
    with WriteAheadLog(tmp_path) as log:  # at least once: the refused record may come back
        assert seqs(log) == [1, 2, 3]


def test_append_timeouts(tmp_path, monkeypatch):
    real_fsync, release = os.fsync, threading.Event()
    with WriteAheadLog(tmp_path, commit_interval_ms=0) as log:
        monkeypatch.setattr(w.os, "fsync", lambda fd: release.wait(10) and real_fsync(fd))
        with pytest.raises(WalUnavailable, match="it may be in the log"):
            log.append("t", {"i": 0}, timeout_s=0.2)  # taken, stuck in fsync
        with pytest.raises(WalUnavailable, match="was not logged"):
            log.append("t", {"i": 1}, timeout_s=0.1)  # still queued behind it: withdrawn
        release.set()
    with WriteAheadLog(tmp_path) as log:
        assert [r.row for r in log.records()] == [{"i": 0}]


def test_non_finite_numbers_are_refused_before_writing(tmp_path):
    with WriteAheadLog(tmp_path) as log:
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match="finite numbers"):
                log.append("t", {"watch_seconds": bad})
        with pytest.raises(ValueError, match="JSON"):
            log.append("t", {"when": object()})
        assert log.stats()["appended"] == 0
        assert list((tmp_path / "wal" / "0").glob("seg-*")) == []  # not even a segment file
        assert log.append("t", {"watch_seconds": 1.5}) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"replica_id": "a/b"}, "replica_id"), ({"replica_id": ".."}, "replica_id"),
    ({"max_batch": 0}, "max_batch"), ({"segment_bytes": 0}, "segment_bytes"),
    ({"commit_interval_ms": -1}, "commit_interval_ms"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        WriteAheadLog(tmp_path, **kwargs)


# ------------------------------------------------------------------------------- compaction


def write_routes(log: WriteAheadLog) -> None:
    """Seqs 1-4: two events, a signup, an onboarding answer."""
    log.append(c.INTERACTIONS, interaction(7, 70, 1_700_000_000))
    log.append(c.USERS, {c.USER_ID: 7, c.SIGNUP_AT: 1_690_000_000, c.COUNTRY: "SE",
                         c.SUBSCRIPTION_TIER: "basic", c.AGE_BUCKET: None,
                         c.ONBOARDING_GENRES: None})
    log.append(c.INTERACTIONS, interaction(7, 71, 1_700_000_060))
    log.append(c.ONBOARDING, {c.USER_ID: 7, c.ONBOARDING_GENRES: ["Drama", "Comedy"],
                            c.TIMESTAMP: 1_700_000_100})


def test_compaction_writes_contract_parts_and_hides_the_records(tmp_path):
    data = tmp_path / "data"
    with WriteAheadLog(tmp_path) as log:
        write_routes(log)
        assert log.compact(parquet_sinks(data)) == 0  # the active segment is not sealed
        assert log.compact(parquet_sinks(data), seal=True) == 4
        assert seqs(log) == [] and log.stats()["compacted_records"] == 4
        assert list((tmp_path / "wal" / "0").glob("seg-*")) == []
        assert log.append(c.INTERACTIONS, interaction(7, 72, 1_700_000_200)) == 5
    name = "part-w0000000000000001-0000000000000004-r0.parquet"
    events = pd.read_parquet(data / c.INTERACTIONS / name)
    assert events[c.ITEM_ID].tolist() == [70, 71] and str(events[c.USER_ID].dtype) == "int64"
    assert events.columns.tolist() == c.arrow_schema(c.INTERACTIONS).names
    [file] = c.table_files(data, c.USERS)  # what the pipeline reads
    assert file.name == name and pd.read_parquet(file)[c.COUNTRY].tolist() == ["SE"]
    quiz = pd.read_parquet(data / c.ONBOARDING / name)
    assert quiz[c.ONBOARDING_GENRES].map(list).tolist() == [["Drama", "Comedy"]]
    with WriteAheadLog(tmp_path) as log:
        assert log.recovery.compacted_seq == 4 and log.recovery.records == 1
        assert seqs(log) == [5]


def test_a_crash_between_sink_and_mark_recompacts_the_same_part(tmp_path, monkeypatch):
    data = tmp_path / "data"
    with WriteAheadLog(tmp_path) as log:
        write_routes(log)
        monkeypatch.setattr(log, "_write_mark", crash)
        with pytest.raises(RuntimeError, match="crash"):
            log.compact(parquet_sinks(data), seal=True)
        assert seqs(log) == [1, 2, 3, 4]  # not hidden: the mark did not move
    parts = sorted((data / c.INTERACTIONS).iterdir())
    assert [p.name for p in parts] == ["part-w0000000000000001-0000000000000004-r0.parquet"]
    with WriteAheadLog(tmp_path) as log:
        assert log.compact(parquet_sinks(data)) == 4  # a segment of an earlier run is sealed
    assert sorted((data / c.INTERACTIONS).iterdir()) == parts  # overwritten, not added
    assert len(pd.read_parquet(data / c.INTERACTIONS)) == 2


def test_a_crash_between_mark_and_delete_hides_the_leftover(tmp_path, monkeypatch):
    data, calls = tmp_path / "data", []
    with WriteAheadLog(tmp_path) as log:
        write_routes(log)
        monkeypatch.setattr(log, "_delete_segment", crash)
        with pytest.raises(RuntimeError, match="crash"):
            log.compact(parquet_sinks(data), seal=True)
        assert seqs(log) == []
    assert seg(tmp_path, 1).exists()
    with WriteAheadLog(tmp_path) as log:
        assert log.recovery.records == 0 and seqs(log) == []
        counting = {t: (lambda rows, a, b: calls.append(a)) for t in parquet_sinks(data)}
        assert log.compact(counting) == 0 and calls == []  # deleted without a second sink call
    assert not seg(tmp_path, 1).exists()


def test_a_table_without_a_sink_is_named(tmp_path):
    calls = []
    with WriteAheadLog(tmp_path) as log:
        write_routes(log)
        sinks = {c.INTERACTIONS: lambda rows, a, b: calls.append(rows)}
        with pytest.raises(WalError, match=f"{c.ONBOARDING}, {c.USERS} but no sink"):
            log.compact(sinks, seal=True)
        assert calls == [] and seqs(log) == [1, 2, 3, 4]


def test_parquet_sink_refuses_what_the_contract_would(tmp_path):
    with pytest.raises(ValueError, match="give a schema"):
        ParquetSink(tmp_path, c.ONBOARDING)
    (tmp_path / f"{c.USERS}.parquet").touch()
    with pytest.raises(c.ContractError, match="single file"):
        ParquetSink(tmp_path, c.USERS)
    sink = parquet_sinks(tmp_path / "d")[c.ONBOARDING]
    with pytest.raises(ValueError, match=r"field\(s\) genres not in"):
        sink([{c.USER_ID: 1, "genres": ["x"], c.TIMESTAMP: 1}], 1, 1)
    with pytest.raises(ValueError, match=f"null or missing {c.ONBOARDING_GENRES}"):
        sink([{c.USER_ID: 1, c.TIMESTAMP: 1}], 1, 1)
    assert list((tmp_path / "d" / c.ONBOARDING).iterdir()) == []  # no temp file left


def test_background_compactor_survives_a_failing_sink(tmp_path):
    data, broken = tmp_path / "data", [True]
    sinks = parquet_sinks(data)
    real = sinks[c.INTERACTIONS]

    def flaky(rows, first, last):
        if broken:
            raise OSError("disk full")
        real(rows, first, last)

    sinks[c.INTERACTIONS] = flaky
    with WriteAheadLog(tmp_path) as log:
        log.start_compactor(sinks, every_s=0.02)
        log.append(c.INTERACTIONS, interaction(1, 2, 1_700_000_000))
        deadline = time.monotonic() + 5
        while log.stats()["compact_errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.stats()["last_compact_error"] == "OSError: disk full"
        broken.clear()
        while log.stats()["compacted_records"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.stats()["compacted_records"] == 1
        log.append(c.INTERACTIONS, interaction(1, 3, 1_700_000_001))
    # close ran a last round: seq 2 is compacted too
    assert sorted(p.name for p in (data / c.INTERACTIONS).iterdir()) == [
        "part-w0000000000000001-0000000000000001-r0.parquet",
        "part-w0000000000000002-0000000000000002-r0.parquet"]
