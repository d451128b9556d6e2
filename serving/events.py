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

The log writes the contract's interactions format, so a dataset folder whose ``interactions/`` the
log appends to is read by the next pipeline run as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Container, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from marquee.data import contract as c
from marquee.data.validate import check_frame

if TYPE_CHECKING:
    from serving.feature_store import FeatureStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Event:
    """One accepted interaction, typed as the contract's interactions row."""

    user_id: int
    item_id: int
    timestamp: int  # UTC seconds
    event: str  # contract.EVENTS
    watch_seconds: float
    device: str  # contract.DEVICES
    position: int | None = None
    rating: float | None = None

    @property
    def is_watch(self) -> bool:
        return self.event == c.EVENT_WATCH

    @property
    def is_positive(self) -> bool:
        """Watched past the contract's threshold: the models' positive."""
        return self.is_watch and self.watch_seconds >= c.WATCHED_THRESHOLD_SECONDS

    def to_row(self) -> dict[str, object]:
        """The interactions row, keyed by the contract's column names."""
        return {c.USER_ID: self.user_id, c.ITEM_ID: self.item_id, c.TIMESTAMP: self.timestamp,
                c.EVENT: self.event, c.POSITION: self.position,
                c.WATCH_SECONDS: self.watch_seconds, c.DEVICE: self.device, c.RATING: self.rating}


