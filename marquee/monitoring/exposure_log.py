"""Exposure and diversity of an impression log per UTC day, in memory bounded by one day.

The log is a folder's contract interactions (``DIR/interactions/``: the ``part-x*.parquet``
files serving's impression log writes and any other part there, e.g. a simulated log); its
impressions are the rows with ``event == "impression"``, optionally labelled with ``page_id``,
``experiment`` and ``arm``. Per UTC day, for all impressions (:data:`ALL`) and for each
experiment arm the rows name (group ``"<experiment>/<arm>"``; a page in several layers counts
in each of its arms, as :mod:`marquee.experiments.analyze` reads them), the figures of
:mod:`marquee.monitoring.exposure`:

* **coverage** and the **Gini of exposure** over the day's catalogue: the titles added before
  the day ended, and any title shown that day (a title shown before its ``added_at``);
* **intra-list diversity**: the mean over the day's pages of two titles or more. A page is its
  ``page_id``; rows without one (simulated and older logs) are paged by user and timestamp,
  which is how a served page's rows are written;
* **genre diversity per user**: the mean over the day's users of their genre entropy (bits);
* **novelty**: the mean popularity rank of what was shown, the popularity being each title's
  positive watches (``data.min_watch_seconds``) before the day began: the log's, and the
  dataset folder's when that is another folder;
* **new-title share**: impressions of titles added less than ``new_days`` days before.

Memory: one pass over the log in batches, each put through the contract's row checks, writes
the clean impressions and positive watches (only the columns needed) to a scratch Parquet
dataset partitioned by day; the days are then read back one at a time. What is held at once is
one batch or one day of rows, the catalogue, and per group one count per title (the window's
exposure, for its Gini and Lorenz curve).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from marquee.artifacts import is_positive_watch
from marquee.data import contract as c
from marquee.evaluation.protocol import gini
from marquee.experiments.analyze import arm_in, experiments_in
from marquee.monitoring import exposure
from marquee.monitoring.skew import clean_batches

ALL = "all"  # the group of every impression
DAY_SECONDS = exposure.DAY_SECONDS
_DAY, _KIND, _PAGE = "day", "_kind", "_page"
_IMPRESSION, _WATCH = 0, 1
_LABELS = (c.PAGE_ID, c.EXPERIMENT, c.ARM)
_SPILL = pa.schema([(_DAY, pa.int32()), (_KIND, pa.int8()), (c.USER_ID, pa.int64()),
                    (c.ITEM_ID, pa.int64()), (c.TIMESTAMP, pa.int64()),
                    *((name, pa.string()) for name in _LABELS)])
ITEM_COLUMNS = [c.ITEM_ID, c.GENRES, c.ADDED_AT]


def day_date(day: int) -> str:
    """'YYYY-MM-DD' of a UTC day number (``timestamp // 86400``)."""
    return datetime.datetime.fromtimestamp(int(day) * DAY_SECONDS,
                                           datetime.timezone.utc).strftime("%Y-%m-%d")


@dataclasses.dataclass(frozen=True)
class DayExposure:
    """One group's figures on one UTC day (module docstring); nan where there is nothing to
    average (no page of two titles, no popularity)."""

    day: int  # UTC day number: timestamp // 86400
    group: str  # ALL or "<experiment>/<arm>"
    impressions: int
    users: int
    pages: int
    titles: int  # the day's catalogue
    titles_shown: int
    coverage: float
    gini: float
    intra_list_diversity: float
    genre_diversity: float
    novelty: float
    new_title_share: float
    complete: bool  # the day had ended when the report was made

    @property
    def date(self) -> str:
        return day_date(self.day)


@dataclasses.dataclass(frozen=True)
class LogExposure:
    """Every day's figures, and the exposure behind the Lorenz curves: per group, impressions
    per title of the window's catalogue (titles added before the last day ended, or shown) and
    of the last day's."""

    days: tuple[DayExposure, ...]  # by day, ALL first within a day
    window_counts: dict[str, np.ndarray]  # group -> [titles in the window's catalogue]
    last_day: int  # the last complete day with impressions (else the last day)
    last_day_counts: dict[str, np.ndarray]  # group -> [titles in that day's catalogue]
    rows: int  # interaction rows of the log, rejected ones included
    rejected: int  # rows that break the data contract (left out)
    impressions: int  # clean impressions of catalogue titles (what the figures count)
    unknown_titles: int  # impressions of titles in no items table (left out)
    without_page: int  # impressions without a page_id (paged by user and timestamp)
    positive_watches: int  # the popularity behind novelty (the dataset's included)
    first_timestamp: int | None = None  # of the impressions
    last_timestamp: int | None = None

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.group for d in self.days))

    def of(self, group: str) -> list[DayExposure]:
        return [d for d in self.days if d.group == group]

    def day(self, day: int, group: str = ALL) -> DayExposure | None:
        return next((d for d in self.days if d.day == day and d.group == group), None)

    def window(self, group: str = ALL) -> tuple[float, float]:
        """(coverage, Gini) of the whole window's impressions of ``group``."""
        counts = self.window_counts[group]
        return exposure.coverage_of_counts(counts), gini(counts)

    def lorenz(self, group: str = ALL, last_day: bool = False) -> tuple[np.ndarray, np.ndarray]:
        counts = (self.last_day_counts if last_day else self.window_counts).get(group)
        return exposure.lorenz_curve(counts if counts is not None else [])


