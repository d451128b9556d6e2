"""Turns a contract dataset into retrieval tf.Examples, split by time, with Beam.

One example per positive watch (``watch_seconds >= DataConfig.min_watch_seconds``), carrying the
user's features, the context (hour, day of week, device), the user's previous positive watches
(``history``, most recent first, at most ``history_length``) and the item's features. Examples with
``timestamp < cutoff`` go to ``train``, the rest to ``eval``: evaluation never sees the future, and
an eval example's history may include train-period watches, exactly as at serving time.

A third split, ``catalogue``, holds one example per item with the candidate features only (query
features empty); the indexer embeds it.

Memory: interactions are grouped per user (one user's events in one worker); items are a side
input (the catalogue fits in a worker: 500K items is a few hundred MB).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from marquee.config import DataConfig
from marquee.data import contract as c
from marquee.data.validate import check_frame
from trainer import features as f

TRAIN = "train"
EVAL = "eval"
CATALOGUE = "catalogue"
SPLITS = (TRAIN, EVAL, CATALOGUE)


def time_cutoff(data_dir: str | Path, config: DataConfig) -> int:
    """The eval cutoff in UTC seconds: fixed in config, or the last ``eval_fraction`` of the span.

    Reads only the Parquet footers' min/max statistics, not the data.
    """
    if config.eval_cutoff is not None:
        return int(config.eval_cutoff)
    lo, hi = None, None
    for path in c.table_files(data_dir, c.INTERACTIONS):
        meta = pq.ParquetFile(path).metadata
        col = meta.schema.names.index(c.TIMESTAMP)
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(col).statistics
            if stats is None or not stats.has_min_max:
                table = pq.read_table(path, columns=[c.TIMESTAMP])
                values = table.column(0).to_numpy()
                mn, mx = int(np.nanmin(values)), int(np.nanmax(values))
            else:
                mn, mx = int(stats.min), int(stats.max)
            lo = mn if lo is None else min(lo, mn)
            hi = mx if hi is None else max(hi, mx)
    if lo is None or hi is None or hi <= lo:
        raise c.ContractError(
            f"{data_dir}: interactions span no time (min {lo}, max {hi}); a time split needs "
            "events at different times. Set data.eval_cutoff explicitly to override."
        )
    return int(hi - config.eval_fraction * (hi - lo))


def clean_rows(table_name: str, batch: pa.Table) -> Iterator[dict]:
    """Rows of one batch that pass the contract's per-row checks, as plain dicts.

    Unknown ids and duplicates are resolved by the joins downstream; every dropped row was
    already written to the rejects file by the validator that runs before this pipeline.
    """
    typed, reasons = check_frame(table_name, batch.to_pandas(), check_refs=False)
    good = typed[reasons == ""]
    for row in good.to_dict("records"):
        yield {k: _plain(v) for k, v in row.items()}


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v


def _bytes(values: Iterable[str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode() for s in values]))


def _ints(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values: Iterable[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _s(v) -> str:
    return f.MISSING_STRING if v is None else str(v)


def _i(v) -> int:
    return f.MISSING_INT if v is None else int(v)


def candidate_features(item: dict) -> dict[str, tf.train.Feature]:
    return {
        f.ITEM_ID: _ints([item[c.ITEM_ID]]),
        f.GENRES: _bytes(item.get(c.GENRES) or []),
        f.CAST: _bytes(item.get(c.CAST) or []),
        f.KEYWORDS: _bytes(item.get(c.KEYWORDS) or []),
        f.DIRECTOR: _bytes([_s(item.get(c.DIRECTOR))]),
        f.TITLE: _bytes([_s(item.get(c.TITLE))]),
        f.RELEASE_YEAR: _ints([_i(item.get(c.RELEASE_YEAR))]),
        f.DURATION_SECONDS: _ints([_i(item.get(c.DURATION_SECONDS))]),
    }


def query_features(user: dict | None, timestamp: int, device: str, history: list[int]):
    user = user or {}
    return {
        f.USER_ID: _ints([_i(user.get(c.USER_ID))]),
        f.COUNTRY: _bytes([_s(user.get(c.COUNTRY))]),
        f.SUBSCRIPTION_TIER: _bytes([_s(user.get(c.SUBSCRIPTION_TIER))]),
        f.AGE_BUCKET: _bytes([_s(user.get(c.AGE_BUCKET))]),
        f.DEVICE: _bytes([_s(device)]),
        f.HOUR: _ints([f.hour_of_day(timestamp)]),
        f.DAY_OF_WEEK: _ints([f.day_of_week(timestamp)]),
        f.HISTORY: _ints(history),
    }


def catalogue_example(item: dict) -> tf.train.Example:
    feats = query_features(None, 0, f.MISSING_STRING, [])
    feats.update(candidate_features(item))
    feats[f.TIMESTAMP] = _ints([_i(item.get(c.ADDED_AT))])
    feats[f.WATCH_SECONDS] = _floats([0.0])
    return tf.train.Example(features=tf.train.Features(feature=feats))


class UserExamples(beam.DoFn):
    """Per user: sorts positive watches by (timestamp, item_id) and emits one example each."""

    def __init__(self, cutoff: int, history_length: int):
        super().__init__()
        self.cutoff = cutoff
        self.history_length = history_length
        self.examples = beam.metrics.Metrics.counter("marquee", "examples")

    def process(self, element, items: dict):
        _, grouped = element
        users = list(grouped["user"])
        if not users:  # interactions of an unknown user: already in the rejects file
            return
        user = users[0]
        watches = sorted(
            (w for w in grouped["watch"] if w[c.ITEM_ID] in items),
            key=lambda w: (w[c.TIMESTAMP], w[c.ITEM_ID]),
        )
        history: list[int] = []
        for w in watches:
            feats = query_features(user, w[c.TIMESTAMP], w[c.DEVICE], history)
            feats.update(candidate_features(items[w[c.ITEM_ID]]))
            feats[f.TIMESTAMP] = _ints([w[c.TIMESTAMP]])
            feats[f.WATCH_SECONDS] = _floats([w[c.WATCH_SECONDS]])
            example = tf.train.Example(features=tf.train.Features(feature=feats))
            split = TRAIN if w[c.TIMESTAMP] < self.cutoff else EVAL
            yield beam.pvalue.TaggedOutput(split, example)
            history.insert(0, w[c.ITEM_ID])
            del history[self.history_length:]


def _read(p: beam.Pipeline, data_dir: Path, table: str) -> beam.PCollection:
    pattern = [str(x) for x in c.table_files(data_dir, table)]
    return (
        p
        | f"List{table}" >> beam.Create(pattern)
        | f"Read{table}" >> beam.FlatMap(_read_file)
        | f"Clean{table}" >> beam.FlatMap(lambda t, name=table: clean_rows(name, t))
    )


def _read_file(path: str, batch_size: int = 65_536) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size):
        yield pa.Table.from_batches([batch])


def build_examples(
    p: beam.Pipeline, data_dir: str | Path, config: DataConfig, cutoff: int
) -> dict[str, beam.PCollection]:
    """Beam graph from the dataset folder to serialized tf.Examples per split."""
    data_dir = Path(data_dir)
    users = _read(p, data_dir, c.USERS) | "KeyUsers" >> beam.Map(lambda u: (u[c.USER_ID], u))
    items = _read(p, data_dir, c.ITEMS) | "KeyItems" >> beam.Map(lambda i: (i[c.ITEM_ID], i))
    min_ws = config.min_watch_seconds
    watches = (
        _read(p, data_dir, c.INTERACTIONS)
        | "Positives" >> beam.Filter(
            lambda e: e[c.EVENT] == c.EVENT_WATCH and e[c.WATCH_SECONDS] >= min_ws)
        | "KeyWatches" >> beam.Map(lambda e: (e[c.USER_ID], e))
    )
    per_split = (
        {"user": users, "watch": watches}
        | "GroupByUser" >> beam.CoGroupByKey()
        | "UserExamples" >> beam.ParDo(
            UserExamples(cutoff, config.history_length), items=beam.pvalue.AsDict(items)
        ).with_outputs(TRAIN, EVAL)
    )
    catalogue = items | "CatalogueExamples" >> beam.Map(lambda kv: catalogue_example(kv[1]))
    out = {TRAIN: per_split[TRAIN], EVAL: per_split[EVAL], CATALOGUE: catalogue}
    return {
        split: pcoll | f"Serialize{split}" >> beam.Map(lambda e: e.SerializeToString())
        for split, pcoll in out.items()
    }
