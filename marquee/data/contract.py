"""The data contract: three Parquet tables in a dataset folder, and their column rules.

This module is the one home of the contract's table and column names. Everything that reads or
writes a dataset (the simulator, the MovieLens importer, the validator, the pipeline's ExampleGen)
takes them from here. ``docs/data.md`` documents the same rules for people.

A dataset folder holds ``interactions.parquet``, ``items.parquet`` and ``users.parquet`` (each may
instead be a folder of Parquet part files, e.g. ``interactions/part-0000.parquet``, which is how
the serving event log appends).

``data_dir`` may be a local folder or a URI that ``tf.io.gfile`` reads (``gs://bucket/data``;
``ram://`` in the tests): remote files are listed and opened through ``marquee.io``. Writing
(``TableWriter``) is local only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"
TABLES = (USERS, ITEMS, INTERACTIONS)
# The onboarding quiz answers serving logs beside the tables (DIR/onboarding/); no table of the
# dataset contract (a user's answer reaches the users table's onboarding_genres by an export).
ONBOARDING = "onboarding"

# Column names, spelled once.
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
EVENT = "event"
POSITION = "position"
WATCH_SECONDS = "watch_seconds"
DEVICE = "device"
RATING = "rating"
TITLE = "title"
GENRES = "genres"
CAST = "cast"
DIRECTOR = "director"
RELEASE_YEAR = "release_year"
DURATION_SECONDS = "duration_seconds"
ADDED_AT = "added_at"
MATURITY_RATING = "maturity_rating"
KEYWORDS = "keywords"
SIGNUP_AT = "signup_at"
COUNTRY = "country"
SUBSCRIPTION_TIER = "subscription_tier"
AGE_BUCKET = "age_bucket"
ONBOARDING_GENRES = "onboarding_genres"
# What serving logs with each impression (and a client may send with a watch): the page, and the
# experiment and arm (or interleaving team) that served it. Optional and absent from most data.
PAGE_ID = "page_id"
EXPERIMENT = "experiment"
ARM = "arm"
EXPOSURE_COLUMNS = (PAGE_ID, EXPERIMENT, ARM)
MAX_LABEL_LENGTH = 128  # characters of a page id, experiment id or arm name
LABEL_SEPARATOR = ";"  # between the experiments (and arms) of a page in several layers

EVENT_IMPRESSION = "impression"
EVENT_WATCH = "watch"
EVENTS = (EVENT_IMPRESSION, EVENT_WATCH)
# A watch counts as a positive ("watched past two minutes") from this many seconds on.
WATCHED_THRESHOLD_SECONDS = 120.0

DEVICES = ("tv", "mobile", "tablet", "web", "unknown")
SUBSCRIPTION_TIERS = ("basic", "standard", "premium", "unknown")
AGE_BUCKETS = ("under-18", "18-24", "25-34", "35-44", "45-54", "55+")
MATURITY_RATINGS = ("G", "PG", "PG-13", "R", "NC-17", "unrated")

# Timestamps are UTC seconds; anything outside this window is a unit mistake (ms, ns) or garbage.
MIN_TIMESTAMP = 0  # 1970-01-01
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01
MIN_RELEASE_YEAR = 1870
MAX_RELEASE_YEAR = 2100
MIN_RATING = 0.5
MAX_RATING = 5.0

LIST_STR = pa.list_(pa.string())


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the contract.

    Attributes:
      name: column name.
      type: the Arrow type files are written with; readers accept anything that casts to it.
      nullable: whether null is allowed.
      required: whether the column must be present (an optional column absent is all null).
      doc: one line for ``docs/data.md`` and error messages.
      fill_absent: an optional column absent from a file is read as all null (True), or stays
        absent (False: the serving log's exposure columns, which most data never has, so no
        reader materialises a null column per row for them).
    """

    name: str
    type: pa.DataType
    nullable: bool = False
    required: bool = True
    doc: str = ""
    fill_absent: bool = True