class InvalidEvent(ValueError):
    """An event that breaks the contract; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid event ({len(problems)} problem(s)): " + "; ".join(problems))


# A row that passes every interactions rule; each field of an event is checked in a copy of it,
# so that check_frame (which reports the first problem of a row) reports every problem once.
_CLEAN_ROW: dict[str, object] = {
    c.USER_ID: 0, c.ITEM_ID: 0, c.TIMESTAMP: 0, c.EVENT: c.EVENT_WATCH, c.POSITION: None,
    c.WATCH_SECONDS: 0.0, c.DEVICE: c.DEVICES[-1], c.RATING: None,
}


class EventValidator:
    """Checks raw events (a JSON object's fields) against the contract, the users and the items.

    Args:
      user_ids: known user ids (``UserStore`` supports ``in``); an event of another user is
        refused, as the next pipeline run would reject it (referential integrity).
      item_ids: catalogue item ids (e.g. ``Catalogue.row``).
    """

    def __init__(self, user_ids: Container[int], item_ids: Container[int]):
        self.user_ids, self.item_ids = user_ids, item_ids

    def validate(self, raw: Mapping[str, object]) -> Event:
        """The typed event; raises InvalidEvent listing every problem."""
        if not isinstance(raw, Mapping):
            raise InvalidEvent([f"expected a JSON object with the fields "
                                f"{', '.join(c.column_names(c.INTERACTIONS))}, got {raw!r}"])
        columns = {col.name: col for col in c.SCHEMAS[c.INTERACTIONS]}
        problems = [f"{k}: not a field of an interaction (its fields: {', '.join(columns)})"
                    for k in raw if k not in columns]
        problems += [f"{name}: missing; expected {col.doc}" for name, col in columns.items()
                     if not col.nullable and name not in raw]
        probes = []
        for name in columns:
            row = dict(_CLEAN_ROW)
            if name in raw:
                row[name] = raw[name]
            if name == c.WATCH_SECONDS and raw.get(c.EVENT) in c.EVENTS:
                row[c.EVENT] = raw[c.EVENT]  # the impression-has-no-watch-time rule needs both
            probes.append(row)
        typed, reasons = check_frame(c.INTERACTIONS, pd.DataFrame(probes, dtype=object),
                                     check_refs=False)
        value = {name: typed[name].iloc[k] for k, name in enumerate(columns)}
        known = {c.USER_ID: (self.user_ids, "is not a known user; the users table must hold a "
                             "user before their events are accepted"),
                 c.ITEM_ID: (self.item_ids, "is not in the catalogue; send events only for "
                             "titles the catalogue holds")}
        for k, name in enumerate(columns):
            if reasons[k]:
                problems.append(reasons[k])
            elif name in known and name in raw and int(value[name]) not in known[name][0]:
                problems.append(f"{name}: {int(value[name])} {known[name][1]}")
        if problems:
            raise InvalidEvent(problems)
        return Event(
            user_id=int(value[c.USER_ID]), item_id=int(value[c.ITEM_ID]),
            timestamp=int(value[c.TIMESTAMP]), event=str(value[c.EVENT]),
            watch_seconds=float(value[c.WATCH_SECONDS]), device=str(value[c.DEVICE]),
            position=None if pd.isna(value[c.POSITION]) else int(value[c.POSITION]),
            rating=None if pd.isna(value[c.RATING]) else float(value[c.RATING]))


class EventLogError(RuntimeError):
    """An accepted event could not be appended to the log (disk, permissions, a moved folder)."""


class EventLog:
    """Appends events to ``DIR/interactions/part-<unix seconds>-<n>.parquet`` (contract format).

    Rows are buffered and written ``flush_rows`` at a time (and on ``flush``/``close``) as row
    groups of the open part file. A part file holds at most ``rows_per_file`` rows; while open it
    is named ``part-....parquet.inprogress`` (not a ``*.parquet`` name, so readers never see a
    file without its footer) and renamed when full or on ``close``. Thread-safe. One writer per
    folder: two processes appending to one folder could pick the same part name.

    Failure: the append whose flush fails raises EventLogError and its own event is not kept;
    events buffered by earlier appends stay buffered and are written by the next flush.
    """

    def __init__(self, data_dir: str | Path, flush_rows: int = 100, rows_per_file: int = 10_000,
                 clock: Callable[[], float] = time.time):
        if not 1 <= flush_rows <= rows_per_file:
            raise ValueError(f"need 1 <= flush_rows <= rows_per_file, got {flush_rows} and "
                             f"{rows_per_file}")
        data_dir = Path(data_dir)
        single = data_dir / f"{c.INTERACTIONS}.parquet"
        if single.exists():
            raise c.ContractError(
                f"{single} is a single file, but the event log appends part files to "
                f"{data_dir / c.INTERACTIONS}/ and a table lives in one of the two. Move it "
                f"into the folder first: mkdir {data_dir / c.INTERACTIONS} && mv {single} "
                f"{data_dir / c.INTERACTIONS}/part-0000000000-0000.parquet (part files are "
                "read in name order), or log to another folder.")
        self.folder = data_dir / c.INTERACTIONS
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.rows_per_file, self._clock = flush_rows, rows_per_file, clock
        self._lock = threading.Lock()
        self._buffer: list[Event] = []
        self._writer: c.TableWriter | None = None
        self._final: Path | None = None
        self._n = 0
        self.files: list[Path] = []  # completed part files, oldest first

    def append(self, event: Event) -> None:
        """Buffers ``event``; writes the buffer when it holds ``flush_rows`` events."""
        with self._lock:
            self._buffer.append(event)
            if len(self._buffer) >= self.flush_rows:
                try:
                    self._flush()
                except EventLogError:
                    if self._buffer and self._buffer[-1] is event:
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
                rows = [e.to_row() for e in chunk]
                self._writer.write({k: [r[k] for r in rows] for k in rows[0]})
            except (OSError, c.ContractError) as e:
                raise EventLogError(
                    f"could not append {len(self._buffer)} event(s) to {self.folder}: {e}. "
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
        self._writer = c.TableWriter(final.with_name(final.name + ".inprogress"), c.INTERACTIONS)
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


class EventIngest:
    """Validate -> store -> log, the one path every incoming event takes (``POST /v1/events``).

    ``accept`` raises InvalidEvent (answer 400), or the store's StoreUnavailable / EventLogError
    (answer 503 with the message); it returns the event only when both writes succeeded.
    """

    def __init__(self, validator: EventValidator, store: FeatureStore, event_log: EventLog):
        self.validator, self.store, self.log = validator, store, event_log

    def accept(self, raw: Mapping[str, object]) -> Event:
        event = self.validator.validate(raw)
        self.store.record_event(event)
        self.log.append(event)
        return event
