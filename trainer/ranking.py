"""The multi-task ranking model and its TFX Trainer module (``run_fn``).

Scores (user, item) pairs precisely: P(watch past 2 minutes) and expected watch time. (The
positive threshold is ``RankingConfig.min_watch_seconds``; MovieLens sets 0, every rating.)

Inputs are raw features (the same dense, padded form as the towers' signatures: scalars [B],
``history`` [B, H] padded with -1, genres / cast / keywords [B, L] padded with "") plus
``retrieval_score`` [B] (the two-tower dot product of the pair, which serving has from the
candidate source) and, when the pipeline trains ALS, ``als_score`` [B] (the pair's ALS score,
which serving has from the ALS source; a training row's is out of fold:
:mod:`trainer.als_feature`). The Transform graph runs inside the model, so the exported
SavedModel takes raw features like the towers.

Architecture: user / item / categorical embeddings, pooled genres, cast, title tokens and
history, the scaled numerics and the pair scores -> a DCN-v2 cross network
(``tfrs.layers.dcn.Cross``, low-rank: ``RankingConfig.cross_projection_dim``) -> a deep MLP
(``deep_layers``) -> two heads:
- ``watched``: logit of P(watch past 2 minutes), binary cross-entropy;
- ``watch_time``: log1p(watch seconds), mean squared error;
combined with ``RankingConfig.watched_weight`` / ``watch_time_weight``.

Training examples: the rank_train split (every watch plus the ExampleGen's sampled negatives,
uniform or popularity-weighted: ``RankingConfig.random_negative_popularity_exponent``),
optionally plus hard negatives from the retrieval model's own top N per positive
(``retrieval_negatives_per_positive``, :mod:`trainer.negatives`). The split is streamed from
its TFRecord files (:class:`RankingRecords`): a first pass over three scalar columns gives the
validation cutoff and the item counts (:func:`scan_split`), then ``tf.data`` reads, shuffles
(a bounded buffer), parses and scores each batch with the towers (:func:`_dataset`), so memory
does not grow with the number of examples (the cutoff comes from a histogram of the timestamps
by hour, :class:`TimeHistogram`, whose size is set by the time span). With hard negatives the
split is loaded in memory instead (:func:`load_split`): they are drawn against every user's
watches and the whole catalogue at once. Measured on MovieLens 100K
(validation split carved from train): hard negatives make the ranker alone far worse (NDCG@20
0.175 -> 0.084) because, without impressions, a user's unwatched top-N items are mostly the
ones they will watch next; they are off by default. The retrieval score of a training pair is
in-sample (the towers were fitted on the same positives), yet dropping it
(``use_retrieval_score``) costs more than the inflation does (0.175 -> 0.121).

Item popularity (``RankingConfig.item_popularity_features``): the model holds a table of each
item's train-period counts (positives and examples among the ranking examples) and feeds
log1p(positives), log1p(examples) and the smoothed positive rate to the network. A training
row's own label is subtracted from its item's counts (leave-one-out): otherwise an item with one
positive would say "positive" on exactly that row, a leak that never exists at serving, where
the counts hold no label of the pair being scored. Unknown items (added after training) get
zero counts and the global rate.

Position debiasing: the page position enters only through a shallow side tower (one learned
bias per position bucket) added to the ``watched`` logit during training. The serving signature
has no position input and fixes the bias to position 1, so the model ranks by relevance, not by
the slot an item happened to be shown in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft

from marquee import io as mio
from marquee.artifacts import (
    ALS_SCORE,
    KNOWN,
    P_WATCH,
    RANK_BY_ID,
    RETRIEVAL_SCORE,
    SIGNATURE,
    WATCH_TIME_SECONDS,
)
from marquee.config import Config, RankingConfig
from marquee.data import contract as c
from trainer import als_feature, negatives, raw_inputs
from trainer import features as f
from trainer.als_feature import AlsScorer
from trainer.export import Export
from trainer.model import SparseMeanEmbedding, VocabSizes
from trainer.progress import Progress
from trainer.retrieval import complete_raw_inputs, vocab_sizes, write_export_info
from trainer.steps import GraphSteps

xf = f.transformed_name
WATCHED_LOGIT = "watched_logit"
LOG_WATCH_TIME = "log_watch_time"
# Training-only inputs: the row's own contribution to its item's counts (leave-one-out).
OWN_POSITIVE = "own_positive"
OWN_EXAMPLE = "own_example"
SERVING_POSITION = 1
# The custom_config key the RankingTrainer's executor sets to its ALS model's URI.
ALS_MODEL_KEY = "als_model"
RAW_KEYS = f.QUERY_FEATURES + f.CANDIDATE_FEATURES
# The network's input blocks (RankingModel.parts), in the order they are concatenated; the
# candidate side's depend on the title alone, so the by-id signature holds them per title.
QUERY_CATEGORIES = (f.COUNTRY, f.SUBSCRIPTION_TIER, f.AGE_BUCKET, f.DEVICE)
PARTS = ("user", "item", "history", "hour", "day_of_week", RETRIEVAL_SCORE, ALS_SCORE,
         "popularity",
         "numeric", *QUERY_CATEGORIES, f.DIRECTOR, f.GENRES, f.CAST, f.KEYWORDS, f.TITLE_TOKENS)
# The pair's scores, per candidate in both signatures (the by-id one tiles the query, not these).
PAIR_SCORES = (RETRIEVAL_SCORE, ALS_SCORE)
CANDIDATE_PARTS = ("item", "popularity", "numeric", f.DIRECTOR, f.GENRES, f.CAST, f.KEYWORDS,
                   f.TITLE_TOKENS)


def label_tensors(watch_seconds: tf.Tensor, min_watch_seconds: float
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """(watched at least ``min_watch_seconds`` (and more than 0, which sampled negatives carry)
    as 0/1 float32 [B], log1p(watch seconds) float32 [B]). Graph-safe; :func:`labels` on numpy."""
    ws = tf.cast(watch_seconds, tf.float64)
    watched = tf.cast((ws >= min_watch_seconds) & (ws > 0), tf.float32)
    return watched, tf.cast(tf.math.log1p(tf.maximum(ws, 0.0)), tf.float32)


def labels(watch_seconds: np.ndarray, min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS
           ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_tensors` of a numpy array. The default: watched past 2 minutes."""
    watched, log_time = label_tensors(tf.constant(np.asarray(watch_seconds, np.float64)),
                                      float(min_watch_seconds))
    return watched.numpy(), log_time.numpy()


