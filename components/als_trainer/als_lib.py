"""Fits the ALS source's model on the retrieval train split (plain functions; the executor is a
thin wrapper): the positives the two towers learn from, every catalogue title a row."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from components.contract_example_gen.example_lib import CATALOGUE, TRAIN
from marquee.als import AlsModel
from marquee.config import AlsConfig, IndexConfig
from marquee.data import contract as c
from marquee.evaluation.peers import ImplicitALS
from trainer import features as f
from trainer import raw_inputs


def read_positives(examples_uri: str, split: str = TRAIN) -> pd.DataFrame:
    """(user_id, item_id) of every example of ``split`` (a retrieval split holds one example
    per positive watch)."""
    cols = raw_inputs.columns([os.path.join(examples_uri, f"Split-{split}", "*")],
                              (f.USER_ID, f.ITEM_ID))
    return pd.DataFrame({c.USER_ID: cols.get(f.USER_ID, np.zeros(0, np.int64)),
                         c.ITEM_ID: cols.get(f.ITEM_ID, np.zeros(0, np.int64))})


def catalogue_ids(examples_uri: str) -> np.ndarray:
    """The catalogue split's item ids, sorted."""
    cols = raw_inputs.columns([os.path.join(examples_uri, f"Split-{CATALOGUE}", "*")],
                              (f.ITEM_ID,))
    return np.unique(np.asarray(cols[f.ITEM_ID], np.int64))


def fit(positives: pd.DataFrame, catalogue: np.ndarray, config: AlsConfig,
        metadata: dict | None = None) -> AlsModel:
    """ALS on the binary user x title matrix of ``positives`` (a repeat counts once) over the
    sorted ``catalogue``; titles without a positive get zero factors (score 0). The fit is
    ``marquee.evaluation.ImplicitALS``, the peer ``marquee evaluate`` measures."""
    catalogue = np.asarray(catalogue, np.int64)
    unknown = np.setdiff1d(positives[c.ITEM_ID].to_numpy(np.int64), catalogue)
    if len(unknown):
        raise ValueError(f"{len(unknown)} positive title(s) are not in the catalogue split, "
                         f"e.g. {unknown[:5].tolist()}; the examples are inconsistent: rerun "
                         "ContractExampleGen")
    if positives.empty:
        raise ValueError("no positives in the retrieval train split: ALS has nothing to learn "
                         "from; check data.min_watch_seconds, or turn als.enabled off")
    start = time.perf_counter()
    model = ImplicitALS(config.factors, config.regularization, config.iterations, config.alpha,
                        config.seed, name="als")
    model.fit(positives, catalogue)
    info = {"positives": int(len(positives)), "users": int(positives[c.USER_ID].nunique()),
            "fit_seconds": round(time.perf_counter() - start, 3),
            "iterations": config.iterations, "seed": config.seed, **(metadata or {})}
    return AlsModel(catalogue, model.item_factors, config.regularization, config.alpha, info)


def user_queries(model: AlsModel, positives: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    """``[<= n, factors]`` float32: the vectors serving folds in (``AlsModel.fold_in``) for up to
    ``n`` users drawn from ``positives`` (their train positives): the index's query set."""
    users = np.unique(positives[c.USER_ID].to_numpy(np.int64))
    picked = np.random.default_rng(seed).choice(users, min(n, len(users)), replace=False)
    by_user = positives.groupby(c.USER_ID)[c.ITEM_ID]
    projected = model.projected()
    vectors = [model.fold_in(by_user.get_group(u).to_numpy(np.int64), projected) for u in picked]
    return np.asarray([v for v in vectors if v is not None], np.float32).reshape(
        -1, model.factors)


def build_index(model: AlsModel, positives: pd.DataFrame, config: IndexConfig, out_dir: str):
    """A ScaNN index over the item factors in ``out_dir`` (``marquee.als.INDEX_DIR``), built,
    tuned and evaluated as the ScannIndexer does, on users' folded-in vectors (``eval_queries``
    to evaluate, ``tune_queries`` more to tune). It holds the titles with factors: one without a
    positive in the fit has zero factors and scores 0 for every user (at 500K simulated titles,
    84% of them), so it is no ALS candidate. Returns the IndexEvaluation, or None when those
    titles are fewer than ``config.brute_force_below`` (scoring every title is as fast there) or
    there are no users. An index that is not blessed (recall or latency) is not written:
    serving then scores every title."""
    from components.scann_indexer import index_lib

    rows = np.flatnonzero(model.item_factors.any(axis=1))
    if index_lib.plan_index(max(1, len(rows)), config).brute_force:
        return None
    queries = user_queries(model, positives, config.eval_queries + config.tune_queries,
                           config.seed)
    if not len(queries):
        return None
    tune = queries[config.eval_queries:] if len(queries) > config.eval_queries else None
    searcher, evaluation = index_lib.build_and_evaluate(
        model.item_factors[rows], model.item_ids[rows], queries[:config.eval_queries], config,
        tune_queries=tune)
    if evaluation.blessed:
        index_lib.save_index(searcher, model.item_ids[rows], evaluation, out_dir,
                             {"training_run": model.training_run, "model": "als"})
    return evaluation
