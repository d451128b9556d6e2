"""The write path of one server: its kinds, its write-ahead log, and the replay at start-up.

``marquee serve --event-log DIR --replica-id R``:

    DIR/wal/R/                      the write-ahead log (synced before each 200; one writer)
    DIR/interactions/part-*.parquet  accepted events      } compacted from the log in the
    DIR/items/part-*.parquet         titles added         } background, as contract parts the
    DIR/users/part-*.parquet         signups              } next pipeline run reads
    DIR/onboarding/part-*.parquet    quiz answers

At start-up the log is compacted first (what an earlier run acknowledged but had not compacted,
also after ``kill -9``; a torn tail record is named and dropped), then every part is put back
through the write path minus the log append: titles, signups, quiz answers, events, in that
order (an event needs its user and title). Events are not put back when DIR is the ``--data``
folder (the load holds them); into Redis only those later than the user's latest there
(``ReplayGuard``), so none twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from marquee.config import ServingConfig
from marquee.data import contract as c
from serving.homepage.service import HomepageService
from serving.ingest.events import EventValidator, EventWrites
from serving.ingest.exposures import IMPRESSIONS, PREFIX, ExposureLog, ImpressionSink
from serving.ingest.items import TitleWrites
from serving.ingest.onboarding import OnboardingWrites, read_legacy
from serving.ingest.path import IngestPath, ReplayReport
from serving.ingest.signup import SignupWrites
from serving.ingest.sinks import parquet_sinks
from serving.ingest.wal import WalLocked, WriteAheadLog
from serving.state.resilient_store import ReplayGuard

log = logging.getLogger(__name__)

# Seconds between background compactions of the log into Parquet parts.
COMPACT_EVERY_S = 30.0


@dataclasses.dataclass
class Writes:
    """The write path and its log (None: the server takes no writes)."""

    path: IngestPath
    wal: WriteAheadLog | None = None
    report: ReplayReport | None = None
    exposures: ExposureLog | None = None  # the impression log (serving.log_impressions)

    def close(self, timeout_s: float = 10.0) -> None:
        """Drains the log (every acknowledged write is on disk), compacts it, releases it."""
        if self.wal is not None:
            self.wal.close(timeout_s)


def kinds(service: HomepageService, config: ServingConfig) -> list:
    skew = config.limits.max_future_skew_seconds
    return [EventWrites(EventValidator(service.users, service.catalogue.row), service.store, skew),
            TitleWrites(service.fresh, skew),
            SignupWrites(service.users, service.store, service.catalogue, skew),
            OnboardingWrites(service.store, service.catalogue, config.onboarding_genres)]


def no_writes(service: HomepageService) -> Writes:
    """Validation only: every write route answers 503 (start with --event-log)."""
    return Writes(IngestPath(None, kinds(service, service.config)))


def open_writes(service: HomepageService, event_log: str | Path, replica_id: str = "0",
                data_dir: str | Path | None = None, compact_every_s: float = COMPACT_EVERY_S,
                commit_interval_ms: float = 0.0, now: Callable[[], float] = time.time) -> Writes:
    """Opens DIR's log for this replica (``WalLocked`` if another process holds it), compacts
    what it holds, puts every logged write back and starts the background compaction.
    ``commit_interval_ms`` 0: a group commit is whatever queued during the previous fsync
    (measured faster than waiting on this disk: ``bench/bench_wal.py``)."""
    folder = Path(event_log)
    for table in c.TABLES:
        single = folder / f"{table}.parquet"
        if single.exists():
            raise c.ContractError(
                f"{single} is a single file, but the event log writes part files to "
                f"{folder / table}/ and a table lives in one of the two. Move it into the "
                f"folder first: mkdir {folder / table} && mv {single} "
                f"{folder / table}/part-0000000000-0000.parquet, or log to another folder.")
    wal = WriteAheadLog(folder, replica_id, commit_interval_ms=commit_interval_ms)
    adopt_orphans(folder, replica_id)
    sinks = log_sinks(folder, replica_id)
    compacted = wal.compact(sinks, seal=True)
    if compacted:
        log.info("event log: compacted %d write(s) an earlier run acknowledged into %s",
                 compacted, folder)
    path = IngestPath(wal, kinds(service, service.config), hooks={"events": [service.observe]},
                      now=now)
    report = replay(service, path, folder, data_dir)
    wal.start_compactor(sinks, compact_every_s)
    exposures = ExposureLog(wal, service.users) if service.config.log_impressions else None
    return Writes(path, wal, report, exposures)


def log_sinks(folder: Path, replica_id: str) -> dict:
    """The compaction sinks of a replica's log: the write routes' tables and the impressions."""
    return {**parquet_sinks(folder, replica_id), IMPRESSIONS: ImpressionSink(folder, replica_id)}


def adopt_orphans(folder: Path, replica_id: str) -> int:
    """Compacts the log folders of other replicas whose writer is gone (their lock is free: a
    pod killed without a graceful stop, whose name is never reused), so their acknowledged
    writes reach the Parquet parts; returns how many writes. A live writer's folder is left."""
    adopted = 0
    for other in sorted(p.name for p in (folder / "wal").iterdir() if p.is_dir()):
        if other == replica_id:
            continue
        try:
            orphan = WriteAheadLog(folder, other)
        except WalLocked:
            continue  # a live replica
        try:
            n = orphan.compact(log_sinks(folder, other), seal=True)
        finally:
            orphan.close()
        if n:
            log.warning("event log: adopted %d write(s) of replica %s, which stopped without "
                        "closing its log", n, other)
        adopted += n
    return adopted