def tower_embeddings(retrieval_dir: str, tower: str, inputs: dict,
                     batch_size: int = 8192) -> np.ndarray:
    """Embeddings [B, D] of raw ``inputs`` by the ``query_tower`` or ``candidate_tower``."""
    keys = f.QUERY_FEATURES if tower == "query_tower" else f.CANDIDATE_FEATURES
    model = tf.saved_model.load(os.path.join(retrieval_dir, tower))
    return raw_inputs.embed(model.signatures["serving_default"],
                            {k: tf.constant(inputs[k]) for k in keys}, batch_size)


class RetrievalScorer:
    """The pushed/trained towers' dot product of (query, item) rows of raw inputs; callable
    eagerly or inside ``tf.data.Dataset.map`` (the signatures run in the map's graph)."""

    def __init__(self, retrieval_dir: str):
        # The loaded objects stay referenced: their signatures need the variables alive.
        self._towers = [(tf.saved_model.load(os.path.join(retrieval_dir, tower)), keys)
                        for tower, keys in (("query_tower", f.QUERY_FEATURES),
                                            ("candidate_tower", f.CANDIDATE_FEATURES))]

    def __call__(self, inputs: dict) -> tf.Tensor:
        """Scores [B] float32 of ``inputs`` (raw signature inputs, [B] / [B, L])."""
        (qe, ce) = (model.signatures["serving_default"](**{k: inputs[k] for k in keys}
                                                       )["embedding"]
                    for model, keys in self._towers)
        return tf.reduce_sum(qe * ce, axis=1)


def retrieval_scores(retrieval_dir: str, inputs: dict, batch_size: int = 8192) -> np.ndarray:
    """Dot product of the pushed/trained towers for each (query, item) row of raw ``inputs``."""
    scorer = RetrievalScorer(retrieval_dir)
    n = int(inputs[f.ITEM_ID].shape[0])
    return np.concatenate(
        [scorer({k: tf.convert_to_tensor(inputs[k][s:s + batch_size]) for k in RAW_KEYS}
                ).numpy() for s in range(0, n, batch_size)] or [np.zeros(0, np.float32)])


def load_split(patterns: list[str], retrieval_dir: str, limit: int | None = None,
               als: AlsScorer | None = None) -> dict:
    """Raw ranking examples -> dense inputs (+ retrieval score, position, watch seconds, and
    with an ALS scorer the ALS score)."""
    serialized = raw_inputs.read_examples(patterns, limit)
    if not serialized:
        return {}
    inputs = raw_inputs.parse_examples(
        serialized, RAW_KEYS + (f.POSITION, f.WATCH_SECONDS, f.TIMESTAMP))
    out = {k: v.numpy() for k, v in inputs.items()}
    out[RETRIEVAL_SCORE] = retrieval_scores(retrieval_dir, inputs)
    if als is not None:
        out[ALS_SCORE] = als_feature.scores(als, out)
    return out


def load_catalogue(patterns: list[str]) -> dict:
    """The catalogue split -> dense candidate inputs [I, ...] (``timestamp`` = added at)."""
    serialized = raw_inputs.read_examples(patterns)
    if not serialized:
        raise ValueError(f"no catalogue examples in {patterns}")
    inputs = raw_inputs.parse_examples(serialized, f.CANDIDATE_FEATURES + (f.TIMESTAMP,))
    return {k: v.numpy() for k, v in inputs.items()}


