"""Validates a dataset folder against the data contract, streaming, with a rejects file.

Row-level problems (a wrong type in one cell, an unknown item id, a duplicate id, a negative watch
time, a NaN timestamp) never stop the run and never vanish: each bad row goes to the rejects file
with its file, row number and reason, and the report counts them. A file-level problem (a missing
table, file or column; a column whose type cannot hold the contract's values) raises
:class:`~marquee.data.contract.ContractError` naming the fix.

``validate_dataset`` only checks; ``load_dataset`` also returns the clean rows as DataFrames (for
data that fits in memory; the pipeline's Beam ExampleGen uses :func:`check_frame` per batch).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from marquee.data import contract as c

DEFAULT_MAX_BAD_SHARE = 0.01


@dataclasses.dataclass
class TableReport:
    table: str
    rows: int = 0
    rejected: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)
    ignored_columns: tuple[str, ...] = ()

    @property
    def bad_share(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0


@dataclasses.dataclass
class ValidationReport:
    data_dir: Path | str
    rejects_path: Path
    max_bad_share: float
    tables: dict[str, TableReport]

    @property
    def ok(self) -> bool:
        return all(t.bad_share <= self.max_bad_share for t in self.tables.values())

    def summary(self) -> str:
        lines = [f"dataset {self.data_dir}"]
        for t in self.tables.values():
            flag = "" if t.bad_share <= self.max_bad_share else "  <-- over the limit"
            lines.append(
                f"  {t.table:<13} {t.rows:>12,} rows  {t.rejected:>10,} rejected "
                f"({t.bad_share:.2%}){flag}"
            )
            # most common first, ties by name: the same lines however the rows were read
            for reason, n in sorted(t.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]:
                lines.append(f"      {n:>10,} x {reason}")
            if t.ignored_columns:
                lines.append(
                    f"      columns not in the contract, ignored: {', '.join(t.ignored_columns)}"
                )
        if any(t.rejected for t in self.tables.values()):
            lines.append(f"  rejected rows with file, row and reason: {self.rejects_path}")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"  {verdict}: the limit is {self.max_bad_share:.2%} rejected rows per table "
            "(--max-bad-share)"
        )
        return "\n".join(lines)


@dataclasses.dataclass
class Dataset:
    """A validated dataset in memory: only rows that passed every check."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    report: ValidationReport


# ----------------------------------------------------------------------------- column checks


def _scalar_reasons(name: str, s: pd.Series, col: c.Column) -> tuple[pd.Series, np.ndarray]:
    """Coerces one scalar column; returns (values, per-row reason or '')."""
    n = len(s)
    reasons = np.full(n, "", dtype=object)
    isnull = s.isna().to_numpy()
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = pd.to_numeric(s, errors="coerce")
        unparsed = values.isna().to_numpy() & ~isnull
        for i in np.flatnonzero(unparsed):
            reasons[i] = f"{name}: expected a number, got {s.iloc[i]!r}"
        if pa.types.is_integer(col.type):
            vals = values.to_numpy(dtype="float64", na_value=np.nan)
            frac = ~np.isnan(vals) & (np.mod(vals, 1) != 0)
            for i in np.flatnonzero(frac):
                reasons[i] = f"{name}: expected an integer, got {vals[i]!r}"
            values = values.where(~frac)
        isnull = values.isna().to_numpy()
        if pa.types.is_floating(col.type):
            vals = values.to_numpy(dtype="float64", na_value=np.nan)
            inf = np.isinf(vals)
            for i in np.flatnonzero(inf):
                reasons[i] = f"{name}: expected a finite number, got {vals[i]!r}"
    else:
        values = s
        bad = ~isnull & ~s.map(lambda v: isinstance(v, str)).to_numpy()
        for i in np.flatnonzero(bad):
            reasons[i] = f"{name}: expected text, got {s.iloc[i]!r}"
        values = s.where(~bad)
    if not col.nullable:
        missing = isnull & (reasons == "")
        what = "NaN or null" if pa.types.is_floating(col.type) or pa.types.is_integer(
            col.type
        ) else "null"
        reasons[missing] = f"{name}: is {what}; a value is required"
    return values, reasons


