"""ContractExampleGen's validation in Beam against the single-process validator, and its
examples against ``user_examples`` called directly on the validator's clean rows.

The dataset spreads every kind of cross-row problem over files and row groups, where a Beam
worker sees one batch at a time: a user duplicated across files, a title duplicated across row
groups, a rejected user whose events then point at nobody, events of unknown users and titles
(one of both: the user is named, as the validator does), and per-row problems.
"""

from __future__ import annotations

import ast
import csv
import glob
import os

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from components.contract_example_gen import example_lib, validate_lib
from components.contract_example_gen.executor import check_rejects, write_examples
from marquee.config import from_dict
from marquee.data import contract as c
from marquee.data.validate import TooManyRejects, load_dataset, validate_dataset

T0 = 1_700_000_000
DAY = 86_400


def _users(ids, tiers=None):
    n = len(ids)
    return {c.USER_ID: ids, c.SIGNUP_AT: [T0 - DAY] * n, c.COUNTRY: ["US"] * n,
            c.SUBSCRIPTION_TIER: tiers or ["basic"] * n, c.AGE_BUCKET: ["25-34"] * n,
            c.ONBOARDING_GENRES: [None] * n}


def _items(ids, durations=None):
    n = len(ids)
    return {c.ITEM_ID: ids, c.TITLE: [f"T{i}" for i in ids], c.GENRES: [["drama"]] * n,
            c.CAST: [[]] * n, c.DIRECTOR: [None] * n, c.RELEASE_YEAR: [2001] * n,
            c.DURATION_SECONDS: durations or [5400] * n, c.ADDED_AT: [T0 - 2 * DAY] * n,
            c.MATURITY_RATING: ["PG"] * n}


def _events(rng, n, users, items):
    watch = rng.random(n) < 0.4
    return {c.USER_ID: rng.choice(users, n).tolist(), c.ITEM_ID: rng.choice(items, n).tolist(),
            c.TIMESTAMP: (T0 + rng.integers(0, 10 * DAY, n)).tolist(),
            c.EVENT: np.where(watch, "watch", "impression").tolist(),
            c.POSITION: [None if i % 7 == 0 else 1 + i % 20 for i in range(n)],
            c.WATCH_SECONDS: np.where(watch, rng.choice([30.0, 200.0, 3000.0], n), 0.0).tolist(),
            c.DEVICE: rng.choice(c.DEVICES, n).tolist(), c.RATING: [None] * n}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam-contract")
    rng = np.random.default_rng(3)
    (root / c.USERS).mkdir()
    (root / c.INTERACTIONS).mkdir()
    # users 1..40 in two files; user 7 again in the second file (a duplicate); user 9 has a
    # bad tier (rejected, so its events point at nobody)
    with c.TableWriter(root / c.USERS / "part-0.parquet", c.USERS) as w:
        w.write(_users(list(range(1, 21)), ["basic"] * 8 + ["gold"] + ["basic"] * 11))
    with c.TableWriter(root / c.USERS / "part-1.parquet", c.USERS) as w:
        w.write(_users([7] + list(range(21, 41))))
    # titles 100..159 in three row groups; 105 again in the third group; 110 has a bad duration
    with c.TableWriter(root / "items.parquet", c.ITEMS) as w:
        w.write(_items(list(range(100, 130)), [5400] * 10 + [-1] + [5400] * 19))
        w.write(_items(list(range(130, 150))))
        w.write(_items([105] + list(range(150, 160))))
    # 3,000 events in two files, several row groups each; ids 41-42 and 160-161 are unknown
    users, items = list(range(1, 43)), list(range(100, 162))
    for part in range(2):
        with c.TableWriter(root / c.INTERACTIONS / f"part-{part}.parquet", c.INTERACTIONS) as w:
            for _ in range(3):
                w.write(_events(rng, 500, users, items))
            bad = _events(rng, 4, users, items)
            bad[c.WATCH_SECONDS] = [-5.0, 10.0, 0.0, 0.0]
            bad[c.EVENT] = ["watch", "impression", "impression", "impression"]
            bad[c.DEVICE] = ["tv", "tv", "toaster", "tv"]
            bad[c.USER_ID][3], bad[c.ITEM_ID][3] = 41, 160  # both unknown: the user is named
            w.write(bad)
    return root


CONFIG = from_dict({"data": {"max_bad_share": 0.5, "eval_cutoff": T0 + 7 * DAY}})


