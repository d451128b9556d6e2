"""End to end through the real TFX LocalDagRunner on tiny simulated data (slow: ~2 minutes)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from components.model_pusher.push_lib import CANDIDATE_TOWER, QUERY_TOWER, RETRIEVAL_INDEX
from marquee.config import from_dict
from marquee.data import contract as c
from marquee.data.simulate import SimConfig, simulate
from pipeline.local_runner import run_local
from serving.retrieval import InProcessRetriever, ModelMismatch, QueryFeatures, query_inputs
from trainer import features as f
from trainer.retrieval import LIST_PAD

pytestmark = pytest.mark.slow

CONFIG = from_dict({
    "retrieval": {"epochs": 2, "batch_size": 128},
    "index": {"eval_queries": 50},
    "beam": {"direct_num_workers": 2},
})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    simulate(tmp / "data", SimConfig(users=150, items=200, days=20, seed=1))
    summary = run_local(tmp / "data", tmp / "run", CONFIG)
    return tmp, summary


def _version(base, model):
    (v,) = [p for p in (base / model).iterdir() if p.name.isdigit()]
    return v


def test_examples_are_every_positive_watch_split_by_time(run):
    tmp, _ = run
    inter = pd.read_parquet(tmp / "data" / "interactions.parquet")
    positives = inter[(inter[c.EVENT] == c.EVENT_WATCH)
                      & (inter[c.WATCH_SECONDS] >= CONFIG.data.min_watch_seconds)]
    (counts_file,) = (tmp / "run" / "tfx" / "ContractExampleGen" / "examples").glob(
        "*/counts.json")
    info = json.loads(counts_file.read_text())
    assert info["counts"]["train"] + info["counts"]["eval"] == len(positives)
    assert info["counts"]["eval"] == int((positives[c.TIMESTAMP] >= info["eval_cutoff"]).sum())
    assert info["counts"]["catalogue"] == 200


def test_pushed_towers_answer_raw_features(run):
    tmp, summary = run
    base = tmp / "run" / "serving"
    versions = {m: _version(base, m).name for m in (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX)}
    assert len(set(versions.values())) == 1, versions
    assert "pushed version" in summary and (tmp / "run" / "summary.md").is_file()

    query = tf.saved_model.load(str(_version(base, QUERY_TOWER)))
    inputs = query_inputs([QueryFeatures(user_id=3, timestamp=1_700_000_000, history=[5, 7]),
                           QueryFeatures(user_id=10**9, timestamp=1_700_003_600)], 20)
    emb = query.signatures["serving_default"](**inputs)["embedding"].numpy()
    assert emb.shape == (2, CONFIG.retrieval.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)

    cand = tf.saved_model.load(str(_version(base, CANDIDATE_TOWER)))
    out = cand.signatures["serving_default"](
        item_id=tf.constant([1, 10**9], tf.int64), title=tf.constant(["A new title", "x"]),
        director=tf.constant(["", "Someone"]), release_year=tf.constant([2024, 0], tf.int64),
        duration_seconds=tf.constant([5400, 0], tf.int64),
        genres=tf.constant([["drama", "comedy"], ["horror", LIST_PAD]]),
        cast=tf.constant([[LIST_PAD], [LIST_PAD]]), keywords=tf.constant([[LIST_PAD]] * 2),
    )["embedding"].numpy()
    assert out.shape == (2, CONFIG.retrieval.embedding_dim) and np.isfinite(out).all()


def test_in_process_retrieval_and_mismatch_refused(run):
    tmp, _ = run
    base = tmp / "run" / "serving"
    retriever = InProcessRetriever(base)
    items = set(pd.read_parquet(tmp / "data" / "items.parquet")[c.ITEM_ID])
    top = retriever.retrieve(QueryFeatures(user_id=3, timestamp=1_700_000_000, history=[5]),
                             k=10, exclude=[5, 6])
    ids = [i for i, _ in top]
    assert len(ids) == 10 == len(set(ids)) and set(ids) <= items and not {5, 6} & set(ids)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)

    # An index from another training run, pushed as a newer version, is refused.
    src = _version(base, RETRIEVAL_INDEX)
    dest = src.parent / str(int(src.name) + 1)
    shutil.copytree(src, dest)
    meta = json.loads((dest / "index.json").read_text())
    meta["metadata"]["training_run"] = "another-run"
    (dest / "index.json").write_text(json.dumps(meta))
    try:
        with pytest.raises(ModelMismatch, match="another-run"):
            InProcessRetriever(base)
    finally:
        shutil.rmtree(dest)


def test_feature_keys_cover_the_signatures():
    # Every raw key the towers take is spelled in trainer/features.py.
    assert set(f.QUERY_FEATURES) == set(query_inputs(
        [QueryFeatures(user_id=1, timestamp=0)], 3))