def _list_reasons(name: str, s: pd.Series, col: c.Column) -> tuple[pd.Series, np.ndarray]:
    reasons = np.full(len(s), "", dtype=object)

    def norm(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, str):
            return "str"
        try:
            items = list(v)
        except TypeError:
            return "bad"
        if not all(isinstance(x, str) for x in items):
            return "bad"
        return items

    out = s.map(norm)
    for i, v in enumerate(out):
        if v is None and not col.nullable:
            # A null list means "unknown"; the contract asks for an empty list instead.
            reasons[i] = f"{name}: is null; use an empty list when there are none"
        elif isinstance(v, str):
            reasons[i] = f"{name}: expected a list of text, got {s.iloc[i]!r}"
    out = out.map(lambda v: None if isinstance(v, str) else v)
    return out, reasons


def _add(reasons: np.ndarray, mask: np.ndarray, message: Callable[[int], str] | str) -> None:
    for i in np.flatnonzero(mask & (reasons == "")):
        reasons[i] = message(i) if callable(message) else message


def _range_check(reasons, name, values, lo, hi, unit=""):
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isnan(v) & ((v < lo) | (v > hi))
    _add(reasons, bad, lambda i: f"{name}: {v[i]:g} is outside {lo:g}..{hi:g}{unit}")


def _choice_check(reasons, name, values, allowed):
    bad = values.notna().to_numpy() & ~values.isin(allowed).to_numpy()
    vals = values.to_numpy()
    _add(reasons, bad, lambda i: f"{name}: {vals[i]!r} is not one of {', '.join(allowed)}")


@dataclasses.dataclass
class _Known:
    """Ids seen so far (for uniqueness and referential checks)."""

    user_ids: set = dataclasses.field(default_factory=set)
    item_ids: set = dataclasses.field(default_factory=set)


def _label_check(reasons: np.ndarray, name: str, s: pd.Series) -> None:
    """A page id, experiment id or arm name: 1..MAX_LABEL_LENGTH printable ASCII characters."""
    text = s.where(s.notna(), None)
    bad = text.map(lambda v: v is not None and isinstance(v, str) and not (
        0 < len(v) <= c.MAX_LABEL_LENGTH and v.isascii() and v.isprintable())).to_numpy(bool)
    _add(reasons, bad, lambda i: f"{name}: expected 1-{c.MAX_LABEL_LENGTH} printable ASCII "
         f"characters, got {str(text.iloc[i])[:40]!r}")


