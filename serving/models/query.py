"""The query side of retrieval: raw query features, and the training-run check that keeps a
query tower and an index from different runs apart (used by ``serving/models/backends.py``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from marquee.artifacts import EXPORT_INFO, HISTORY_PAD
from trainer import features as f


class ModelMismatch(RuntimeError):
    """The query tower and the index come from different training runs."""


class NoPushedModel(FileNotFoundError):
    pass


@dataclasses.dataclass(frozen=True)
class QueryFeatures:
    """Raw query features of one request. ``history``: item ids watched, most recent first."""

    user_id: int
    timestamp: int
    device: str = "unknown"
    country: str = "unknown"
    subscription_tier: str = "unknown"
    age_bucket: str = ""
    history: Sequence[int] = ()


def query_inputs(queries: Sequence[QueryFeatures], history_length: int) -> dict[str, tf.Tensor]:
    """The query tower signature's inputs for a batch: scalars [B], history [B, H] padded."""
    hist = np.full((len(queries), max(1, history_length)), HISTORY_PAD, np.int64)
    for r, q in enumerate(queries):
        h = list(q.history)[:history_length]
        hist[r, :len(h)] = h
    return {
        f.USER_ID: tf.constant([q.user_id for q in queries], tf.int64),
        f.HOUR: tf.constant([f.hour_of_day(q.timestamp) for q in queries], tf.int64),
        f.DAY_OF_WEEK: tf.constant([f.day_of_week(q.timestamp) for q in queries], tf.int64),
        f.DEVICE: tf.constant([q.device for q in queries]),
        f.COUNTRY: tf.constant([q.country for q in queries]),
        f.SUBSCRIPTION_TIER: tf.constant([q.subscription_tier for q in queries]),
        f.AGE_BUCKET: tf.constant([q.age_bucket for q in queries]),
        f.HISTORY: tf.constant(hist),
    }


def training_run_of(saved_model_dir: Path) -> str:
    info = Path(saved_model_dir, *EXPORT_INFO)
    if not info.is_file():
        raise ModelMismatch(f"{saved_model_dir}: no assets.extra/marquee.json; cannot tell which "
                            "training run it comes from. Re-push it with the marquee pipeline.")
    return json.loads(info.read_text())["training_run"]


def check_same_run(query_run: str, index_run: str, where: str) -> None:
    if query_run != index_run:
        raise ModelMismatch(
            f"{where}: the query tower is from training run {query_run} but the index is from "
            f"{index_run}; their embeddings are not comparable. Push both from one run.")
