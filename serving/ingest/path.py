"""The write path: every write route takes it, and so does the replay at start-up.

    raw body --kind.validate--> typed value --WAL.append (fsync)--> kind.apply --> hooks
                                  (400/409)        (503 if not durable)  (online state)

One :class:`WriteKind` per route (events, titles, signups, onboarding answers) says how to
validate, log, apply and answer; :class:`IngestPath` runs them in that order, always. A 200 means
the write is in the write-ahead log on disk (``serving.ingest.wal``): ``kill -9`` right after
loses nothing. A write that cannot be made durable raises ``WalUnavailable`` (503) and changes no
state. One bad record never blocks a later good one: a record is validated before it is logged,
and each is its own log record.

Replay (:meth:`IngestPath.replay`) is the same path minus the log append: the rows earlier runs
logged (the Parquet parts compaction wrote, then the log's tail) are validated again (a title or
user gone since is refused, named and skipped), applied and passed to the hooks, in the order
they were accepted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import pandas as pd

from serving.ingest.events import InvalidEvent
from serving.ingest.wal import WalUnavailable, WriteAheadLog
from serving.state.feature_store import StoreUnavailable

log = logging.getLogger(__name__)

# Skipped rows a replay logs one by one; the rest are only counted (its summary line says how
# many), so a log full of a removed title's events does not flood start-up.
REPLAY_PROBLEMS_LOGGED = 20


class WriteKind(Protocol):
    """One kind of write. ``table``: its log table (a contract table, or ``onboarding``).
    ``exclusive``: validate, log and apply one at a time (an id that must stay unique)."""

    name: str
    table: str
    exclusive: bool

    def validate(self, raw: object, now: int, **params: Any) -> Any:
        """The typed value of one raw body; raises InvalidEvent listing every problem
        (``duplicate``: an id taken, HTTP 409). ``params``: the route's path parameters."""

    def to_row(self, value: Any) -> dict[str, object]:
        """The JSON-serialisable row the log keeps (the contract table's columns)."""

    def from_row(self, row: Mapping[str, object]) -> Any | None:
        """A logged row's typed value, validated again (InvalidEvent if it no longer is);
        None when the state holds it already (a title loaded with the dataset). A kind may
        also offer ``from_frame(frame) -> [value | None | reason str]``, the same for a whole
        part file at once (events: thousands of rows at start-up)."""

    def apply(self, value: Any) -> None:
        """Puts the value into the online state (store, catalogue, users)."""

    def answer(self, value: Any) -> dict[str, object]:
        """The body of the 200 beyond ``status``."""


class WritesUnavailable(RuntimeError):
    """This server takes no writes of this kind (no ``--event-log``): HTTP 503."""


@dataclasses.dataclass
class ReplayReport:
    """What a replay put back and what it skipped (each skip logged, up to a limit)."""

    applied: dict[str, int] = dataclasses.field(default_factory=dict)
    held: int = 0  # rows the state held already
    skipped: int = 0  # rows that no longer validate
    unreadable: int = 0  # part files that could not be read (each named in the log)
    problems: list[str] = dataclasses.field(default_factory=list)

    def skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.problems) < REPLAY_PROBLEMS_LOGGED:
            self.problems.append(message)
            log.warning("replay: %s", message)

    def summary(self) -> str:
        done = ", ".join(f"{n} {k}" for k, n in self.applied.items()) or "nothing"
        out = f"put back {done}"
        if self.held:
            out += f"; {self.held} held already"
        if self.skipped:
            out += f"; skipped {self.skipped} that no longer validate"
            if self.skipped > len(self.problems):
                out += f" (the first {len(self.problems)} are logged above)"
        if self.unreadable:
            out += f"; {self.unreadable} part file(s) unreadable (named above)"
        return out