def add_retrieval_negatives(data: dict, catalogue: dict, retrieval_dir: str,
                            cfg: RankingConfig, watched_from: dict | None = None) -> dict:
    """``data`` plus ``cfg.retrieval_negatives_per_positive`` hard negatives per positive from
    the retrieval model's top ``cfg.retrieval_negative_top_n`` (:mod:`trainer.negatives`).

    ``watched_from``: extra ranking examples (e.g. the eval split) whose watches also count as
    the user's, so a later watch is never a negative either.
    """
    k = cfg.retrieval_negatives_per_positive
    if k <= 0 or not data:
        return data
    watched_rows = [data] + ([watched_from] if watched_from else [])
    watched = negatives.watched_by_user(
        *(np.concatenate([d[key] for d in watched_rows])
          for key in (f.USER_ID, f.ITEM_ID, f.WATCH_SECONDS)))
    positives = np.flatnonzero(labels(data[f.WATCH_SECONDS], cfg.min_watch_seconds)[0] > 0)
    query_emb = tower_embeddings(retrieval_dir, "query_tower",
                                 {key: data[key][positives] for key in f.QUERY_FEATURES})
    item_emb = tower_embeddings(retrieval_dir, "candidate_tower", catalogue)
    extra = negatives.retrieval_negative_rows(
        data, positives, catalogue, query_emb, item_emb, watched, k,
        cfg.retrieval_negative_top_n, cfg.seed, RETRIEVAL_SCORE)
    return negatives.concat_rows(data, extra)


@dataclasses.dataclass(frozen=True)
class ItemCounts:
    """Each item's positives and examples among the training examples (sorted ids)."""

    ids: np.ndarray  # int64 [I], ascending
    positives: np.ndarray  # float32 [I]
    examples: np.ndarray  # float32 [I]

    @classmethod
    def fit(cls, items: np.ndarray, positive: np.ndarray) -> ItemCounts:
        ids, inverse = np.unique(np.asarray(items, np.int64), return_inverse=True)
        return cls(ids, np.bincount(inverse, weights=positive, minlength=len(ids)
                                    ).astype(np.float32),
                   np.bincount(inverse, minlength=len(ids)).astype(np.float32))

    def merge(self, other: ItemCounts) -> ItemCounts:
        """The counts of both sets of examples (e.g. two chunks of one split)."""
        ids, inverse = np.unique(np.concatenate([self.ids, other.ids]), return_inverse=True)
        total = lambda a, b: np.bincount(  # noqa: E731
            inverse, weights=np.concatenate([a, b]).astype(np.float64), minlength=len(ids)
        ).astype(np.float32)
        return ItemCounts(ids, total(self.positives, other.positives),
                          total(self.examples, other.examples))

    @property
    def global_rate(self) -> float:
        n = float(self.examples.sum())
        return float(self.positives.sum()) / n if n else 0.0


def popularity_features(positives: np.ndarray | tf.Tensor, examples: np.ndarray | tf.Tensor,
                        global_rate: float, prior_count: float) -> tf.Tensor:
    """[B, 3]: log1p(positives), log1p(examples) and (positives + m * global) / (examples + m)."""
    pos = tf.cast(positives, tf.float32)
    n = tf.cast(examples, tf.float32)
    rate = (pos + prior_count * global_rate) / (n + prior_count)
    return tf.stack([tf.math.log1p(pos), tf.math.log1p(n), rate], axis=1)


