"""The two-tower retrieval model (TensorFlow Recommenders).

Both towers read the transformed features of ``trainer/preprocessing.py`` and end in an
L2-normalised embedding of ``embedding_dim``, so the score is a cosine similarity.

- Query tower: user id embedding, country / tier / age bucket / device, hour and day of week, and
  the mean of the item embeddings of the user's recent watches (``history``). The history
  embedding is the *same table* as the candidate tower's item-id embedding, so a user unseen at
  training (an OOV user id) still gets a query from the items they watched.
- Candidate tower: item id embedding, mean-pooled genres / cast / keywords / title tokens,
  director, and the scaled release year and duration. An item unseen at training still embeds
  from its metadata.
- Loss: in-batch softmax (``in_batch_softmax_loss``, the loss of ``tfrs.tasks.Retrieval``)
  with the log-Q correction (each logit minus the log of its candidate's sampling probability,
  i.e. its share of the training positives) and ``remove_accidental_hits`` (the same item
  elsewhere in the batch is not a negative). With ``jit_compile_loss`` (off by default: on 2 CPU
  cores it no longer pays for its compiles) that loss, not the towers, is compiled with XLA,
  once per batch shape.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from marquee.config import RetrievalConfig
from trainer import features as f
from trainer.steps import GraphSteps

xf = f.transformed_name


@dataclasses.dataclass(frozen=True)
class VocabSizes:
    """Rows of each embedding table (vocabulary plus OOV buckets)."""

    user_id: int
    item_id: int
    country: int
    subscription_tier: int
    age_bucket: int
    device: int
    director: int
    genres: int
    cast: int
    keywords: int
    title_tokens: int


# What tfrs.layers.loss adds to an accidental hit's logit: exp() of it is 0.
MIN_FLOAT = np.finfo(np.float32).min / 100.0


def _squeeze(x: tf.Tensor) -> tf.Tensor:
    return tf.reshape(x, [-1])


def in_batch_softmax_loss(
    q: tf.Tensor, c: tf.Tensor, temperature: float | None = None,
    candidate_probs: tf.Tensor | None = None, candidate_ids: tf.Tensor | None = None,
) -> tf.Tensor:
    """Sum over the batch of the softmax cross-entropy of each query q [B, dim] against every
    candidate c [B, dim] in the batch, its own (the diagonal) being the positive.

    The loss ``tfrs.tasks.Retrieval(temperature, remove_accidental_hits)`` computes (the tests
    compare the two), written with plain ops: TFRS's task needs autograph to trace and its
    Keras layers cost seconds of tracing per training run. Logits: q c^T / temperature, minus
    log(candidate_probs [B]) per column (log-Q correction; clipped to [1e-6, 1] as TFRS does);
    with candidate_ids [B], a column with the row's own id off the diagonal is not a negative.
    """
    scores = tf.matmul(q, c, transpose_b=True)
    if temperature is not None:
        scores = scores / temperature
    if candidate_probs is not None:
        scores = scores - tf.math.log(tf.clip_by_value(candidate_probs, 1e-6, 1.0))
    rows = tf.range(tf.shape(scores)[0])
    if candidate_ids is not None:
        accidental = tf.logical_and(tf.equal(candidate_ids[:, None], candidate_ids[None, :]),
                                    tf.not_equal(rows[:, None], rows[None, :]))
        scores = tf.where(accidental, tf.constant(MIN_FLOAT, scores.dtype), scores)
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=rows,
                                                                        logits=scores))


class SparseMeanEmbedding(tf.keras.layers.Layer):
    """Mean of the embeddings of a SparseTensor of ids [B, None] -> [B, dim]; empty rows -> 0."""

    def __init__(self, rows: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.dim = rows, dim

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=(self.rows, self.dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.05))

    def call(self, ids: tf.SparseTensor) -> tf.Tensor:
        return tf.nn.safe_embedding_lookup_sparse(self.table, ids, combiner="mean")

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        """Embeddings of dense ids [B] -> [B, dim] (the same table as ``call``)."""
        if not self.built:
            self.build(None)
            self.built = True
        return tf.gather(self.table, ids)


def _mlp(hidden: int, out: int, name: str) -> tf.keras.Sequential:
    layers = [tf.keras.layers.Dense(hidden, activation="relu")] if hidden else []
    layers.append(tf.keras.layers.Dense(out))
    return tf.keras.Sequential(layers, name=name)


class QueryTower(tf.keras.Model):
    def __init__(self, sizes: VocabSizes, items: SparseMeanEmbedding, cfg: RetrievalConfig):
        super().__init__(name="query_tower")
        d = cfg.embedding_dim
        self.items = items
        self.user = tf.keras.layers.Embedding(sizes.user_id, d, name="user_id")
        self.cats = {
            k: tf.keras.layers.Embedding(getattr(sizes, k), 8, name=k)
            for k in (f.COUNTRY, f.SUBSCRIPTION_TIER, f.AGE_BUCKET, f.DEVICE)
        }
        self.hour = tf.keras.layers.Embedding(24, 8, name="hour")
        self.dow = tf.keras.layers.Embedding(7, 4, name="day_of_week")
        self.mlp = _mlp(cfg.hidden_dim, d, "query_mlp")

    def call(self, x: dict) -> tf.Tensor:
        parts = [
            self.user(_squeeze(x[xf(f.USER_ID)])),
            self.items(x[xf(f.HISTORY)]),
            self.hour(_squeeze(x[xf(f.HOUR)])),
            self.dow(_squeeze(x[xf(f.DAY_OF_WEEK)])),
        ] + [emb(_squeeze(x[xf(k)])) for k, emb in self.cats.items()]
        return tf.math.l2_normalize(self.mlp(tf.concat(parts, axis=1)), axis=1)


class CandidateTower(tf.keras.Model):
    def __init__(self, sizes: VocabSizes, items: SparseMeanEmbedding, cfg: RetrievalConfig):
        super().__init__(name="candidate_tower")
        d = cfg.embedding_dim
        self.items = items
        self.pools = {
            k: SparseMeanEmbedding(getattr(sizes, k), 16, name=k)
            for k in (f.GENRES, f.CAST, f.KEYWORDS, f.TITLE_TOKENS)
        }
        self.director = tf.keras.layers.Embedding(sizes.director, 16, name="director")
        self.mlp = _mlp(cfg.hidden_dim, d, "candidate_mlp")

    def call(self, x: dict) -> tf.Tensor:
        dense = tf.concat([
            tf.reshape(tf.cast(x[xf(k) + suffix], tf.float32), [-1, 1])
            for k in (f.RELEASE_YEAR, f.DURATION_SECONDS) for suffix in ("", "_missing")
        ], axis=1)
        parts = [
            self.items.lookup(_squeeze(x[xf(f.ITEM_ID)])),
            self.director(_squeeze(x[xf(f.DIRECTOR)])),
            dense,
        ] + [pool(x[xf(k)]) for k, pool in self.pools.items()]
        return tf.math.l2_normalize(self.mlp(tf.concat(parts, axis=1)), axis=1)


class TwoTowerModel(GraphSteps, tfrs.Model):
    """In-batch softmax retrieval with log-Q correction.

    ``item_probs`` [item_rows]: each item's share of the training positives, the probability
    with which it appears as an in-batch negative.
    """

    def __init__(self, sizes: VocabSizes, item_probs: np.ndarray, cfg: RetrievalConfig):
        super().__init__()
        self.cfg = cfg
        items = SparseMeanEmbedding(sizes.item_id, cfg.embedding_dim, name="item_id")
        self.query_tower = QueryTower(sizes, items, cfg)
        self.candidate_tower = CandidateTower(sizes, items, cfg)
        floor = 1.0 / max(1.0, float(item_probs.size) * 1e3)
        self.item_probs = tf.constant(np.maximum(item_probs, floor), tf.float32)
        loss = functools.partial(in_batch_softmax_loss, temperature=cfg.temperature)
        self._in_batch_loss = (tf.function(loss, jit_compile=True, autograph=False)
                               if cfg.jit_compile_loss else loss)

    def build_weights(self, x: dict) -> None:
        """Creates the towers' weights from a batch ``x`` and, once compiled, the optimizer's
        slots, eagerly: Keras would otherwise trace the first training step twice (once to create
        them), running the Keras layer-building code inside the trace."""
        self.query_tower(x)
        self.candidate_tower(x)
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    # No tensor-dependent Python control flow in a step (tfrs.Model.train_step, Adam, the
    # towers, the loss): without autograph converting it and the Keras code it reaches, the
    # first step of a training run traces seconds faster.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, inputs: dict) -> dict:
        return super().train_step(inputs)

    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, x: dict, training: bool = False) -> tf.Tensor:
        q = self.query_tower(x)
        c = self.candidate_tower(x)
        ids = _squeeze(x[xf(f.ITEM_ID)])
        return self._in_batch_loss(
            q, c,
            candidate_probs=(tf.gather(self.item_probs, ids) if self.cfg.logq_correction
                             else None),
            candidate_ids=ids if self.cfg.remove_accidental_hits else None,
        )
