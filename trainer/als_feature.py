"""The ranker's ALS feature: the pair's ALS score, out of sample as serving gives it.

Serving scores a candidate with the pushed ALS model and the user's vector folded in from all
their positive watches (``serving/sources/als.py``), and a candidate is never one of them nor
in the model's fit. A ranker training row must get a score with that meaning, or the ranker
learns from inflated scores: scored by the ALS model that was fitted on those very positives
(even with the row's own title left out of the fold-in: the title's factors were fitted to this
user), the ranker reached an eval AUC of 0.719 against 0.867 without the feature on MovieLens
100K, and a log loss of 1.48 against 0.35, and was not blessed.

So the training rows are scored **out of fold** (:func:`out_of_fold_scorer`): the retrieval
train split's positives (the ALS fit's) are dealt into ``folds`` folds by (user, title)
(:func:`fold_of`); for each fold an ALS model with the run's settings is fitted on the other
folds' positives, and a row whose (user, title) falls in that fold is scored by that model with
the user's vector folded in from their positives in the other folds: a model that never saw the
pair, and a history that does not hold it. A user with nothing to fold in, or a title without
factors, scores 0, as serving sends. The RankingEvaluator's rows (the rank_eval split, later
than train) are scored like serving: the pushed model, every train positive folded in
(:func:`load_scorer`, one "fold").

:class:`AlsScorer` holds the user vectors and item factors of every fold as tables and scores
batches inside ``tf.data`` (the streamed training split) or eagerly.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from marquee.als import AlsModel, load_als
from marquee.config import AlsConfig
from marquee.data import contract as c
from trainer import features as f
from trainer import raw_inputs

# The rows of the retrieval train split: one per positive watch (the ALS fit's positives).
FOLD_IN_SPLIT = "train"
CATALOGUE_SPLIT = "catalogue"
# fold = (user * FOLD_MULTIPLIER + title) mod folds, the same in numpy and in the graph.
FOLD_MULTIPLIER = 1_000_003


def fold_of(users: np.ndarray, items: np.ndarray, folds: int) -> np.ndarray:
    """The fold ``[N]`` of each (user, title) pair."""
    return (np.asarray(users, np.int64) * FOLD_MULTIPLIER + np.asarray(items, np.int64)) % folds


def _vectors(model: AlsModel, users: np.ndarray, items: np.ndarray, user_ids: np.ndarray
             ) -> np.ndarray:
    """[U, f] each of ``user_ids``' (sorted) vector folded in from their ``(users, items)``
    positives; zeros for a user with none the model knows."""
    out = np.zeros((len(user_ids), model.factors), np.float32)
    projected = model.projected()
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    for user, own in zip(np.split(users, cuts), np.split(items, cuts), strict=True):
        if len(own):
            x = model.fold_in(own, projected)
            if x is not None:
                out[np.searchsorted(user_ids, user[0])] = x
    return out


class AlsScorer:
    """``scorer(inputs) -> [B] float32``: each (``user_id``, ``item_id``) row's ALS score by the
    model of its fold (:func:`fold_of`), the user folded in from their positives outside that
    fold (with one model and ``folds`` 1: every positive). Graph-safe (plain TensorFlow ops, so
    ``tf.data``'s AutoGraph has nothing to convert)."""

    def __init__(self, models: list[AlsModel], users: np.ndarray, items: np.ndarray):
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        self.models, self.folds = models, len(models)
        ids = models[0].item_ids
        if any(not np.array_equal(m.item_ids, ids) for m in models):
            raise ValueError("every fold's ALS model must cover the same titles")
        self.user_ids = np.unique(users)
        fold = fold_of(users, items, self.folds)
        vectors = [_vectors(m, users[fold != k] if self.folds > 1 else users,
                            items[fold != k] if self.folds > 1 else items, self.user_ids)
                   for k, m in enumerate(models)]
        self.users, self.titles = len(self.user_ids), len(ids)
        self.vectors = tf.constant(np.concatenate(vectors).reshape(-1, models[0].factors))
        self.factors = tf.constant(np.concatenate([m.item_factors for m in models]))
        self.user_rows = _table(self.user_ids, np.arange(self.users, dtype=np.int64))
        self.item_rows = _table(ids, np.arange(self.titles, dtype=np.int64))

    @tf.autograph.experimental.do_not_convert
    def __call__(self, inputs: dict) -> tf.Tensor:
        user_id = tf.reshape(tf.cast(inputs[f.USER_ID], tf.int64), [-1])
        item_id = tf.reshape(tf.cast(inputs[f.ITEM_ID], tf.int64), [-1])
        user, item = self.user_rows.lookup(user_id), self.item_rows.lookup(item_id)
        fold = tf.math.floormod(user_id * FOLD_MULTIPLIER + item_id, self.folds)
        known = (user >= 0) & (item >= 0)
        dot = tf.reduce_sum(
            tf.gather(self.vectors, fold * self.users + tf.maximum(user, 0))
            * tf.gather(self.factors, fold * self.titles + tf.maximum(item, 0)), axis=1)
        return tf.where(known, dot, 0.0)


def _table(keys: np.ndarray, values: np.ndarray) -> tf.lookup.StaticHashTable:
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(np.asarray(keys, np.int64)), tf.constant(values)), tf.constant(-1, tf.int64))


