"""`marquee evaluate`: the served stack, its stages and the peers under one protocol, one run.

1. Split the dataset with the protocol (:func:`~marquee.evaluation.protocol.leave_last_out`).
2. Write the train part as a contract dataset (every interaction of a user before their first
   test positive; the test positives themselves are removed) and run the pipeline on it, so the
   pipeline never sees the test split. An existing run folder with a push is reused.
3. Score, for every user, at the time of their first test positive:
   - ``retrieval``: query tower + the ScaNN index alone (also Recall@1000);
   - ``stack``: the thin client (retrieval -> ranker -> re-ranking), what the API serves;
   - the peers (popularity, EASE, iALS, item-kNN), fitted on the same train part.
   Lists keep only protocol candidates (catalogue items the user has no train positive for).
4. Write ``metrics.json`` and ``report.md`` (+ PNG plots). On simulated data, also the recall
   of each model's top K against the simulator's ground-truth top K (``truth_recall@K``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from marquee.config import Config
from marquee.data import contract as c
from marquee.data.validate import load_dataset
from marquee.evaluation.protocol import (
    DEFAULT_KS,
    NO_ITEM,
    Split,
    evaluate_rankings,
    leave_last_out,
)

RETRIEVAL_K = 1000


def train_part(interactions: pd.DataFrame, split: Split) -> pd.DataFrame:
    """The interactions the pipeline may see: per user, everything strictly before the first
    test positive in the protocol's (timestamp, item_id) order, minus the test rows."""
    first = split.test.sort_values([c.USER_ID, c.TIMESTAMP, c.ITEM_ID]).groupby(c.USER_ID).first()
    t0 = interactions[c.USER_ID].map(first[c.TIMESTAMP])
    i0 = interactions[c.USER_ID].map(first[c.ITEM_ID])
    ts, item = interactions[c.TIMESTAMP], interactions[c.ITEM_ID]
    before = t0.isna() | (ts < t0) | ((ts == t0) & (item < i0))
    is_watch = interactions[c.EVENT] == c.EVENT_WATCH
    # impressions at the very moment of the first test positive are the future too
    keep = before | (~is_watch & (ts < t0))
    return interactions[keep.fillna(False).astype(bool)]