def _parts(folder: Path, report: ReplayReport) -> Iterator[tuple[str, pd.DataFrame]]:
    """The Parquet parts in ``folder`` as frames, in name order (logging order); an unreadable
    one is named in the log and counted in ``report``. The served pages' impressions
    (``part-x...``) are not put back: they change no online feature."""
    for path in sorted(folder.glob("*.parquet")):
        if path.name.startswith(f"part-{PREFIX}"):
            continue
        try:
            frame = c.open_parquet(path).read().to_pandas()
        except (OSError, pa.ArrowException, c.ContractError) as e:
            log.warning("replay: %s is unreadable (%s: %s); its rows were not put back", path,
                        type(e).__name__, e)
            report.unreadable += 1
            continue
        yield str(path), frame


def _loaded_with_data(folder: Path, data_dir: str | Path | None) -> bool:
    """Whether ``folder`` (the log's interactions) is the table the serving data was loaded
    from (``--event-log`` = ``--data``). A remote ``data_dir`` is never a local log folder."""
    if data_dir is None or "://" in str(data_dir):
        return False
    return (Path(data_dir) / c.INTERACTIONS).resolve() == folder.resolve()


def replay(service: HomepageService, path: IngestPath, folder: Path,
           data_dir: str | Path | None) -> ReplayReport:
    report = ReplayReport()
    path.replay("items", _parts(folder / c.ITEMS, report), report)
    path.replay("users", _parts(folder / c.USERS, report), report)
    legacy = read_legacy(folder)
    legacy_part = [(str(folder / "onboarding.jsonl"), pd.DataFrame(legacy))] if legacy else []
    path.replay("onboarding", [*legacy_part, *_parts(folder / c.ONBOARDING, report)], report)
    events = folder / c.INTERACTIONS
    if _loaded_with_data(events, data_dir):
        log.info("events in %s were loaded with the serving data (--data %s): not put back "
                 "again", events, data_dir)
    else:
        guard = ReplayGuard(service.store)
        path.replay("events", _parts(events, report), report, apply=guard.record_event)
        if guard.recorded or guard.held or guard.unavailable:
            log.info("event replay, feature store: %d recorded, %d held already%s",
                     guard.recorded, guard.held,
                     f", {guard.unavailable} not recorded ({guard.error})"
                     if guard.unavailable else "")
    if report.applied or report.skipped or report.unreadable:
        level = log.warning if report.skipped or report.unreadable else log.info
        level("event log %s: %s", folder, report.summary())
    if report.applied.get("events"):
        service.refresh_trending()  # with the watches put back, now rather than at the refresh
    return report
