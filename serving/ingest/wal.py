"""A durable write-ahead log for the write routes: an append returns once its record is on disk.

    append(table, row) --queue--> writer thread: one os.write + os.fsync per batch --> seq
    sealed segments --compact(sinks)--> DIR/<table>/part-<first>-<last>-r<replica>.parquet

Files (``folder/wal/<replica_id>/``)::

    LOCK                      flock'ed by the one process writing here; holds its pid
    seg-<first seq:016d>.wal  records, oldest segment first; only the newest is ever written
    COMPACTED                 the highest seq handed to sinks and deleted ("0" if absent)

A record is ``[u32 length][u32 crc32 of payload][payload]`` (little-endian); the payload is the
compact UTF-8 JSON ``{"seq":n,"table":t,"row":{...}}``. Seqs increase across segments and
restarts, by one per record: a failed batch's seqs go to the next batch (unless its bytes could
not be cut off again: then they are skipped, see ``_commit``).

Group commit: appends from any number of threads are queued; one writer thread takes up to
``max_batch`` of them (those arriving within ``commit_interval_ms`` of the first), writes them
with one ``os.write``, calls ``os.fsync`` once and wakes every waiter. With ``fsync=False`` an
append returns once the OS has the bytes: a process crash keeps them, a power cut may not.

Each open starts a new segment, so a segment not being written by this process is sealed
(immutable) and can be compacted. Recovery at open checks every record's length and CRC: a bad
tail of the newest segment (a write cut by a crash) is truncated off; damage in an older segment
ends that segment (its rest is lost) and reading goes on with the next. Both are reported in
``wal.recovery``; nothing is raised, so a server starts with whatever survived.

Exactly once with compaction: a sink writes a seq range to a Parquet part named by that range
(re-running the range overwrites the same file), then the COMPACTED mark is advanced, then the
segment deleted. A crash after the sink but before the mark leaves the records in both the
part and the log until the next ``compact`` rewrites the part and drops them, so a reader of
both should ``compact()`` first at start-up (every segment left by an earlier run is sealed), or
skip log records inside the seq range a part's name gives. A crash after the mark leaves only
records the mark hides.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT = re.compile(r"seg-(\d{16})\.wal")
REPLICA_ID = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.-]+")  # a folder name, not . or ..
Sink = Callable[[list[dict], int, int], None]

# The quiz answers (serving.ingest's Onboarding.to_json rows) are no contract table: their
# Parquet parts use this schema, under DIR/onboarding/.
class WalError(RuntimeError):
    """The write-ahead log cannot do what was asked; the message says why and the fix."""


class WalLocked(WalError):
    """Another WriteAheadLog (this process or another) holds the folder's lock."""


class WalUnavailable(WalError):
    """An append is not known to be durable (the write or fsync failed, or it timed out)."""


class WalClosed(WalError):
    """The log was closed."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One logged row: its seq, its table's name and the row as JSON gave it back."""

    seq: int
    table: str
    row: dict


@dataclasses.dataclass(frozen=True)
class WalProblem:
    """Damage found at open: ``path`` is bad from byte ``offset`` on, for ``reason``;
    ``truncated``: cut off (the newest segment), else skipped (an older one; the rest is lost)."""

    path: Path
    offset: int
    reason: str
    bytes_dropped: int
    truncated: bool

    def __str__(self) -> str:
        action = "truncated" if self.truncated else "rest of the segment lost"
        return (f"{self.path.name} at byte {self.offset}: {self.reason}; {action} "
                f"({self.bytes_dropped} bytes)")


@dataclasses.dataclass
class RecoveryReport:
    """What open found: ``records`` not yet compacted in ``segments`` segment files, seqs up to
    ``last_seq`` (``compacted_seq``: the COMPACTED mark), and the damage. Open logs
    ``summary()`` (a warning if there is damage)."""

    folder: Path
    segments: int = 0
    records: int = 0
    compacted_seq: int = 0
    last_seq: int = 0
    problems: list[WalProblem] = dataclasses.field(default_factory=list)
    bytes_dropped: int = 0

    def summary(self) -> str:
        text = (f"write-ahead log {self.folder}: {self.records} record(s) in {self.segments} "
                f"segment(s), last seq {self.last_seq}, compacted up to {self.compacted_seq}")
        if self.problems:
            text += (f"; {len(self.problems)} problem(s), {self.bytes_dropped} byte(s) dropped: "
                     + "; ".join(map(str, self.problems)))
        return text