def check_frame(
    table: str, frame: pd.DataFrame, known: _Known | None = None, check_refs: bool = True
) -> tuple[pd.DataFrame, np.ndarray]:
    """Checks one batch of ``table``; returns (typed frame, reason per row, '' when clean).

    ``known`` carries ids across batches: users and items add their ids to it (a repeat is a
    duplicate), interactions look theirs up in it (a missing one is an unknown id).
    """
    known = known if known is not None else _Known()
    cols = {col.name: col for col in c.SCHEMAS[table]}
    missing = [n for n, col in cols.items() if col.required and n not in frame.columns]
    if missing:
        raise ContractErrorMissing(table, missing, list(frame.columns))
    reasons = np.full(len(frame), "", dtype=object)
    out = {}
    for name, col in cols.items():
        if name not in frame.columns:
            if col.fill_absent:
                out[name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            continue
        check = _list_reasons if pa.types.is_list(col.type) else _scalar_reasons
        values, r = check(name, frame[name], col)
        _add(reasons, r != "", lambda i, r=r: r[i])
        out[name] = values
    typed = pd.DataFrame(out, index=frame.index)

    if table == c.INTERACTIONS:
        _range_check(reasons, c.TIMESTAMP, typed[c.TIMESTAMP], c.MIN_TIMESTAMP, c.MAX_TIMESTAMP,
                     " (UTC seconds; milliseconds? divide by 1000)")
        _choice_check(reasons, c.EVENT, typed[c.EVENT], c.EVENTS)
        _choice_check(reasons, c.DEVICE, typed[c.DEVICE], c.DEVICES)
        ws = typed[c.WATCH_SECONDS].to_numpy(dtype="float64", na_value=np.nan)
        _add(reasons, ws < 0, lambda i: f"{c.WATCH_SECONDS}: {ws[i]:g} is negative")
        imp = (typed[c.EVENT] == c.EVENT_IMPRESSION).to_numpy() & (ws > 0)
        _add(reasons, imp, lambda i: f"{c.WATCH_SECONDS}: {ws[i]:g} on an impression; "
             "log the watch as its own 'watch' event")
        _range_check(reasons, c.POSITION, typed[c.POSITION], 1, 10_000)
        _range_check(reasons, c.RATING, typed[c.RATING], c.MIN_RATING, c.MAX_RATING)
        for name in c.EXPOSURE_COLUMNS:
            if name in typed.columns:
                _label_check(reasons, name, typed[name])
        if check_refs:
            uid = typed[c.USER_ID].to_numpy()
            iid = typed[c.ITEM_ID].to_numpy()
            bad_u = typed[c.USER_ID].notna().to_numpy() & ~typed[c.USER_ID].isin(
                known.user_ids).to_numpy()
            _add(reasons, bad_u, lambda i: f"{c.USER_ID}: {int(uid[i])} is not in users")
            bad_i = typed[c.ITEM_ID].notna().to_numpy() & ~typed[c.ITEM_ID].isin(
                known.item_ids).to_numpy()
            _add(reasons, bad_i, lambda i: f"{c.ITEM_ID}: {int(iid[i])} is not in items")
    elif table == c.ITEMS:
        _range_check(reasons, c.RELEASE_YEAR, typed[c.RELEASE_YEAR], c.MIN_RELEASE_YEAR,
                     c.MAX_RELEASE_YEAR)
        _range_check(reasons, c.DURATION_SECONDS, typed[c.DURATION_SECONDS], 1, 100 * 3600)
        _range_check(reasons, c.ADDED_AT, typed[c.ADDED_AT], c.MIN_TIMESTAMP, c.MAX_TIMESTAMP,
                     " (UTC seconds)")
        _choice_check(reasons, c.MATURITY_RATING, typed[c.MATURITY_RATING], c.MATURITY_RATINGS)
        empty = typed[c.TITLE].notna().to_numpy() & (typed[c.TITLE].str.strip() == "").to_numpy()
        _add(reasons, empty, f"{c.TITLE}: is empty")
        _unique(reasons, typed[c.ITEM_ID], known.item_ids, c.ITEM_ID)
    elif table == c.USERS:
        _range_check(reasons, c.SIGNUP_AT, typed[c.SIGNUP_AT], c.MIN_TIMESTAMP, c.MAX_TIMESTAMP,
                     " (UTC seconds)")
        _choice_check(reasons, c.SUBSCRIPTION_TIER, typed[c.SUBSCRIPTION_TIER],
                      c.SUBSCRIPTION_TIERS)
        _choice_check(reasons, c.AGE_BUCKET, typed[c.AGE_BUCKET], c.AGE_BUCKETS)
        empty = typed[c.COUNTRY].notna().to_numpy() & (typed[c.COUNTRY].str.strip() == "")
        _add(reasons, np.asarray(empty), f"{c.COUNTRY}: is empty; use 'unknown'")
        _unique(reasons, typed[c.USER_ID], known.user_ids, c.USER_ID)
    return typed, reasons


def _unique(reasons: np.ndarray, ids: pd.Series, seen: set, name: str) -> None:
    vals = ids.to_numpy()
    for i in range(len(vals)):
        if reasons[i] or pd.isna(vals[i]):
            continue
        v = int(vals[i])
        if v in seen:
            reasons[i] = f"{name}: {v} is a duplicate (an earlier row has it)"
        else:
            seen.add(v)


class ContractErrorMissing(c.ContractError):
    def __init__(self, table: str, missing: list[str], found: list[str]):
        super().__init__(
            f"{table}: missing column(s) {', '.join(missing)}. The contract's {table} columns "
            f"are {', '.join(c.column_names(table))}; the file has {', '.join(found) or 'none'}. "
            "Rename or add the columns (see docs/data.md)."
        )


# ----------------------------------------------------------------------------- dataset


def _cast_clean(table: str, typed: pd.DataFrame) -> pd.DataFrame:
    out = typed.copy()
    for col in c.SCHEMAS[table]:
        if pa.types.is_integer(col.type):
            out[col.name] = out[col.name].astype("Int64" if col.nullable else "int64")
        elif pa.types.is_floating(col.type):
            out[col.name] = out[col.name].astype("float64")
    return out.reset_index(drop=True)


def _scan(
    data_dir: Path | str,
    max_bad_share: float,
    rejects_path: Path,
    keep: bool,
    batch_size: int,
    progress: Callable[[str], None] | None,
) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    known = _Known()
    tables: dict[str, TableReport] = {}
    kept: dict[str, list[pd.DataFrame]] = {t: [] for t in c.TABLES}
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with open(rejects_path, "w", newline="") as fh:
        rejects = csv.writer(fh)
        rejects.writerow(["table", "file", "row", "reason"])
        for table in c.TABLES:  # users and items first: interactions refer to them
            rep = TableReport(table)
            ignored: set[str] = set()
            for path, offset, batch in c.iter_batches(data_dir, table, batch_size):
                frame = batch.to_pandas()
                ignored |= set(frame.columns) - set(c.column_names(table))
                try:
                    typed, reasons = check_frame(table, frame, known)
                except c.ContractError as e:
                    raise c.ContractError(f"{path}: {e}") from None
                bad = reasons != ""
                for i in np.flatnonzero(bad):
                    rejects.writerow([table, str(path), offset + int(i), reasons[i]])
                    rep.reasons[reason_key(reasons[i])] += 1
                rep.rows += len(frame)
                rep.rejected += int(bad.sum())
                if keep:
                    kept[table].append(typed[~bad])
                if progress and rep.rows and rep.rows % (batch_size * 16) == 0:
                    progress(f"{table}: {rep.rows:,} rows checked")
            if rep.rows == 0:
                raise c.ContractError(
                    f"{c.table_path(data_dir, table)}: has no rows; {table} needs at least one."
                )
            rep.ignored_columns = tuple(sorted(ignored))
            tables[table] = rep
    report = ValidationReport(data_dir, rejects_path, max_bad_share, tables)
    frames = {
        t: _cast_clean(t, pd.concat(parts) if parts else pd.DataFrame())
        for t, parts in kept.items() if keep
    }
    return report, frames


def reason_key(reason: str) -> str:
    """The summary's line for a reason: its column and :func:`reason_group`."""
    return reason.split(":")[0] + ": " + reason_group(reason)


def reason_group(reason: str) -> str:
    """Groups reasons for the summary: 'item_id: 17 is not in items' -> 'not in items'."""
    detail = reason.split(": ", 1)[-1]
    for marker in ("is not in", "is a duplicate", "is outside", "is not one of", "expected",
                   "is negative", "on an impression", "is NaN", "is null", "is empty"):
        if marker in detail:
            return marker + detail.split(marker, 1)[1].split(",")[0].split(";")[0][:40]
    return detail[:60]


def default_rejects_path(data_dir: str | Path) -> Path:
    """``DIR/_rejects.csv``; for remote data (a URI) ``_rejects.csv`` in the working directory,
    as the rejects file is written locally."""
    return Path("_rejects.csv") if "://" in os.fspath(data_dir) else Path(data_dir) / "_rejects.csv"


def validate_dataset(
    data_dir: str | Path,
    max_bad_share: float = DEFAULT_MAX_BAD_SHARE,
    rejects_path: str | Path | None = None,
    batch_size: int = 65_536,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Checks every row of the dataset in bounded memory; writes the rejects file."""
    rejects = Path(rejects_path) if rejects_path else default_rejects_path(data_dir)
    report, _ = _scan(data_dir, max_bad_share, rejects, False, batch_size, progress)
    return report


class TooManyRejects(c.ContractError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(
            report.summary()
            + "\nFix the rows listed in the rejects file, or raise the limit if they are expected."
        )


def load_dataset(
    data_dir: str | Path,
    max_bad_share: float = DEFAULT_MAX_BAD_SHARE,
    rejects_path: str | Path | None = None,
) -> Dataset:
    """Validates and loads a dataset that fits in memory; raises TooManyRejects over the limit."""
    rejects = Path(rejects_path) if rejects_path else default_rejects_path(data_dir)
    report, frames = _scan(data_dir, max_bad_share, rejects, True, 65_536, None)
    if not report.ok:
        raise TooManyRejects(report)
    return Dataset(frames[c.INTERACTIONS], frames[c.ITEMS], frames[c.USERS], report)
