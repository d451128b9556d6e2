"""Pushes a blessed two-tower model and its index into TF Serving's versioned layout.

    BASE/query_tower/<version>/        SavedModel (TF Serving serves it)
    BASE/candidate_tower/<version>/    SavedModel (TF Serving serves it; embeds new titles)
    BASE/retrieval_index/<version>/    ScaNN index + item ids + index.json (searched in the client)
    BASE/ranker/<version>/             ranking SavedModel (TF Serving serves it), when blessed
    BASE/models.config                 TF Serving --model_config_file for the SavedModels
    BASE/pushes.jsonl                  one line per push: version, training run, sources

The towers and the index are pushed together, only when the index is blessed, and share one
version number and one training run. The ranker is pushed when the RankingEvaluator blessed it,
under the same version number as the towers pushed in the same run. Each version directory is
written under a temporary name and renamed into place, so a model server polling BASE never
loads a half-copied model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

QUERY_TOWER = "query_tower"
CANDIDATE_TOWER = "candidate_tower"
RETRIEVAL_INDEX = "retrieval_index"
RANKER = "ranker"
SAVED_MODELS = (QUERY_TOWER, CANDIDATE_TOWER, RANKER)
MODEL_CONFIG_FILE = "models.config"
PUSH_LOG = "pushes.jsonl"


@dataclasses.dataclass(frozen=True)
class PushResult:
    pushed: bool
    version: int | None
    reason: str
    paths: dict[str, str] = dataclasses.field(default_factory=dict)


def versions(model_dir: Path) -> list[int]:
    """Integer version directories under ``model_dir``, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base: Path, now: int | None = None) -> int:
    latest = max([v for m in SAVED_MODELS + (RETRIEVAL_INDEX,) for v in versions(base / m)],
                 default=0)
    return max(int(now if now is not None else time.time()), latest + 1)


def model_config_text(base: Path) -> str:
    """TF Serving's ModelServerConfig (text proto) serving every pushed SavedModel in ``base``."""
    entries = "".join(
        f'  config {{\n    name: "{m}"\n    base_path: "{(base / m).resolve()}"\n'
        f'    model_platform: "tensorflow"\n  }}\n' for m in SAVED_MODELS if versions(base / m))
    return f"model_config_list {{\n{entries}}}\n"


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.parent / f".{dest.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    tmp.rename(dest)


def push(serving_model_dir: str | Path, index_dir: str | Path, blessed: bool,
         base: str | Path, training_run: str, now: int | None = None,
         ranker_dir: str | Path | None = None, ranker_blessed: bool = False) -> PushResult:
    """Copies what is blessed into ``base`` under one new version: the towers and the index
    (when ``blessed``, the index's verdict) and the ranker (when ``ranker_blessed``)."""
    serving_model_dir, index_dir, base = Path(serving_model_dir), Path(index_dir), Path(base)
    sources: list[tuple[str, Path]] = []
    skipped = []
    if blessed:
        for m in (QUERY_TOWER, CANDIDATE_TOWER):
            if not (serving_model_dir / m / "saved_model.pb").is_file():
                raise FileNotFoundError(
                    f"{serving_model_dir / m}: no saved_model.pb; the Trainer's serving model "
                    f"directory must hold {QUERY_TOWER} and {CANDIDATE_TOWER}")
        sources += [(QUERY_TOWER, serving_model_dir / QUERY_TOWER),
                    (CANDIDATE_TOWER, serving_model_dir / CANDIDATE_TOWER),
                    (RETRIEVAL_INDEX, index_dir)]
    else:
        skipped.append("the retrieval index was not blessed")
    if ranker_dir is not None:
        if ranker_blessed:
            sources.append((RANKER, Path(ranker_dir)))
        else:
            skipped.append("the ranker was not blessed")
    if not sources:
        return PushResult(False, None, "nothing pushed: " + "; ".join(skipped))
    version = next_version(base, now)
    paths = {}
    for name, src in sources:
        dest = base / name / str(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _copy_atomic(src, dest)
        paths[name] = str(dest)
    (base / MODEL_CONFIG_FILE).write_text(model_config_text(base))
    record = {"version": version, "training_run": training_run, "pushed_at": int(time.time()),
              "models": sorted(paths), "model": str(serving_model_dir), "index": str(index_dir)}
    with open(base / PUSH_LOG, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    reason = f"pushed {', '.join(sorted(paths))} as version {version} (training run {training_run})"
    if skipped:
        reason += "; not pushed: " + "; ".join(skipped)
    return PushResult(True, version, reason, paths)
