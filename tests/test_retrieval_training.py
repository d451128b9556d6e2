"""The retrieval Trainer's input path, in-batch loss and recall, on small hand-made inputs.

Examples are written as gzipped TFRecords of the transformed features the Trainer reads (item
index and raw id, a list feature), so ``dataset`` (the TFRecord path) and ``in_memory_dataset``
(the default) can be compared batch for batch.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from marquee.config import RetrievalConfig
from trainer import features as f
from trainer.model import in_batch_softmax_loss
from trainer.retrieval import (
    NO_TRAIN_EXAMPLES,
    _training_inputs,
    dataset,
    in_memory_dataset,
    load_split,
    recall_at_k,
)

xf = f.transformed_name
SPEC = {
    xf(f.ITEM_ID): tf.io.FixedLenFeature([1], tf.int64),
    f.ITEM_ID: tf.io.FixedLenFeature([1], tf.int64),
    xf(f.HISTORY): tf.io.VarLenFeature(tf.int64),
    f.HISTORY: tf.io.VarLenFeature(tf.int64),
    xf(f.RELEASE_YEAR): tf.io.FixedLenFeature([1], tf.float32),
}


def _write(path, n: int, start: int = 0) -> str:
    """n examples: row i has item index i, raw id 1000 + i, history [i-1, ..., i-1-(i % 3)]
    (row 0, 3, 6, ... have one entry; an empty history every 4th row), year i / 10."""
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for i in range(start, start + n):
            hist = [] if i % 4 == 0 else [i - 1 - j for j in range(1 + i % 3)]
            feats = {
                xf(f.ITEM_ID): tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
                f.ITEM_ID: tf.train.Feature(int64_list=tf.train.Int64List(value=[1000 + i])),
                xf(f.HISTORY): tf.train.Feature(int64_list=tf.train.Int64List(value=hist)),
                f.HISTORY: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[1000 + h for h in hist])),
                xf(f.RELEASE_YEAR): tf.train.Feature(float_list=tf.train.FloatList(value=[i / 10])),
            }
            w.write(tf.train.Example(features=tf.train.Features(feature=feats))
                    .SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("splits")
    train = [_write(d / "train-0.gz", 30), _write(d / "train-1.gz", 27, start=30)]
    return {"train": [str(d / "train-*.gz")], "eval": [_write(d / "eval.gz", 10, start=100)],
            "empty": [_write(d / "empty.gz", 0)], "files": train}


def _rows(batch: dict) -> list[tuple]:
    """Per example (item index, history tuple, year): comparable across the two paths."""
    hist = tf.RaggedTensor.from_sparse(batch[xf(f.HISTORY)]).to_list()
    ids, years = batch[xf(f.ITEM_ID)][:, 0].numpy(), batch[xf(f.RELEASE_YEAR)][:, 0].numpy()
    return [(int(i), tuple(h), round(float(y), 5))
            for i, h, y in zip(ids, hist, years, strict=True)]


def test_in_memory_batches_equal_the_tfrecord_batches_in_file_order(splits):
    expected = list(dataset(splits["train"], SPEC, 8))
    got = list(in_memory_dataset(load_split(splits["train"], SPEC), 8))
    assert len(got) == len(expected) == 8  # 57 examples: 7 of 8 and one of 1
    for g, e in zip(got, expected, strict=True):
        assert set(g) == set(e)
        assert _rows(g) == _rows(e)
        sparse = g[xf(f.HISTORY)]
        assert isinstance(sparse, tf.SparseTensor) and sparse.dtype == tf.int64
        # [B, longest history in the batch], as parse_example gives it
        np.testing.assert_array_equal(sparse.dense_shape, e[xf(f.HISTORY)].dense_shape)
        assert g[xf(f.ITEM_ID)].shape == e[xf(f.ITEM_ID)].shape


def test_in_memory_batches_equal_the_tfrecord_batches_when_shuffled(splits):
    # Same seed, same shuffle buffer over the same file order: the same batches every epoch,
    # so the in-memory path trains on what the TFRecord path trained on.
    examples = load_split(splits["train"], SPEC)
    for reshuffle in (True, False):
        streamed = dataset(splits["train"], SPEC, 8, shuffle_seed=3, reshuffle=reshuffle)
        ours = in_memory_dataset(examples, 8, shuffle_seed=3, reshuffle=reshuffle)
        assert ours.cardinality().numpy() == 8  # Keras needs it for steps_per_execution > 1
        epochs = []
        for _ in range(2):
            got = [r for b in ours for r in _rows(b)]
            assert got == [r for b in streamed for r in _rows(b)]
            epochs.append(got)
        assert sorted(epochs[0]) == [r for b in dataset(splits["train"], SPEC, 64)
                                     for r in _rows(b)]  # every example once, shuffled
        assert epochs[0] != sorted(epochs[0])
        assert (epochs[0] != epochs[1]) == reshuffle


@pytest.mark.parametrize("in_memory", [True, False])
def test_training_inputs_of_both_paths(splits, in_memory):
    cfg = RetrievalConfig(batch_size=16, in_memory=in_memory)
    inputs = _training_inputs(splits["train"], splits["eval"], SPEC, cfg)
    np.testing.assert_array_equal(np.sort(inputs.item_index), np.arange(57))
    np.testing.assert_array_equal(np.sort(inputs.item_ids), 1000 + np.arange(57))
    assert inputs.train.cardinality().numpy() == 4
    assert inputs.eval.cardinality().numpy() == 1
    assert sorted(r for b in inputs.train for r in _rows(b)) == sorted(
        r for b in dataset(splits["train"], SPEC, 64) for r in _rows(b))
    if in_memory:  # the raw ids are for evaluation only: the towers do not get them
        assert f.ITEM_ID not in inputs.sample and f.HISTORY not in inputs.sample
    no_eval = _training_inputs(splits["train"], splits["empty"], SPEC, cfg)
    assert no_eval.eval is None
    with pytest.raises(ValueError, match="the train split has no examples"):
        _training_inputs(splits["empty"], splits["eval"], SPEC, cfg)
    assert "data.eval_fraction" in NO_TRAIN_EXAMPLES


@pytest.mark.parametrize("temperature,logq,hits,batch", list(itertools.product(
    (None, 0.1), (False, True), (False, True), (1, 5, 32))))
def test_in_batch_loss_equals_tfrs_retrieval_task(temperature, logq, hits, batch):
    rng = np.random.default_rng(batch)
    q = tf.math.l2_normalize(tf.constant(rng.normal(size=(batch, 8)), tf.float32), axis=1)
    c = tf.math.l2_normalize(tf.constant(rng.normal(size=(batch, 8)), tf.float32), axis=1)
    probs = tf.constant(rng.uniform(1e-8, 0.3, batch), tf.float32) if logq else None
    ids = tf.constant(rng.integers(0, 4, batch)) if hits else None  # repeats: accidental hits
    task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=hits)

    def both():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([q, c])
            ours = in_batch_softmax_loss(q, c, temperature, probs, ids)
            theirs = task(q, c, candidate_sampling_probability=probs, candidate_ids=ids,
                          compute_metrics=False, compute_batch_metrics=False)
        return ours, theirs, tape.gradient(ours, [q, c]), tape.gradient(theirs, [q, c])

    ours, theirs, g_ours, g_theirs = both()
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    jit = tf.function(in_batch_softmax_loss, jit_compile=True)
    np.testing.assert_allclose(jit(q, c, temperature, probs, ids).numpy(), theirs.numpy(),
                               rtol=1e-4, atol=1e-4)


def test_in_batch_loss_by_hand():
    # Two orthogonal queries, each equal to its own candidate; temperature 1: logits [[1, 0],
    # [0, 1]], loss per row log(e + 1) - 1 = 0.31326. With the same id on both rows the other
    # column is an accidental hit, masked: each row's softmax is over its own candidate, loss 0.
    q = tf.eye(2)
    assert in_batch_softmax_loss(q, q, 1.0).numpy() == pytest.approx(2 * 0.3132617, abs=1e-6)
    same = tf.constant([5, 5], tf.int64)
    assert in_batch_softmax_loss(q, q, 1.0, candidate_ids=same).numpy() == pytest.approx(0.0)


def test_recall_at_k_by_hand():
    # Catalogue ids 10, 20, 30 with embeddings (1, 0), (0, 1), (0.6, 0.6); popularity 30 > 10
    # > 20. Scores: query 0 (1, 0.1): 10 1.0, 30 0.66, 20 0.1; query 1 (0.1, 1): 20 1.0,
    # 30 0.66, 10 0.1; query 2 = query 0.
    cat = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]])
    ids = np.array([10, 20, 30])
    pop = np.array([5.0, 1.0, 9.0])
    queries = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.1]])
    positives = np.array([30, 20, 30])
    # query 0 wants 30: second -> a hit at 2, not at 1; popularity puts 30 first.
    # query 1 wants 20 and has "watched" it: the positive itself is never excluded; first ->
    #   a hit at 1; popularity 30, 10, 20: third, a miss at 2.
    # query 2 wants 30 and watched 10, which is excluded: 30 first; popularity 30 first.
    histories = [np.array([]), np.array([20]), np.array([10])]
    out = recall_at_k(queries, positives, histories, cat, ids, pop, ks=(1, 2))
    assert out["recall@1"] == pytest.approx(2 / 3)
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["popularity_recall@1"] == pytest.approx(2 / 3)
    assert out["popularity_recall@2"] == pytest.approx(2 / 3)
    assert out["eval_queries"] == 3
    # a k above the catalogue's size is capped at it, and the key names the capped k
    capped = recall_at_k(queries, positives, histories, cat, ids, pop, ks=(20,))
    assert capped["recall@3"] == pytest.approx(1.0)
