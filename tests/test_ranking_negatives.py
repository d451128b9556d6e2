"""Hard negatives from the retrieval model's top N (trainer/negatives.py), plain numpy.

A hand-made case: 2-d embeddings, items 100..104 at item_emb rows 0..4. The query [1, 0] scores
items by their first coordinate: 104 (5), 103 (4), 102 (3), 101 (2), 100 (1); so its top 3 are
rows 4, 3, 2. User 7 watched 103 (positive, row 0 of the data) and 100 (a low rating: 30 s).
"""

import itertools

import numpy as np
import pytest

from trainer import features as f
from trainer.negatives import (
    concat_rows,
    retrieval_negative_rows,
    sample_negatives,
    top_n,
    watched_by_user,
)

ITEM_EMB = np.array([[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]], np.float32)
ITEMS = np.array([100, 101, 102, 103, 104], np.int64)


def test_top_n_by_hand_and_against_a_numpy_reference():
    idx, scores = top_n(np.array([[1, 0], [-1, 0]], np.float32), ITEM_EMB, 3)
    np.testing.assert_array_equal(idx, [[4, 3, 2], [0, 1, 2]])
    np.testing.assert_allclose(scores, [[5, 4, 3], [-1, -2, -3]])
    rng = np.random.default_rng(0)
    for p, i, n, b in itertools.product((1, 7), (3, 20), (1, 5, 50), (2, 4096)):
        q, e = rng.normal(size=(p, 4)), rng.normal(size=(i, 4))
        idx, scores = top_n(q, e, n, batch_size=b)
        ref = np.argsort(-(q @ e.T), axis=1)[:, :min(n, i)]
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ e.T, ref, 1), rtol=1e-5)


def test_ties_keep_the_lower_item_first():
    idx, _ = top_n(np.array([[1.0, 0.0]]), np.array([[1.0, 0], [2, 0], [2, 0]]), 2)
    np.testing.assert_array_equal(idx, [[1, 2]])


def test_sample_ratio_exclusions_and_shortfall():
    top = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    excluded = [set(), {1, 2, 3}, {1, 2, 3, 4, 5}]
    rows, cols = sample_negatives(top, excluded, 2, np.array([[0, 1], [0, 2], [0, 3]]))
    # row 0: 2 of 5; row 1: both allowed ones (4, 5 -> columns 3, 4); row 2: none allowed
    np.testing.assert_array_equal(rows, [0, 0, 1, 1])
    assert len(set(cols[:2].tolist())) == 2
    np.testing.assert_array_equal(cols[2:], [3, 4])
    for r, col in zip(rows.tolist(), cols.tolist(), strict=True):
        assert top[r, col] not in excluded[r]


def test_sample_is_seeded_per_row_not_by_row_order():
    rng = np.random.default_rng(1)
    top = np.stack([rng.permutation(50) for _ in range(6)])
    seeds = np.arange(12).reshape(6, 2)
    excluded = [set(range(r)) for r in range(6)]
    rows, cols = sample_negatives(top, excluded, 4, seeds)
    again = sample_negatives(top, excluded, 4, seeds)
    np.testing.assert_array_equal(cols, again[1])
    order = np.array([5, 4, 3, 2, 1, 0])  # the same rows, reversed
    rrows, rcols = sample_negatives(top[order], [excluded[i] for i in order], 4, seeds[order])
    picked = {(r, top[r, c_]) for r, c_ in zip(rows.tolist(), cols.tolist(), strict=True)}
    rpicked = {(int(order[r]), top[order[r], c_])
               for r, c_ in zip(rrows.tolist(), rcols.tolist(), strict=True)}
    assert picked == rpicked
    other = sample_negatives(top, excluded, 4, seeds + 100)[1]
    assert not np.array_equal(cols, other)
    with pytest.raises(ValueError, match=">= 0"):
        sample_negatives(top, excluded, -1, seeds)


def test_watched_counts_any_watch_time():
    out = watched_by_user(np.array([7, 7, 7, 8]), np.array([103, 100, 104, 101]),
                          np.array([4800.0, 30.0, 0.0, 24.0]))
    assert out == {7: {103, 100}, 8: {101}}  # 104 is a sampled negative (0 s)


def data_rows():
    # one positive (7 watched 103 at t=50) and one abandoned watch of 100; history [B, 2]
    return {f.USER_ID: np.array([7, 7]), f.ITEM_ID: np.array([103, 100]),
            f.TIMESTAMP: np.array([50, 40]), f.WATCH_SECONDS: np.array([4800.0, 30.0], np.float32),
            f.POSITION: np.array([0, 0]), f.HISTORY: np.array([[100, -1], [-1, -1]]),
            f.GENRES: np.array([[b"a"], [b"b"]]), "retrieval_score": np.array([4.0, 1.0])}


def catalogue(added=(0, 0, 0, 0, 0)):
    return {f.ITEM_ID: ITEMS, f.TIMESTAMP: np.array(added),
            f.GENRES: np.array([[b"x", b""], [b"x", b"y"], [b""] * 2, [b"z", b""], [b"w", b""]])}


def test_negative_rows_copy_the_query_and_take_the_item():
    data = data_rows()
    watched = watched_by_user(data[f.USER_ID], data[f.ITEM_ID], data[f.WATCH_SECONDS])
    out = retrieval_negative_rows(data, np.array([0]), catalogue(), np.array([[1.0, 0.0]]),
                                  ITEM_EMB, watched, 2, 3, 0, "retrieval_score")
    # top 3 = 104, 103, 102; 103 is watched, so both negatives are 104 and 102
    np.testing.assert_array_equal(out[f.ITEM_ID], [104, 102])
    np.testing.assert_allclose(out["retrieval_score"], [5.0, 3.0])
    np.testing.assert_array_equal(out[f.GENRES], [[b"w", b""], [b"", b""]])
    np.testing.assert_array_equal(out[f.USER_ID], [7, 7])
    np.testing.assert_array_equal(out[f.TIMESTAMP], [50, 50])
    np.testing.assert_array_equal(out[f.HISTORY], [[100, -1], [100, -1]])
    np.testing.assert_array_equal(out[f.WATCH_SECONDS], [0, 0])
    # an item added after the positive's moment is never a negative
    out = retrieval_negative_rows(data, np.array([0]), catalogue(added=(0, 0, 0, 0, 60)),
                                  np.array([[1.0, 0.0]]), ITEM_EMB, watched, 2, 3, 0,
                                  "retrieval_score")
    np.testing.assert_array_equal(out[f.ITEM_ID], [102])


def test_concat_widens_padded_lists():
    a = {f.HISTORY: np.array([[1, -1]]), f.GENRES: np.array([[b"a"]]), f.ITEM_ID: np.array([1])}
    b = {f.HISTORY: np.array([[2]]), f.GENRES: np.array([[b"b", b"c"]]), f.ITEM_ID: np.array([2])}
    out = concat_rows(a, b)
    np.testing.assert_array_equal(out[f.HISTORY], [[1, -1], [2, -1]])
    np.testing.assert_array_equal(out[f.GENRES], [[b"a", b""], [b"b", b"c"]])
    np.testing.assert_array_equal(out[f.ITEM_ID], [1, 2])
