"""Choosing a dataset's settings on validation only (``marquee evaluate``'s tuning; the test
split is never seen): ALS's factors, regularisation and alpha, the retrieval model's decisive
settings, then (``marquee.evaluation.stack.tune_blend``) the blend; written out as a config the
pipeline and ``marquee serve`` read (:func:`write_tuned_config`).

The validation split is :func:`~marquee.evaluation.protocol.validation_split` of the protocol's
split: per user, the last share of their train watches. The pipeline runs on the part before
(:func:`validation_run`), and every choice is scored on validation alone.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from marquee.config import Config
from marquee.data import contract as c
from marquee.data.validate import load_dataset
from marquee.evaluation.protocol import Split

if TYPE_CHECKING:
    from marquee.evaluation.stack import Blend

TUNED_CONFIG = "tuned.yaml"  # in the report folder: the choices made on validation
VALIDATION_DATA = "train-data"  # in a validation run folder: the validation-train part
RETRIEVAL_TUNING = "retrieval-tuning.json"  # there too: each retrieval setting's measured score
# The retrieval model's settings tried, one at a time in this order, each from the best so far
# (coordinate search; the config's own value is the starting point and wins ties).
RETRIEVAL_GRID = {
    "temperature": (0.05, 0.1, 0.2),
    "learning_rate": (0.003, 0.01, 0.03),
    "embedding_dim": (32, 64, 128),
}
# What chooses them: Recall@20 of the trainer's own eval split (the last share of the
# validation-train period by time), measured by the trainer (trainer.retrieval.recall_at_k).
RETRIEVAL_METRIC = "recall@20"


def tune_als(split: Split, config: Config, progress: Callable[[str], None]) -> tuple[Config, str]:
    """Chooses ALS's factors, regularisation and alpha (:data:`~marquee.evaluation.peers.
    ALS_GRID`) on the validation split carved from train (fit on validation-train, NDCG@20 on
    validation-test; the test split is never seen). Returns the config with them and a one-line
    account of the choice."""
    from marquee.evaluation.peers import ALS_GRID, ImplicitALS, tune

    base = config.als
    progress(f"tuning ALS: {np.prod([len(v) for v in ALS_GRID.values()])} settings on the "
             "validation split")
    result = tune(split, lambda **kw: ImplicitALS(iterations=base.iterations, seed=base.seed,
                                                  **kw), ALS_GRID)
    best = max(v for _, v in result.scores)
    default = next((v for a, v in result.scores if a == {"factors": base.factors,
                    "regularization": base.regularization, "alpha": base.alpha}), None)
    account = (f"als {result.best}, chosen on the validation split carved from train: "
               f"validation {result.metric} {best:.4f}" + (
                   f" (the config's setting: {default:.4f})" if default is not None else ""))
    progress(account)
    return dataclasses.replace(config, als=dataclasses.replace(base, **result.best)), account


def write_tuned_config(path: Path, base_file: Path | None, config: Config, weights: Blend,
                       exposure_file: Path | None = None) -> Path:
    """The base config file with the choices made on validation on top (``als`` factors,
    regularization, alpha; the ``retrieval`` settings of :data:`RETRIEVAL_GRID`; the blend's
    ``serving`` weights, and ``exposure_file`` when the blend has an exposure weight):
    ``marquee pipeline run`` and ``marquee serve`` read it with ``--config``."""
    import yaml

    raw = (yaml.safe_load(Path(base_file).read_text()) or {}) if base_file else {}
    als = config.als
    raw.setdefault("als", {}).update(factors=als.factors, regularization=als.regularization,
                                     alpha=als.alpha)
    raw.setdefault("retrieval", {}).update(
        {name: getattr(config.retrieval, name) for name in RETRIEVAL_GRID})
    raw.setdefault("serving", {}).update(
        ranker_weight=weights.ranker, item_to_item_weight=weights.item_to_item,
        popularity_weight=weights.popularity, als_weight=weights.als,
        exposure_weight=weights.exposure)
    if weights.exposure:
        if exposure_file is None:
            raise ValueError("a blend with an exposure weight needs its exposure table's path")
        raw["serving"]["exposure_file"] = str(exposure_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Chosen by `marquee evaluate` on a validation split carved from train "
                    "(never the test split).\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def validation_run(data_dir: Path, vdir: Path, split: Split, config: Config,
                   progress: Callable[[str], None]) -> Path:
    """The pipeline run on the validation-train part (every user's train watches before their
    validation ones) in ``vdir``, reused when it already holds a push. Returns ``vdir``."""
    from marquee.evaluation.protocol import validation_split
    from marquee.evaluation.stack import train_part
    from pipeline.local_runner import run_dirs, run_local

    if (run_dirs(vdir)["serving"] / "query_tower").is_dir():
        progress(f"reusing the validation run in {vdir}")
        return vdir
    ds = load_dataset(data_dir)
    inter = train_part(train_part(ds.interactions, split), validation_split(split))
    vdata = vdir / VALIDATION_DATA
    vdata.mkdir(parents=True, exist_ok=True)
    c.write_table(vdata, c.USERS, ds.users)
    c.write_table(vdata, c.ITEMS, ds.items)
    c.write_table(vdata, c.INTERACTIONS, inter)
    progress(f"running the pipeline on the validation-train part in {vdir}")
    run_local(vdata, vdir, config, progress=progress)
    return vdir


def tune_retrieval(vdir: Path, config: Config,
                   progress: Callable[[str], None]) -> tuple[Config, str]:
    """Chooses the retrieval model's :data:`RETRIEVAL_GRID` settings by re-running its trainer
    (``trainer.retrieval.train_and_export``, early stopping as configured) on the validation
    run's transformed examples, one setting at a time, by :data:`RETRIEVAL_METRIC`. Returns the
    config with them and a one-line account."""
    from components.contract_example_gen.example_lib import CATALOGUE, EVAL, TRAIN
    from pipeline.local_runner import latest_output, run_dirs
    from trainer.retrieval import train_and_export

    root = run_dirs(vdir)["pipeline_root"]
    examples = latest_output(root, "Transform", "transformed_examples")
    graph = latest_output(root, "Transform", "transform_graph")
    if examples is None or graph is None:
        raise FileNotFoundError(f"{root}: no Transform outputs; the validation run must finish "
                                "before the retrieval model can be tuned on it")

    def split_files(split: str) -> list[str]:
        return [str(examples / f"Split-{split}" / "*")]

    scores: dict = {}
    # every training's result, kept in the run folder: a rerun of `marquee evaluate` on it
    # does not train again what it already measured
    done_file = vdir / RETRIEVAL_TUNING
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}

    def score(cfg) -> float:
        key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        if cfg not in scores and key in done:
            scores[cfg] = float(done[key])
            progress(f"tuning retrieval: {_settings(cfg)} -> {RETRIEVAL_METRIC} "
                     f"{scores[cfg]:.4f} (measured before, {done_file})")
        if cfg not in scores:
            with tempfile.TemporaryDirectory() as tmp:
                meta = train_and_export(split_files(TRAIN), split_files(EVAL),
                                        split_files(CATALOGUE), str(graph), tmp, cfg,
                                        dataclasses.replace(config, retrieval=cfg).to_json())
            scores[cfg] = done[key] = float(meta["metrics"][RETRIEVAL_METRIC])
            done_file.write_text(json.dumps(done, indent=1))
            progress(f"tuning retrieval: {_settings(cfg)} -> {RETRIEVAL_METRIC} "
                     f"{scores[cfg]:.4f} ({meta['metrics']['epochs_run']} epochs)")
        return scores[cfg]

    start = best = config.retrieval
    for name, values in RETRIEVAL_GRID.items():
        tried = [best] + [dataclasses.replace(best, **{name: v}) for v in values
                          if v != getattr(best, name)]
        best = max(tried, key=lambda cfg: (score(cfg), cfg == best))  # ties: keep the current
    account = (f"retrieval {_settings(best)}, chosen one setting at a time on the validation "
               f"run's eval split: {RETRIEVAL_METRIC} {scores[best]:.4f} (the config's "
               f"{_settings(start)}: {scores[start]:.4f}; {len(scores)} trainings)")
    progress(account)
    return dataclasses.replace(config, retrieval=best), account


def _settings(cfg) -> str:
    return ", ".join(f"{name} {getattr(cfg, name):g}" for name in RETRIEVAL_GRID)


def tune_models(data_dir: Path, run_dir: Path, split: Split, config: Config,
                progress: Callable[[str], None]) -> tuple[Config, Path, list[str]]:
    """ALS (:func:`tune_als`), then the validation pipeline run and the retrieval model on it
    (:func:`tune_retrieval`); when that changes the retrieval settings, the validation pipeline
    is run again with them (the blend is tuned on the models it will serve). Returns (the
    config, the validation run folder to tune the blend on, the accounts)."""
    config, als = tune_als(split, config, progress)
    vdir = validation_run(data_dir, run_dir / "validation", split, config, progress)
    tuned, retrieval = tune_retrieval(vdir, config, progress)
    if tuned.retrieval != config.retrieval:
        vdir = validation_run(data_dir, run_dir / "validation-tuned", split, tuned, progress)
    return tuned, vdir, [als, retrieval]