@pytest.fixture(scope="module")
def beam_run(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("beam-out"))
    with beam.Pipeline() as p:
        info = write_examples(p, str(dataset), CONFIG, out)
    # and with several user shards (the default is 1 shard per 100K events)
    out3 = str(tmp_path_factory.mktemp("beam-out3"))
    plans = validate_lib.plan_tables(str(dataset))
    with beam.Pipeline() as p:
        outputs = example_lib.build_examples(p, plans, CONFIG, CONFIG.data.eval_cutoff, shards=3)
        for split in (*example_lib.SPLITS, validate_lib.REJECTS):  # as Python literals
            _ = (outputs[split] | f"Repr{split}" >> beam.Map(repr)
                 | f"Write{split}" >> beam.io.WriteToText(os.path.join(out3, split)))
    return out, info, out3


def _reference_rejects(dataset, tmp_path):
    report = validate_dataset(dataset, 0.5, tmp_path / "ref.csv")
    with open(tmp_path / "ref.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    return report, sorted((t, f, int(r), reason) for t, f, r, reason in rows)


def _beam_rejects(out):
    rows = []
    for shard in sorted(glob.glob(os.path.join(out, validate_lib.REJECTS_DIR, "rejects-*.csv"))):
        with open(shard) as fh:
            lines = list(csv.reader(fh))
        assert lines[0] == validate_lib.REJECTS_HEADER.split(",")
        rows += [(t, f, int(r), reason) for t, f, r, reason in lines[1:]]
    return sorted(rows)


def test_rejects_and_counts_equal_the_single_process_validator(dataset, beam_run, tmp_path):
    out, info, _ = beam_run
    report, expected = _reference_rejects(dataset, tmp_path)
    got = _beam_rejects(out)
    assert got == expected
    reasons = {r[3] for r in got}
    assert {"user_id: 7 is a duplicate (an earlier row has it)",
            "item_id: 105 is a duplicate (an earlier row has it)",
            "user_id: 41 is not in users", "item_id: 160 is not in items",
            "user_id: 9 is not in users"} <= reasons
    beam_report = check_rejects(info, str(dataset), CONFIG, out)
    assert not os.path.exists(os.path.join(out, "_spill"))  # the events' spill files are gone
    for t in c.TABLES:
        ref, new = report.tables[t], beam_report.tables[t]
        assert (new.rows, new.rejected, dict(new.reasons)) == (
            ref.rows, ref.rejected, dict(ref.reasons)), t
    assert beam_report.tables[c.INTERACTIONS].rows == 3008
    assert beam_report.summary().splitlines()[1:-2] == report.summary().splitlines()[1:-2]


def test_over_the_limit_stops_with_the_validators_message(dataset, beam_run, tmp_path):
    out, info, _ = beam_run
    strict = from_dict({"data": {"max_bad_share": 0.001}})
    with pytest.raises(TooManyRejects) as failed:
        check_rejects(info, str(dataset), strict, out)
    message = str(failed.value)
    assert "<-- over the limit" in message and "FAILED: the limit is 0.10%" in message
    assert f"rejected rows with file, row and reason: {out}/rejects/" in message


def _examples(pattern):
    files = glob.glob(pattern)
    assert files, pattern
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return sorted(tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
                  for r in ds)


def _reference_examples(dataset):
    """``user_examples`` per user on the validator's clean rows (``load_dataset``)."""
    data = load_dataset(dataset, 0.5, os.path.join(dataset, "_ref_rejects.csv"))
    items = {int(r[c.ITEM_ID]): {k: validate_lib.plain(v) for k, v in r.items()}
             for r in data.items.to_dict("records")}
    item_ids = np.array(sorted(items), np.int64)
    events = data.interactions.to_dict("records")
    out = {s: [] for s in example_lib.USER_SPLITS}
    for user in data.users.to_dict("records"):
        user = {k: validate_lib.plain(v) for k, v in user.items()}
        mine = [{k: validate_lib.plain(v) for k, v in e.items()} for e in events
                if e[c.USER_ID] == user[c.USER_ID]]
        for split, ex in example_lib.user_examples(
                user, mine, items, item_ids, CONFIG.data.eval_cutoff, CONFIG.data,
                CONFIG.ranking):
            out[split].append(ex.SerializeToString(deterministic=True))
    out[example_lib.CATALOGUE] = [example_lib.catalogue_example(i).SerializeToString(
        deterministic=True) for i in items.values()]
    return {s: sorted(v) for s, v in out.items()}


def test_examples_equal_user_examples_on_the_clean_rows(dataset, beam_run):
    out, _, _ = beam_run
    expected = _reference_examples(str(dataset))
    for split in example_lib.SPLITS:
        got = _examples(os.path.join(out, f"Split-{split}", "*.gz"))
        assert len(got) == len(expected[split]) > 0, split
        assert got == expected[split], split


def test_the_user_shard_count_changes_nothing(beam_run):
    out, _, out3 = beam_run

    def lines(split):
        return sorted(line for f in glob.glob(os.path.join(out3, split + "*"))
                      for line in open(f).read().splitlines())

    for split in example_lib.USER_SPLITS:
        got = sorted(tf.train.Example.FromString(ast.literal_eval(line)).SerializeToString(
            deterministic=True) for line in lines(split))
        assert got == _examples(os.path.join(out, f"Split-{split}", "*.gz")), split
    rejects = sorted(tuple(ast.literal_eval(line)) for line in lines(validate_lib.REJECTS))
    assert rejects == _beam_rejects(out)


def test_file_level_problems_stop_before_the_pipeline(tmp_path):
    c.write_table(tmp_path, c.USERS, _users([1]))
    c.write_table(tmp_path, c.ITEMS, _items([100]))
    with pytest.raises(c.ContractError, match="no interactions table"):
        validate_lib.plan_tables(str(tmp_path))
    x = _events(np.random.default_rng(0), 3, [1], [100])
    del x[c.DEVICE]
    pq.write_table(pa.Table.from_pydict(x), tmp_path / "interactions.parquet")
    with pytest.raises(c.ContractError, match=r"interactions.parquet: interactions: missing "
                                              r"column\(s\) device"):
        validate_lib.plan_tables(str(tmp_path))
    with c.TableWriter(tmp_path / "interactions.parquet", c.INTERACTIONS) as w:
        w.write(_events(np.random.default_rng(0), 0, [1], [100]))
    with pytest.raises(c.ContractError, match="has no rows; interactions needs at least one"):
        validate_lib.plan_tables(str(tmp_path))


def test_packed_events_round_trip():
    typed = pd.DataFrame({c.USER_ID: [5, 3], c.ITEM_ID: [10, 11], c.TIMESTAMP: [T0, T0 + 1],
                          c.WATCH_SECONDS: [0.0, 250.5], c.POSITION: [np.nan, 4.0],
                          c.EVENT: ["impression", "watch"], c.DEVICE: ["web", "tv"]})
    packed = validate_lib.pack_events(typed, np.array([7, 9]), 2)
    assert validate_lib.EVENT_DTYPE.itemsize == 50
    back = validate_lib.unpack_events([packed[:1].tobytes(), packed[1:].tobytes()])
    assert back["user"].tolist() == [3, 5]  # ordered by user
    assert validate_lib.event_dicts(back) == [
        {c.ITEM_ID: 11, c.TIMESTAMP: T0 + 1, c.WATCH_SECONDS: 250.5, c.POSITION: 4,
         c.EVENT: "watch", c.DEVICE: "tv"},
        {c.ITEM_ID: 10, c.TIMESTAMP: T0, c.WATCH_SECONDS: 0.0, c.POSITION: None,
         c.EVENT: "impression", c.DEVICE: "web"}]
    assert (back["file"].tolist(), back["row"].tolist()) == ([2, 2], [9, 7])
    assert validate_lib.ranking_positives(back, 120.0).tolist() == [True, False]


def test_a_grouping_step_that_lost_records_fails_the_run(dataset):
    plans = validate_lib.plan_tables(str(dataset))
    lines = ['["interactions", "rows", "", 10]', '["interactions", "sent", "", 10]',
             '["interactions", "arrived", "", 7]']
    with pytest.raises(validate_lib.RecordsLost,
                       match="interactions: 10 clean rows were sent to the grouping step but 7 "
                             "arrived"):
        validate_lib.report_from_stats(lines, plans, str(dataset), "rejects/", 0.01)
    ok = validate_lib.report_from_stats(lines[:2] + ['["interactions", "arrived", "", 10]'],
                                        plans, str(dataset), "rejects/", 0.01)
    assert ok.tables[c.INTERACTIONS].rows == 10 and ok.ok
