"""Incoming events: validated against the data contract, recorded in the store, logged to Parquet.

    raw JSON object --EventValidator--> Event --FeatureStore.record_event--> online features
                                          \\--EventLog.append--> DIR/interactions/part-*.parquet

An event is one row of the contract's interactions table (``docs/data.md``). The validator reuses
the dataset validator's row rules (:func:`marquee.data.validate.check_frame`) and adds what a
live event can be checked against: the known users and the catalogue. A bad event raises
:class:`InvalidEvent` (a ValueError) listing every problem, each saying what was expected and
what arrived. An accepted event is written to the store first, then to the log; either failure is
raised to the caller (the HTTP layer answers 503 with the reason), so no event is dropped quietly.
A 503 after the store accepted the event may make a client retry it: delivery is at least once.

At start-up (``serving.build.attach_logs``) the events earlier runs logged take the live path again,
minus the log append (:meth:`EventIngest.replay`), so a restart does not forget them.

The log writes the contract's interactions format, so a dataset folder whose ``interactions/`` the
log appends to is read by the next pipeline run as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from marquee.data import contract as c
from marquee.data.validate import check_frame
from serving.state.records import Event

if TYPE_CHECKING:
    from serving.state.feature_store import FeatureStore

log = logging.getLogger(__name__)


class InvalidEvent(ValueError):
    """An event that breaks the contract; ``problems`` holds one message per problem.
    ``duplicate``: the only problem is an id already taken (a title, a user: HTTP 409)."""

    def __init__(self, problems: list[str], what: str = "event", duplicate: bool = False):
        self.problems, self.duplicate = problems, duplicate
        super().__init__(f"invalid {what} ({len(problems)} problem(s)): " + "; ".join(problems))


# Rows that pass every rule of their table; each field of a raw row is checked in a copy of one,
# so that check_frame (which reports the first problem of a row) reports every problem once.
CLEAN_ROWS: dict[str, dict[str, object]] = {
    c.INTERACTIONS: {
        c.USER_ID: 0, c.ITEM_ID: 0, c.TIMESTAMP: 0, c.EVENT: c.EVENT_WATCH, c.POSITION: None,
        c.WATCH_SECONDS: 0.0, c.DEVICE: c.DEVICES[-1], c.RATING: None},
    c.ITEMS: {
        c.ITEM_ID: 0, c.TITLE: "t", c.GENRES: [], c.CAST: [], c.DIRECTOR: None,
        c.RELEASE_YEAR: None, c.DURATION_SECONDS: None, c.ADDED_AT: c.MIN_TIMESTAMP,
        c.MATURITY_RATING: c.MATURITY_RATINGS[0], c.KEYWORDS: None},
    c.USERS: {
        c.USER_ID: 0, c.SIGNUP_AT: c.MIN_TIMESTAMP, c.COUNTRY: "unknown",
        c.SUBSCRIPTION_TIER: c.SUBSCRIPTION_TIERS[-1], c.AGE_BUCKET: None,
        c.ONBOARDING_GENRES: None},
}


def check_row(table: str, raw: object, what: str,
              refs: Mapping[str, tuple[Container[int], str]] = {}  # noqa: B006 (read only)
              ) -> tuple[dict[str, object], list[str]]:
    """Checks one raw row of ``table`` (a JSON object's fields) against the contract.

    Returns (typed value per column, problems): one message per problem in column order, each
    saying what was expected and what arrived; the values are only meaningful without problems.
    ``what`` names the row in messages ("an interaction", "a title"). ``refs``: column -> (the
    ids it must be in, why), checked on a value that is otherwise valid.
    """
    columns = {col.name: col for col in c.SCHEMAS[table]}
    if not isinstance(raw, Mapping):
        return {}, [f"expected {what}: a JSON object with the fields {', '.join(columns)}, "
                    f"got {raw!r}"]
    problems = [f"{k}: not a field of {what} (its fields: {', '.join(columns)})"
                for k in raw if k not in columns]
    problems += [f"{name}: missing; expected {col.doc}" for name, col in columns.items()
                 if not col.nullable and name not in raw]
    probes = []
    for name, col in columns.items():
        row = dict(CLEAN_ROWS[table])
        if name in raw:
            row[name] = raw[name]
            if isinstance(raw[name], bool) and not pa.types.is_string(col.type):
                row[name] = json.dumps(raw[name])  # JSON true is no number: reported as text
        if name == c.WATCH_SECONDS and raw.get(c.EVENT) in c.EVENTS:
            row[c.EVENT] = raw[c.EVENT]  # the impression-has-no-watch-time rule needs both
        probes.append(row)
    if table == c.INTERACTIONS:  # no uniqueness rule: one frame checks every probe at once
        typed, reasons = check_frame(table, pd.DataFrame(probes, dtype=object), check_refs=False)
        value = {name: typed[name].iloc[k] for k, name in enumerate(columns)}
    else:  # ids must be unique within a frame: each probe alone
        value, reasons = {}, []
        for name, row in zip(columns, probes, strict=True):
            typed, why = check_frame(table, pd.DataFrame([row], dtype=object), check_refs=False)
            value[name] = typed[name].iloc[0]
            reasons.append(why[0])
    for k, name in enumerate(columns):
        if reasons[k]:
            problems.append(reasons[k])
        elif name in refs and name in raw and int(value[name]) not in refs[name][0]:
            problems.append(f"{name}: {int(value[name])} {refs[name][1]}")
    return value, problems


class EventValidator:
    """Checks raw events (a JSON object's fields) against the contract, the users and the items.

    Args:
      user_ids: known user ids (``UserStore`` supports ``in``); an event of another user is
        refused, as the next pipeline run would reject it (referential integrity).
      item_ids: catalogue item ids (e.g. ``Catalogue.row``).
    """

    def __init__(self, user_ids: Container[int], item_ids: Container[int]):
        self.user_ids, self.item_ids = user_ids, item_ids

    def _refs(self) -> dict[str, tuple[Container[int], str]]:
        return {
            c.USER_ID: (self.user_ids, "is not a known user; the users table must hold a user "
                        "before their events are accepted"),
            c.ITEM_ID: (self.item_ids, "is not in the catalogue; send events only for titles "
                        "the catalogue holds")}

    def validate(self, raw: Mapping[str, object]) -> Event:
        """The typed event; raises InvalidEvent listing every problem."""
        value, problems = check_row(c.INTERACTIONS, raw, "an interaction", self._refs())
        if problems:
            raise InvalidEvent(problems)
        return _event(value)

    def validate_frame(self, frame: pd.DataFrame) -> list[Event | str]:
        """Each row of a batch of the interactions table (a logged part file's) as an Event, or
        why it is refused: the dataset validator's first problem of the row, else an unknown
        user or title (the reasons ``validate`` gives). Raises ContractError for a frame without
        a contract column."""
        typed, reasons = check_frame(c.INTERACTIONS, frame, check_refs=False)
        refs = self._refs()
        out: list[Event | str] = []
        for value, reason in zip(typed.to_dict("records"), reasons, strict=True):
            reason = reason or next((f"{name}: {int(value[name])} {why}"
                                     for name, (ids, why) in refs.items()
                                     if int(value[name]) not in ids), "")
            out.append(reason or _event(value))
        return out


def _event(value: Mapping[str, object]) -> Event:
    """The Event of a valid row typed by ``check_frame``."""
    return Event(
        user_id=int(value[c.USER_ID]), item_id=int(value[c.ITEM_ID]),
        timestamp=int(value[c.TIMESTAMP]), event=str(value[c.EVENT]),
        watch_seconds=float(value[c.WATCH_SECONDS]), device=str(value[c.DEVICE]),
        position=None if pd.isna(value[c.POSITION]) else int(value[c.POSITION]),
        rating=None if pd.isna(value[c.RATING]) else float(value[c.RATING]))


class EventLogError(RuntimeError):
    """An accepted event could not be appended to the log (disk, permissions, a moved folder)."""


class EventLog:
    """Appends rows of a contract table to ``DIR/<table>/part-<unix seconds>-<n>.parquet``: events
    (``Event``, the default ``interactions`` table), titles (``items``) or signups (``users``),
    the last two as row dicts.

    Rows are buffered and written ``flush_rows`` at a time (and on ``flush``/``close``) as row
    groups of the open part file. A part file holds at most ``rows_per_file`` rows; while open it
    is named ``part-....parquet.inprogress`` (not a ``*.parquet`` name, so readers never see a
    file without its footer) and renamed when full or on ``close``. Thread-safe. One writer per
    folder: two processes appending to one folder could pick the same part name.

    Failure: the append whose flush fails raises EventLogError and its own event is not kept;
    events buffered by earlier appends stay buffered and are written by the next flush.
    """

    def __init__(self, data_dir: str | Path, flush_rows: int = 100, rows_per_file: int = 10_000,
                 clock: Callable[[], float] = time.time, table: str = c.INTERACTIONS):
        if not 1 <= flush_rows <= rows_per_file:
            raise ValueError(f"need 1 <= flush_rows <= rows_per_file, got {flush_rows} and "
                             f"{rows_per_file}")
        data_dir = Path(data_dir)
        if table not in c.TABLES:
            raise ValueError(f"table must be one of {c.TABLES}, got {table!r}")
        self.table = table
        single = data_dir / f"{table}.parquet"
        if single.exists():
            raise c.ContractError(
                f"{single} is a single file, but the event log appends part files to "
                f"{data_dir / table}/ and a table lives in one of the two. Move it "
                f"into the folder first: mkdir {data_dir / table} && mv {single} "
                f"{data_dir / table}/part-0000000000-0000.parquet (part files are "
                "read in name order), or log to another folder.")
        self.folder = data_dir / table
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.rows_per_file, self._clock = flush_rows, rows_per_file, clock
        self._lock = threading.Lock()
        self._buffer: list[dict[str, object]] = []
        self._writer: c.TableWriter | None = None
        self._final: Path | None = None
        self._n = 0
        self.files: list[Path] = []  # completed part files, oldest first

    def append(self, event: Event | Mapping[str, object]) -> None:
        """Buffers ``event`` (an Event or a row dict of the table); writes the buffer when it
        holds ``flush_rows`` rows."""
        row = event.to_row() if isinstance(event, Event) else dict(event)
        with self._lock:
            self._buffer.append(row)
            if len(self._buffer) >= self.flush_rows:
                try:
                    self._flush()
                except EventLogError:
                    if self._buffer and self._buffer[-1] is row:
                        self._buffer.pop()  # the caller is told; the earlier ones stay
                    raise

    def flush(self) -> None:
        """Writes every buffered event to the open part file (readable once it is closed)."""
        with self._lock:
            self._flush()

    def close(self) -> None:
        """Writes the buffer and closes the open part file under its final name."""
        with self._lock:
            self._flush()
            self._rotate()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flush(self) -> None:
        while self._buffer:
            try:
                if self._writer is None:
                    self._open()
                room = self.rows_per_file - self._writer.rows
                chunk = self._buffer[:room]
                self._writer.write({k: [r.get(k) for r in chunk] for k in chunk[0]})
            except (OSError, c.ContractError) as e:
                raise EventLogError(
                    f"could not append {len(self._buffer)} row(s) to {self.folder}: {e}. "
                    "Check that the folder exists, is writable and has free space.") from e
            del self._buffer[:len(chunk)]
            if self._writer.rows >= self.rows_per_file:
                self._rotate()

    def _open(self) -> None:
        stamp = int(self._clock())
        while True:
            final = self.folder / f"part-{stamp:010d}-{self._n:04d}.parquet"
            self._n += 1
            if not final.exists():
                break
        self._writer = c.TableWriter(final.with_name(final.name + ".inprogress"), self.table)
        self._final = final

    def _rotate(self) -> None:
        if self._writer is None:
            return
        writer, final = self._writer, self._final
        self._writer = self._final = None
        try:
            writer.close()
            writer.path.rename(final)
        except OSError as e:
            raise EventLogError(f"could not close {writer.path} as {final.name}: {e}") from e
        self.files.append(final)
        log.info("event log: %s (%d rows)", final, writer.rows)


@dataclasses.dataclass
class ReplayReport:
    """What :meth:`EventIngest.replay` put back and what it skipped (each skip is logged)."""

    files: int = 0  # part files opened
    events: int = 0  # rows put back
    skipped_rows: int = 0  # rows that no longer validate
    skipped_files: int = 0  # files unreadable from the start or part way (the rest skipped)

    def skip(self, message: str, files: int = 0, rows: int = 0) -> None:
        """Counts a skip and logs its message (the first REPLAY_PROBLEMS_LOGGED of a replay)."""
        if self.skipped_files + self.skipped_rows < REPLAY_PROBLEMS_LOGGED:
            log.warning("event log replay: %s", message)
        self.skipped_files += files
        self.skipped_rows += rows


# Skipped rows and files a replay logs one by one; the rest are only counted (its summary line
# says how many), so a log full of a removed title's events does not flood start-up.
REPLAY_PROBLEMS_LOGGED = 20


def _frames(path: Path, batch_size: int) -> Iterator[pd.DataFrame]:
    """The rows of one part file, ``batch_size`` at a time; ContractError if it cannot be read
    (at once, or part way through a damaged file)."""
    batches = c.open_parquet(path).iter_batches(batch_size=batch_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise c.ContractError(f"damaged Parquet data ({type(e).__name__}: {e})") from e
        yield batch.to_pandas()


class EventIngest:
    """Validate -> store -> log, the one path every incoming event takes (``POST /v1/events``).

    ``accept`` raises InvalidEvent (answer 400), or the store's StoreUnavailable / EventLogError
    (answer 503 with the message); it returns the event only when both writes succeeded.
    ``replay`` puts back, at start-up, the events earlier runs logged.
    """

    def __init__(self, validator: EventValidator, store: FeatureStore, event_log: EventLog,
                 on_accept: Callable[[Event], None] | None = None):
        self.validator, self.store, self.log = validator, store, event_log
        self.on_accept = on_accept  # e.g. HomepageService.observe (trending's live watches)

    def accept(self, raw: Mapping[str, object]) -> Event:
        event = self.validator.validate(raw)
        self.store.record_event(event)
        self.log.append(event)
        if self.on_accept is not None:
            self.on_accept(event)
        return event

    def replay(self, files: Iterable[Path], record: Callable[[Event], None] | None = None,
               batch_size: int = 10_000) -> ReplayReport:
        """Puts back the events of ``files``: part files of the log written by earlier runs, in
        name order, which is the order they were logged.

        Each row takes the live path, minus the log append: it is validated (``validate_frame``: a
        title or user gone since is refused), recorded (``record``, by default the store's
        ``record_event``) and passed to ``on_accept``, in the order it was logged, which is the
        order the live path applied it: the online features end as they were (recent watches in
        arrival order, a late event where it arrived). Nothing is appended: the rows are in the log
        already. One batch of ``batch_size`` rows is in memory at a time.

        A file that cannot be read (from the start, or its rest after a damaged batch) and a
        row that no longer validates are skipped, logged (file, 0-based row, reason) and
        counted in the report, never raised. Errors of ``record`` are raised.
        """
        record = record or self.store.record_event
        report = ReplayReport()
        for path in files:
            report.files += 1
            offset = 0
            try:
                for frame in _frames(path, batch_size):
                    for row, event in enumerate(self.validator.validate_frame(frame), offset):
                        if isinstance(event, str):
                            report.skip(f"{path} row {row}: {event}; not put back", rows=1)
                            continue
                        record(event)
                        if self.on_accept is not None:
                            self.on_accept(event)
                        report.events += 1
                    offset += len(frame)
            except c.ContractError as e:
                report.skip(f"{path}: unreadable from row {offset} on ({e}); "
                            f"{'its' if offset == 0 else 'those'} events were not put back",
                            files=1)
        return report
