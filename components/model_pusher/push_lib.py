"""Pushes a blessed two-tower model and its index into TF Serving's versioned layout.

    BASE/query_tower/<version>/        SavedModel (TF Serving serves it)
    BASE/candidate_tower/<version>/    SavedModel (TF Serving serves it; embeds new titles)
    BASE/retrieval_index/<version>/    ScaNN index + item ids + index.json (searched in the client)
    BASE/ranker/<version>/             ranking SavedModel (TF Serving serves it), when blessed
    BASE/als/<version>/                ALS item factors (marquee.als; scored in the client)
    BASE/models.config                 TF Serving --model_config_file for the SavedModels
    BASE/pushes.jsonl                  one line per push: version, training run, sources

The towers and the index (and the ALS model fitted beside them, when there is one) are pushed
together, only when the index is blessed, and share one version number and one training run.
The ranker is pushed when the RankingEvaluator blessed it, under the same version number as the
towers pushed in the same run. A model server polling BASE
never loads a half-copied model: on a local BASE each version directory is written under a
temporary name and renamed into place; on an object store (``gs://...``, where renaming a
directory copies each object) the file a loader opens first (``saved_model.pb``, ``index.json``)
is copied last, and TF Serving retries a version whose load failed.

Sources and BASE may be local paths or URIs: everything goes through tf.io.gfile
(``marquee.io``), and ``models.config`` names a remote BASE by its URI, which TF Serving reads
directly (``gs://``; ``s3://`` too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import tensorflow as tf

from components.scann_indexer.index_lib import INDEX_FILE
from marquee import io
from marquee.als import ALS_FILE
from marquee.artifacts import (  # noqa: F401  (re-exported: the Pusher's layout)
    ALS,
    CANDIDATE_TOWER,
    MODEL_CONFIG_FILE,
    PUSH_LOG,
    QUERY_TOWER,
    RANKER,
    RETRIEVAL_INDEX,
    SAVED_MODEL_FILE,
    SAVED_MODELS,
    versions,
)


@dataclasses.dataclass(frozen=True)
class PushResult:
    pushed: bool
    version: int | None
    reason: str
    paths: dict[str, str] = dataclasses.field(default_factory=dict)


def next_version(base: str | Path, now: int | None = None) -> int:
    latest = max([v for m in SAVED_MODELS + (RETRIEVAL_INDEX, ALS)
                  for v in versions(os.path.join(base, m))], default=0)
    return max(int(now if now is not None else time.time()), latest + 1)


def model_config_text(base: str | Path) -> str:
    """TF Serving's ModelServerConfig (text proto) serving every pushed SavedModel in ``base``:
    a local ``base`` by its absolute path, a remote one by its URI. Each model keeps its two
    newest versions loaded: while a push is under way (its towers there, its ranker not yet)
    the client still serves the previous version whole, and asks for it by number."""
    base = os.fspath(base)

    def base_path(m: str) -> str:
        return os.path.join(base, m) if io.is_remote(base) else str(Path(base, m).resolve())

    entries = "".join(
        f'  config {{\n    name: "{m}"\n    base_path: "{base_path(m)}"\n'
        f'    model_platform: "tensorflow"\n'
        f'    model_version_policy {{\n      latest {{\n        num_versions: 2\n      }}\n    }}\n'
        f'  }}\n' for m in SAVED_MODELS
        if versions(os.path.join(base, m)))
    return f"model_config_list {{\n{entries}}}\n"


def push(serving_model_dir: str | Path, index_dir: str | Path, blessed: bool,
         base: str | Path, training_run: str, now: int | None = None,
         ranker_dir: str | Path | None = None, ranker_blessed: bool = False,
         als_dir: str | Path | None = None) -> PushResult:
    """Copies what is blessed into ``base`` under one new version: the towers, the index and
    the ALS model ``als_dir`` (when ``blessed``, the index's verdict) and the ranker (when
    ``ranker_blessed``).

    Every directory may be local or a URI."""
    serving_model_dir, index_dir, base = map(os.fspath, (serving_model_dir, index_dir, base))
    sources: list[tuple[str, str, str]] = []  # (name, source directory, file copied last)
    skipped = []
    if blessed:
        for m in (QUERY_TOWER, CANDIDATE_TOWER):
            if not tf.io.gfile.exists(os.path.join(serving_model_dir, m, SAVED_MODEL_FILE)):
                raise FileNotFoundError(
                    f"{os.path.join(serving_model_dir, m)}: no {SAVED_MODEL_FILE}; the Trainer's "
                    f"serving model directory must hold {QUERY_TOWER} and {CANDIDATE_TOWER}")
        sources += [(QUERY_TOWER, os.path.join(serving_model_dir, QUERY_TOWER), SAVED_MODEL_FILE),
                    (CANDIDATE_TOWER, os.path.join(serving_model_dir, CANDIDATE_TOWER),
                     SAVED_MODEL_FILE),
                    (RETRIEVAL_INDEX, index_dir, INDEX_FILE)]
        if als_dir is not None:
            als_dir = os.fspath(als_dir)
            if not tf.io.gfile.exists(os.path.join(als_dir, ALS_FILE)):
                raise FileNotFoundError(f"{als_dir}: no {ALS_FILE}; the AlsTrainer's model "
                                        "folder is incomplete (see marquee.als)")
            sources.append((ALS, als_dir, ALS_FILE))
    else:
        skipped.append("the retrieval index was not blessed")
    if ranker_dir is not None:
        if ranker_blessed:
            sources.append((RANKER, os.fspath(ranker_dir), SAVED_MODEL_FILE))
        else:
            skipped.append("the ranker was not blessed")
    if not sources:
        return PushResult(False, None, "nothing pushed: " + "; ".join(skipped))
    version = next_version(base, now)
    paths = {}
    for name, src, last in sources:
        dest = os.path.join(base, name, str(version))
        tf.io.gfile.makedirs(os.path.join(base, name))
        io.publish_tree(src, dest, last)
        paths[name] = dest
    io.write_text(os.path.join(base, MODEL_CONFIG_FILE), model_config_text(base))
    record = {"version": version, "training_run": training_run, "pushed_at": int(time.time()),
              "models": sorted(paths), "model": serving_model_dir, "index": index_dir}
    log = os.path.join(base, PUSH_LOG)
    # read and rewrite: object stores cannot append (the log is a few lines per push)
    earlier = io.read_text(log) if tf.io.gfile.exists(log) else ""
    io.write_text(log, earlier + json.dumps(record) + "\n")
    reason = f"pushed {', '.join(sorted(paths))} as version {version} (training run {training_run})"
    if skipped:
        reason += "; not pushed: " + "; ".join(skipped)
    return PushResult(True, version, reason, paths)
