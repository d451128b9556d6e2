"""Names and rules the pipeline writes and serving reads: the one home of each.

The Pusher's layout (``components/model_pusher``) and the trainers' exports (``trainer/``) use
these, and so does serving (``serving/``), which must not import a trainer or a TFX component
to get a string::

    BASE/query_tower/<version>/        SavedModel: serving_default(raw query features)
                                       -> {"embedding": [B, dim]}
    BASE/candidate_tower/<version>/    SavedModel: serving_default(raw item features)
                                       -> {"embedding": [N, dim]}
    BASE/retrieval_index/<version>/    ScaNN index (marquee.retrieval_index), searched in the client
    BASE/ranker/<version>/             SavedModel: serving_default(query + item features,
                                       retrieval_score [N][, als_score [N]]) -> {p_watch: [N],
                                       watch_time_seconds: [N]}; rank_by_id(query [1],
                                       item_id [N], retrieval_score [N][, als_score [N]])
                                       -> the same + known [N]; als_score only in a ranker
                                       trained with it (its export info's "inputs")
    BASE/als/<version>/                ALS item factors (marquee.als), scored in the client
    BASE/models.config                 TF Serving --model_config_file
    BASE/pushes.jsonl                  one line per push
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- the model base (Pusher)
QUERY_TOWER = "query_tower"
CANDIDATE_TOWER = "candidate_tower"
RETRIEVAL_INDEX = "retrieval_index"
RANKER = "ranker"
ALS = "als"
SAVED_MODELS = (QUERY_TOWER, CANDIDATE_TOWER, RANKER)
MODEL_CONFIG_FILE = "models.config"
PUSH_LOG = "pushes.jsonl"
SAVED_MODEL_FILE = "saved_model.pb"
# Beside every exported SavedModel: the training run id, checked across the models of a page.
EXPORT_INFO = ("assets.extra", "marquee.json")

# ---------------------------------------------------------------- signatures and outputs
SIGNATURE = "serving_default"
EMBEDDING = "embedding"  # the towers' output
RETRIEVAL_SCORE = "retrieval_score"  # the ranker's input: the pair's two-tower score
# The ranker's input in a version with an ALS model: the pair's ALS score (trainer/als_feature.py).
ALS_SCORE = "als_score"
P_WATCH = "p_watch"  # the ranker's outputs
WATCH_TIME_SECONDS = "watch_time_seconds"
# The ranker's second signature: the page's query once and N item ids, the titles' features
# looked up inside the model (trainer.ranking._Export); KNOWN [N] says which ids it has.
RANK_BY_ID = "rank_by_id"
KNOWN = "known"

# ---------------------------------------------------------------- padding of raw inputs
HISTORY_PAD = -1  # an empty slot of the history feature (item ids)
LIST_PAD = ""  # an empty slot of a string-list feature (genres, cast, keywords)


# ---------------------------------------------------------------- the positive-watch rule
def is_positive_watch(event, watch_seconds, min_watch_seconds: float):
    """A watch of at least ``min_watch_seconds`` (the config's ``data.min_watch_seconds``) is a
    positive: of the users' histories, the co-watch sources, trending and the training examples.
    Works on scalars and on numpy/pandas columns alike (elementwise)."""
    from marquee.data import contract as c

    if isinstance(event, str):
        return event == c.EVENT_WATCH and float(watch_seconds) >= min_watch_seconds
    return (np.asarray(event) == c.EVENT_WATCH) & (np.asarray(watch_seconds) >= min_watch_seconds)


# ---------------------------------------------------------------- versions
def versions(model_dir: str | Path) -> list[int]:
    """Integer version directories under ``model_dir`` (local or a URI), ascending. A push
    writes under a temporary (non-integer) name and renames, so a listed version is whole on a
    local base (``marquee.io.publish_tree``)."""
    import tensorflow as tf

    from marquee import io

    model_dir = os.fspath(model_dir)
    if not tf.io.gfile.isdir(model_dir):
        return []
    return sorted(int(name) for name in io.list_dir(model_dir)
                  if name.isdigit() and tf.io.gfile.isdir(os.path.join(model_dir, name)))
