"""Which pushed versions of a model base are complete, and the newest one to serve.

The Pusher writes each model of a version under a temporary name and renames it into place
(``marquee.io.publish_tree``), and on an object store copies the file a loader opens first last.
A version is complete when its query tower, candidate tower and index are all there, each with
that file; its ranker is optional (pushed only when blessed). Serving only ever loads complete
versions, and all models of one page come from one version.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from marquee.artifacts import (
    CANDIDATE_TOWER,
    QUERY_TOWER,
    RANKER,
    RETRIEVAL_INDEX,
    SAVED_MODEL_FILE,
    versions,
)
from marquee.retrieval_index import INDEX_FILE

# The file whose presence marks each model of a version as whole.
REQUIRED = ((QUERY_TOWER, SAVED_MODEL_FILE), (CANDIDATE_TOWER, SAVED_MODEL_FILE),
            (RETRIEVAL_INDEX, INDEX_FILE))


def _has(base: str | Path, model: str, version: int, marker: str) -> bool:
    return tf.io.gfile.exists(os.path.join(os.fspath(base), model, str(version), marker))


def complete_versions(base: str | Path) -> list[int]:
    """Versions (ascending) whose towers and index are all complete."""
    candidates = set(versions(os.path.join(os.fspath(base), QUERY_TOWER)))
    return sorted(v for v in candidates if all(_has(base, m, v, f) for m, f in REQUIRED))


def incomplete_versions(base: str | Path) -> list[int]:
    """Version folders of the query tower that are not (yet) complete."""
    done = set(complete_versions(base))
    return [v for v in versions(os.path.join(os.fspath(base), QUERY_TOWER)) if v not in done]


def has_ranker(base: str | Path, version: int) -> bool:
    """Whether ``version`` carries a (blessed, complete) ranker."""
    return _has(base, RANKER, version, SAVED_MODEL_FILE)
