"""Train/serve skew: statistics over what serving logged, against the training statistics.

Serving logs contract interactions rows to ``DIR/interactions/part-*.parquet`` (impressions,
with the optional ``page_id``, ``experiment`` and ``arm`` columns, which are not features, and
watches). Each row becomes the example the pipeline would build for it
(``components/contract_example_gen/example_lib``: the user's and the title's features joined
from the dataset folder and the log's own ``users/`` and ``items/`` parts, hour and day of week
from the timestamp; no history, which no comparator reads), in two groups:

- ``impression``: every title shown, i.e. the requests serving answered and what it put on
  the page;
- ``watch``: the positive watches (``data.min_watch_seconds``), what the training split holds.

TFDV computes the statistics of each group as StatisticsGen does (the same generators, in
memory) and compares them with the training split's by the curated schema's
``skew_comparator``s (``monitor.skew_*_threshold`` may replace their thresholds). A large log is
sampled uniformly down to ``monitor.skew_max_rows`` rows (seeded).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from marquee.artifacts import is_positive_watch
from marquee.config import Config
from marquee.data import contract as c
from marquee.monitoring.comparators import SKEW, Comparison, compare, with_thresholds

IMPRESSION = "impression"
WATCH = "watch"
GROUPS = (IMPRESSION, WATCH)
_PLURAL = {IMPRESSION: "impressions", WATCH: "positive watches"}
TRAIN_SPLIT = "train"
# Where the training statistics are found in a run folder: what the gate last let through
# (the data the served models were trained on), else the latest StatisticsGen output.
STATISTICS_DIRS = (("AnomalyGate", "baseline_statistics"), ("StatisticsGen", "statistics"))
_EVENT_COLUMNS = [c.USER_ID, c.ITEM_ID, c.TIMESTAMP, c.EVENT, c.POSITION, c.WATCH_SECONDS,
                  c.DEVICE]


class SkewInputError(ValueError):
    """A run folder, statistics or event log the skew check cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class ServingLog:
    """The serving examples of one log, by group, and what was left out."""

    examples: dict[str, list[bytes]]  # group -> serialized tf.Examples
    rows: int  # clean rows read (after --since), before sampling
    sampled: int  # rows turned into examples (or dropped as below)
    unknown: int  # rows whose user or title is in neither the dataset nor the log
    rejected: int  # rows that break the contract (the log's own validation would name them)
    short_watches: int  # watches under data.min_watch_seconds (not a training positive)


def clean_batches(folder: str | Path, table: str, columns: list[str] | None = None
                   ) -> Iterator[tuple[pd.DataFrame, int]]:
    """(clean typed rows, rejected count) per batch of ``table`` in ``folder``; a file that
    cannot be read as the table (a required column missing) raises ContractError naming it."""
    from marquee.data.validate import check_frame

    for path, _, batch in c.iter_batches(folder, table):
        frame = batch.to_pandas()
        try:
            typed, reasons = check_frame(table, frame, check_refs=False)
        except c.ContractError as e:
            raise c.ContractError(f"{path}: {e}") from None
        good = typed[reasons == ""]
        yield (good[columns] if columns else good), int((reasons != "").sum())


def _table(folders: list[str | Path], table: str, ids: set[int]) -> dict[int, dict]:
    """id -> row of ``table`` over ``folders`` for the ``ids`` asked for (a later folder's row
    replaces an earlier one's); a folder without the table is skipped."""
    key = c.USER_ID if table == c.USERS else c.ITEM_ID
    out: dict[int, dict] = {}
    for folder in folders:
        try:
            c.table_path(folder, table)
        except c.ContractError:
            continue
        for good, _ in clean_batches(folder, table):
            for row in good[good[key].isin(ids)].to_dict("records"):
                out[int(row[key])] = {k: _plain(v) for k, v in row.items()}
    return out


def _plain(v):
    from components.contract_example_gen.validate_lib import plain

    return plain(v)


def _total_rows(events_dir: str | Path) -> int:
    return sum(c.open_parquet(p).metadata.num_rows
               for p in c.table_files(events_dir, c.INTERACTIONS))


def serving_log(events_dir: str | Path, data_dir: str | Path, config: Config,
                since: int | None = None) -> ServingLog:
    """The serving examples of the log in ``events_dir`` (``interactions/`` part files), users
    and titles joined from ``data_dir`` and the log's own ``users/`` and ``items/``; only rows
    with ``timestamp >= since`` when given."""
    from components.contract_example_gen.example_lib import _example

    try:
        total = _total_rows(events_dir)
    except c.ContractError as e:
        raise SkewInputError(f"{events_dir}: no serving log to compare ({e}); pass the folder "
                             "`marquee serve --event-log` writes (it holds interactions/)") from e
    monitor = config.monitor
    rate = min(1.0, monitor.skew_max_rows / total) if total else 1.0
    rng = np.random.default_rng(monitor.seed)
    kept, rows, rejected = [], 0, 0
    for good, bad in clean_batches(events_dir, c.INTERACTIONS, _EVENT_COLUMNS):
        rejected += bad
        if since is not None:
            good = good[good[c.TIMESTAMP] >= since]
        rows += len(good)
        kept.append(good[rng.random(len(good)) < rate] if rate < 1.0 else good)
    sample = pd.concat(kept) if kept else pd.DataFrame(columns=_EVENT_COLUMNS)
    # only the users and titles of the sample are held (a users table can be large)
    users = _table([data_dir, events_dir], c.USERS, set(sample[c.USER_ID].tolist()))
    items = _table([data_dir, events_dir], c.ITEMS, set(sample[c.ITEM_ID].tolist()))
    positive = is_positive_watch(sample[c.EVENT].to_numpy(), sample[c.WATCH_SECONDS].to_numpy(),
                                 config.data.min_watch_seconds)
    examples: dict[str, list[bytes]] = {g: [] for g in GROUPS}
    unknown = short = 0
    for event, is_positive in zip(sample.to_dict("records"), positive.tolist(), strict=True):
        event = {k: _plain(v) for k, v in event.items()}
        user, item = users.get(event[c.USER_ID]), items.get(event[c.ITEM_ID])
        if user is None or item is None:
            unknown += 1
            continue
        if event[c.EVENT] == c.EVENT_WATCH and not is_positive:
            short += 1
            continue
        group = WATCH if event[c.EVENT] == c.EVENT_WATCH else IMPRESSION
        examples[group].append(_example(user, event, item, [], event[c.WATCH_SECONDS],
                                        event.get(c.POSITION)).SerializeToString())
    sampled = len(sample)
    return ServingLog(examples, rows, sampled, unknown, rejected, short)


