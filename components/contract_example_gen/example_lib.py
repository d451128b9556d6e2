"""Turns a contract dataset into retrieval and ranking tf.Examples, split by time, with Beam.

Retrieval (splits ``train`` / ``eval``): one example per positive watch
(``watch_seconds >= DataConfig.min_watch_seconds``), carrying the user's features, the context
(hour, day of week, device), the user's previous positive watches (``history``, most recent
first, at most ``history_length``) and the item's features. Examples with ``timestamp < cutoff``
go to the train split, the rest to eval: evaluation never sees the future, and an eval
example's history may include train-period watches, exactly as at serving time.

``catalogue`` holds one example per item with the candidate features only (query features
empty); the indexer embeds it.

Ranking (``rank_train`` / ``rank_eval``): every watch plus sampled negatives (impressions never
watched, random catalogue items); see :func:`user_examples`. All splits share one feature set,
so one schema and one Transform graph serve both models.

The contract's checks run in the same graph (``validate_lib``): rows are checked per batch, a
title's duplicates where titles are grouped by id, a user's duplicates and the events of unknown
users or titles where a user shard's rows meet.

Memory: interactions are grouped per user shard (one user's events in one worker), packed;
items are a side input (the catalogue fits in a worker: 500K items is a few hundred MB).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
import tensorflow as tf

from components.contract_example_gen import validate_lib as v
from marquee.config import Config, DataConfig, RankingConfig
from marquee.data import contract as c
from trainer import features as f

TRAIN = "train"
EVAL = "eval"
CATALOGUE = "catalogue"
RANK_TRAIN = "rank_train"
RANK_EVAL = "rank_eval"
USER_SPLITS = (TRAIN, EVAL, RANK_TRAIN, RANK_EVAL)
SPLITS = (TRAIN, EVAL, CATALOGUE, RANK_TRAIN, RANK_EVAL)


def time_cutoff(data_dir: str | Path, config: DataConfig) -> int:
    """The eval cutoff in UTC seconds: fixed in config, or the last ``eval_fraction`` of the span.

    Reads only the Parquet footers' min/max statistics, not the data. ``data_dir`` may be a URI.
    """
    if config.eval_cutoff is not None:
        return int(config.eval_cutoff)
    lo, hi = None, None
    for path in c.table_files(data_dir, c.INTERACTIONS):
        pf = c.open_parquet(path)
        meta = pf.metadata
        col = meta.schema.names.index(c.TIMESTAMP)
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(col).statistics
            if stats is None or not stats.has_min_max:
                table = pf.read(columns=[c.TIMESTAMP])
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
    feats = {
        f.ITEM_ID: _ints([item[c.ITEM_ID]]),
        f.GENRES: _bytes(item.get(c.GENRES) or []),
        f.CAST: _bytes(item.get(c.CAST) or []),
        f.KEYWORDS: _bytes(item.get(c.KEYWORDS) or []),
        f.DIRECTOR: _bytes([_s(item.get(c.DIRECTOR))]),
        f.TITLE: _bytes([_s(item.get(c.TITLE))]),
        f.DURATION_SECONDS: _ints([_i(item.get(c.DURATION_SECONDS))]),
    }
    # An unknown year is left out rather than written as a number: a year 0 among 1920-2024
    # would stretch StatisticsGen's histogram over 0-2024, which makes the drift and skew
    # checks of release_year blind to real shifts and alarm when one side lacks such a title.
    # Transform reads the absence as missing (trainer.preprocessing), as it read 0 before.
    if item.get(c.RELEASE_YEAR) is not None:
        feats[f.RELEASE_YEAR] = _ints([int(item[c.RELEASE_YEAR])])
    return feats


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
    feats[f.POSITION] = _ints([f.MISSING_INT])
    return tf.train.Example(features=tf.train.Features(feature=feats))


def _example(user: dict, event: dict, item: dict, history: list[int], watch_seconds: float,
             position: int | None) -> tf.train.Example:
    feats = query_features(user, event[c.TIMESTAMP], event[c.DEVICE], history)
    feats.update(candidate_features(item))
    feats[f.TIMESTAMP] = _ints([event[c.TIMESTAMP]])
    feats[f.WATCH_SECONDS] = _floats([watch_seconds])
    feats[f.POSITION] = _ints([_i(position)])
    return tf.train.Example(features=tf.train.Features(feature=feats))


# ----------------------------------------------------------------------------- encoding
# The ExampleGen writes ~6 examples per interaction (retrieval, ranking, negatives), and
# building each as a tf.train.Example object dominated its time (ML100K: 52 s of Python for
# 600K examples, 12 s more to serialize them). A serialized Features message is the
# concatenation of its map entries, so an example is written as bytes from three parts: the
# title's features (encoded once per title), the user's (once per user) and the event's.


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _BYTE[n]
    n &= (1 << 64) - 1  # int64 as protobuf writes it: two's complement, 10 bytes if negative
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(256)]


def _field(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return _BYTE[tag] + _varint(n) + payload


def _entry(key: str, feature: bytes) -> bytes:
    """One ``Features.feature`` map entry: key (field 1) and Feature (field 2)."""
    return _field(0x0A, _field(0x0A, key.encode()) + _field(0x12, feature))


def _int_entry(key: str, values) -> bytes:  # Feature.int64_list (3), packed values (1)
    return _entry(key, _field(0x1A, _field(0x0A, b"".join(_varint(int(v)) for v in values))
                              if len(values) else b""))


def _float_entry(key: str, value: float) -> bytes:  # Feature.float_list (2), packed (1)
    return _entry(key, _field(0x12, _field(0x0A, struct.pack("<f", value))))


def _bytes_entry(key: str, values) -> bytes:  # Feature.bytes_list (1), values (1)
    return _entry(key, _field(0x0A, b"".join(_field(0x0A, v.encode()) for v in values)))


class ExampleEncoder:
    """Serialized tf.Examples with the features of :func:`_example` (the same message, parsed),
    from cached parts: each title's candidate features and each user's profile features are
    encoded once."""

    # ids whose varints are kept (the titles of the histories); beyond it, encoded each time
    MAX_CACHED_VARINTS = 1 << 20

    def __init__(self):
        self._items: dict[int, bytes] = {}
        self._users: dict[int, bytes] = {}
        self._small: dict[tuple[str, object], bytes] = {}  # hour, day, device, position entries
        self._varints: dict[int, bytes] = {}
        self._history: list[int] | None = None  # the last history and its entry: a positive's
        self._history_entry = b""  # examples (retrieval, ranking, random negatives) share it

    def _entry_of(self, key: str, value, make) -> bytes:
        part = self._small.get((key, value))
        if part is None:
            part = self._small[key, value] = make(key, [value])
        return part

    def _history_part(self, history: list[int]) -> bytes:
        if history is self._history:
            return self._history_entry
        cache = self._varints
        out = []
        for item in history:
            b = cache.get(item)
            if b is None:
                b = _varint(int(item))
                if len(cache) < self.MAX_CACHED_VARINTS:
                    cache[item] = b
            out.append(b)
        packed = b"".join(out)
        entry = _entry(f.HISTORY, _field(0x1A, _field(0x0A, packed) if history else b""))
        self._history, self._history_entry = history, entry
        return entry

    def _item(self, item: dict) -> bytes:
        part = self._items.get(item[c.ITEM_ID])
        if part is None:
            part = tf.train.Features(feature=candidate_features(item)).SerializeToString()
            self._items[item[c.ITEM_ID]] = part
        return part

    def _user(self, user: dict | None) -> bytes:
        key = (user or {}).get(c.USER_ID)
        part = self._users.get(key)
        if part is None:
            user = user or {}
            part = (_int_entry(f.USER_ID, [_i(user.get(c.USER_ID))])
                    + _bytes_entry(f.COUNTRY, [_s(user.get(c.COUNTRY))])
                    + _bytes_entry(f.SUBSCRIPTION_TIER, [_s(user.get(c.SUBSCRIPTION_TIER))])
                    + _bytes_entry(f.AGE_BUCKET, [_s(user.get(c.AGE_BUCKET))]))
            self._users[key] = part
        return part

    def __call__(self, user: dict, event: dict, item: dict, history: list[int],
                 watch_seconds: float, position: int | None) -> bytes:
        ts = event[c.TIMESTAMP]
        small = self._entry_of
        body = b"".join((
            self._user(user), small(f.DEVICE, _s(event[c.DEVICE]), _bytes_entry),
            small(f.HOUR, f.hour_of_day(ts), _int_entry),
            small(f.DAY_OF_WEEK, f.day_of_week(ts), _int_entry),
            self._history_part(history), self._item(item), _int_entry(f.TIMESTAMP, [ts]),
            _float_entry(f.WATCH_SECONDS, watch_seconds),
            small(f.POSITION, _i(position), _int_entry)))
        return _field(0x0A, body)


def is_ranking_positive(event: dict, ranking: RankingConfig) -> bool:
    """The ranker's label rule (``trainer.ranking.labels``) on a contract event: a watch of at
    least ``ranking.min_watch_seconds`` and more than 0 seconds."""
    seconds = event.get(c.WATCH_SECONDS) or 0.0
    return (event[c.EVENT] == c.EVENT_WATCH and seconds >= ranking.min_watch_seconds
            and seconds > 0)


def negative_cdf(item_ids: np.ndarray, positives: dict[int, int],
                 exponent: float) -> np.ndarray | None:
    """Cumulative distribution ``[I]`` over ``item_ids`` for the random negatives:
    P(item) proportional to (its train-period positives + 1) ** ``exponent``; None for exponent
    0 (uniform, drawn directly)."""
    if exponent == 0:
        return None
    w = (np.array([positives.get(int(i), 0) for i in item_ids.tolist()], np.float64) + 1.0)
    cdf = np.cumsum(w ** exponent)
    return cdf / cdf[-1]


def user_examples(
    user: dict, events: list[dict], items: dict, item_ids: np.ndarray, cutoff: int,
    data: DataConfig, ranking: RankingConfig, item_cdf: np.ndarray | None = None,
    make=None,
) -> Iterator[tuple[str, tf.train.Example | bytes]]:
    """All examples of one user, as (split, example): a tf.train.Example, or what ``make``
    returns from :func:`_example`'s arguments (an :class:`ExampleEncoder`: its bytes).

    Retrieval (TRAIN / EVAL): one per positive watch (``watch_seconds >= data.min_watch_seconds``)
    with the user's earlier positives as ``history``.

    Ranking (RANK_TRAIN / RANK_EVAL): every watch, labelled by its watch time (a watch of at
    least ``ranking.min_watch_seconds``, by default two minutes, is a positive; a shorter one is
    a real negative), plus, per positive,
    ``ranking.negatives_per_positive`` negatives: a ``impression_negative_share`` of them from
    items shown to the user that the user never watched past two minutes (each with its own
    logged time, device and position), the rest (and any shortfall) random catalogue items the
    user never watched, available at the positive's time, at position 0 (unknown): uniform, or
    by ``item_cdf`` (:func:`negative_cdf`) when given. Sampling is seeded by (ranking.seed, user
    id), so the examples are reproducible.
    """
    make = make or _example
    events = sorted((e for e in events if e[c.ITEM_ID] in items),
                    key=lambda e: (e[c.TIMESTAMP], e[c.ITEM_ID], e[c.EVENT]))
    watched = [e for e in events if e[c.EVENT] == c.EVENT_WATCH]
    positives = {e[c.ITEM_ID] for e in watched if is_ranking_positive(e, ranking)}
    ever_watched = {e[c.ITEM_ID] for e in watched}
    pool: dict[int, dict] = {}
    for e in events:
        if e[c.EVENT] == c.EVENT_IMPRESSION and e[c.ITEM_ID] not in positives:
            pool.setdefault(e[c.ITEM_ID], e)
    rng = np.random.default_rng([ranking.seed, int(user[c.USER_ID]) & 0x7FFFFFFF])
    pool_order = list(pool)
    rng.shuffle(pool_order)

    def split_of(ts: int, train: str, eval_: str) -> str:
        return train if ts < cutoff else eval_

    # History of positive watches (by the retrieval threshold) before each moment.
    hist_times = [e[c.TIMESTAMP] for e in watched if e[c.WATCH_SECONDS] >= data.min_watch_seconds]
    hist_items = [e[c.ITEM_ID] for e in watched if e[c.WATCH_SECONDS] >= data.min_watch_seconds]

    def history_before(ts: int, item: int | None = None) -> list[int]:
        # Positives strictly earlier, plus same-second ones ordered before (by item id): the
        # (timestamp, item_id) order of the events. Most recent first.
        j = bisect.bisect_left(hist_times, ts)
        while (item is not None and j < len(hist_times) and hist_times[j] == ts
               and hist_items[j] < item):
            j += 1
        return hist_items[max(0, j - data.history_length):j][::-1]

    ratio = ranking.negatives_per_positive
    n_imp = int(round(ratio * ranking.impression_negative_share))
    for w in watched:
        ts, item = w[c.TIMESTAMP], w[c.ITEM_ID]
        hist = history_before(ts, item)
        if w[c.WATCH_SECONDS] >= data.min_watch_seconds:
            yield split_of(ts, TRAIN, EVAL), make(
                user, w, items[item], hist, w[c.WATCH_SECONDS], w.get(c.POSITION))
        yield split_of(ts, RANK_TRAIN, RANK_EVAL), make(
            user, w, items[item], hist, w[c.WATCH_SECONDS], w.get(c.POSITION))
        if not is_ranking_positive(w, ranking):
            continue
        n_random = ratio
        for _ in range(min(n_imp, len(pool_order))):
            imp = pool[pool_order.pop()]
            n_random -= 1
            yield split_of(imp[c.TIMESTAMP], RANK_TRAIN, RANK_EVAL), make(
                user, imp, items[imp[c.ITEM_ID]], history_before(imp[c.TIMESTAMP]), 0.0,
                imp.get(c.POSITION))
        tries = 0
        while n_random > 0 and tries < 20 * ratio:
            tries += 1
            cand = int(item_ids[rng.integers(len(item_ids)) if item_cdf is None else
                                min(int(np.searchsorted(item_cdf, rng.random(), side="right")),
                                    len(item_ids) - 1)])
            if cand in ever_watched or items[cand].get(c.ADDED_AT, 0) > ts:
                continue
            n_random -= 1
            yield split_of(ts, RANK_TRAIN, RANK_EVAL), make(
                user, w, items[cand], hist, 0.0, None)


class UserExamples(beam.DoFn):
    """Per user shard: the users' and their events' checks that need both (a duplicate user
    row, an event of an unknown user or title: ``rejects`` records), then
    :func:`user_examples` of each user, as tagged outputs per split."""

    def __init__(self, cutoff: int, data: DataConfig, ranking: RankingConfig,
                 user_files: tuple[str, ...], event_files: tuple[str, ...]):
        super().__init__()
        self.cutoff, self.data, self.ranking = cutoff, data, ranking
        self.user_files, self.event_files = user_files, event_files
        self._ids_for = None
        self._item_ids = None
        self._cdf = None
        self._encode: ExampleEncoder | None = None

    def process(self, element, items: dict, popularity: dict | None = None):
        _, grouped = element
        if self._ids_for != id(items):  # the side inputs' arrays, built once per worker
            self._item_ids = np.array(sorted(items), np.int64)
            self._cdf = negative_cdf(self._item_ids, popularity or {},
                                     self.ranking.random_negative_popularity_exponent)
            self._ids_for = id(items)
            self._encode = ExampleEncoder()
        rows_of: dict[int, list] = {}
        parts = []
        for kind, payload in grouped:
            if kind == v.EVENTS:
                parts.append(payload)
            elif kind == v.EVENTS_FILE:
                parts.append(v.read_spill(payload))
            else:
                rows_of.setdefault(payload[2][c.USER_ID], []).append(payload)
        yield beam.pvalue.TaggedOutput(v.STATS, ((c.USERS, v.ARRIVED, ""),
                                                 sum(map(len, rows_of.values()))))
        users = {}
        for uid, rows in rows_of.items():
            users[uid], rejects = v.first_rows(rows, c.USERS, self.user_files, c.USER_ID)
            for r in rejects:
                yield beam.pvalue.TaggedOutput(v.REJECTS, r)
        events = v.unpack_events(parts)
        yield beam.pvalue.TaggedOutput(v.STATS, ((c.INTERACTIONS, v.ARRIVED, ""), len(events)))
        known_item = np.isin(events["item"], self._item_ids)
        uids, starts = np.unique(events["user"], return_index=True)
        for uid, part, known in zip(uids.tolist(), np.split(events, starts[1:]),
                                    np.split(known_item, starts[1:]), strict=True):
            user = users.get(uid)
            bad = np.ones(len(part), bool) if user is None else ~known
            for e in part[bad]:
                reason = (f"{c.USER_ID}: {uid} is not in users" if user is None
                          else f"{c.ITEM_ID}: {int(e['item'])} is not in items")
                yield beam.pvalue.TaggedOutput(
                    v.REJECTS, (c.INTERACTIONS, self.event_files[e["file"]], int(e["row"]),
                                reason))
            if user is None or bad.all():
                continue
            for split, example in user_examples(user, v.event_dicts(part[~bad]), items,
                                                self._item_ids, self.cutoff, self.data,
                                                self.ranking, self._cdf, self._encode):
                yield beam.pvalue.TaggedOutput(split, example)


def build_examples(
    p: beam.Pipeline, plans: dict[str, v.TablePlan], config: Config, cutoff: int,
    shards: int | None = None, spill_dir: str | None = None,
) -> dict[str, beam.PCollection]:
    """Beam graph from the dataset's files (``validate_lib.plan_tables``) to serialized
    tf.Examples per split, plus the validation's ``rejects`` records and ``stats`` counts.
    ``shards``: user shards of the grouping (default ``validate_lib.shard_count``).
    ``spill_dir``: where the packed events wait for their shard (files, deleted by the caller
    after the run); only their paths cross the shuffle. None sends the events themselves."""
    shards = shards or v.shard_count(plans[c.INTERACTIONS].rows)
    exponent = config.ranking.random_negative_popularity_exponent
    checked = v.read_units(p, plans) | "CheckBatches" >> beam.ParDo(v.CheckBatch(
        plans, shards, cutoff if exponent != 0 else None, config.ranking.min_watch_seconds,
        spill_dir)).with_outputs(v.ITEMS, v.REJECTS, v.STATS, v.POSITIVES, main="by_user")
    items = (checked[v.ITEMS] | "GroupItemIds" >> beam.GroupByKey()
             | "FirstItem" >> beam.ParDo(v.FirstItem(plans[c.ITEMS].files)).with_outputs(
                 v.REJECTS, v.STATS, main="items"))
    side = {"items": beam.pvalue.AsDict(items.items)}
    if exponent != 0:
        # train-period ranking positives per item: the random negatives' sampling weights
        side["popularity"] = beam.pvalue.AsDict(
            checked[v.POSITIVES] | "CountPositives" >> beam.CombinePerKey(sum))
    per_split = (
        checked.by_user
        | "GroupByUserShard" >> beam.GroupByKey()
        | "UserExamples" >> beam.ParDo(
            UserExamples(cutoff, config.data, config.ranking, plans[c.USERS].files,
                         plans[c.INTERACTIONS].files), **side
        ).with_outputs(v.REJECTS, v.STATS, *USER_SPLITS)
    )
    catalogue = items.items | "CatalogueExamples" >> beam.Map(
        lambda kv: catalogue_example(kv[1]).SerializeToString())
    out = {split: per_split[split] for split in USER_SPLITS}  # serialized by ExampleEncoder
    out[CATALOGUE] = catalogue
    rejects = ([checked[v.REJECTS], items[v.REJECTS], per_split[v.REJECTS]]
               | "FlattenRejects" >> beam.Flatten())
    out[v.REJECTS] = rejects
    out[v.STATS] = v.stats_lines([checked[v.STATS], items[v.STATS], per_split[v.STATS],
                                  v.stats_of_rejects(rejects)])
    return out
