"""The ranker's ALS feature: the pair's ALS score as serving gives it, for the training and
evaluation rows.

Serving scores a candidate with the user's vector folded in from all their positive watches
(``serving/sources/als.py``), and a candidate is never one of them. A training row is scored the
same way: the vector folded in from the user's positives in the retrieval train split (what the
ALS model was fitted on and what serving loads), and a row whose title is one of those positives
gets the score with that title left out (``AlsModel.fold_in_leave_one_out``), so its own label
does not leak into the feature. (The item factors were still fitted with it: the remaining
in-sample share, as with the retrieval score.) A user without a known positive, or a title the
model has no factors for, scores 0, as serving sends.

:class:`AlsScorer` holds the user vectors, the item factors and the left-out scores as tables
and scores batches inside ``tf.data`` (the streamed training split) or eagerly.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from marquee.als import AlsModel, load_als
from trainer import features as f
from trainer import raw_inputs

# The rows of the retrieval train split: one per positive watch (the ALS fit's positives).
FOLD_IN_SPLIT = "train"


def user_vectors(model: AlsModel, users: np.ndarray, items: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user ids [U] sorted, their vectors [U, f] float32, pair keys [P] int64 = user row x
    titles + item row of every known positive, each pair's left-out score [P] float32) from the
    positives ``(users[n], items[n])``."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    ids, vectors, keys, loo = [], [], [], []
    for user, own in zip(np.split(users, cuts), np.split(items, cuts), strict=True):
        folded = model.fold_in_leave_one_out(own) if len(own) else None
        if folded is None:
            continue
        x, rows, scores = folded
        keys.append(len(ids) * len(model.item_ids) + rows)
        ids.append(int(user[0]))
        vectors.append(x)
        loo.append(scores)
    return (np.asarray(ids, np.int64), np.asarray(vectors, np.float32).reshape(-1, model.factors),
            _concat(keys, np.int64), _concat(loo, np.float32))


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


class AlsScorer:
    """``scorer(inputs) -> [B] float32``: the ALS score of each (``user_id``, ``item_id``) row,
    as the module docstring defines it. Graph-safe (plain TensorFlow ops, so ``tf.data``'s
    AutoGraph has nothing to convert)."""

    def __init__(self, model: AlsModel, users: np.ndarray, items: np.ndarray):
        ids, vectors, keys, loo = user_vectors(model, users, items)
        self.titles = len(model.item_ids)
        self.users, self.vectors = len(ids), tf.constant(vectors)
        self.factors = tf.constant(model.item_factors)
        self.user_rows = _table(ids, np.arange(len(ids), dtype=np.int64), -1)
        self.item_rows = _table(model.item_ids, np.arange(self.titles, dtype=np.int64), -1)
        self.left_out = _table(keys, loo, np.nan)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, inputs: dict) -> tf.Tensor:
        user = self.user_rows.lookup(tf.reshape(tf.cast(inputs[f.USER_ID], tf.int64), [-1]))
        item = self.item_rows.lookup(tf.reshape(tf.cast(inputs[f.ITEM_ID], tf.int64), [-1]))
        known = (user >= 0) & (item >= 0)
        dot = tf.reduce_sum(tf.gather(self.vectors, tf.maximum(user, 0))
                            * tf.gather(self.factors, tf.maximum(item, 0)), axis=1)
        own = self.left_out.lookup(tf.where(known, user * self.titles + item, -1))
        return tf.where(known, tf.where(tf.math.is_nan(own), dot, own), 0.0)


def _table(keys: np.ndarray, values: np.ndarray, default) -> tf.lookup.StaticHashTable:
    values = np.asarray(values)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(np.asarray(keys, np.int64)), tf.constant(values)),
        tf.constant(default, tf.as_dtype(values.dtype)))


def load_scorer(als_dir: str, examples_uri: str) -> AlsScorer:
    """The scorer of the ALS model in ``als_dir`` (as the AlsTrainer saved it) with the users'
    vectors folded in from the retrieval train split of the Examples at ``examples_uri``."""
    cols = raw_inputs.columns([os.path.join(examples_uri, f"Split-{FOLD_IN_SPLIT}", "*")],
                              (f.USER_ID, f.ITEM_ID))
    if not len(cols[f.USER_ID]):
        raise ValueError(f"{examples_uri} has no Split-{FOLD_IN_SPLIT} examples to fold the "
                         "ALS users in from; pass the ExampleGen's examples")
    return AlsScorer(load_als(als_dir), cols[f.USER_ID], cols[f.ITEM_ID])


def scores(scorer: AlsScorer, inputs: dict, batch_size: int = 65_536) -> np.ndarray:
    """[N] the scorer's scores of in-memory rows, in batches."""
    n = len(inputs[f.USER_ID])
    return np.concatenate(
        [scorer({k: tf.convert_to_tensor(inputs[k][s:s + batch_size])
                 for k in (f.USER_ID, f.ITEM_ID)}).numpy() for s in range(0, n, batch_size)]
        or [np.zeros(0, np.float32)])