def read_catalogue(folders: Sequence[str | Path]) -> pd.DataFrame:
    """Item id, genres and ``added_at`` of every title in the folders' items tables (a later
    folder's row replaces an earlier one's; a folder without the table is skipped), sorted by
    id; no rows when none has one."""
    parts = []
    for folder in folders:
        try:
            c.table_path(folder, c.ITEMS)
        except c.ContractError:
            continue
        parts += [good for good, _ in clean_batches(folder, c.ITEMS, ITEM_COLUMNS)]
    if not parts:
        return pd.DataFrame({c.ITEM_ID: np.zeros(0, np.int64), c.GENRES: [],
                             c.ADDED_AT: np.zeros(0, np.int64)})
    items = pd.concat(parts).drop_duplicates(c.ITEM_ID, keep="last")
    items = items.astype({c.ITEM_ID: np.int64, c.ADDED_AT: np.int64})
    return items.sort_values(c.ITEM_ID).reset_index(drop=True)


@dataclasses.dataclass
class _Tally:
    rows: int = 0
    rejected: int = 0
    impressions: int = 0
    unknown: int = 0
    without_page: int = 0
    watches: int = 0
    first: int | None = None
    last: int | None = None


def _strings(frame: pd.DataFrame, name: str) -> pa.Array:
    if name not in frame.columns:
        return pa.nulls(len(frame), pa.string())
    return pa.array(frame[name].to_numpy(object), pa.string(), from_pandas=True)