def _split(examples_uri: str, split: str, keys) -> dict[str, np.ndarray]:
    return raw_inputs.columns([os.path.join(examples_uri, f"Split-{split}", "*")], keys)


def train_positives(examples_uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, titles) of the retrieval train split of the Examples at ``examples_uri``."""
    cols = _split(examples_uri, FOLD_IN_SPLIT, (f.USER_ID, f.ITEM_ID))
    if not len(cols[f.USER_ID]):
        raise ValueError(f"{examples_uri} has no Split-{FOLD_IN_SPLIT} examples to fold the "
                         "ALS users in from; pass the ExampleGen's examples")
    return np.asarray(cols[f.USER_ID], np.int64), np.asarray(cols[f.ITEM_ID], np.int64)


def out_of_fold_scorer(examples_uri: str, config: AlsConfig, folds: int) -> AlsScorer:
    """The training rows' scorer: ``folds`` ALS models with ``config``'s settings, each fitted
    on the train positives outside its fold (the module docstring)."""
    from components.als_trainer.als_lib import fit

    if folds < 2:
        raise ValueError(f"ranking.als_score_folds: expected an integer >= 2 (each fold's rows "
                         f"scored by a model fitted without them), got {folds}")
    users, items = train_positives(examples_uri)
    catalogue = np.unique(np.asarray(
        _split(examples_uri, CATALOGUE_SPLIT, (f.ITEM_ID,))[f.ITEM_ID], np.int64))
    fold = fold_of(users, items, folds)
    start, models = time.perf_counter(), []
    for k in range(folds):
        rest = fold != k
        models.append(fit(pd.DataFrame({c.USER_ID: users[rest], c.ITEM_ID: items[rest]}),
                          catalogue, config, {"fold": k, "folds": folds}))
    scorer = AlsScorer(models, users, items)
    print(f"RankingTrainer: the ALS feature out of {folds} folds ({len(users):,} positives, "
          f"{config.factors} factors) in {time.perf_counter() - start:.1f} s")
    return scorer


def load_scorer(als_dir: str, examples_uri: str) -> AlsScorer:
    """Serving's scores: the ALS model in ``als_dir`` (as the AlsTrainer saved it), every
    user folded in from all their retrieval-train positives."""
    users, items = train_positives(examples_uri)
    return AlsScorer([load_als(als_dir)], users, items)


def scores(scorer: AlsScorer, inputs: dict, batch_size: int = 65_536) -> np.ndarray:
    """[N] the scorer's scores of in-memory rows, in batches."""
    n = len(inputs[f.USER_ID])
    return np.concatenate(
        [scorer({k: tf.convert_to_tensor(inputs[k][s:s + batch_size])
                 for k in (f.USER_ID, f.ITEM_ID)}).numpy() for s in range(0, n, batch_size)]
        or [np.zeros(0, np.float32)])
