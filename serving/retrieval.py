"""In-process retrieval over a pushed serving directory: query tower, then ScaNN in the client.

This is the in-process backend of the thin client: it loads the latest pushed version of the
query tower SavedModel and of the retrieval index from ``BASE`` (the Pusher's layout, see
``components/model_pusher/push_lib.py``), refuses a pair from different training runs, and answers
"top k items for this user now".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.model_pusher.push_lib import QUERY_TOWER, RETRIEVAL_INDEX, versions
from components.scann_indexer.index_lib import RetrievalIndex, load_index
from trainer import features as f
from trainer.retrieval import HISTORY_PAD


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
    info = saved_model_dir / "assets.extra" / "marquee.json"
    if not info.is_file():
        raise ModelMismatch(f"{saved_model_dir}: no assets.extra/marquee.json; cannot tell which "
                            "training run it comes from. Re-push it with the marquee pipeline.")
    return json.loads(info.read_text())["training_run"]


def latest(base: Path, model: str) -> tuple[int, Path]:
    vs = versions(base / model)
    if not vs:
        raise NoPushedModel(
            f"{base / model}: no pushed version. Run `marquee pipeline run` first; its Pusher "
            f"writes {base}/<model>/<version>/.")
    return vs[-1], base / model / str(vs[-1])


def check_same_run(query_run: str, index_run: str, where: str) -> None:
    if query_run != index_run:
        raise ModelMismatch(
            f"{where}: the query tower is from training run {query_run} but the index is from "
            f"{index_run}; their embeddings are not comparable. Push both from one run.")


class InProcessRetriever:
    def __init__(self, base: str | Path, history_length: int = 20):
        base = Path(base)
        self.version, qdir = latest(base, QUERY_TOWER)
        _, idir = latest(base, RETRIEVAL_INDEX)
        self.index: RetrievalIndex = load_index(idir)
        self.training_run = training_run_of(qdir)
        check_same_run(self.training_run, self.index.metadata.get("training_run", "?"), str(base))
        self._query = tf.saved_model.load(str(qdir)).signatures["serving_default"]
        self.history_length = history_length

    def query_embeddings(self, queries: Sequence[QueryFeatures]) -> np.ndarray:
        """[B, dim] query embeddings."""
        return self._query(**query_inputs(queries, self.history_length))["embedding"].numpy()

    def retrieve(self, query: QueryFeatures, k: int = 100,
                 exclude: Sequence[int] = ()) -> list[tuple[int, float]]:
        """Top ``k`` (item id, score), best first, without the items in ``exclude``."""
        excluded = set(int(i) for i in exclude)
        ids, scores = self.index.search(self.query_embeddings([query]), k + len(excluded))
        pairs = zip(ids[0], scores[0], strict=True)
        out = [(int(i), float(s)) for i, s in pairs if int(i) not in excluded]
        return out[:k]
