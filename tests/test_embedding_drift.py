"""Embedding drift between pushed versions: norms, top-k neighbours, overlap, the model base."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import tensorflow as tf

from marquee.artifacts import CANDIDATE_TOWER, QUERY_TOWER, RETRIEVAL_INDEX
from marquee.monitoring import embedding_drift as ed
from marquee.monitoring.config import MonitorConfig
from marquee.retrieval_index import DATASET_FILE, ITEM_IDS_FILE, SCANN_DIR


def test_norm_summary_by_hand():
    # norms 5, 0, 10: mean 5, std sqrt((0 + 25 + 25) / 3) = 4.0825; numpy's linear percentiles
    # of [0, 5, 10]: p5 at position 0.1 -> 0.5, p50 -> 5, p95 at position 1.9 -> 9.5
    s = ed.norm_summary(np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]))
    assert s == pytest.approx({"count": 3, "mean": 5.0, "std": 4.08248, "p5": 0.5, "p50": 5.0,
                               "p95": 9.5}, abs=1e-5)
    assert ed.norm_summary(np.zeros((0, 4)))["count"] == 0


@pytest.mark.parametrize("n,dim,k", list(itertools.product([5, 40, 1500], [2, 16], [1, 4])))
def test_top_k_neighbours_match_a_numpy_argsort(n, dim, k):
    rng = np.random.default_rng(n * 100 + dim + k)
    e = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.1, 5, size=(n, 1))
    rows = rng.choice(n, min(n, 30), replace=False)
    unit = e.astype(np.float64) / np.linalg.norm(e.astype(np.float64), axis=1, keepdims=True)
    sims = unit[rows] @ unit.T
    sims[np.arange(len(rows)), rows] = -np.inf
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    got = ed.top_k_neighbours(e, rows, k)
    assert not (got == rows[:, None]).any()
    # compared by similarity: 1500 points on a circle hold near ties that float32 orders either way
    np.testing.assert_allclose(np.take_along_axis(sims, got, axis=1),
                               np.take_along_axis(sims, expected, axis=1), atol=1e-6)
    assert (np.take_along_axis(sims, got, axis=1) == np.take_along_axis(sims, expected, axis=1)
            ).mean() > 0.9


def _circle(degrees: list[float]) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


# Titles a..f on the unit circle: cosine similarity falls with the angle between them.
BEFORE = [0, 10, 90, 100, 180, 190]  # pairs (a, b), (c, d), (e, f)
AFTER = [0, 10, 90, 185, 180, 200]  # d and f move next to e


def test_neighbour_overlap_by_hand():
    # k=1 before: a-b, b-a, c-d, d-c, e-f, f-e. After: a->b (10 deg), b->a (10), c->b (80;
    # e is 90 and d 95 away), d->e (5), e->d (5), f->d (15). Kept: a and b only.
    overlap = ed.neighbour_overlap(_circle(BEFORE), _circle(AFTER), np.arange(6), k=1)
    np.testing.assert_array_equal(overlap, [1, 1, 0, 0, 0, 0])


def test_norms_and_rotations_move_no_neighbour():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # a random orthogonal matrix
    np.testing.assert_array_equal(ed.neighbour_overlap(e, 3.0 * e @ q, np.arange(50), k=5),
                                  np.ones(50))


def test_titles_are_aligned_by_id():
    ids, prev_rows, cur_rows = ed.align_titles(np.array([5, 3, 9]), np.array([9, 5, 7]))
    assert (ids.tolist(), prev_rows.tolist(), cur_rows.tolist()) == ([5, 9], [0, 2], [1, 0])


def test_compare_embeddings_reports_norms_overlap_and_the_titles_that_moved():
    ids = np.array([1, 2, 3, 4, 5, 6])
    # the current version also holds title 7 (new), which is not compared
    current = np.concatenate([2.0 * _circle(AFTER), [[0.0, 3.0]]])
    report, per_title = ed.compare_embeddings(
        ids, _circle(BEFORE), np.append(ids, 7), current, np.ones((4, 2)), 2 * np.ones((4, 2)),
        MonitorConfig(neighbour_k=1, moved_titles=2), titles={3: "Three"})
    assert report["titles"] == {"previous": 6, "current": 7, "both": 6}
    assert report["candidate_norms"]["previous"]["mean"] == pytest.approx(1.0)
    assert report["candidate_norms"]["current"]["mean"] == pytest.approx((12 + 3) / 7)
    assert report["query_norms"]["current"]["mean"] == pytest.approx(2 * np.sqrt(2))
    n = report["neighbours"]
    assert (n["k"], n["compared"]) == (1, 6)
    assert n["mean_overlap"] == pytest.approx(2 / 6)
    assert n["unchanged_share"] == pytest.approx(2 / 6)
    assert n["moved_most"] == [{"item_id": 3, "overlap": 0.0, "title": "Three"},
                               {"item_id": 4, "overlap": 0.0}]
    assert per_title == [(1, 1.0), (2, 1.0), (3, 0.0), (4, 0.0), (5, 0.0), (6, 0.0)]


def test_a_big_catalogue_is_sampled_and_k_is_clipped():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(30, 4))
    report, per_title = ed.compare_embeddings(np.arange(30), e, np.arange(30), e,
                                              e[:3], e[:3], MonitorConfig(neighbour_titles=7))
    assert report["neighbours"]["compared"] == len(per_title) == 7
    assert report["neighbours"]["mean_overlap"] == 1.0
    report, _ = ed.compare_embeddings(np.arange(3), e[:3], np.arange(3), e[:3], e[:1], e[:1],
                                      MonitorConfig(neighbour_k=10))
    assert report["neighbours"]["k"] == 2  # 3 titles: at most 2 others
    report, per_title = ed.compare_embeddings(np.arange(1), e[:1], np.arange(1), e[:1], e[:1],
                                              e[:1], MonitorConfig())
    assert report["neighbours"]["k"] == 0 and per_title == []


# ----------------------------------------------------------------------------- a model base


class _QueryTower(tf.Module):
    """embedding(user_id) = scale * [user_id, 1]."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_id")])
    def serve(self, user_id):
        x = tf.cast(tf.stack([user_id, tf.ones_like(user_id)], axis=1), tf.float32)
        return {"embedding": self.scale * x}


