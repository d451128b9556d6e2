"""The data contract's validation as Beam transforms: no step holds a table in one process.

The same checks and messages as :mod:`marquee.data.validate` (the single-process validator of
``marquee data validate``), split by what each needs to see:

- **Per row** (types, ranges, choices, labels): :func:`marquee.data.validate.check_frame` on
  each batch of a Parquet row group. The row groups of every file are the work units, spread
  over the workers (``Reshuffle``).
- **Per id** (a duplicate ``item_id`` / ``user_id``; an interaction's unknown user or title):
  where the rows meeting there are grouped anyway. Titles are grouped by ``item_id`` (the first
  row, by file and row, is kept), and the clean catalogue is a side input. Users and their
  interactions meet in one ``GroupByKey`` by user shard (:func:`shard_of`); there a user's
  duplicates and the events of unknown users or titles are found
  (``example_lib.UserExamples``). Every table is read and checked by one step
  (:class:`CheckBatch`), so that join needs no Flatten of two steps (see there).
- **File level** (a missing table or column, a table with no rows) before the pipeline starts,
  from the Parquet footers only: :func:`plan_tables` raises the validator's ContractError.

Every rejected row leaves as a ``(table, file, row, reason)`` record: ``rejects_lines`` writes
them as sharded CSV (``REJECTS_DIR``). The counts (rows per table, rejects per reason) leave as
``stats`` records; after the run :func:`report_from_stats` turns them into the
:class:`~marquee.data.validate.ValidationReport` whose limit check raises ``TooManyRejects``.

Interactions cross the shuffle packed (:data:`EVENT_DTYPE`: 50 bytes an event, one record per
shard and batch), not as Python objects: the Beam DirectRunner keeps every grouped record in
its driver's memory until the group is read, and a pickled event dict was ~1 KB.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows

from marquee.data import contract as c
from marquee.data.validate import (
    ContractErrorMissing,
    TableReport,
    ValidationReport,
    check_frame,
    reason_key,
)

REJECTS_DIR = "rejects"
REJECTS_HEADER = "table,file,row,reason"
BATCH_ROWS = 65_536
# Interactions per user shard: the grouped unit of the per-user step. A shard's events are
# unpacked in one worker (100K events: 5 MB packed); the count is capped so a cluster still
# gets many keys and a huge dataset no huge group (30B rows / 4,096 = 7M events a shard).
EVENTS_PER_SHARD = 100_000
MAX_SHARDS = 4096

ROWS = "rows"
REASON = "reason"
# Clean rows sent into a grouping step, and rows that step received: they must be equal
# (checked after the run, so a runner that lost records cannot pass as a clean dataset).
SENT = "sent"
ARRIVED = "arrived"

# A clean interaction as it crosses the shuffle; position -1 and device -1 stand for null.
EVENT_DTYPE = np.dtype([
    ("user", "<i8"), ("item", "<i8"), ("ts", "<i8"), ("watch", "<f8"), ("row", "<i8"),
    ("file", "<i4"), ("pos", "<i4"), ("event", "i1"), ("device", "i1")])


@dataclasses.dataclass(frozen=True)
class TablePlan:
    """One table's files and work units, from the footers: ``units`` are
    (file index, row group, the group's first row in its file)."""

    table: str
    files: tuple[str, ...]
    units: tuple[tuple[int, int, int], ...]
    rows: int
    ignored_columns: tuple[str, ...]


def plan_tables(data_dir: str | Path) -> dict[str, TablePlan]:
    """Every table's files and row groups; raises the file-level ContractErrors (a missing
    table, file or column, a table without rows) before any row is read."""
    plans = {}
    for table in c.TABLES:
        files = [str(p) for p in c.table_files(data_dir, table)]
        units, rows, ignored = [], 0, set()
        for index, path in enumerate(files):
            pf = c.open_parquet(path)
            names = pf.schema_arrow.names
            ignored |= set(names) - set(c.column_names(table))
            missing = [col.name for col in c.SCHEMAS[table]
                       if col.required and col.name not in names]
            if missing:
                raise c.ContractError(f"{path}: {ContractErrorMissing(table, missing, names)}")
            first = 0
            for group in range(pf.metadata.num_row_groups):
                units.append((index, group, first))
                first += pf.metadata.row_group(group).num_rows
            rows += first
        if rows == 0:
            raise c.ContractError(
                f"{c.table_path(data_dir, table)}: has no rows; {table} needs at least one.")
        plans[table] = TablePlan(table, tuple(files), tuple(units), rows, tuple(sorted(ignored)))
    return plans


def shard_count(interactions: int) -> int:
    return int(min(MAX_SHARDS, max(1, interactions // EVENTS_PER_SHARD)))


def shard_of(user_id, shards: int):
    """The user shard of an id (an int or an int64 array)."""
    return user_id % shards


def read_units(p: beam.Pipeline, plans: dict[str, TablePlan]) -> beam.PCollection:
    """``(table, file index, first row, pyarrow.Table)`` batches of every row group of every
    table, read in parallel by one step."""
    units = [(t, *unit) for t in c.TABLES for unit in plans[t].units]
    files = {t: plans[t].files for t in c.TABLES}
    return (p | "PlanUnits" >> beam.Create(units)
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadUnits" >> beam.FlatMap(_read_unit, files))


def _read_unit(unit: tuple[str, int, int, int], files: dict[str, tuple[str, ...]]
               ) -> Iterator[tuple]:
    table, index, group, first = unit
    pf = c.open_parquet(files[table][index])
    offset = first
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
        yield table, index, offset, pa.Table.from_batches([batch])
        offset += batch.num_rows


def plain(v):
    """A pandas/numpy cell as a plain Python value (NaN -> None, arrays -> lists)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()]
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v


REJECTS = "rejects"
STATS = "stats"
POSITIVES = "positives"
ITEMS = "items"
# the two kinds of record grouped by user shard
USER_ROW = "u"
EVENTS = "e"  # packed events inline
EVENTS_FILE = "f"  # packed events in a spill file (its path)
# With a spill folder, a worker buffers packed events per shard up to this many bytes, then
# writes one file per shard and sends only the paths through the shuffle.
SPILL_BYTES = 64 << 20


class CheckBatch(beam.DoFn):
    """One batch of any table: the per-row checks. The clean rows leave keyed by user shard
    (main): users as ``(shard, (USER_ROW, (file, row, dict)))``, interactions packed per shard
    as ``(shard, (EVENTS, bytes))``; titles as ``items`` ``(item_id, (file, row, dict))``. Also
    ``rejects`` records, ``stats`` counts and ``positives`` (train-period ranking positives per
    title, when ``positives_before`` is set).

    One step for every table, so one GroupByKey joins users and events: the DirectRunner's
    multi-processing mode hung on a CoGroupByKey (Flatten + GroupByKey) of two steps' outputs
    at 50M events, while the same volume from one step grouped fine."""

    def __init__(self, plans: dict[str, TablePlan], shards: int,
                 positives_before: int | None = None, min_watch_seconds: float = 0.0,
                 spill_dir: str | None = None, spill_bytes: int = SPILL_BYTES):
        super().__init__()
        self.plans, self.shards = plans, shards
        self.positives_before, self.min_watch_seconds = positives_before, min_watch_seconds
        self.spill_dir, self.spill_bytes = spill_dir, spill_bytes
        self._buffer: dict[int, list[bytes]] = {}
        self._buffered = 0

    def start_bundle(self):
        self._buffer, self._buffered = {}, 0

    def finish_bundle(self):
        for k, path in self._spill():
            yield GlobalWindows.windowed_value((k, (EVENTS_FILE, path)))

    def _spill(self) -> list[tuple[int, str]]:
        """Writes the buffered events, one file per shard; returns (shard, path) pairs."""
        out = []
        for k, parts in self._buffer.items():
            path = f"{self.spill_dir}/{k:05d}-{uuid.uuid4().hex}.events"
            with tf.io.gfile.GFile(path, "wb") as fh:
                fh.write(b"".join(parts))
            out.append((k, path))
        self._buffer, self._buffered = {}, 0
        return out

    def process(self, element):
        table, index, offset, batch = element
        path = self.plans[table].files[index]
        frame = batch.to_pandas()
        try:
            typed, reasons = check_frame(table, frame, check_refs=False)
        except c.ContractError as e:
            raise c.ContractError(f"{path}: {e}") from None
        bad = reasons != ""
        yield beam.pvalue.TaggedOutput(STATS, ((table, ROWS, ""), len(frame)))
        for i in np.flatnonzero(bad):
            yield beam.pvalue.TaggedOutput(REJECTS, (table, path, offset + int(i), reasons[i]))
        good = typed[~bad]
        rows = offset + np.flatnonzero(~bad)
        yield beam.pvalue.TaggedOutput(STATS, ((table, SENT, ""), len(good)))
        if table == c.INTERACTIONS:
            yield from self._events(good, rows, index)
            return
        for row, record in zip(rows.tolist(), good.to_dict("records"), strict=True):
            record = {k: plain(v) for k, v in record.items()}
            if table == c.ITEMS:
                yield beam.pvalue.TaggedOutput(ITEMS, (record[c.ITEM_ID], (index, row, record)))
            else:
                yield shard_of(record[c.USER_ID], self.shards), (USER_ROW, (index, row, record))

    def _events(self, good: pd.DataFrame, rows: np.ndarray, index: int):
        packed = pack_events(good, rows, index)
        if self.positives_before is not None:
            train = packed[packed["ts"] < self.positives_before]
            hit = ranking_positives(train, self.min_watch_seconds)
            ids, n = np.unique(train["item"][hit], return_counts=True)
            for item, count in zip(ids.tolist(), n.tolist(), strict=True):
                yield beam.pvalue.TaggedOutput(POSITIVES, (item, count))
        shard = shard_of(packed["user"], self.shards)
        order = np.argsort(shard, kind="stable")
        keys, starts = np.unique(shard[order], return_index=True)
        for k, part in zip(keys.tolist(), np.split(packed[order], starts[1:]), strict=True):
            if self.spill_dir is None:
                yield k, (EVENTS, part.tobytes())
            else:
                self._buffer.setdefault(k, []).append(part.tobytes())
                self._buffered += part.nbytes
        if self.spill_dir is not None and self._buffered >= self.spill_bytes:
            for k, path in self._spill():
                yield k, (EVENTS_FILE, path)


def pack_events(typed: pd.DataFrame, rows: np.ndarray, file_index: int) -> np.ndarray:
    """Clean interaction rows (typed by ``check_frame``) as an :data:`EVENT_DTYPE` array."""
    out = np.empty(len(typed), EVENT_DTYPE)
    out["user"] = typed[c.USER_ID].to_numpy(np.int64)
    out["item"] = typed[c.ITEM_ID].to_numpy(np.int64)
    out["ts"] = typed[c.TIMESTAMP].to_numpy(np.int64)
    out["watch"] = typed[c.WATCH_SECONDS].to_numpy(np.float64, na_value=np.nan)
    out["row"] = rows
    out["file"] = file_index
    pos = typed[c.POSITION].to_numpy(np.float64, na_value=np.nan)
    out["pos"] = np.where(np.isnan(pos), -1, pos)
    out["event"] = pd.Categorical(typed[c.EVENT], categories=c.EVENTS).codes
    out["device"] = pd.Categorical(typed[c.DEVICE], categories=c.DEVICES).codes
    return out


def ranking_positives(events: np.ndarray, min_watch_seconds: float) -> np.ndarray:
    """``example_lib.is_ranking_positive`` on packed events: watches of at least
    ``min_watch_seconds`` and more than 0 seconds."""
    return ((events["event"] == c.EVENTS.index(c.EVENT_WATCH))
            & (events["watch"] >= min_watch_seconds) & (events["watch"] > 0))


def read_spill(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as fh:
        return fh.read()


def unpack_events(parts) -> np.ndarray:
    """The packed records of one shard as one array, ordered by (user, file, row)."""
    events = np.concatenate([np.frombuffer(b, EVENT_DTYPE) for b in parts]) if parts else (
        np.empty(0, EVENT_DTYPE))
    return events[np.lexsort((events["row"], events["file"], events["user"]))]


def event_dicts(events: np.ndarray) -> list[dict]:
    """Packed events as the contract's row dicts (the columns ``user_examples`` reads)."""
    out = []
    for item, ts, watch, pos, ev, dev in zip(
            events["item"].tolist(), events["ts"].tolist(), events["watch"].tolist(),
            events["pos"].tolist(), events["event"].tolist(), events["device"].tolist(),
            strict=True):
        out.append({c.ITEM_ID: item, c.TIMESTAMP: ts, c.WATCH_SECONDS: watch,
                    c.POSITION: None if pos < 0 else pos, c.EVENT: c.EVENTS[ev],
                    c.DEVICE: c.DEVICES[dev] if dev >= 0 else None})
    return out


def first_rows(grouped: list[tuple[int, int, dict]], table: str, files: tuple[str, ...],
               key: str) -> tuple[dict | None, list[tuple]]:
    """The rows of one id: (the first by file and row, reject records for the others)."""
    ordered = sorted(grouped, key=lambda r: (r[0], r[1]))
    if not ordered:
        return None, []
    rejects = [(table, files[index], row, f"{key}: {record[key]} is a duplicate (an earlier row "
                "has it)") for index, row, record in ordered[1:]]
    return ordered[0][2], rejects


class FirstItem(beam.DoFn):
    """Per ``item_id``: the first row is the title; later rows are rejected duplicates."""

    def __init__(self, files: tuple[str, ...]):
        super().__init__()
        self.files = files

    def process(self, element):
        item_id, grouped = element
        grouped = list(grouped)
        yield beam.pvalue.TaggedOutput(STATS, ((c.ITEMS, ARRIVED, ""), len(grouped)))
        first, rejects = first_rows(grouped, c.ITEMS, self.files, c.ITEM_ID)
        for r in rejects:
            yield beam.pvalue.TaggedOutput(REJECTS, r)
        yield item_id, first


def stats_of_rejects(rejects: beam.PCollection) -> beam.PCollection:
    return rejects | "RejectReasons" >> beam.Map(
        lambda r: ((r[0], REASON, reason_key(r[3])), 1))


def stats_lines(stats: list[beam.PCollection]) -> beam.PCollection:
    """All counts, summed, as JSON lines ``[table, kind, reason, n]``."""
    return (stats | "FlattenStats" >> beam.Flatten()
            | "SumStats" >> beam.CombinePerKey(sum)
            | "StatsJson" >> beam.Map(lambda kv: json.dumps([*kv[0], kv[1]])))


def rejects_lines(rejects: beam.PCollection) -> beam.PCollection:
    """Reject records as CSV lines (quoted as the csv module does)."""
    def line(r) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerow(r)
        return buf.getvalue().rstrip("\r\n")
    return rejects | "RejectsCsv" >> beam.Map(line)


class RecordsLost(RuntimeError):
    def __init__(self, table: str, sent: int, arrived: int):
        super().__init__(
            f"{table}: {sent:,} clean rows were sent to the grouping step but {arrived:,} "
            "arrived; the Beam runner lost or duplicated records, so the examples are "
            "incomplete and this run fails rather than train on them. Rerun the component; if "
            "it happens again, report it with the runner and its options (beam.runner, "
            "beam.direct_running_mode, beam.direct_num_workers).")
        self.table, self.sent, self.arrived = table, sent, arrived


def report_from_stats(lines: list[str], plans: dict[str, TablePlan], data_dir: str,
                      rejects_path: str, max_bad_share: float) -> ValidationReport:
    """The validation report from the pipeline's counts (the lines of :func:`stats_lines`).
    Raises :class:`RecordsLost` when a grouping step received other than what was sent."""
    tables = {t: TableReport(t, ignored_columns=plans[t].ignored_columns) for t in c.TABLES}
    moved = {(t, k): 0 for t in c.TABLES for k in (SENT, ARRIVED)}
    for line in lines:
        if not line.strip():
            continue
        table, kind, reason, n = json.loads(line)
        if kind == ROWS:
            tables[table].rows += n
        elif kind == REASON:
            tables[table].rejected += n
            tables[table].reasons[reason] += n
        else:
            moved[table, kind] += n
    for t in c.TABLES:
        if moved[t, SENT] != moved[t, ARRIVED]:
            raise RecordsLost(t, moved[t, SENT], moved[t, ARRIVED])
    return ValidationReport(data_dir, rejects_path, max_bad_share, tables)