def statistics_of(serialized: list[bytes]) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV statistics of serialized tf.Examples, computed as StatisticsGen computes them (its
    default options, types from the examples)."""
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(serialized)
    return stats_impl.generate_statistics_in_memory(batch)


def training_statistics(run_dir: str | Path | None = None, statistics_dir: str | None = None,
                        split: str = TRAIN_SPLIT
                        ) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, str]:
    """The training split's statistics -> (statistics, the artifact folder read): of
    ``statistics_dir`` (an ExampleStatistics artifact folder holding ``Split-<split>/``) when
    given, else the latest the run folder's AnomalyGate accepted, else its latest StatisticsGen
    output."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    if statistics_dir is None:
        if run_dir is None:
            raise SkewInputError("give the run folder (RUN_DIR) or --statistics DIR")
        root = Path(run_dir) / "tfx"
        for component, output in STATISTICS_DIRS:
            runs = sorted((p for p in (root / component / output).glob("*") if p.name.isdigit()),
                          key=lambda p: int(p.name))
            if runs:
                statistics_dir = str(runs[-1])
                break
        else:
            raise SkewInputError(
                f"{run_dir}: no training statistics (expected {root}/AnomalyGate/"
                "baseline_statistics/<id>/ or StatisticsGen/statistics/<id>/); run the pipeline "
                "into this folder first (`marquee pipeline run --root RUN_DIR`), or pass "
                "--statistics with an ExampleStatistics artifact folder")
    path = os.path.join(statistics_dir, f"Split-{split}", "FeatureStats.pb")
    if not tf.io.gfile.exists(path):
        raise SkewInputError(f"{statistics_dir}: no {split} statistics (expected {path}); pass "
                             "an ExampleStatistics artifact folder of the pipeline (e.g. "
                             "RUN_DIR/tfx/StatisticsGen/statistics/<id>)")
    return tfdv.load_stats_binary(path), statistics_dir


def skew_schema(schema: schema_pb2.Schema, config: Config) -> schema_pb2.Schema:
    m = config.monitor
    return with_thresholds(schema, SKEW, m.skew_linf_threshold, m.skew_jsd_threshold)


def find_skew(training: statistics_pb2.DatasetFeatureStatisticsList,
              serving: statistics_pb2.DatasetFeatureStatisticsList,
              schema: schema_pb2.Schema, config: Config = Config()) -> list[Comparison]:
    """Every skew comparator of ``schema`` measured between ``training`` and ``serving``
    statistics (one dataset each), out of bounds or not."""
    return compare(training, skew_schema(schema, config), serving=serving)


@dataclasses.dataclass(frozen=True)
class SkewReport:
    statistics_dir: str
    log: ServingLog
    comparisons: dict[str, list[Comparison]]  # group -> comparisons (groups with examples)

    @property
    def out_of_bounds(self) -> dict[str, list[Comparison]]:
        return {g: [x for x in cs if x.breached] for g, cs in self.comparisons.items()}

    def lines(self) -> list[str]:
        log = self.log
        out = [f"training statistics: {self.statistics_dir} ({TRAIN_SPLIT} split)",
               f"serving log: {log.rows:,} rows ({log.sampled:,} sampled): "
               + ", ".join(f"{len(log.examples[g]):,} {_PLURAL[g]}" for g in GROUPS)
               + f"; left out: {log.short_watches:,} watches under the positive-watch "
               f"threshold, {log.unknown:,} rows of unknown users or titles, {log.rejected:,} "
               "rows that break the contract"]
        for group, comparisons in self.comparisons.items():
            bad = [x for x in comparisons if x.breached]
            out.append(f"{group}: {len(bad)} of {len(comparisons)} features out of bounds")
            out += [f"  OUT {x.line()}" for x in bad]
            fine = [x for x in comparisons if not x.breached]
            if fine:
                out.append("  within bounds: " + ", ".join(
                    f"{x.feature} {x.value:.4f}" for x in fine))
        for group in GROUPS:
            if group not in self.comparisons:
                out.append(f"{group}: no {_PLURAL[group]} in the log, nothing compared")
        return out


def skew_report(events_dir: str | Path, data_dir: str | Path, schema: schema_pb2.Schema,
                config: Config, run_dir: str | Path | None = None,
                statistics_dir: str | None = None, since: int | None = None) -> SkewReport:
    """What ``marquee monitor skew`` prints: each group of the serving log against the
    training statistics of the run folder (or ``statistics_dir``)."""
    training, where = training_statistics(run_dir, statistics_dir)
    log = serving_log(events_dir, data_dir, config, since)
    comparisons = {group: find_skew(training, statistics_of(serialized), schema, config)
                   for group, serialized in log.examples.items() if serialized}
    return SkewReport(where, log, comparisons)