SCHEMAS: dict[str, tuple[Column, ...]] = {
    INTERACTIONS: (
        Column(USER_ID, pa.int64(), doc="user who saw or watched; must exist in users"),
        Column(ITEM_ID, pa.int64(), doc="title shown or watched; must exist in items"),
        Column(TIMESTAMP, pa.int64(), doc="UTC seconds since the epoch"),
        Column(EVENT, pa.string(), doc="'impression' (shown on a page) or 'watch'"),
        Column(POSITION, pa.int32(), nullable=True, doc="page slot, 1-based; null if unknown"),
        Column(WATCH_SECONDS, pa.float64(), doc="seconds watched; 0 for an impression"),
        Column(DEVICE, pa.string(), doc=f"one of {', '.join(DEVICES)}"),
        Column(RATING, pa.float64(), nullable=True, doc="explicit rating 0.5-5; null if none"),
        Column(PAGE_ID, pa.string(), nullable=True, required=False, fill_absent=False,
               doc="the served page an impression was on (or a watch came from); optional"),
        Column(EXPERIMENT, pa.string(), nullable=True, required=False, fill_absent=False,
               doc="experiment id that served the impression; null outside experiments"),
        Column(ARM, pa.string(), nullable=True, required=False, fill_absent=False,
               doc="arm (interleaving: team) that served the impression; 'holdout' if held out"),
    ),
    ITEMS: (
        Column(ITEM_ID, pa.int64(), doc="unique id"),
        Column(TITLE, pa.string(), doc="display title"),
        Column(GENRES, LIST_STR, doc="genre names, may be empty"),
        Column(CAST, LIST_STR, doc="cast names, may be empty"),
        Column(DIRECTOR, pa.string(), nullable=True, doc="director name; null if unknown"),
        Column(RELEASE_YEAR, pa.int32(), nullable=True, doc="release year; null if unknown"),
        Column(DURATION_SECONDS, pa.int64(), nullable=True, doc="running time; null if unknown"),
        Column(ADDED_AT, pa.int64(), doc="UTC seconds the title joined the catalogue"),
        Column(MATURITY_RATING, pa.string(), doc=f"one of {', '.join(MATURITY_RATINGS)}"),
        Column(KEYWORDS, LIST_STR, nullable=True, required=False, doc="free-text tags; optional"),
    ),
    USERS: (
        Column(USER_ID, pa.int64(), doc="unique id"),
        Column(SIGNUP_AT, pa.int64(), doc="UTC seconds the account was created"),
        Column(COUNTRY, pa.string(), doc="ISO 3166-1 alpha-2 code, or 'unknown'"),
        Column(SUBSCRIPTION_TIER, pa.string(), doc=f"one of {', '.join(SUBSCRIPTION_TIERS)}"),
        Column(AGE_BUCKET, pa.string(), nullable=True, doc=f"one of {', '.join(AGE_BUCKETS)}"),
        Column(ONBOARDING_GENRES, LIST_STR, nullable=True, doc="genres picked in the quiz"),
    ),
}


def arrow_schema(table: str, include: tuple[str, ...] | list[str] = ()) -> pa.Schema:
    """The Arrow schema files of ``table`` are written with: every column except those not
    filled when absent (``Column.fill_absent``), which only when named in ``include``."""
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in SCHEMAS[table]
                      if c.fill_absent or c.name in include])


def column_names(table: str) -> list[str]:
    return [c.name for c in SCHEMAS[table]]


class ContractError(ValueError):
    """A dataset cannot be read at all (a missing file or column, an unreadable file).

    Row-level problems are not errors: the validator sends those rows to the rejects file.
    """


def _location(data_dir: str | Path) -> str | Path:
    """``data_dir`` as a URI string (read with tf.io.gfile) or a local Path."""
    text = os.fspath(data_dir)
    return text if "://" in text else Path(text)


def _gfile():
    import tensorflow as tf  # only for remote data: serving and the CLI stay light

    return tf.io.gfile


def _child(loc: str | Path, name: str) -> str | Path:
    return loc / name if isinstance(loc, Path) else os.path.join(loc, name)


def _is_file(path: str | Path) -> bool:
    if isinstance(path, Path):
        return path.is_file()
    return _gfile().exists(path) and not _gfile().isdir(path)


def _is_dir(path: str | Path) -> bool:
    if isinstance(path, Path):
        return path.is_dir()
    # object stores have no empty folders: a remote folder is a prefix with files under it
    return bool(_gfile().glob(os.path.join(path, "*")))


def table_path(data_dir: str | Path, table: str) -> Path | str:
    """Where ``table`` lives in ``data_dir``: ``<table>.parquet`` or a folder ``<table>/`` (a
    Path, or a URI string when ``data_dir`` is one)."""
    data_dir = _location(data_dir)
    single = _child(data_dir, f"{table}.parquet")
    folder = _child(data_dir, table)
    single_name, folder_name = os.path.basename(single), os.path.basename(folder)
    has_single, has_folder = _is_file(single), _is_dir(folder)
    if has_single and has_folder:
        raise ContractError(
            f"{data_dir}: both {single_name} and {folder_name}/ exist; a table lives in one of "
            "them. Move the single file into the folder (as a part file) or remove one.")
    if has_single:
        return single
    if has_folder:
        return folder
    raise ContractError(
        f"{data_dir}: no {table} table: expected {single_name} or a folder {folder_name}/ of "
        f"Parquet files. A dataset folder holds {', '.join(t + '.parquet' for t in TABLES)}; "
        "create one with `marquee data synth --out DIR` or "
        "`marquee data import-movielens SRC DIR`."
    )