def write_train_dataset(data_dir: Path, split: Split, out: Path) -> Path:
    ds = load_dataset(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    c.write_table(out, c.USERS, ds.users)
    c.write_table(out, c.ITEMS, ds.items)
    c.write_table(out, c.INTERACTIONS, train_part(ds.interactions, split))
    return out


def _rows(lists: list[list[int]], k: int) -> np.ndarray:
    out = np.full((len(lists), k), NO_ITEM, np.int64)
    for r, items in enumerate(lists):
        out[r, :min(k, len(items))] = items[:k]
    return out


def stack_recommenders(train_dir: Path, serving_dir: Path, split: Split,
                       config: Config) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``recommend(user_ids) -> [B, K]`` for the retrieval stage and the full stack."""
    from serving.backends import IndexStore, InProcessBackend
    from serving.catalogue import load
    from serving.homepage import HomepageService, ServingConfig

    catalogue, users = load(train_dir)
    backend = InProcessBackend(serving_dir)
    indexes = IndexStore(serving_dir)
    index = indexes.get(backend.query_version)
    allowed = set(split.catalogue.tolist())
    first = split.test.groupby(c.USER_ID)[c.TIMESTAMP].min().to_dict()
    max_k = max(DEFAULT_KS)
    service = HomepageService(
        backend, indexes, catalogue, users,
        ServingConfig(k=RETRIEVAL_K, candidates=RETRIEVAL_K, deadline_ms=1e9,
                      query_deadline_ms=1e9, rank_deadline_ms=1e9,
                      history_length=config.data.history_length))

    def candidates(user: int, ids) -> list[int]:
        seen = users.get(user).watched
        return [int(i) for i in dict.fromkeys(ids) if int(i) in allowed and int(i) not in seen]

    def retrieval(user_ids: np.ndarray) -> np.ndarray:
        out = []
        for u in user_ids.tolist():
            profile = users.get(u)
            query = service.query_features(profile, int(first.get(u, 0)))
            emb, _ = backend.query_embeddings(query, 1e9)
            ids, _ = index.search(emb, RETRIEVAL_K + len(profile.watched))
            out.append(candidates(u, ids[0].tolist()))
        return _rows(out, RETRIEVAL_K)

    def stack(user_ids: np.ndarray) -> np.ndarray:
        out = []
        for u in user_ids.tolist():
            page = service.homepage(u, RETRIEVAL_K, timestamp=int(first.get(u, 0)))
            if page.fallback:
                raise RuntimeError(f"the stack fell back for user {u}: {page.reason}")
            out.append(candidates(u, [p.item_id for p in page.items]))
        return _rows(out, max_k)

    return {"retrieval": retrieval, "stack": stack}


def truth_recall(recommend: Callable[[np.ndarray], np.ndarray], truth: pd.DataFrame,
                 split: Split, ks=(10, 20, 50)) -> dict[str, float]:
    """Mean |top-K recommended ∩ top-K by true affinity| / K over the truth users, both over
    protocol candidates (catalogue items without a train positive of the user)."""
    from marquee.data.simulate import AFFINITY

    users = np.intersect1d(truth[c.USER_ID].unique(), split.users)
    if len(users) == 0:
        return {}
    recs = recommend(users)
    allowed = set(split.catalogue.tolist())
    seen = split.train.groupby(c.USER_ID)[c.ITEM_ID].apply(set).to_dict()
    out = {f"truth_recall@{k}": 0.0 for k in ks}
    by_user = {u: g for u, g in truth.groupby(c.USER_ID)}
    for r, u in enumerate(users.tolist()):
        g = by_user[u]
        g = g[g[c.ITEM_ID].isin(allowed) & ~g[c.ITEM_ID].isin(seen.get(u, set()))]
        best = g.sort_values([AFFINITY, c.ITEM_ID], ascending=[False, True])[c.ITEM_ID].tolist()
        for k in ks:
            out[f"truth_recall@{k}"] += len(set(recs[r, :k].tolist()) & set(best[:k])) / k
    return {key: v / len(users) for key, v in out.items()}


def evaluate(data_dir: Path, run_dir: Path, out_dir: Path, config: Config,
             progress: Callable[[str], None] = print, peers: bool = True) -> dict[str, float]:
    from marquee.evaluation.peers import (
        EASE,
        ImplicitALS,
        ItemKNN,
        Popularity,
        evaluate_peers,
        tune_ease,
    )
    from marquee.evaluation.report import write_report
    from pipeline.local_runner import run_dirs, run_local

    started = time.time()
    ds = load_dataset(data_dir)
    split = leave_last_out(ds.interactions)
    train_dir = run_dir / "train-data"
    serving = run_dirs(run_dir)["serving"]
    if (serving / "query_tower").is_dir():
        progress(f"reusing the pushed models in {serving}")
    else:
        progress(f"writing the protocol's train part to {train_dir}")
        write_train_dataset(data_dir, split, train_dir)
        progress("running the pipeline on the train part only")
        run_local(train_dir, run_dir, config, progress=progress)
    metrics: dict[str, float] = {}
    recommenders = stack_recommenders(train_dir, serving, split, config)
    for name, fn in recommenders.items():
        progress(f"evaluating {name}")
        extra = (RETRIEVAL_K,) if name == "retrieval" else ()
        for key, v in evaluate_rankings(split, fn, DEFAULT_KS, extra).items():
            metrics[f"{name}.{key}"] = v
    truth_file = data_dir / "_truth" / "affinities.parquet"
    models: dict[str, Callable] = dict(recommenders)
    if peers:
        progress("fitting and evaluating the peers (popularity, EASE, iALS, item-kNN)")
        ease = tune_ease(split)
        peer_list = [Popularity(), EASE(l2=ease.best["l2"]), ImplicitALS(), ItemKNN()]
        metrics.update(evaluate_peers(split, peer_list, DEFAULT_KS))
        models.update({p.name: (lambda u, p=p: p.recommend(u, max(DEFAULT_KS)))
                       for p in peer_list})
    if truth_file.is_file():
        truth = pd.read_parquet(truth_file)
        for name, fn in models.items():
            for key, v in truth_recall(fn, truth, split).items():
                metrics[f"{name}.{key}"] = v
    notes = [f"data: {data_dir}", f"run: {run_dir}",
             f"split: {len(split.train):,} train / {len(split.test):,} test positives, "
             f"{len(split.users):,} users, {len(split.catalogue):,} catalogue items",
             f"wall time: {time.time() - started:.0f} s"]
    write_report(metrics, out_dir, title="marquee offline evaluation", notes=notes)
    return metrics
