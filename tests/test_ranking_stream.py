"""The ranking trainer's first pass over a streamed split, on hand-checkable numbers (fast: a
tiny TFRecord file, no towers; the streamed batches themselves are checked against the
in-memory ones on real towers in tests/test_pipeline_e2e.py)."""

import numpy as np
import pytest
import tensorflow as tf

from marquee.config import RankingConfig
from trainer import features as f
from trainer import ranking
from trainer.ranking import (
    ItemCounts,
    RankingRecords,
    TimeHistogram,
    scan_split,
    validation_cutoff,
)

# item, watch seconds, timestamp; positives: watched >= 120 s
ROWS = [(5, 600.0, 100), (7, 0.0, 101), (5, 30.0, 102), (9, 120.0, 103), (7, 200.0, 104),
        (5, 0.0, 105), (9, 0.0, 106), (5, 500.0, 107), (7, 0.0, 108), (9, 119.0, 109),
        (5, 0.0, 110), (11, 300.0, 111)]


def _write(path, rows):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for item, seconds, ts in rows:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                f.ITEM_ID: tf.train.Feature(int64_list=tf.train.Int64List(value=[item])),
                f.WATCH_SECONDS: tf.train.Feature(float_list=tf.train.FloatList(value=[seconds])),
                f.TIMESTAMP: tf.train.Feature(int64_list=tf.train.Int64List(value=[ts])),
            })).SerializeToString())


def test_validation_cutoff_by_hand():
    ts = np.arange(100, 112)
    # by the second: 10% of 12 rows is 1.2, so the latest boundary with >= 1.2 rows after it
    # is 110 (110 and 111)
    assert validation_cutoff(ts, 0.1, resolution=1) == 110
    assert validation_cutoff(ts, 0.0, resolution=1) is None
    assert validation_cutoff(ts[:9], 0.1, resolution=1) is None  # under 10 rows
    assert validation_cutoff(np.full(12, 5), 0.1, resolution=1) is None  # all on one side
    # by the hour: rows at 0:10, 0:50 (x7), 1:20 (x3) and 2:05; 10% of 12 = 1.2 rows: the 2:00
    # boundary has 1 after it, 1:00 has 4 -> 1:00 (3600), 4 rows validate
    hours = np.array([600] + [3000] * 7 + [4800] * 3 + [7500])
    times = TimeHistogram.of(hours)
    assert times.bins.tolist() == [0, 1, 2] and times.rows.tolist() == [8, 3, 1]
    assert times.cutoff(0.1) == 3600 and times.at_or_after(3600) == 4
    assert times.cutoff(0.5) is None  # only the first hour's boundary has half: everything
    # merged chunk by chunk, the same histogram
    merged = TimeHistogram.of(hours[:5]).merge(TimeHistogram.of(hours[5:]))
    assert (merged.bins.tolist(), merged.rows.tolist()) == ([0, 1, 2], [8, 3, 1])


def test_item_counts_merge_by_hand():
    a = ItemCounts.fit(np.array([5, 7, 5]), np.array([1.0, 0.0, 0.0]))
    b = ItemCounts.fit(np.array([9, 5]), np.array([1.0, 1.0]))
    m = a.merge(b)
    np.testing.assert_array_equal(m.ids, [5, 7, 9])
    np.testing.assert_array_equal(m.positives, [2, 0, 1])
    np.testing.assert_array_equal(m.examples, [3, 1, 1])


def test_scan_of_the_files_in_chunks_equals_the_in_memory_one(tmp_path, monkeypatch):
    hourly = [(i, w, t * 3600) for i, w, t in ROWS]  # the cutoff falls on a whole hour
    _write(tmp_path / "part-0.gz", hourly[:7])
    _write(tmp_path / "part-1.gz", hourly[7:])
    monkeypatch.setattr(ranking, "SCAN_CHUNK", 5)  # 3 chunks, items spread over them
    cfg = RankingConfig(validation_share=0.1)
    streamed = scan_split(RankingRecords((str(tmp_path / "part-*.gz"),), "unused"), cfg)
    items, seconds, ts = (np.array(c) for c in zip(*hourly, strict=True))
    in_memory = scan_split({f.ITEM_ID: items, f.WATCH_SECONDS: seconds, f.TIMESTAMP: ts}, cfg)
    for split in (streamed, in_memory):
        assert (split.cutoff, split.fit_examples, split.validation_examples) == (
            110 * 3600, 10, 2)
        np.testing.assert_array_equal(split.counts.ids, [5, 7, 9, 11])
        # positives (>= 120 s): item 5 600 and 500, item 7 200, item 9 120, item 11 300
        np.testing.assert_array_equal(split.counts.positives, [2, 1, 1, 1])
        np.testing.assert_array_equal(split.counts.examples, [5, 3, 3, 1])
        assert split.counts.global_rate == pytest.approx(5 / 12)


def test_streamed_rows_fall_on_their_side_of_the_cutoff(tmp_path, monkeypatch):
    _write(tmp_path / "part-0.gz", ROWS)
    monkeypatch.setattr(ranking, "SCAN_CHUNK", 5)
    source = RankingRecords((str(tmp_path / "*.gz"),), "unused")

    def timestamps(validation):
        records = ranking._rows(source, 110, validation)
        return [int(tf.io.parse_single_example(r, {f.TIMESTAMP: tf.io.FixedLenFeature(
            [], tf.int64)})[f.TIMESTAMP]) for r in records]

    assert timestamps(False) == list(range(100, 110))
    assert timestamps(True) == [110, 111]


def test_cross_rank_config_says_what_it_expects():
    from marquee.config import ConfigError, from_dict

    assert from_dict({"ranking": {"cross_projection_dim": 16}}).ranking.cross_projection_dim == 16
    for bad, says in ((-1, "cross_projection_dim: expected an integer >= 0"),
                      (2.5, "ranking.cross_projection_dim: expected int, got 2.5")):
        with pytest.raises(ConfigError, match=says):
            from_dict({"ranking": {"cross_projection_dim": bad}})
