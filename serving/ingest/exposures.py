"""The impression log: every page served, durably, as the contract's impression rows.

    page served --ExposureLog.log--> one write-ahead-log record per page (table "impressions",
                                     fsynced before the page is answered)
               --compaction-------> DIR/interactions/part-x<first>-<last>-r<replica>.parquet

A record holds the page (its id, user, time, device and titles in order, with the experiment
and arm, or each title's interleaving team); compaction expands it into one ``impression`` row
per title, at positions 1..n, with the contract's exposure columns ``page_id``, ``experiment``
and ``arm`` (:data:`marquee.data.contract.EXPOSURE_COLUMNS`). The rows sit beside the accepted
events in ``DIR/interactions/``, so the next pipeline run trains on them (impression negatives)
and ``marquee experiment analyze`` reads them. A page in several experiments (one per layer)
names them all, joined by ``;`` in layer order, and its arms likewise.

Logging never fails a page: a log that cannot take the record (disk full, stuck) is counted
(the ``marquee_impressions_lost`` gauge of /metrics) and logged, and the page is still answered.
The parts are not put back into the online state at start-up (impressions change no feature),
which the ``x`` in their names tells the replay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Container

from marquee.data import contract as c
from serving.homepage.page import Homepage
from serving.ingest.sinks import ParquetSink
from serving.ingest.wal import WalError, WriteAheadLog

log = logging.getLogger(__name__)

IMPRESSIONS = "impressions"  # the write-ahead log's table of served pages
PREFIX = "x"  # their parts' names: part-x<first>-<last>-r<replica>.parquet
SEPARATOR = c.LABEL_SEPARATOR  # between the experiments (and arms) of a page in many layers
ITEMS, ITEM_ARMS = "items", "item_arms"
INTERLEAVED = "interleaved"  # a page's arm in an interleaving experiment (titles carry teams)


def page_record(page: Homepage, timestamp: int, device: str,
                arms: dict[str, str] | None = None) -> dict[str, object]:
    """The log record of one served page. ``arms``: experiment id -> arm for every experiment
    the page is in (in layer order); an interleaved title's arm is its team."""
    arms = arms or {}
    record: dict[str, object] = {
        c.PAGE_ID: page.page_id, c.USER_ID: page.user_id, c.TIMESTAMP: int(timestamp),
        c.DEVICE: device, ITEMS: [p.item_id for p in page.items],
        c.EXPERIMENT: SEPARATOR.join(arms) or None}
    if any(p.team is not None for p in page.items):
        record[ITEM_ARMS] = [SEPARATOR.join(p.team if a == INTERLEAVED else a
                                            for a in arms.values()) for p in page.items]
    else:
        record[c.ARM] = SEPARATOR.join(arms.values()) or None
    return record


def impression_rows(records: list[dict]) -> list[dict]:
    """The interactions rows of logged pages: one impression per title, positions 1..n."""
    rows = []
    for r in records:
        arms = r.get(ITEM_ARMS) or [r.get(c.ARM)] * len(r[ITEMS])
        for position, (item, arm) in enumerate(zip(r[ITEMS], arms, strict=True), start=1):
            rows.append({c.USER_ID: r[c.USER_ID], c.ITEM_ID: item, c.TIMESTAMP: r[c.TIMESTAMP],
                         c.EVENT: c.EVENT_IMPRESSION, c.POSITION: position,
                         c.WATCH_SECONDS: 0.0, c.DEVICE: r[c.DEVICE], c.RATING: None,
                         c.PAGE_ID: r[c.PAGE_ID], c.EXPERIMENT: r.get(c.EXPERIMENT),
                         c.ARM: arm})
    return rows


class ImpressionSink:
    """The compaction sink of the ``impressions`` table: pages -> interactions parts (``x``)."""

    def __init__(self, data_dir, replica_id: str = "0"):
        self.parquet = ParquetSink(data_dir, c.INTERACTIONS, replica_id, prefix=PREFIX)

    def __call__(self, records: list[dict], first_seq: int, last_seq: int):
        return self.parquet(impression_rows(records), first_seq, last_seq)


class ExposureLog:
    """Logs served pages into a write-ahead log (see the module docstring). ``users``: the
    known users (a page for an id the users table lacks is not logged: the next pipeline run
    would reject its rows); ``timeout_s``: the longest a page waits for the disk."""

    def __init__(self, wal: WriteAheadLog, users: Container[int], timeout_s: float = 1.0):
        self.wal, self.users, self.timeout_s = wal, users, timeout_s
        self._lock = threading.Lock()
        self.counts = {"logged": 0, "lost": 0, "unknown_user": 0, "empty": 0}

    def log(self, page: Homepage, timestamp: int, device: str,
            arms: dict[str, str] | None = None) -> str:
        """Logs the page; returns the outcome (a key of ``counts``)."""
        if not page.items:
            outcome = "empty"
        elif page.user_id not in self.users:
            outcome = "unknown_user"
        else:
            try:
                self.wal.append(IMPRESSIONS, page_record(page, timestamp, device, arms),
                                self.timeout_s)
                outcome = "logged"
            except (WalError, ValueError) as e:  # the page is still answered; counted, said
                log.error("impressions of page %s (user %s) not logged: %s", page.page_id,
                          page.user_id, e)
                outcome = "lost"
        with self._lock:
            self.counts[outcome] += 1
        return outcome

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
