"""Ranking metrics, baseline and blessing rule on hand-checkable numbers."""

import math

import numpy as np
import pytest

from components.ranking_evaluator import eval_lib
from marquee.config import EvaluatorConfig
from trainer.ranking import labels


def test_auc_by_hand():
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) lose, (0.8 vs 0.1) win, (0.8 vs 0.4) win
    assert eval_lib.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert eval_lib.auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts 1/2
    assert math.isnan(eval_lib.auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auc_matches_pairwise_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = rng.integers(0, 20, 300) / 20  # many ties
    pos, neg = p[y == 1], p[y == 0]
    ref = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert eval_lib.auc(y, p) == pytest.approx(ref, abs=1e-12)


def test_logloss_calibration_rmse():
    m = eval_lib.metrics(np.array([1, 0, 0, 0]), np.full(4, 0.5),
                         np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 2.0]))
    assert m["log_loss"] == pytest.approx(math.log(2))
    assert m["calibration"] == pytest.approx(2.0)  # predicts 0.5, observed 0.25
    assert m["rmse_log_watch_time"] == pytest.approx(1.0)  # sqrt((0+0+0+4)/4)


def test_labels_of_both_heads():
    watched, log_time = labels(np.array([0.0, 119.0, 120.0, 3600.0]))
    assert watched.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(log_time, np.log1p([0, 119, 120, 3600]), rtol=1e-6)
    # MovieLens (min_watch_seconds 0): any watch is a positive; a sampled negative (0 s) is not
    watched, _ = labels(np.array([0.0, 24.0, 72.0, 4800.0]), 0.0)
    assert watched.tolist() == [0, 1, 1, 1]


def test_popularity_baseline_smoothing():
    base = eval_lib.PopularityBaseline.fit(np.array([1, 1, 2]), np.array([1.0, 0.0, 0.0]),
                                           np.array([6.0, 0.0, 0.0]))
    p, t = base.predict(np.array([1, 2, 99]))
    # global rate 1/3, prior count 10: item 1 = (1 + 10/3) / 12, item 2 = (10/3) / 11
    np.testing.assert_allclose(p, [(1 + 10 / 3) / 12, (10 / 3) / 11, 1 / 3])
    np.testing.assert_allclose(t, [(6 + 20) / 12, 20 / 11, 2.0])  # global mean log time 2


def test_popularity_slices():
    train_items = np.repeat(np.arange(10), np.arange(10, 0, -1))  # item 0 most popular
    watched = np.ones(len(train_items))
    s = eval_lib.popularity_slices(np.array([0, 1, 4, 5, 9, 77]), train_items, watched)
    assert s.tolist() == ["head", "torso", "torso", "tail", "tail", "tail"]


def test_bless_rule():
    cfg = EvaluatorConfig(min_auc_gain=0.01, max_logloss_increase=0.0)
    base = {"auc": 0.75, "log_loss": 0.5}
    assert eval_lib.bless({"auc": 0.77, "log_loss": 0.45}, base, "b", cfg)[0]
    ok, reason = eval_lib.bless({"auc": 0.755, "log_loss": 0.45}, base, "b", cfg)
    assert not ok and "0.7550" in reason and "0.7500" in reason
    assert not eval_lib.bless({"auc": 0.9, "log_loss": 0.51}, base, "b", cfg)[0]


def test_item_counts_and_popularity_features_by_hand():
    from trainer.ranking import ItemCounts, popularity_features

    counts = ItemCounts.fit(np.array([5, 7, 5, 5]), np.array([1.0, 1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(counts.ids, [5, 7])
    np.testing.assert_array_equal(counts.positives, [2, 1])
    np.testing.assert_array_equal(counts.examples, [3, 1])
    assert counts.global_rate == 0.75
    # item 5 from a training row that was itself a positive: leave-one-out counts 1 of 2
    out = popularity_features(np.array([2.0, 1.0, 0.0]), np.array([3.0, 2.0, 0.0]), 0.75,
                              10.0).numpy()
    np.testing.assert_allclose(out[0], [math.log(3), math.log(4), (2 + 7.5) / 13], rtol=1e-6)
    np.testing.assert_allclose(out[1], [math.log(2), math.log(3), (1 + 7.5) / 12], rtol=1e-6)
    # an item without counts (added after training) gets the global rate
    np.testing.assert_allclose(out[2], [0.0, 0.0, 0.75], rtol=1e-6)
