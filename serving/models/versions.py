"""Which pushed versions of a model base are complete, and the newest one to serve.

A push (``components/model_pusher/push_lib.py``) copies the models of one version (the towers
and the index; the ranker when blessed, after them), each under a temporary name renamed into
place (``marquee.io.publish_tree``; on an object store the file a loader opens first is copied
last), and then, as its last step, appends the version's line to ``BASE/pushes.jsonl`` naming the
models it pushed. So a version is complete when the push log records it with the towers and
the index, and every model that line names has the file a loader opens first. Until its line
is written a version is a push under way, whatever is on disk already: the towers and the index
alone cannot tell whether a ranker is still being copied.

A base without a push log (laid out by hand) is judged by its files alone: the towers and the
index each with that file, and a ranker folder, if there is one, with its own.

Serving only ever loads complete versions, and all models of one page come from one version.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

from marquee import io
from marquee.artifacts import (
    CANDIDATE_TOWER,
    EXPORT_INFO,
    PUSH_LOG,
    QUERY_TOWER,
    RANKER,
    RETRIEVAL_INDEX,
    SAVED_MODEL_FILE,
    SIGNATURE,
    versions,
)
from marquee.retrieval_index import INDEX_FILE

log = logging.getLogger(__name__)

# The models every servable version has, and the file whose presence marks each model as whole.
REQUIRED = (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX)
MARKER = {QUERY_TOWER: SAVED_MODEL_FILE, CANDIDATE_TOWER: SAVED_MODEL_FILE,
          RETRIEVAL_INDEX: INDEX_FILE, RANKER: SAVED_MODEL_FILE}


def _path(base: str | Path, model: str, version: int, *names: str) -> str:
    return os.path.join(os.fspath(base), model, str(version), *names)


def _has(base: str | Path, model: str, version: int) -> bool:
    return tf.io.gfile.exists(_path(base, model, version, MARKER[model]))


def pushed_models(base: str | Path) -> dict[int, frozenset[str]] | None:
    """Version -> the models its push-log line names; None if ``base`` has no push log."""
    path = os.path.join(os.fspath(base), PUSH_LOG)
    if not tf.io.gfile.exists(path):
        return None
    out: dict[int, frozenset[str]] = {}
    for n, line in enumerate(io.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            version, models = int(record["version"]), frozenset(record["models"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s line %d is not a push record (%s: %s); its version is not served "
                        "until the line is fixed", path, n, type(e).__name__, e)
            continue
        out[version] = out.get(version, frozenset()) | models
    return out


def is_complete(base: str | Path, version: int,
                pushed: dict[int, frozenset[str]] | None) -> bool:
    """Whether ``version`` is whole; ``pushed``: :func:`pushed_models` of ``base``."""
    if pushed is None:
        ranker_dir = _path(base, RANKER, version)
        return (all(_has(base, m, version) for m in REQUIRED)
                and (not tf.io.gfile.isdir(ranker_dir) or _has(base, RANKER, version)))
    models = pushed.get(version, frozenset())
    return set(REQUIRED) <= models and all(_has(base, m, version) for m in models if m in MARKER)


def complete_versions(base: str | Path) -> list[int]:
    """Versions (ascending) that are complete."""
    pushed = pushed_models(base)
    return [v for v in versions(os.path.join(os.fspath(base), QUERY_TOWER))
            if is_complete(base, v, pushed)]


def newest_complete_version(base: str | Path) -> int | None:
    """The newest complete version (None if none), checking from the newest down: the check a
    backend makes every few seconds, so it costs one version's files, not every version's."""
    pushed = pushed_models(base)
    for v in reversed(versions(os.path.join(os.fspath(base), QUERY_TOWER))):
        if is_complete(base, v, pushed):
            return v
    return None


def incomplete_versions(base: str | Path) -> list[int]:
    """Version folders of the query tower that are not (yet) complete."""
    done = set(complete_versions(base))
    return [v for v in versions(os.path.join(os.fspath(base), QUERY_TOWER)) if v not in done]


def has_ranker(base: str | Path, version: int) -> bool:
    """Whether the (complete) ``version`` carries a ranker (pushed only when blessed)."""
    return _has(base, RANKER, version)


class RankerExport(NamedTuple):
    """What a version's ranker exports: its ``signatures`` (empty: no ranker) and the
    ``inputs`` of ``serving_default`` (empty when its export info does not list them: a ranker
    exported before it did, which takes no ALS score)."""

    signatures: frozenset[str]
    inputs: frozenset[str]


NO_RANKER = RankerExport(frozenset(), frozenset())


def ranker_export(base: str | Path, version: int) -> RankerExport:
    """``version``'s :class:`RankerExport`, from its export info (``EXPORT_INFO``);
    ``serving_default`` alone for a ranker exported before the export info listed them."""
    if not has_ranker(base, version):
        return NO_RANKER
    try:
        info = json.loads(io.read_text(_path(base, RANKER, version, *EXPORT_INFO)))
    except (OSError, ValueError, tf.errors.NotFoundError):  # an export without the info
        return RankerExport(frozenset({SIGNATURE}), frozenset())
    return RankerExport(frozenset(info.get("signatures", [SIGNATURE])),
                        frozenset(info.get("inputs", [])))