class IngestPath:
    """Validate -> durable log -> state -> hooks for every kind (see the module docstring).

    ``wal``: None when the server takes no writes (every ``accept`` raises WritesUnavailable
    after validating). ``hooks``: kind -> callables taking the applied value (trending's live
    watches, a page cache)."""

    def __init__(self, wal: WriteAheadLog | None, kinds: Iterable[WriteKind],
                 hooks: Mapping[str, list[Callable[[Any], None]]] | None = None,
                 now: Callable[[], float] = time.time):
        self.wal, self._now = wal, now
        self.kinds = {k.name: k for k in kinds}
        self.hooks = {name: list((hooks or {}).get(name, ())) for name in self.kinds}
        self._locks = {name: threading.Lock() for name in self.kinds}

    def kind(self, name: str) -> WriteKind:
        return self.kinds[name]

    def accept(self, name: str, raw: object, **params: Any) -> dict[str, object]:
        """Takes one write; returns the answer body. Raises InvalidEvent (400/409),
        WritesUnavailable or WalUnavailable (503: nothing was changed). Once the write is in
        the log it is accepted: a store that cannot take it now (Redis down with its queue
        full) is logged and said in the answer, and the write applies at the next start-up."""
        kind = self.kinds[name]
        if not kind.exclusive:
            return self._accept(name, kind, raw, params)
        with self._locks[name]:  # the uniqueness check, the append and the apply stay together
            return self._accept(name, kind, raw, params)

    def _accept(self, name: str, kind: WriteKind, raw: object, params: dict) -> dict:
        value = kind.validate(raw, int(self._now()), **params)
        self._log(kind, value)
        answer = kind.answer(value)
        try:
            kind.apply(value)
        except StoreUnavailable as e:  # durable already: a 503 would make the client resend it
            log.error("%s stored durably but not applied to the online state (%s); it is "
                      "applied when the log is put back at the next start-up", name, e)
            return {**answer, "warning": "stored durably; the online features did not take it "
                                         f"yet ({e}); it applies at the next start-up"}
        for hook in self.hooks[name]:
            hook(value)
        return answer

    def _log(self, kind: WriteKind, value: Any) -> None:
        if self.wal is None:
            raise WritesUnavailable(f"this server does not accept {kind.name}: start `marquee "
                                    "serve` with --event-log DIR")
        self.wal.append(kind.table, kind.to_row(value))

    def replay(self, name: str, parts: Iterable[tuple[str, pd.DataFrame]],
               report: ReplayReport, apply: Callable[[Any], None] | None = None) -> None:
        """Puts back logged rows of one kind: ``parts`` of (where, frame), in logged order;
        each row is validated again, applied (``apply`` instead of the kind's: e.g.
        ``ReplayGuard``'s rule for a store that outlived the restart) and passed to the hooks,
        never logged again."""
        kind = self.kinds[name]
        apply = apply or kind.apply
        for where, frame in parts:
            for n, value in enumerate(_values(kind, frame)):
                self._put_back(name, kind, f"{where} row {n}", value, apply, report)

    def _put_back(self, name: str, kind: WriteKind, where: str, value: Any,
                  apply: Callable[[Any], None], report: ReplayReport) -> None:
        if isinstance(value, str):
            report.skip(f"{where}: {value}; not put back")
            return
        if value is None:
            report.held += 1
            return
        apply(value)
        for hook in self.hooks[name]:
            hook(value)
        report.applied[name] = report.applied.get(name, 0) + 1


def _values(kind: WriteKind, frame: pd.DataFrame) -> list:
    """Each row's value (or None: held, or a reason str: no longer valid)."""
    if hasattr(kind, "from_frame"):
        return kind.from_frame(frame)
    out = []
    for row in frame.astype(object).where(pd.notna(frame), None).to_dict("records"):
        try:
            out.append(kind.from_row(row))
        except InvalidEvent as e:
            out.append(str(e))
    return out


__all__ = ["IngestPath", "ReplayReport", "WalUnavailable", "WriteKind", "WritesUnavailable"]