class RankingModel(GraphSteps, tf.keras.Model):
    def __init__(self, tft_layer, raw_spec: dict, sizes: VocabSizes, cfg: RankingConfig,
                 counts: ItemCounts | None = None, als_score: bool = False):
        super().__init__(name="ranker")
        self.tft_layer = tft_layer
        self.als_score = als_score  # the ALS_SCORE input is a feature (and in the signatures)
        self._raw_spec = raw_spec
        self.cfg = cfg
        self.counts_tables = None
        if cfg.item_popularity_features:
            if counts is None:
                raise ValueError("item_popularity_features needs the training examples' item "
                                 "counts (ItemCounts.fit); pass counts= or turn the option off")
            self.global_rate = counts.global_rate
            self.counts_tables = [tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(counts.ids, tf.int64), tf.constant(v, tf.float32)), 0.0)
                for v in (counts.positives, counts.examples)]
        d = cfg.embedding_dim
        self.user = tf.keras.layers.Embedding(sizes.user_id, d, name="user_id")
        self.items = SparseMeanEmbedding(sizes.item_id, d, name="item_id")
        self.cats = {k: tf.keras.layers.Embedding(getattr(sizes, k), 8, name=k)
                     for k in (f.COUNTRY, f.SUBSCRIPTION_TIER, f.AGE_BUCKET, f.DEVICE,
                               f.DIRECTOR)}
        self.pools = {k: SparseMeanEmbedding(getattr(sizes, k), 16, name=k)
                      for k in (f.GENRES, f.CAST, f.KEYWORDS, f.TITLE_TOKENS)}
        self.hour = tf.keras.layers.Embedding(24, 4, name="hour")
        self.dow = tf.keras.layers.Embedding(7, 4, name="day_of_week")
        self.norm = tf.keras.layers.LayerNormalization()
        self.crosses = [tfrs.layers.dcn.Cross(projection_dim=cfg.cross_projection_dim or None,
                                              name=f"cross_{i}")
                        for i in range(cfg.cross_layers)]
        self.deep = tf.keras.Sequential(
            [tf.keras.layers.Dense(n, activation="relu") for n in cfg.deep_layers], name="deep")
        self.watched_head = tf.keras.layers.Dense(1, name="watched")
        self.watch_time_head = tf.keras.layers.Dense(1, name="watch_time")
        # The shallow position tower: one bias per position bucket (0 = unknown).
        self.position_bias = tf.keras.layers.Embedding(
            cfg.position_buckets + 1, 1, embeddings_initializer="zeros", name="position_bias")

    def item_popularity(self, raw: dict) -> tf.Tensor:
        """[B, 3] popularity_features of the rows' items; a training row (carrying
        OWN_POSITIVE / OWN_EXAMPLE) leaves its own label out of its item's counts."""
        item = tf.reshape(tf.cast(raw[f.ITEM_ID], tf.int64), [-1])
        pos, n = (t.lookup(item) for t in self.counts_tables)
        if OWN_EXAMPLE in raw:
            pos -= tf.reshape(tf.cast(raw[OWN_POSITIVE], tf.float32), [-1])
            n -= tf.reshape(tf.cast(raw[OWN_EXAMPLE], tf.float32), [-1])
        return popularity_features(pos, n, self.global_rate, self.cfg.popularity_prior_count)

    def parts(self, raw: dict, keys=RAW_KEYS) -> dict[str, tf.Tensor]:
        """The network's input blocks of ``raw`` by name (``PARTS``), each [B, width]: the
        Transform layer on the ``keys`` given (the others get neutral defaults), then the
        embeddings, pools and numerics. Blocks whose inputs are not among ``keys`` are left
        out."""
        batch = tf.shape(raw[keys[0]])[0]
        x = self.tft_layer(complete_raw_inputs({k: raw[k] for k in keys}, self._raw_spec, batch))
        sq = lambda t: tf.reshape(t, [-1])  # noqa: E731
        query, candidate = set(keys) & set(f.QUERY_FEATURES), set(keys) & set(f.CANDIDATE_FEATURES)
        out = {}
        if query:
            out.update({
                "user": self.user(sq(x[xf(f.USER_ID)])),
                "history": self.items(x[xf(f.HISTORY)]),
                "hour": self.hour(sq(x[xf(f.HOUR)])),
                "day_of_week": self.dow(sq(x[xf(f.DAY_OF_WEEK)])),
                **{k: self.cats[k](sq(x[xf(k)])) for k in QUERY_CATEGORIES}})
        if candidate:
            out["item"] = self.items.lookup(sq(x[xf(f.ITEM_ID)]))
            if self.counts_tables is not None:
                out["popularity"] = self.item_popularity(raw)
            out["numeric"] = tf.concat(
                [tf.reshape(tf.cast(x[xf(k) + s], tf.float32), [-1, 1])
                 for k in (f.RELEASE_YEAR, f.DURATION_SECONDS) for s in ("", "_missing")], 1)
            out[f.DIRECTOR] = self.cats[f.DIRECTOR](sq(x[xf(f.DIRECTOR)]))
            out.update({k: pool(x[xf(k)]) for k, pool in self.pools.items()})
        if RETRIEVAL_SCORE in raw and self.cfg.use_retrieval_score:
            out[RETRIEVAL_SCORE] = tf.reshape(tf.cast(raw[RETRIEVAL_SCORE], tf.float32), [-1, 1])
        if self.als_score and ALS_SCORE in raw:
            out[ALS_SCORE] = tf.reshape(tf.cast(raw[ALS_SCORE], tf.float32), [-1, 1])
        return out

    @staticmethod
    def concat(parts: dict[str, tf.Tensor]) -> tf.Tensor:
        """The blocks in ``PARTS`` order -> [B, features]."""
        return tf.concat([parts[k] for k in PARTS if k in parts], axis=1)

    def candidate_vectors(self, candidates: dict) -> tf.Tensor:
        """[I, width] candidate-side blocks of raw candidate inputs, concatenated in ``PARTS``
        order (the by-id signature's item table)."""
        parts = self.parts(candidates, f.CANDIDATE_FEATURES)
        return self.concat(parts)

    def features(self, raw: dict) -> tf.Tensor:
        return self.concat(self.parts(raw))

    def head(self, x0: tf.Tensor, position: tf.Tensor | None = None) -> dict:
        """The cross network, the deep tower and the two heads on [B, features]; ``position``
        None: the serving position."""
        x0 = self.norm(x0)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        h = self.deep(x)
        if position is None:
            position = tf.fill(tf.shape(h)[:1], tf.constant(SERVING_POSITION, tf.int64))
        bucket = tf.clip_by_value(tf.reshape(tf.cast(position, tf.int64), [-1]), 0,
                                  self.cfg.position_buckets)
        logit = self.watched_head(h) + self.position_bias(bucket)
        return {WATCHED_LOGIT: tf.reshape(logit, [-1]),
                LOG_WATCH_TIME: tf.reshape(self.watch_time_head(h), [-1])}

    def call(self, raw: dict, training: bool = False) -> dict:
        return self.head(self.features(raw), raw.get(f.POSITION))

    # No tensor-dependent Python control flow in a step (Keras' train and test steps, the
    # Transform layer, the blocks, the cross and deep layers, Adam): without AutoGraph
    # converting that code, the first step of a fit traces in ~2 instead of ~9 s on MovieLens
    # 100K (the same graph: tests/test_pipeline_e2e.py compares the weights trained both ways).
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        return super().train_step(data)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        return super().test_step(data)


def _pair_scores(als_score: bool) -> dict[str, tf.TensorSpec]:
    keys = PAIR_SCORES if als_score else (RETRIEVAL_SCORE,)
    return {k: tf.TensorSpec([None], tf.float32, k) for k in keys}


