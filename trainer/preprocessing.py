"""TFX Transform module: raw retrieval features -> model inputs.

The analysers run on the train split only; the resulting graph is embedded in every exported
tower, so serving feeds raw features and cannot skew from training.

Outputs (``features.transformed_name`` of each key), shapes for a batch of B examples:
- ids (user, item, history): vocabulary indices with ``oov_buckets`` out-of-vocabulary buckets,
  so an unseen id maps to a bucket instead of failing. Item id and history share one vocabulary.
  With ``data.user_id_hash_buckets`` N > 0 (``custom_config``), the user id is hashed into N
  buckets instead (:func:`user_index`): no vocabulary over 100M users.
  user/item: int64 [B, 1]; history: SparseTensor int64 [B, None].
- categorical strings (country, tier, age bucket, device, director): vocabulary index [B, 1],
  one OOV bucket. Genres, cast, keywords, title tokens: SparseTensor [B, None].
- hour [B, 1] (24 buckets) and day of week [B, 1] (7 buckets) pass through as bucket ids.
- release year and log duration: z-scored over known values; missing (a release year absent
  from the example, a duration of 0) becomes the mean (0.0 after scaling) plus a ``_missing``
  flag, float32 [B, 1].
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from trainer import features as f

# Out-of-vocabulary buckets for ids (an unseen user or item lands in one of these).
ID_OOV_BUCKETS = 10
TITLE_VOCAB_SIZE = 20_000


def _as_string(x):
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, tf.strings.as_string(x.values), x.dense_shape)
    return tf.strings.as_string(x)


def _known_scaled(x: tf.Tensor | tf.SparseTensor, log: bool = False
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Z-scores the known (> 0) values; missing values (0, or absent from a sparse [B, <=1]
    input) become 0.0 with a flag of 1.0. Outputs [B, 1]."""
    if isinstance(x, tf.SparseTensor):  # release_year: absent when unknown
        x = tft.sparse_tensor_to_dense_with_shape(x, [None, 1], default_value=f.MISSING_INT)
    x = tf.cast(x, tf.float32)
    known = x > 0
    v = tf.math.log1p(tf.maximum(x, 0.0)) if log else x
    kv = tf.boolean_mask(v, known)
    mean = tft.mean(kv)
    std = tf.sqrt(tft.var(kv)) + 1e-6
    scaled = tf.where(known, (v - mean) / std, tf.zeros_like(v))
    return scaled, 1.0 - tf.cast(known, tf.float32)


def title_tokens(title: tf.Tensor) -> tf.SparseTensor:
    """Lower-cased alphanumeric word tokens of a [B, 1] string title -> SparseTensor [B, None]."""
    text = tf.strings.lower(tf.reshape(title, [-1]))
    text = tf.strings.regex_replace(text, r"[^a-z0-9]+", " ")
    return tf.strings.split(text).to_sparse()


def user_buckets(custom_config: dict | None) -> int:
    """``data.user_id_hash_buckets`` of the run's config (0: a vocabulary)."""
    if not custom_config or "config" not in custom_config:
        return 0
    from marquee.config import Config

    return Config.from_json(custom_config["config"]).data.user_id_hash_buckets


def user_index(user_id: tf.Tensor, buckets: int) -> tf.Tensor:
    """The user id's index: its vocabulary index (``buckets`` 0), or its decimal string's
    FarmHash fingerprint modulo ``buckets`` (the same in every process and at serving)."""
    if buckets:
        return tf.strings.to_hash_bucket_fast(_as_string(user_id), buckets)
    return tft.compute_and_apply_vocabulary(
        _as_string(user_id), num_oov_buckets=ID_OOV_BUCKETS, vocab_filename=f.USER_VOCAB)


def preprocessing_fn(inputs: dict, custom_config: dict | None = None) -> dict:
    """``custom_config``: ``{"config": Config.to_json()}`` as the pipeline passes it (only
    ``data.user_id_hash_buckets`` is read); None gives the defaults."""
    out = {}
    xf = f.transformed_name

    out[xf(f.USER_ID)] = user_index(inputs[f.USER_ID], user_buckets(custom_config))
    item_vocab = tft.vocabulary(_as_string(inputs[f.ITEM_ID]), vocab_filename=f.ITEM_VOCAB)
    out[xf(f.ITEM_ID)] = tft.apply_vocabulary(
        _as_string(inputs[f.ITEM_ID]), item_vocab, num_oov_buckets=ID_OOV_BUCKETS)
    out[xf(f.HISTORY)] = tft.apply_vocabulary(
        _as_string(inputs[f.HISTORY]), item_vocab, num_oov_buckets=ID_OOV_BUCKETS)

    for key in f.QUERY_STRING + (f.DIRECTOR,) + f.CANDIDATE_STRING_LIST:
        out[xf(key)] = tft.compute_and_apply_vocabulary(
            inputs[key], num_oov_buckets=1, vocab_filename=f.vocab_name(key))
    out[xf(f.TITLE_TOKENS)] = tft.compute_and_apply_vocabulary(
        title_tokens(inputs[f.TITLE]), top_k=TITLE_VOCAB_SIZE, num_oov_buckets=1,
        vocab_filename=f.vocab_name(f.TITLE_TOKENS))

    out[xf(f.HOUR)] = tf.clip_by_value(inputs[f.HOUR], 0, 23)
    out[xf(f.DAY_OF_WEEK)] = tf.clip_by_value(inputs[f.DAY_OF_WEEK], 0, 6)

    for key, log in ((f.RELEASE_YEAR, False), (f.DURATION_SECONDS, True)):
        scaled, missing = _known_scaled(inputs[key], log=log)
        out[xf(key)] = scaled
        out[xf(key) + "_missing"] = missing
    # Raw ids pass through for evaluation (the towers read only the _xf features).
    out[f.ITEM_ID] = inputs[f.ITEM_ID]
    out[f.HISTORY] = inputs[f.HISTORY]
    return out