def _spill_batches(sources: list[tuple[str | Path, bool]], catalogue: np.ndarray,
                   min_watch_seconds: float, tally: _Tally) -> Iterator[pa.RecordBatch]:
    """The clean impressions (of sources whose flag is set) and positive watches of catalogue
    titles, as spill batches; counts what it reads and leaves out in ``tally``."""
    for folder, impressions_too in sources:
        for good, bad in clean_batches(folder, c.INTERACTIONS):
            event = good[c.EVENT].to_numpy()
            item = good[c.ITEM_ID].to_numpy(np.int64)
            known = np.isin(item, catalogue)
            watch = is_positive_watch(event, good[c.WATCH_SECONDS].to_numpy(np.float64),
                                      min_watch_seconds) & known
            impression = (event == c.EVENT_IMPRESSION) if impressions_too else np.zeros(
                len(good), bool)
            if impressions_too:
                tally.rows += len(good) + bad
                tally.rejected += bad
                tally.unknown += int((impression & ~known).sum())
            impression &= known
            tally.watches += int(watch.sum())
            kept = good[impression | watch]
            if not len(kept):
                continue
            ts = kept[c.TIMESTAMP].to_numpy(np.int64)
            shown = impression[impression | watch]
            if shown.any():
                tally.impressions += int(shown.sum())
                lo, hi = int(ts[shown].min()), int(ts[shown].max())
                tally.first = lo if tally.first is None else min(tally.first, lo)
                tally.last = hi if tally.last is None else max(tally.last, hi)
                if c.PAGE_ID in kept.columns:
                    tally.without_page += int(kept[c.PAGE_ID][shown].isna().sum())
                else:
                    tally.without_page += int(shown.sum())
            yield pa.RecordBatch.from_arrays([
                pa.array(ts // DAY_SECONDS, pa.int32()),
                pa.array(np.where(shown, _IMPRESSION, _WATCH), pa.int8()),
                pa.array(kept[c.USER_ID].to_numpy(np.int64)),
                pa.array(kept[c.ITEM_ID].to_numpy(np.int64)), pa.array(ts),
                *(_strings(kept, name) for name in _LABELS)], schema=_SPILL)


def _pages(imps: pd.DataFrame) -> np.ndarray:
    """A page number per impression ``[n]``: its page_id's, or (no page_id) its user and
    timestamp's, numbered after every page_id's."""
    codes, labels = pd.factorize(imps[c.PAGE_ID])
    missing = codes < 0
    if missing.any():
        user = pd.factorize(imps[c.USER_ID].to_numpy()[missing])[0].astype(np.int64)
        ts = pd.factorize(imps[c.TIMESTAMP].to_numpy()[missing])[0].astype(np.int64)
        codes[missing] = len(labels) + pd.factorize(user * (int(ts.max()) + 1) + ts)[0]
    return codes


def _groups(imps: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(group, row mask) for ALL and each experiment arm named by the rows."""
    out = [(ALL, np.ones(len(imps), bool))]
    for experiment in experiments_in(imps):
        inside, arm = arm_in(imps[c.EXPERIMENT], imps[c.ARM], experiment)
        for name in sorted({a for a in arm[inside] if a is not None}):
            out.append((f"{experiment}/{name}", inside & (arm == name)))
    return out


def _day_figures(day: int, group: str, imps: pd.DataFrame, items: pd.DataFrame,
                 titles: np.ndarray, popularity: pd.Series, new_days: float,
                 complete: bool) -> tuple[DayExposure, np.ndarray]:
    """One group's figures of one day, and its impressions per title of ``titles``."""
    ids = imps[c.ITEM_ID].to_numpy(np.int64)
    counts = exposure.exposure_counts(ids, titles)
    shown = items[items[c.ITEM_ID].isin(np.unique(ids))]
    ild = exposure.intra_list_diversity(imps[[_PAGE, c.ITEM_ID]], shown, page_column=_PAGE)
    entropy = exposure.genre_entropy_per_user(imps[[c.USER_ID, c.ITEM_ID]], shown)
    figures = DayExposure(
        day=day, group=group, impressions=len(imps), users=int(imps[c.USER_ID].nunique()),
        pages=int(imps[_PAGE].nunique()), titles=len(titles),
        titles_shown=int(np.count_nonzero(counts)),
        coverage=exposure.coverage_of_counts(counts), gini=gini(counts),
        intra_list_diversity=float(ild.mean()) if ild.notna().any() else float("nan"),
        genre_diversity=float(entropy.mean()),
        novelty=exposure.novelty(ids, popularity),
        new_title_share=exposure.new_title_share(imps[[c.ITEM_ID, c.TIMESTAMP]], shown,
                                                 new_days),
        complete=complete)
    return figures, counts


def log_exposure(log_dir: str | Path, items: pd.DataFrame, *, new_days: float,
                 min_watch_seconds: float, history_dir: str | Path | None = None,
                 now: float | None = None, scratch_dir: str | Path | None = None,
                 ) -> LogExposure:
    """The figures of the impressions in ``log_dir`` per UTC day and group (module docstring).

    Args:
      items: the catalogue (:func:`read_catalogue`: item_id, genres, added_at); impressions of
        other titles are counted and left out.
      new_days: a title added less than this many days before an impression is new.
      min_watch_seconds: a watch this long is a positive (the popularity behind novelty).
      history_dir: another folder whose positive watches count in the popularity too (the
        dataset the log's users came from); its impressions are not read.
      now: UTC seconds; a day that has not ended by then is incomplete (default: the clock).
      scratch_dir: where the day-partitioned scratch copy is written (and removed); default a
        temporary folder.

    Raises:
      marquee.data.contract.ContractError: no interactions table in ``log_dir``, or a file of
        it that is unreadable or lacks a required column.
    """
    import time

    now = time.time() if now is None else now
    catalogue = items[c.ITEM_ID].to_numpy(np.int64)
    added = items[c.ADDED_AT].to_numpy(np.int64)
    sources: list[tuple[str | Path, bool]] = [(log_dir, True)]
    if history_dir is not None and os.path.realpath(history_dir) != os.path.realpath(log_dir):
        sources.append((history_dir, False))
    c.table_files(log_dir, c.INTERACTIONS)  # a log without interactions fails here, clearly
    tally = _Tally()
    days, window, last = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="marquee-exposure-", dir=scratch_dir) as scratch:
        ds.write_dataset(
            _spill_batches(sources, catalogue, min_watch_seconds, tally), scratch,
            schema=_SPILL, format="parquet", existing_data_behavior="overwrite_or_ignore",
            partitioning=ds.partitioning(pa.schema([(_DAY, pa.int32())]), flavor="hive"))
        spilled = sorted(int(p.name.split("=", 1)[1]) for p in Path(scratch).glob(f"{_DAY}=*"))
        popularity = np.zeros(len(catalogue), np.int64)  # positive watches before the day
        for day in spilled:
            rows = pq.read_table(Path(scratch) / f"{_DAY}={day}").to_pandas()
            imps = rows[rows[_KIND] == _IMPRESSION].reset_index(drop=True)
            if len(imps):
                imps[_PAGE] = _pages(imps)
                end = (day + 1) * DAY_SECONDS
                mask = (added < end) | np.isin(catalogue, imps[c.ITEM_ID].unique())
                titles = catalogue[mask]
                ranks_of = pd.Series(popularity[mask], index=titles)
                complete = end <= now
                counts_of = {}
                for group, rows_of in _groups(imps):
                    figures, counts = _day_figures(day, group, imps[rows_of], items, titles,
                                                   ranks_of, new_days, complete)
                    days.append(figures)
                    window.setdefault(group, np.zeros(len(catalogue), np.int64))[mask] += counts
                    counts_of[group] = counts
                if complete or not last or not last["complete"]:
                    last = {"day": day, "complete": complete, "counts": counts_of}
            watched = rows.loc[rows[_KIND] == _WATCH, c.ITEM_ID].to_numpy(np.int64)
            popularity += exposure.exposure_counts(watched, catalogue)
    # the window's catalogue: titles added before the last day ended, or shown
    in_window = np.zeros(len(catalogue), bool)
    if days:
        in_window = added < (days[-1].day + 1) * DAY_SECONDS
        for counts in window.values():
            in_window |= counts > 0
    return LogExposure(
        days=tuple(days), window_counts={g: w[in_window] for g, w in window.items()},
        last_day=last.get("day", -1), last_day_counts=last.get("counts", {}),
        rows=tally.rows, rejected=tally.rejected, impressions=tally.impressions,
        unknown_titles=tally.unknown, without_page=tally.without_page,
        positive_watches=tally.watches, first_timestamp=tally.first,
        last_timestamp=tally.last)