def _push(base, version: int, items: np.ndarray, scale: float) -> None:
    tower = _QueryTower(scale)
    tf.saved_model.save(tower, str(base / QUERY_TOWER / str(version)),
                        signatures={"serving_default": tower.serve})
    (base / CANDIDATE_TOWER / str(version)).mkdir(parents=True)
    index = base / RETRIEVAL_INDEX / str(version)
    (index / SCANN_DIR).mkdir(parents=True)
    np.save(index / ITEM_IDS_FILE, np.arange(1, len(items) + 1))
    np.save(index / SCANN_DIR / DATASET_FILE, items.astype(np.float32))


def test_version_drift_reads_the_pushed_versions(tmp_path):
    base = tmp_path / "serving"
    _push(base, 100, _circle(BEFORE), scale=1.0)
    _push(base, 200, _circle(AFTER), scale=2.0)
    (base / QUERY_TOWER / "300").mkdir()  # a half push: no index, never a previous version
    # query norms: v100 |(3, 1)| = 3.1623, |(4, 1)| = 4.1231 -> mean 3.6427; v200 twice that.
    # history is not an input of this tower: left out
    inputs = {"user_id": tf.constant([3, 4], tf.int64), "history": tf.constant([[1], [2]])}
    report, per_title = ed.version_drift(str(base), 200, inputs, MonitorConfig(neighbour_k=1))
    assert (report["version"], report["previous_version"]) == (200, 100)
    assert report["query_norms"]["previous"]["mean"] == pytest.approx(3.64268, abs=1e-4)
    assert report["query_norms"]["current"]["mean"] == pytest.approx(7.28536, abs=1e-4)
    assert report["neighbours"]["mean_overlap"] == pytest.approx(2 / 6)
    assert len(per_title) == 6
    first, _ = ed.version_drift(str(base), 100, inputs, MonitorConfig())
    assert first["previous_version"] is None and "first pushed version" in first["reason"]

    # what the EmbeddingDrift step writes is what `marquee monitor embeddings` reads
    out = tmp_path / "run" / "tfx" / ed.COMPONENT / "report" / "17"
    out.mkdir(parents=True)
    (out / ed.REPORT_FILE).write_text(json.dumps(report))
    (reports,) = [ed.read_reports(str(tmp_path / "run" / "tfx"))]
    assert reports == [report]
    lines = ed.report_lines(report)
    assert lines[0] == "version 200 against 100"
    assert lines[1].startswith("query norms: mean 3.643 -> 7.285")
    assert "top-1 neighbour overlap over 6 titles: mean 0.333" in lines[3]
