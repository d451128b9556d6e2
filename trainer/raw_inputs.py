"""Raw tf.Examples -> the dense, padded inputs of the towers' serving signatures.

Used by the indexer (to embed the catalogue and held-out queries through the exported
SavedModels exactly as serving does), by the ranking trainer (which streams its examples:
:func:`records` and :func:`parse_serialized` inside ``tf.data``) and by tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from trainer import features as f
from trainer.retrieval import HISTORY_PAD, LIST_PAD

_LIST_PAD = {tf.int64: HISTORY_PAD, tf.string: LIST_PAD}


def raw_feature_spec(keys) -> dict:
    spec = {}
    for k in keys:
        if k in f.QUERY_INT_LIST:
            spec[k] = tf.io.VarLenFeature(tf.int64)
        elif k in f.CANDIDATE_STRING_LIST:
            spec[k] = tf.io.VarLenFeature(tf.string)
        elif k in f.OPTIONAL_INT:  # absent when unknown: the signatures' 0
            spec[k] = tf.io.FixedLenFeature([], tf.int64, default_value=f.MISSING_INT)
        elif k in f.QUERY_INT + f.CANDIDATE_INT + f.META_INT:
            spec[k] = tf.io.FixedLenFeature([], tf.int64)
        elif k in f.META_FLOAT:
            spec[k] = tf.io.FixedLenFeature([], tf.float32)
        else:
            spec[k] = tf.io.FixedLenFeature([], tf.string)
    return spec


def parse_serialized(serialized: tf.Tensor, keys) -> dict[str, tf.Tensor]:
    """Parses a [B] string tensor of serialized raw examples into signature inputs: scalars [B],
    lists [B, L] padded to the batch's longest. Graph-safe (``tf.data.Dataset.map``)."""
    parsed = tf.io.parse_example(serialized, raw_feature_spec(keys))
    out = {}
    for k, v in parsed.items():
        if isinstance(v, tf.SparseTensor):
            v = tf.sparse.to_dense(v, default_value=_LIST_PAD[v.dtype])
        out[k] = v
    return out


def parse_examples(serialized: list[bytes], keys) -> dict[str, tf.Tensor]:
    """Parses serialized raw examples into signature inputs: scalars [B], lists [B, L] padded."""
    return parse_serialized(tf.constant(serialized), keys)


def records(patterns: list[str]) -> tf.data.Dataset:
    """The serialized examples of the gzipped TFRecord files matching ``patterns``, streamed in
    a fixed order (patterns in turn, each one's files sorted)."""
    files = [p for pattern in patterns for p in sorted(tf.io.gfile.glob(pattern))]
    return tf.data.TFRecordDataset(files, compression_type="GZIP")


def read_examples(patterns: list[str], limit: int | None = None) -> list[bytes]:
    """Every serialized example (up to ``limit``) in memory; :func:`read_columns` streams."""
    ds = records(patterns)
    if limit is not None:
        ds = ds.take(limit)
    return [r.numpy() for r in ds]


def read_columns(patterns: list[str], keys, chunk: int = 65_536
                 ) -> Iterator[dict[str, np.ndarray]]:
    """The ``keys`` columns of the examples, ``chunk`` rows at a time (numpy, as
    :func:`parse_examples`), holding one chunk of serialized examples at a time."""
    ds = records(patterns).batch(chunk).map(lambda s: parse_serialized(s, keys))
    for batch in ds:
        yield {k: v.numpy() for k, v in batch.items()}


def columns(patterns: list[str], keys) -> dict[str, np.ndarray]:
    """The whole ``keys`` columns of the examples (scalar keys: a few bytes a row), read chunk by
    chunk so the serialized examples are never all in memory."""
    chunks = list(read_columns(patterns, keys))
    return {k: np.concatenate([ch[k] for ch in chunks]) if chunks else np.zeros(0, np.int64)
            for k in keys}


def embed(signature, inputs: dict[str, tf.Tensor], batch_size: int = 4096) -> np.ndarray:
    """Runs a tower's serving signature over inputs in batches -> embeddings [N, dim]."""
    n = int(next(iter(inputs.values())).shape[0])
    out = []
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in inputs.items()}
        out.append(signature(**chunk)["embedding"].numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