class _Torn(Exception):
    def __init__(self, offset: int, reason: str):
        super().__init__(reason)
        self.offset, self.reason = offset, reason


class _Pending:
    __slots__ = ("table", "row", "seq", "error", "done", "taken", "cancelled")

    def __init__(self, table: str, row: str):
        self.table, self.row = table, row  # both JSON text
        self.seq, self.error, self.taken, self.cancelled = 0, None, False, False
        self.done = threading.Event()


def _scan(path: Path, limit: int | None = None, prev_seq: int = 0) -> Iterator[Record]:
    """Yields each good record of ``path`` (its first ``limit`` bytes);
    raises _Torn at the first bad one. Seqs must increase from ``prev_seq``."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size if limit is None else limit
        offset = 0
        while offset < size:
            head = fh.read(HEADER.size)
            if offset + HEADER.size > size or len(head) < HEADER.size:
                raise _Torn(offset, f"partial header ({size - offset} of {HEADER.size} bytes)")
            length, crc = HEADER.unpack(head)
            if offset + HEADER.size + length > size:
                raise _Torn(offset, f"partial record ({size - offset - HEADER.size} of "
                                    f"{length} payload bytes)")
            payload = fh.read(length)
            if zlib.crc32(payload) != crc:
                raise _Torn(offset, "CRC mismatch")
            try:
                d = json.loads(payload)
                record = Record(int(d["seq"]), str(d["table"]), d["row"])
                if not isinstance(record.row, dict):
                    raise TypeError("row is not an object")
            except (ValueError, KeyError, TypeError) as e:
                raise _Torn(offset, f"not a record ({type(e).__name__}: {e})") from e
            if record.seq <= prev_seq:
                raise _Torn(offset, f"seq {record.seq} does not follow {prev_seq}")
            prev_seq = record.seq
            offset += HEADER.size + length
            yield record


def _good(path: Path, limit: int | None = None) -> Iterator[Record]:
    """The records of ``path`` before its first damaged one (none if it was deleted)."""
    try:
        yield from _scan(path, limit)
    except (_Torn, FileNotFoundError):
        return


def _fsync_path(path: Path) -> None:
    """fsync of a file or a folder (a folder's, so that a new, renamed or removed name lasts)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """The log of one replica in ``folder/wal/<replica_id>/``; thread-safe. See the module doc.

    Args:
      folder: the log folder (e.g. ``--event-log DIR``).
      replica_id: one per process writing to ``folder`` (letters, digits, ``_.-``).
      commit_interval_ms: how long a batch waits for more appends after its first (>= 0).
      max_batch: most records per write + fsync.
      segment_bytes: a segment is sealed once it holds at least this many bytes.
      fsync: False: skip the fsync (durable against a process crash only; for tests and benches).

    Raises WalLocked if another log holds the folder, ValueError for a bad argument, OSError if
    the folder cannot be created or read.
    """

    def __init__(self, folder: str | Path, replica_id: str = "0", commit_interval_ms: float = 2.0,
                 max_batch: int = 512, segment_bytes: int = 64 << 20, fsync: bool = True):
        if not isinstance(replica_id, str) or not REPLICA_ID.fullmatch(replica_id):
            raise ValueError(f"replica_id must be letters, digits, '_', '.' or '-', got "
                             f"{replica_id!r}")
        if not 0 <= commit_interval_ms <= 1000:
            raise ValueError(f"commit_interval_ms must be 0-1000, got {commit_interval_ms}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not isinstance(segment_bytes, int) or segment_bytes < 1:
            raise ValueError(f"segment_bytes must be an int >= 1, got {segment_bytes!r}")
        self.dir = Path(folder) / "wal" / replica_id
        self.replica_id, self.fsync = replica_id, fsync
        self._interval, self.max_batch = commit_interval_ms / 1000, max_batch
        self.segment_bytes = segment_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            self._mark = self._read_mark()
            self.recovery = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise
        (log.warning if self.recovery.problems else log.info)("%s", self.recovery.summary())
        self._next_seq = self.recovery.last_seq + 1
        self._fd: int | None = None  # the active segment, opened by the first batch
        self._active: Path | None = None
        self._size = 0  # bytes of the active segment known durable
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._closed = False
        self._io_lock = threading.Lock()  # the active segment: writes, seals
        self._compact_lock = threading.Lock()
        self._stats = dict(appended=0, batches=0, fsyncs=0, failed=0, compacted_records=0,
                           compact_errors=0, last_compact_error=None)
        self._compactor: threading.Thread | None = None
        self._compactor_sinks: Mapping[str, Sink] = {}
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name=f"wal-writer-{replica_id}",
                                        daemon=True)
        self._writer.start()

    # ----------------------------------------------------------------------- open and recover

    def _take_lock(self) -> int:
        path = self.dir / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise WalLocked(f"{self.dir} is locked by {who} ({path}): two logs cannot share a "
                            "folder; each replica needs its own --replica-id or log folder") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _read_mark(self) -> int:
        path = self.dir / "COMPACTED"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        if not text.strip().isdigit():
            raise WalError(f"{path} holds {text[:40]!r}, not a seq: restore it from a backup, or "
                           "delete it (records already compacted to Parquet may then be read "
                           "twice)")
        return int(text)

    def _segments(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if SEGMENT.fullmatch(p.name))

    def _recover(self) -> RecoveryReport:
        report = RecoveryReport(self.dir, compacted_seq=self._mark)
        segments, seen = self._segments(), 0
        for i, path in enumerate(segments):
            seen = max(seen, int(SEGMENT.fullmatch(path.name)[1]) - 1)  # its name is its first
            try:
                for record in _scan(path, prev_seq=seen):
                    seen = record.seq
                    report.records += record.seq > self._mark
            except _Torn as t:
                newest = i == len(segments) - 1
                problem = WalProblem(path, t.offset, t.reason, path.stat().st_size - t.offset,
                                     truncated=newest)
                if newest:
                    with open(path, "r+b") as fh:
                        fh.truncate(t.offset)
                        os.fsync(fh.fileno())
                report.problems.append(problem)
                report.bytes_dropped += problem.bytes_dropped
            if path.stat().st_size == 0:
                path.unlink()
            else:
                report.segments += 1
        _fsync_path(self.dir)
        report.last_seq = max(seen, self._mark)
        return report

    # ------------------------------------------------------------------------------ appends

    def append(self, table: str, row: Mapping[str, object], timeout_s: float = 5.0) -> int:
        """Logs ``row`` (JSON-serialisable, no NaN or infinity) of ``table``; returns its seq
        once it is on disk (fsynced).

        Raises ValueError for a row JSON cannot hold (nothing is written), WalUnavailable if
        the write or fsync failed (the record is not in the log; a retry may succeed) or
        ``timeout_s`` passed (not written if it was still queued, else it may be in the log:
        the message says which), WalClosed after ``close``.
        """
        if not isinstance(table, str) or not table:
            raise ValueError(f"table must be a non-empty string, got {table!r}")
        if not isinstance(row, Mapping):
            raise ValueError(f"a {table} row must be a mapping, got {type(row).__name__}")
        try:
            text = json.dumps(dict(row), allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"a {table} row must be JSON (finite numbers, strings, lists, "
                             f"objects, null): {e}") from e
        pending = _Pending(json.dumps(table), text)
        with self._cond:
            if self._closed:
                raise WalClosed(f"{self.dir}: the log is closed; no more appends")
            self._queue.append(pending)
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._cond.notify()
        if not pending.done.wait(timeout_s):
            with self._cond:
                pending.cancelled = not pending.taken
            if pending.cancelled:
                raise WalUnavailable(f"{self.dir}: no write within {timeout_s}s; the {table} row "
                                     "was not logged. The disk is slow or stuck: check it")
            if not pending.done.wait(0):  # (it may have finished meanwhile)
                raise WalUnavailable(f"{self.dir}: the write of the {table} row took longer "
                                     f"than {timeout_s}s; it may be in the log. The disk is slow "
                                     "or stuck: check it")
        if pending.error is not None:
            raise pending.error
        return pending.seq

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return  # closed, nothing left
                self._cond.wait_for(lambda: len(self._queue) >= self.max_batch or self._closed,
                                    self._interval)
                batch = [p for p in self._queue[:self.max_batch] if not p.cancelled]
                del self._queue[:self.max_batch]
                for p in batch:
                    p.taken = True
            if batch:
                try:
                    self._commit(batch)
                except Exception as e:  # a bug, not the disk: fail the batch, keep the thread
                    log.exception("write-ahead log %s: batch failed", self.dir)
                    for p in batch:
                        p.error = WalUnavailable(f"{self.dir}: internal error {e!r}")
                for p in batch:
                    p.done.set()

    def _commit(self, batch: list[_Pending]) -> None:
        """Writes + fsyncs ``batch`` as one; on OSError each gets WalUnavailable and the segment
        is cut back to its size before (if even that fails, the next batch starts a new
        segment and this batch's seqs are skipped, its records may be found at the next open)."""
        with self._io_lock:
            first = self._next_seq
            frames = []
            for seq, p in enumerate(batch, first):
                payload = f'{{"seq":{seq},"table":{p.table},"row":{p.row}}}'.encode()
                frames.append(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
                p.seq = seq
            data = b"".join(frames)
            step = "open"
            try:
                if self._fd is None:
                    self._open_segment()
                step = "write"
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                step = "fsync"
                if self.fsync:
                    os.fsync(self._fd)
                    self._stats["fsyncs"] += 1
            except OSError as e:
                self._fail(batch, step, e)
                return
            self._size += len(data)
            self._next_seq += len(batch)
            self._stats["appended"] += len(batch)
            self._stats["batches"] += 1
            if self._size >= self.segment_bytes:
                self._seal()

    def _fail(self, batch: list[_Pending], step: str, e: OSError) -> None:
        target = self._active or self.dir
        for p in batch:
            p.error = WalUnavailable(
                f"could not {step} {target}: {e}; {len(batch)} record(s) not logged. Check that "
                "the disk has free space and the folder is writable; later appends retry")
        self._stats["failed"] += len(batch)
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as e2:
            log.error("write-ahead log: could not cut %s back to %d bytes after a failed %s "
                      "(%s); continuing in a new segment", self._active, self._size, step, e2)
            self._next_seq += len(batch)  # seqs a record on disk may hold: never reused
            os.close(self._fd)
            self._fd, self._active = None, None

    def _open_segment(self) -> None:
        path = self.dir / f"seg-{self._next_seq:016d}.wal"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._active, self._size = path, 0
        _fsync_path(self.dir)  # the new name survives a crash as well as its data

    def _seal(self) -> None:
        """Closes the active segment (io_lock held); the next batch opens a new one. Its
        batches were fsynced (unless fsync=False), so an error here loses nothing acknowledged."""
        if self._fd is None:
            return
        fd, self._fd, self._active, self._size = self._fd, None, None, 0
        try:
            if not self.fsync:
                os.fsync(fd)
            os.close(fd)
        except OSError as e:
            log.error("write-ahead log: closing the sealed segment failed: %s", e)

    def seal(self) -> None:
        """Seals the active segment if it has records, making them compactable."""
        with self._io_lock:
            if self._size:
                self._seal()

    # ------------------------------------------------------------------------------ reading

    def records(self, after_seq: int = 0) -> Iterator[Record]:
        """The records on disk with seq > max(after_seq, the COMPACTED mark), in seq order: every
        acknowledged append not yet compacted. Sealed segments compacted meanwhile are skipped;
        damaged records end their segment (as at open)."""
        with self._io_lock:  # a snapshot: sealed segments and the active one's durable bytes
            active, size, paths = self._active, self._size, self._segments()
        floor = max(after_seq, self._mark)
        for path in paths:
            yield from (r for r in _good(path, size if path == active else None) if r.seq > floor)

    # --------------------------------------------------------------------------- compaction

    def compact(self, sinks: Mapping[str, Sink], seal: bool = False) -> int:
        """Hands each sealed segment's records to ``sinks[table](rows, first_seq, last_seq)``
        (rows in seq order; first/last: the segment's seq range, the same for every table of
        it), then advances COMPACTED to last_seq and deletes the segment; oldest segment first.
        ``seal``: seal the active segment first. Returns the records compacted.

        A sink's error is raised and stops the round at that segment (nothing of it is deleted;
        the next round retries it, so sinks must be idempotent per range). A table without a
        sink raises WalError naming it before any sink of the segment is called.
        """
        with self._compact_lock:
            if seal:
                self.seal()
            with self._io_lock:  # segments are created under it: all but the active are sealed
                active, paths = self._active, self._segments()
            done = 0
            for path in paths:
                if path == active:
                    continue
                records = [r for r in _good(path) if r.seq > self._mark]
                if records:
                    by_table: dict[str, list[dict]] = {}
                    for r in records:
                        by_table.setdefault(r.table, []).append(r.row)
                    missing = sorted(set(by_table) - set(sinks))
                    if missing:
                        raise WalError(f"{path.name} holds rows of table(s) {', '.join(missing)} "
                                       f"but no sink takes them (sinks: {', '.join(sinks)}); "
                                       "pass a sink for each table the log is given")
                    first, last = records[0].seq, records[-1].seq
                    for table, rows in by_table.items():
                        sinks[table](rows, first, last)
                    self._write_mark(last)
                self._delete_segment(path)
                done += len(records)
                with self._io_lock:
                    self._stats["compacted_records"] += len(records)
            return done

    def _write_mark(self, seq: int) -> None:
        path, tmp = self.dir / "COMPACTED", self.dir / "COMPACTED.tmp"
        tmp.write_text(f"{seq}\n")
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(self.dir)
        self._mark = seq

    def _delete_segment(self, path: Path) -> None:
        path.unlink()
        _fsync_path(self.dir)

    def start_compactor(self, sinks: Mapping[str, Sink], every_s: float = 60.0) -> None:
        """Runs ``compact(sinks, seal=True)`` every ``every_s`` seconds while there is anything
        to compact, and once more at ``close``. Errors are logged, counted in ``stats()`` and
        retried next round."""
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        if self._closed or self._compactor is not None:
            raise WalError(f"{self.dir}: the log is closed or has a compactor already")
        self._compactor_sinks = dict(sinks)
        self._compactor = threading.Thread(target=self._compact_loop, args=(every_s,),
                                           name=f"wal-compactor-{self.replica_id}", daemon=True)
        self._compactor.start()

    def _compact_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if self._size or any(p != self._active for p in self._segments()):
                self._compact_round()

    def _compact_round(self) -> None:
        try:
            self.compact(self._compactor_sinks, seal=True)
        except Exception as e:  # the thread must survive a bad round: logged, counted, retried
            log.exception("write-ahead log %s: compaction failed; retrying next round", self.dir)
            with self._io_lock:
                self._stats["compact_errors"] += 1
                self._stats["last_compact_error"] = f"{type(e).__name__}: {e}"

    def stats(self) -> dict[str, object]:
        """Counters since open: appended (records), batches, fsyncs, failed (appends refused by
        a failed write), compacted_records, compact_errors, last_compact_error (text or None)."""
        with self._io_lock:
            return dict(self._stats)

    # ------------------------------------------------------------------------------ closing

    def close(self, timeout_s: float = 10.0) -> None:
        """Finishes the queued appends (durably), runs a last compaction if a compactor runs,
        closes the segment and frees the lock. Idempotent; appends after it raise WalClosed.
        Raises WalUnavailable if the writer is still busy after ``timeout_s`` (the lock is then
        kept until the process ends)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._stop.set()
        if self._compactor is not None:
            self._compactor.join(timeout_s)
        self._writer.join(timeout_s)
        if self._writer.is_alive():
            raise WalUnavailable(f"{self.dir}: writes still running after {timeout_s}s; the "
                                 "disk is slow or stuck")
        if self._compactor is not None:
            self._compact_round()
        with self._io_lock:
            self._seal()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------- sinks
