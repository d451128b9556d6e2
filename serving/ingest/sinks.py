"""Compaction sinks: the write-ahead log's records as the contract's Parquet parts.

``DIR/<table>/part-w<first seq>-<last seq>-r<replica>.parquet``, written atomically, so the next
pipeline run reads the writes a server accepted as it reads any dataset folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from marquee.data import contract as c
from serving.ingest.wal import Sink, _fsync_path

ONBOARDING_SCHEMA = pa.schema([pa.field(c.USER_ID, pa.int64(), nullable=False),
                               pa.field(c.ONBOARDING_GENRES, c.LIST_STR, nullable=False),
                               pa.field(c.TIMESTAMP, pa.int64(), nullable=False)])


class ParquetSink:
    """A compaction sink writing each range as ``data_dir/<table>/part-w<first_seq:016d>-
    <last_seq:016d>-r<replica_id>.parquet``, atomically (a hidden temp name, fsync, rename,
    fsync of the folder), so a re-run of the same range replaces the same file.

    A contract table (``contract.TABLES``) is written through ``TableWriter`` (its schema and
    checks; ``schema`` must be None); any other table needs ``schema`` (e.g. ONBOARDING_SCHEMA),
    and a row field outside it is a ValueError.

    Name order: within one replica, part names sort in seq order, and after the parts written
    before the write-ahead log (``part-<10-digit unix seconds>-<n>.parquet``: "w" sorts after
    the digits), so a folder's name order is its logging order per replica. Seqs of different
    replicas are unrelated.
    """

    def __init__(self, data_dir: str | Path, table: str, replica_id: str = "0",
                 schema: pa.Schema | None = None, prefix: str = "w"):
        if (table in c.TABLES) == (schema is not None):
            raise ValueError(f"{table}: give a schema for a table outside the contract "
                             f"({', '.join(c.TABLES)}), and none for a contract table")
        self.folder = Path(data_dir) / table
        single = Path(data_dir) / f"{table}.parquet"
        if single.exists():
            raise c.ContractError(f"{single} is a single file, but compaction writes part files "
                                  f"to {self.folder}/; move it into the folder first (as "
                                  f"{self.folder}/part-0000000000-0000.parquet)")
        self.table, self.replica_id, self.schema = table, replica_id, schema
        self.prefix = prefix  # "x": the served pages' impressions (serving.ingest.exposures)

    def __call__(self, rows: list[dict], first_seq: int, last_seq: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / (f"part-{self.prefix}{first_seq:016d}-{last_seq:016d}"
                               f"-r{self.replica_id}.parquet")
        tmp = final.with_name(f".{final.name}.tmp")  # not *.parquet: readers never list it
        try:
            if self.schema is None:
                names = list(dict.fromkeys(k for row in rows for k in row))
                include = [k for k in c.EXPOSURE_COLUMNS if k in names]
                with c.TableWriter(tmp, self.table, include) as writer:
                    writer.write({k: [row.get(k) for row in rows] for k in names})
            else:
                pq.write_table(self._table(rows), tmp)
            _fsync_path(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_path(self.folder)
        return final


    def _table(self, rows: list[dict]) -> pa.Table:
        unknown = sorted({k for row in rows for k in row} - set(self.schema.names))
        if unknown:
            raise ValueError(f"{self.table}: field(s) {', '.join(unknown)} not in its schema "
                             f"({', '.join(self.schema.names)})")
        table = pa.Table.from_pylist(rows, schema=self.schema)
        nulls = [f.name for f in self.schema if not f.nullable and table[f.name].null_count]
        if nulls:
            raise ValueError(f"{self.table}: null or missing {', '.join(nulls)}, which must be set")
        return table


def parquet_sinks(data_dir: str | Path, replica_id: str = "0") -> dict[str, Sink]:
    """A ParquetSink for each write route's table: the three contract tables and onboarding."""
    sinks: dict[str, Sink] = {t: ParquetSink(data_dir, t, replica_id) for t in c.TABLES}
    sinks[c.ONBOARDING] = ParquetSink(data_dir, c.ONBOARDING, replica_id, ONBOARDING_SCHEMA)
    return sinks