def serving_signature(als_score: bool = False) -> dict[str, tf.TensorSpec]:
    """Every raw feature of N pairs, their retrieval scores and (``als_score``) ALS scores."""
    from trainer.retrieval import candidate_signature, query_signature

    return {**query_signature(), **candidate_signature(), **_pair_scores(als_score)}


def by_id_signature(als_score: bool = False) -> dict[str, tf.TensorSpec]:
    """The by-id signature's inputs: one page's query (batch 1, or one row per candidate) and
    its N candidates as ids with their retrieval (and ``als_score``: ALS) scores."""
    from trainer.retrieval import query_signature

    return {**query_signature(), f.ITEM_ID: tf.TensorSpec([None], tf.int64, f.ITEM_ID),
            **_pair_scores(als_score)}


class _Export(Export):
    """The exported ranker. ``serving_default`` takes every raw feature of N pairs. With a
    catalogue, ``rank_by_id`` takes the page's query once and N item ids: the candidate-side
    blocks of each catalogue title (``CANDIDATE_PARTS``: embeddings, pools, numerics, counts)
    are computed here, at export, into a table the signature gathers from, so a request sends
    no title features and runs the Transform layer on one row. A title not in the table (added
    after training) gets the blocks of a title without metadata and ``known`` false: score it
    with ``serving_default`` for its real features."""

    def __init__(self, model: RankingModel, catalogue: dict | None = None,
                 batch_size: int = 4096):
        super().__init__({"model": model}, model.tft_layer, model.variables,
                         model.counts_tables or ())
        self.item_table = self.item_rows = None
        if catalogue is None:
            return
        ids = np.asarray(catalogue[f.ITEM_ID], np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("the catalogue split lists an item id more than once; the by-id "
                             "ranker table needs one row per title")
        chunks = [model.candidate_vectors(
            {k: tf.constant(catalogue[k][s:s + batch_size]) for k in f.CANDIDATE_FEATURES})
            for s in range(0, len(ids), batch_size)]
        blank = {k: tf.constant(catalogue[k][:1]) for k in f.CANDIDATE_FEATURES}
        blank = {k: tf.fill(tf.shape(v), tf.constant(f.MISSING_INT if v.dtype == tf.int64 else
                                                      f.MISSING_STRING, v.dtype))
                 for k, v in blank.items()}
        blank[f.ITEM_ID] = tf.constant([-1], tf.int64)  # out of vocabulary
        chunks.append(model.candidate_vectors(blank))  # the last row: an unknown title
        self.item_table = tf.Variable(tf.concat(chunks, 0), trainable=False, name="item_table")
        self.item_rows = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
        one = model.parts({k: v[:1] for k, v in blank.items()}, f.CANDIDATE_FEATURES)
        self.widths = [int(one[k].shape[1]) for k in PARTS if k in one]
        self.names = [k for k in PARTS if k in one]

    @staticmethod
    def _outputs(out: dict) -> dict:
        return {P_WATCH: tf.sigmoid(out[WATCHED_LOGIT]),
                WATCH_TIME_SECONDS: tf.math.expm1(tf.maximum(out[LOG_WATCH_TIME], 0.0))}

    def serve(self, inputs: dict) -> dict:
        return self._outputs(self.model(inputs, training=False))  # no position: position 1

    def serve_by_id(self, inputs: dict) -> dict:
        query = {k: inputs[k] for k in f.QUERY_FEATURES}
        parts = self.model.parts({**query, **{k: inputs[k] for k in PAIR_SCORES if k in inputs}},
                                 f.QUERY_FEATURES)
        n = tf.shape(inputs[f.ITEM_ID])[0]
        rows_q = tf.shape(inputs[f.USER_ID])[0]
        tf.debugging.assert_equal(
            tf.logical_or(tf.equal(rows_q, 1), tf.equal(rows_q, n)), True,
            message="rank_by_id: send the query once (batch 1) or once per item id")
        rows = self.item_rows.lookup(tf.reshape(inputs[f.ITEM_ID], [-1]))
        known = rows >= 0
        gathered = tf.gather(self.item_table, tf.where(known, rows, tf.shape(
            self.item_table, out_type=tf.int64)[0] - 1))
        x0 = self._inputs(parts, gathered, n // rows_q)
        return {**self._outputs(self.model.head(x0)), KNOWN: known}

    def _inputs(self, parts: dict, gathered: tf.Tensor, repeat: tf.Tensor) -> tf.Tensor:
        """The head's input [N, features], the columns of ``RankingModel.concat``: the query's
        blocks (batch 1, or one row per id: tiled ``repeat`` times), the gathered candidate
        blocks and the pair scores. Blocks of one side that are neighbours in ``PARTS`` go as
        one: each run of query blocks is joined on its row and tiled once, and each run of
        candidate blocks is one column slice of the table's rows (its columns are the blocks in
        ``PARTS`` order), so ~7 pieces are joined instead of ~16 tiled and split apart."""
        width = dict(zip(self.names, self.widths, strict=True))
        present = [k for k in PARTS if k in parts or k in width]
        runs: list[tuple[str, list[str]]] = []
        for k in present:
            side = "candidate" if k in width else "pair" if k in PAIR_SCORES else "query"
            if runs and runs[-1][0] == side:
                runs[-1][1].append(k)
            else:
                runs.append((side, [k]))
        slices = iter(tf.split(gathered, [sum(width[k] for k in run)
                                          for side, run in runs if side == "candidate"], axis=1))
        blocks = []
        for side, run in runs:
            if side == "candidate":
                blocks.append(next(slices))
                continue
            block = parts[run[0]] if len(run) == 1 else tf.concat([parts[k] for k in run], 1)
            blocks.append(block if side == "pair" else tf.tile(block, [repeat, 1]))
        return tf.concat(blocks, axis=1)


def export_ranker(model: RankingModel, path: str, info: dict,
                  catalogue: dict | None = None) -> None:
    """Saves the ranker: ``serving_default`` always, ``rank_by_id`` with a ``catalogue`` (the
    catalogue split's raw candidate inputs, :func:`load_catalogue`)."""
    module = _Export(model, catalogue)
    # No tensor-dependent Python control flow: AutoGraph would only add tracing time.
    fn = tf.function(lambda **kw: module.serve(kw), autograph=False)
    inputs = serving_signature(model.als_score)
    signatures = {SIGNATURE: fn.get_concrete_function(**inputs)}
    if catalogue is not None:
        by_id = tf.function(lambda **kw: module.serve_by_id(kw), autograph=False)
        signatures[RANK_BY_ID] = by_id.get_concrete_function(**by_id_signature(model.als_score))
    tf.saved_model.save(module, path, signatures=signatures)
    # Serving reads which pair scores to send from "inputs" (serving/models/versions.py).
    write_export_info(path, {**info, "signatures": sorted(signatures), "inputs": sorted(inputs)})


# Examples in the training shuffle buffer. Streamed, it holds serialized records (~0.5 KB each
# on the simulated data: ~110 MB), which bounds the trainer's memory; the examples are written
# grouped by user, so it must span many users. Both paths use it, so an in-memory and a streamed
# split shuffle into the same order for a seed. (RankingConfig has no field for it.)
SHUFFLE_BUFFER = 200_000
# Serialized examples per chunk where a pass reads only a few columns (bounded memory).
SCAN_CHUNK = 65_536
# What the fit reads of each example: the model's inputs and the labels' column.
_COLUMNS = RAW_KEYS + (f.POSITION, f.WATCH_SECONDS)


@dataclasses.dataclass(frozen=True)
class RankingRecords:
    """A ranking split as gzipped TFRecord files of raw tf.Examples (``patterns``) and the
    retrieval model (``query_tower`` / ``candidate_tower`` under ``retrieval_dir``) that scores
    each pair: streamed where :func:`load_split` would hold it in memory."""

    patterns: tuple[str, ...]
    retrieval_dir: str
    als: AlsScorer | None = None  # scores each pair's ALS_SCORE too


# A train split: in memory (the dense inputs of load_split) or streamed from its files.
RankingSource = dict | RankingRecords


@dataclasses.dataclass(frozen=True)
class TrainSplit:
    """One pass over a train split's scalar columns: what the fit needs before it streams."""

    counts: ItemCounts  # over every row, fit and validation (each row leaves itself out)
    cutoff: int | None  # rows with timestamp >= cutoff validate; None: no validation rows
    fit_examples: int
    validation_examples: int


# The validation cutoff's resolution: it falls on a whole hour (UTC seconds // 3600).
CUTOFF_RESOLUTION_SECONDS = 3600


@dataclasses.dataclass(frozen=True)
class TimeHistogram:
    """Rows per ``resolution``-second bin of their timestamps, built chunk by chunk: what the
    validation cutoff needs, in memory set by the time span (a year by hour: 8,760 bins), not
    by the number of rows (exact timestamps: 8 bytes a row, 400 MB at 50M examples)."""

    bins: np.ndarray  # int64 [K] ascending: timestamp // resolution
    rows: np.ndarray  # int64 [K]
    resolution: int = CUTOFF_RESOLUTION_SECONDS

    @classmethod
    def of(cls, timestamps: np.ndarray, resolution: int = CUTOFF_RESOLUTION_SECONDS
           ) -> TimeHistogram:
        bins, rows = np.unique(np.asarray(timestamps, np.int64) // resolution,
                               return_counts=True)
        return cls(bins, rows.astype(np.int64), resolution)

    def merge(self, other: TimeHistogram) -> TimeHistogram:
        bins = np.concatenate([self.bins, other.bins])
        keys, at = np.unique(bins, return_inverse=True)
        rows = np.bincount(at, np.concatenate([self.rows, other.rows]), len(keys))
        return TimeHistogram(keys, rows.astype(np.int64), self.resolution)

    @property
    def total(self) -> int:
        return int(self.rows.sum())

    def at_or_after(self, cutoff: int) -> int:
        """Rows with timestamp >= ``cutoff`` (a bin boundary)."""
        return int(self.rows[self.bins >= cutoff // self.resolution].sum())

    def cutoff(self, share: float) -> int | None:
        """The validation rows' first timestamp: the latest bin boundary with at least
        ``share`` of the rows at or after it (so the latest ``share``, rounded up to whole
        bins). None when ``share`` is 0, there are under 10 rows or either side would be
        empty."""
        n = self.total
        if share <= 0 or n < 10:
            return None
        later = np.cumsum(self.rows[::-1])[::-1]  # rows at or after each bin's start
        enough = np.flatnonzero(later >= share * n)
        if not len(enough) or later[enough[-1]] >= n:
            return None
        return int(self.bins[enough[-1]]) * self.resolution


def validation_cutoff(timestamps: np.ndarray, share: float,
                      resolution: int = CUTOFF_RESOLUTION_SECONDS) -> int | None:
    """:meth:`TimeHistogram.cutoff` of an array of timestamps."""
    return TimeHistogram.of(timestamps, resolution).cutoff(share)


def scan_split(source: RankingSource, cfg: RankingConfig) -> TrainSplit:
    """The validation cutoff (``cfg.validation_share``, carved from the end of train so early
    stopping never looks at the eval split) and the item counts of a train split; files are
    read ``SCAN_CHUNK`` examples and three columns at a time."""
    keys = (f.ITEM_ID, f.WATCH_SECONDS, f.TIMESTAMP)
    if isinstance(source, dict):
        chunks = [{k: source[k] for k in keys}] if source else []
    else:
        chunks = raw_inputs.read_columns(list(source.patterns), keys, SCAN_CHUNK)
    counts = ItemCounts(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
    times = TimeHistogram.of(np.zeros(0, np.int64))
    for chunk in chunks:
        counts = counts.merge(ItemCounts.fit(
            chunk[f.ITEM_ID], labels(chunk[f.WATCH_SECONDS], cfg.min_watch_seconds)[0]))
        times = times.merge(TimeHistogram.of(chunk[f.TIMESTAMP]))
    cutoff = times.cutoff(cfg.validation_share)
    validation = 0 if cutoff is None else times.at_or_after(cutoff)
    return TrainSplit(counts, cutoff, times.total - validation, validation)


def _rows(source: RankingSource, cutoff: int | None, validation: bool) -> tf.data.Dataset:
    """One element per example, in file order, of the fit rows (timestamp < ``cutoff``, all
    without a cutoff) or the validation rows: in memory a dict of its columns, streamed its
    serialized record (the shuffle buffer's cheapest form)."""
    if isinstance(source, dict):
        ts = source[f.TIMESTAMP]
        keep = np.ones(len(ts), bool) if cutoff is None else (ts >= cutoff) == validation
        return tf.data.Dataset.from_tensor_slices(
            {k: source[k][keep] for k in _COLUMNS + PAIR_SCORES if k in source})
    records = raw_inputs.records(list(source.patterns))
    if cutoff is None:
        return records

    def side(serialized: tf.Tensor) -> tf.Tensor:
        ts = raw_inputs.parse_serialized(serialized, (f.TIMESTAMP,))[f.TIMESTAMP]
        return tf.boolean_mask(serialized, tf.equal(ts >= cutoff, validation))

    return records.batch(SCAN_CHUNK).map(side).unbatch()


def _dataset(source: RankingSource, split: TrainSplit, cfg: RankingConfig, validation: bool,
             shuffle: bool, scorer: RetrievalScorer | None = None) -> tf.data.Dataset:
    """Batches of (features, labels) of the split's fit or validation rows. Every row is in the
    model's item counts, so each carries its own contribution to leave out (``OWN_POSITIVE``,
    ``OWN_EXAMPLE``). Streamed, each batch is parsed as :func:`raw_inputs.parse_examples` does
    (lists padded to the batch's longest) and scored by the towers (``RETRIEVAL_SCORE``):
    ``scorer``'s, or the source's retrieval model loaded anew."""
    ds = _rows(source, split.cutoff, validation)
    if shuffle:
        n = split.validation_examples if validation else split.fit_examples
        ds = ds.shuffle(max(1, min(n, SHUFFLE_BUFFER)), seed=cfg.seed)
    ds = ds.batch(cfg.batch_size)
    # Streamed. (Not isinstance(source, RankingRecords): TFX's Trainer reloads this module, so
    # a caller's RankingRecords may be the class object from before the reload.)
    if not isinstance(source, dict):
        scorer, als = scorer or RetrievalScorer(source.retrieval_dir), source.als

        def parse(serialized: tf.Tensor) -> dict:
            x = raw_inputs.parse_serialized(serialized, _COLUMNS)
            x[RETRIEVAL_SCORE] = scorer(x)
            if als is not None:  # a Python object: decided while tracing
                x[ALS_SCORE] = als(x)
            return x

        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

    def labelled(x: dict) -> tuple[dict, dict]:
        watched, log_time = label_tensors(x[f.WATCH_SECONDS], cfg.min_watch_seconds)
        features = {k: x[k] for k in RAW_KEYS + PAIR_SCORES + (f.POSITION,) if k in x}
        features[OWN_POSITIVE], features[OWN_EXAMPLE] = watched, tf.ones_like(watched)
        return features, {WATCHED_LOGIT: watched, LOG_WATCH_TIME: log_time}

    return ds.map(labelled).prefetch(tf.data.AUTOTUNE)


def build_model(tft_out: tft.TFTransformOutput, cfg: RankingConfig,
                counts: ItemCounts | None = None, als_score: bool = False,
                user_buckets: int = 0) -> RankingModel:
    tf.keras.utils.set_random_seed(cfg.seed)
    model = RankingModel(tft_out.transform_features_layer(), tft_out.raw_feature_spec(),
                         vocab_sizes(tft_out, user_buckets), cfg, counts, als_score)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(cfg.learning_rate),
        loss={WATCHED_LOGIT: tf.keras.losses.BinaryCrossentropy(from_logits=True),
              LOG_WATCH_TIME: tf.keras.losses.MeanSquaredError()},
        loss_weights={WATCHED_LOGIT: cfg.watched_weight, LOG_WATCH_TIME: cfg.watch_time_weight},
    )
    return model


def train_ranker(train: RankingSource, transform_dir: str, cfg: RankingConfig,
                 epochs: int | None = None, steps: int | None = None,
                 user_buckets: int = 0) -> tuple[RankingModel, dict]:
    """Fits the ranker on a train split, in memory (the dense inputs of :func:`load_split`) or
    streamed from its files (:class:`RankingRecords`), early-stopping on a validation split
    carved from the end of train (``cfg.validation_share``); ``steps`` caps the steps per
    epoch."""
    split = scan_split(train, cfg)
    if not split.fit_examples + split.validation_examples:
        raise ValueError("the rank_train split has no examples; check the data")
    # Counts over every train row (fit and validation), each row leaving its own label out.
    als_score = (ALS_SCORE in train) if isinstance(train, dict) else train.als is not None
    model = build_model(tft.TFTransformOutput(transform_dir), cfg, split.counts, als_score,
                        user_buckets)
    t0 = time.perf_counter()
    # Streamed, both datasets score with one load of the towers (~1.2 s each on MovieLens).
    scorer = None if isinstance(train, dict) else RetrievalScorer(train.retrieval_dir)
    train_ds = _dataset(train, split, cfg, validation=False, shuffle=True, scorer=scorer)
    if steps is not None:
        train_ds = train_ds.take(steps)
    val_ds, callbacks = None, [Progress("RankingTrainer", cfg.batch_size)]
    if split.validation_examples:
        val_ds = _dataset(train, split, cfg, validation=True, shuffle=False, scorer=scorer)
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=f"val_{WATCHED_LOGIT}_loss", patience=cfg.early_stopping_patience,
            restore_best_weights=True))
    history = model.fit(train_ds, validation_data=val_ds,
                        epochs=epochs if epochs is not None else cfg.epochs, callbacks=callbacks,
                        verbose=2)
    seconds = time.perf_counter() - t0
    return model, {"train_examples": split.fit_examples,
                   "validation_examples": split.validation_examples,
                   "epochs_run": len(history.history["loss"]),
                   "train_seconds": round(seconds, 2),
                   "final_loss": float(history.history["loss"][-1])}


def als_scorer(custom_config: dict, config: Config, examples_uri: str) -> AlsScorer | None:
    """The training rows' ALS feature (out of fold, with the run's ALS settings, the
    AlsTrainer's) when the RankingTrainer was given an ALS model (its
    ``custom_config[ALS_MODEL_KEY]``, components/ranking_trainer) and ``ranking.use_als_score``."""
    if not (custom_config.get(ALS_MODEL_KEY) and config.ranking.use_als_score):
        return None
    return als_feature.out_of_fold_scorer(examples_uri, config.als,
                                          config.ranking.als_score_folds)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point. ``fn_args.base_model``: the retrieval model (for the score);
    ``custom_config[ALS_MODEL_KEY]``: the ALS model, when the pipeline trains one."""
    config = Config.from_json(fn_args.custom_config["config"])
    cfg = config.ranking
    steps = fn_args.custom_config.get("max_steps")
    # .../Split-rank_train/* -> the Examples artifact (its train split folds the ALS users in)
    examples_uri = os.path.dirname(os.path.dirname(fn_args.train_files[0]))
    als = als_scorer(fn_args.custom_config, config, examples_uri)
    train: RankingSource = RankingRecords(tuple(fn_args.train_files), fn_args.base_model, als)
    catalogue = [p.replace("Split-rank_train", "Split-catalogue") for p in fn_args.train_files]
    extra = 0
    if cfg.retrieval_negatives_per_positive > 0:
        # Hard negatives (off by default) are drawn against every user's watches and the whole
        # catalogue at once, so this path holds the split in memory. Only the training period's
        # watches exclude a hard negative: reading the eval split's would let the gate's own
        # labels shape the training examples.
        train = load_split(fn_args.train_files, fn_args.base_model)
        if not train:
            raise ValueError("the rank_train split has no examples; check the data")
        n_examples = len(train[f.WATCH_SECONDS])
        train = add_retrieval_negatives(train, load_catalogue(catalogue), fn_args.base_model, cfg)
        extra = len(train[f.WATCH_SECONDS]) - n_examples
        if als is not None:  # the added negatives too
            train[ALS_SCORE] = als_feature.scores(als, train)
    model, metrics = train_ranker(train, fn_args.transform_output, cfg, steps=steps,
                                  user_buckets=config.data.user_id_hash_buckets)
    metrics["retrieval_negatives"] = extra
    retrieval_run = json.loads(mio.read_text(os.path.join(fn_args.base_model, "metadata.json"))
                               )["training_run"]
    info = {"retrieval_training_run": retrieval_run, "metrics": metrics,
            "als_score": als is not None, "config": dataclasses.asdict(cfg)}
    export_ranker(model, os.path.join(fn_args.serving_model_dir, "ranker"), info,
                  load_catalogue(catalogue))
    mio.write_text(os.path.join(fn_args.serving_model_dir, "metadata.json"),
                   json.dumps(info, indent=2))
    print(json.dumps(metrics, indent=2))