def table_files(data_dir: str | Path, table: str) -> list[Path] | list[str]:
    """The Parquet files holding ``table``, in a stable order (URI strings for remote data)."""
    path = table_path(data_dir, table)
    if _is_file(path):
        return [path]
    if isinstance(path, Path):
        files = sorted(path.glob("*.parquet"))
    else:
        files = sorted(_gfile().glob(os.path.join(path, "*.parquet")))
    if not files:
        raise ContractError(f"{path}/ holds no *.parquet files; {table} needs at least one.")
    return files


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """Opens one Parquet file, local or a URI (read through tf.io.gfile)."""
    try:
        if isinstance(path, str) and "://" in path:
            from marquee.io import open_binary

            return pq.ParquetFile(open_binary(path))
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-Parquet file
        raise ContractError(
            f"{path}: not a readable Parquet file ({e}). Rewrite it with "
            "pandas.DataFrame.to_parquet or pyarrow.parquet.write_table."
        ) from e


def table_rows(data_dir: str | Path, table: str) -> int:
    """Rows of ``table`` from its Parquet footers (no row is read); ContractError when a file
    is missing or unreadable."""
    return sum(open_parquet(path).metadata.num_rows for path in table_files(data_dir, table))


def iter_batches(
    data_dir: str | Path, table: str, batch_size: int = 65_536
) -> Iterator[tuple[Path | str, int, pa.RecordBatch]]:
    """Yields ``(file, first_row_index, batch)`` over every file of ``table``, in bounded memory."""
    for path in table_files(data_dir, table):
        pf = open_parquet(path)
        offset = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            yield path, offset, batch
            offset += batch.num_rows


class TableWriter:
    """Writes one contract table in chunks (bounded memory), casting each chunk to the schema.

    Use as a context manager; ``write`` takes a pandas DataFrame or a dict of columns. A chunk
    with a column the contract does not know, without a required column, or with a null in a
    non-nullable column raises ContractError naming it. If the block raises, the partial file
    is deleted, so a failed write never leaves a valid-looking half table.
    """

    def __init__(self, path: str | Path, table: str, include: tuple[str, ...] | list[str] = ()):
        """``include``: optional columns not filled when absent (the exposure columns) this
        file carries."""
        self.table = table
        self.schema = arrow_schema(table, include)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.path, self.schema)
        self.rows = 0

    def write(self, columns) -> None:
        names = list(columns.keys())
        unknown = sorted(set(names) - set(column_names(self.table)))
        if unknown:
            raise ContractError(
                f"{self.table}: column(s) {', '.join(unknown)} are not in the contract "
                f"(its columns: {', '.join(column_names(self.table))}); rename or remove them.")
        extra = sorted(set(names) - set(self.schema.names))
        if extra:
            raise ContractError(
                f"{self.table}: column(s) {', '.join(extra)} were not declared when "
                f"{self.path} was opened; pass include={extra} to TableWriter.")
        required = {col.name for col in SCHEMAS[self.table] if col.required}
        missing = sorted(required - set(names))
        if missing:
            raise ContractError(f"{self.table}: missing required column(s) {', '.join(missing)}")
        batch = pa.Table.from_pydict({c: columns[c] for c in names})
        for field in self.schema:
            if field.name not in batch.column_names:
                batch = batch.append_column(field.name, pa.nulls(batch.num_rows, field.type))
            elif not field.nullable and batch.column(field.name).null_count:
                raise ContractError(
                    f"{self.table}.{field.name}: {batch.column(field.name).null_count} null "
                    "value(s) in a column that must not be null; fill or drop those rows first.")
        batch = batch.select(self.schema.names).cast(self.schema)
        self._writer.write_table(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if exc_type is not None:
            self.path.unlink(missing_ok=True)


def write_table(data_dir: str | Path, table: str, columns) -> Path:
    """Writes a whole table (``<data_dir>/<table>.parquet``) in one go; returns its path."""
    path = Path(data_dir) / f"{table}.parquet"
    with TableWriter(path, table) as w:
        w.write(columns)
    return path
