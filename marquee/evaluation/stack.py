"""`marquee evaluate`: the served stack, its stages and the peers under one protocol, one run.

1. Split the dataset with the protocol (:func:`~marquee.evaluation.protocol.leave_last_out`).
2. Write the train part as a contract dataset (every interaction of a user before their first
   test positive; the test positives themselves are removed) and run the pipeline on it, so the
   pipeline never sees the test split. An existing run folder with a push is reused.
3. Score, for every user, at the time of their first test positive:
   - ``retrieval``: query tower + the ScaNN index alone (also Recall@1000);
   - ``stack``: the thin client's ranked list, what the API serves before its re-rank steps:
     the two-tower and ALS candidates scored by ``serving.homepage.ranking.blend`` of the
     retrieval score, the ranker's p_watch, the item-to-item score, popularity and the ALS score,
     with the :class:`Blend` chosen on a validation split carved from train (``tune_blend``: the
     best NDCG@20 among blends that keep the catalogue exposure bar, ``choose_weight``).
     ``bench/bench_rerank.py`` measures what the re-rank steps change;
   - ``stack_no_als``: the ablation, the two-tower candidates alone with the best blend without
     the ALS score (chosen on validation the same way); the ranker keeps its ALS feature, which
     only a ranker retrained with ``ranking.use_als_score: false`` drops;
   - ``stack_no_exposure``: the chosen blend without its calibrated-exposure term, when it has
     one (the table: ``serving.homepage.exposure.calibrate`` over every user's pages);
   - ``ranker``: the same candidates ordered by the ranker alone;
   - the peers (popularity, EASE, iALS, item-kNN), fitted on the same train part.
   Lists keep only protocol candidates (catalogue items the user has no train positive for).
4. Write ``metrics.json`` and ``report.md`` (+ PNG plots). On simulated data, also the recall
   of each model's top K against the simulator's ground-truth top K (``truth_recall@K``).
"""

from __future__ import annotations

import dataclasses
import itertools
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


@dataclasses.dataclass(frozen=True)
class Blend:
    """The final score's weights (``serving.homepage.ranking.blend``; ServingConfig's
    ``ranker_weight``, ``item_to_item_weight``, ``popularity_weight``, ``als_weight`` and
    ``exposure_weight``)."""

    ranker: float
    item_to_item: float = 0.0
    popularity: float = 0.0
    als: float = 0.0
    exposure: float = 0.0

    def __str__(self) -> str:
        return (f"ranker_weight {self.ranker:g}, item_to_item_weight {self.item_to_item:g}, "
                f"popularity_weight {self.popularity:g}, als_weight {self.als:g}"
                + (f", exposure_weight {self.exposure:g}" if self.exposure else ""))

    @property
    def total(self) -> float:
        return self.ranker + self.item_to_item + self.popularity + self.als + self.exposure


class StackScores:
    """Per user, the served stack's candidates with every signal of the final score, computed
    once and cached: ``ids`` [n], ``retrieval`` [n], ``p_watch`` [n] (None without a pushed
    ranker), ``item_to_item`` [n], ``popularity`` [n], ``als`` [n] (zeros without an ALS model)
    and ``collaborative`` [n] (the two-tower source returned it). Scoring any :class:`Blend` of
    them is then numpy (``serving.homepage.ranking.blend``, the function the API ranks with)."""

    def __init__(self, train_dir: Path, serving_dir: Path, split: Split, config: Config):
        from marquee.config import SourceConfig
        from serving.build import build_service
        from serving.homepage.service import COLLABORATIVE

        # The served stack (serving.build.build_service, what `marquee serve` runs) with its
        # collaborative part, for every user: the two-tower and ALS sources (in every
        # cold-start stage), no re-rank steps, no rows; every blend signal computed (weights
        # 1: the order is re-blended from the signals per Blend; the exposure term from a table
        # per Blend, StackScores.calibrated).
        evaluated = dataclasses.replace(config, serving=dataclasses.replace(
            config.serving, k=RETRIEVAL_K, candidates=2 * RETRIEVAL_K, deadline_ms=1e9,
            query_deadline_ms=1e9, rank_deadline_ms=1e9,
            history_length=config.data.history_length,
            sources=tuple(SourceConfig(name, RETRIEVAL_K, deadline_ms=1e9)
                          for name in (COLLABORATIVE, "als")),
            rerank=(), because_you_watched=0, item_to_item_weight=1.0, popularity_weight=1.0,
            als_weight=1.0, exposure_weight=0.0, exposure_file="", cache_ttl_seconds=0))
        self.evaluated, self.two_tower = evaluated, COLLABORATIVE
        self.service = build_service(evaluated, train_dir, serving_dir)
        if self.service.backend.name == "unavailable":
            raise ValueError(f"no model could be loaded from {serving_dir}: "
                             f"{self.service.backend.reason}")
        self.users, self.backend = self.service.users, self.service.backend
        self.index = self.service.indexes.get(self.backend.serving_version())
        self.allowed = set(split.catalogue.tolist())
        self.first = split.test.groupby(c.USER_ID)[c.TIMESTAMP].min().to_dict()
        self._cache: dict[int, tuple] = {}

    def _candidates(self, user: int, ids) -> list[int]:
        seen = self.users.get(user).watched
        return [int(i) for i in dict.fromkeys(ids)
                if int(i) in self.allowed and int(i) not in seen]

    def retrieval(self, user_ids: np.ndarray) -> np.ndarray:
        """The retrieval stage alone: query tower + index, [B, RETRIEVAL_K]."""
        out = []
        for u in user_ids.tolist():
            profile = self.users.get(u)
            query = self.service.query_features(profile, int(self.first.get(u, 0)))
            emb, _ = self.backend.query_embeddings(query, 1e9)
            ids, _ = self.index.search(emb, RETRIEVAL_K + len(profile.watched))
            out.append(self._candidates(u, ids[0].tolist()))
        return _rows(out, RETRIEVAL_K)

    def scores(self, user: int) -> tuple:
        """The served page's candidates (all of them: the blend standardises each signal over
        the request's candidates, so the order matches serving only over the same set) and
        their signals; ``recommend`` keeps the protocol's allowed items after ordering."""
        if user not in self._cache:
            page = self.service.homepage(user, self.evaluated.serving.candidates,
                                         timestamp=int(self.first.get(user, 0)))
            if page.fallback:
                raise RuntimeError(f"the stack fell back for user {user}: {page.reason}")
            picks = page.items
            p_watch = (np.array([p.p_watch for p in picks]) if picks and
                       picks[0].p_watch is not None else None)
            self._cache[user] = (np.array([p.item_id for p in picks], np.int64),
                                 np.array([p.retrieval_score for p in picks]), p_watch,
                                 np.array([p.item_to_item for p in picks], np.float64),
                                 np.array([p.popularity for p in picks], np.float64),
                                 np.array([p.als or 0.0 for p in picks], np.float64),
                                 np.array([self.two_tower in p.sources for p in picks], bool))
        return self._cache[user]

    @property
    def has_als(self) -> bool:
        """Whether an ALS model was pushed with the served version."""
        return self.service.als_models.get(self.backend.serving_version()) is not None

    def served_config(self, weights: Blend, als: bool = True, exposure_file: str = "") -> Config:
        """The config whose ``build_service`` stack serves, per user, the list ``recommend``
        gives for ``weights``, ``als`` and the exposure table saved in ``exposure_file`` (the
        parity test checks it in-process and over gRPC)."""
        serving = self.evaluated.serving
        return dataclasses.replace(self.evaluated, serving=dataclasses.replace(
            serving, ranker_weight=weights.ranker, item_to_item_weight=weights.item_to_item,
            popularity_weight=weights.popularity, als_weight=weights.als,
            exposure_weight=weights.exposure, exposure_file=exposure_file,
            sources=serving.sources if als else serving.sources[:1]))

    def calibrated(self, user_ids: np.ndarray, weights: Blend, als: bool = True):
        """The exposure table (``serving.homepage.exposure.calibrate``) of this stack's lists
        for ``weights`` over ``user_ids``: what ``serving.exposure_file`` holds."""
        from serving.homepage.exposure import calibrate

        def pages(table):
            rows = self.recommend(user_ids, weights, als, table)
            return ([i for i in row.tolist() if i != NO_ITEM] for row in rows)

        return calibrate(pages)

    def recommend(self, user_ids: np.ndarray, weights: Blend, als: bool = True,
                  exposure=None) -> np.ndarray:
        """The stack's lists [B, 100] for a blend (``Blend(1.0)``: the ranker alone); ``als``
        False: of the two-tower candidates alone (the ablation); ``exposure``: the
        ``ExposureTable`` of the blend's exposure term (None: no such term)."""
        from serving.homepage.ranking import blend

        out = []
        for u in user_ids.tolist():
            ids, retrieval, p_watch, i2i, pop, als_score, collaborative = self.scores(u)
            if not als:
                keep = collaborative
                ids, retrieval, i2i, pop, als_score = (
                    a[keep] for a in (ids, retrieval, i2i, pop, als_score))
                p_watch = None if p_watch is None else p_watch[keep]
            if len(ids) == 0:
                out.append([])
                continue
            final = blend(retrieval, p_watch, weights.ranker, i2i, weights.item_to_item, pop,
                          weights.popularity, als_score, weights.als,
                          None if exposure is None else exposure.counts(ids), weights.exposure)
            ordered = ids[np.lexsort((ids, -final))].tolist()
            out.append([i for i in ordered if i in self.allowed])
        return _rows(out, max(DEFAULT_KS))


# Blends tried on the validation split: ranker x item-to-item x popularity x ALS weights. The
# popularity weights reach 1.5: on MovieLens 100K the exposure bar below needs about 1.
BLEND_GRID = tuple(Blend(r, i, p, a) for r in (0.0, 0.2, 0.4) for i in (0.0, 0.15, 0.3, 0.45)
                   for p in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5) for a in (0.0, 0.3, 0.6, 1.0))
TUNING_METRIC = "ndcg@20"
# The exposure bar a chosen blend must keep on validation (the design's "80% of the catalogue
# recommended", issue 20): the ranker, ALS and the item-to-item score lean to popular titles,
# and a more accurate blend that shows a narrower catalogue is not the one to serve.
EXPOSURE_K = 50
MIN_COVERAGE = 0.8
MAX_GINI = 0.65
# Calibrated exposure (serving.homepage.exposure): its weights, tried on the most accurate
# blends of the grid (on MovieLens 100K's validation split, 0.5 keeps the bar above at no cost
# in NDCG@20, where the popularity weight alone costs about 15%).
EXPOSURE_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
EXPOSURE_BLENDS = 8
EXPOSURE_TABLE = "exposure.parquet"  # in the report folder: serving.exposure_file


def choose_weight(results: dict) -> tuple:
    """The key (a ranker weight or a :class:`Blend`) with the best ``TUNING_METRIC`` (ties: the
    smaller total weight) among those whose coverage@``EXPOSURE_K`` >= ``MIN_COVERAGE`` and
    gini@``EXPOSURE_K`` <= ``MAX_GINI``; ``results`` maps a key to its validation metrics.
    Returns (key, whether it meets the exposure bar): when none does, the best by the metric."""
    ok = [w for w, m in results.items()
          if m[f"coverage@{EXPOSURE_K}"] >= MIN_COVERAGE and m[f"gini@{EXPOSURE_K}"] <= MAX_GINI]
    pool = ok or list(results)
    total = lambda w: w.total if isinstance(w, Blend) else float(w)  # noqa: E731
    return max(pool, key=lambda w: (results[w][TUNING_METRIC], -total(w))), bool(ok)


def tune_blend(vdir: Path, split: Split, config: Config,
               progress: Callable[[str], None]) -> tuple[Blend, str, Blend]:
    """Chooses the blend on a validation split carved from train (the test split is never
    seen): with the pipeline run on the validation-train part in ``vdir``
    (:func:`~marquee.evaluation.tuning.validation_run`), every blend of ``BLEND_GRID`` is scored
    on the validation-test part and chosen by :func:`choose_weight`. Returns (blend, a one-line
    account of the choice, the blend chosen the same way for the ablation without ALS:
    two-tower candidates alone, ALS weight 0)."""
    from marquee.evaluation.protocol import validation_split
    from marquee.evaluation.tuning import VALIDATION_DATA
    from pipeline.local_runner import run_dirs

    vsplit = validation_split(split)
    vdata = vdir / VALIDATION_DATA
    scores = StackScores(vdata, run_dirs(vdir)["serving"], vsplit, config)
    grid = tuple(b for b in BLEND_GRID if (b.ranker == 0 or scores.backend.has_ranker())
                 and (b.als == 0 or scores.has_als))
    without = tuple(b for b in grid if b.als == 0)
    progress(f"tuning the blend: {len(grid)} blends on the validation split, and "
             f"{len(without)} for the ablation without ALS")
    results = {b: evaluate_rankings(vsplit, lambda u, b=b: scores.recommend(u, b), DEFAULT_KS)
               for b in grid}
    seeds = sorted(results, key=lambda b: -results[b][TUNING_METRIC])[:EXPOSURE_BLENDS]
    progress(f"tuning calibrated exposure: weights {EXPOSURE_WEIGHTS} on the {len(seeds)} "
             "most accurate blends")
    for b, w in itertools.product(seeds, EXPOSURE_WEIGHTS):
        bw = dataclasses.replace(b, exposure=w)
        table = scores.calibrated(vsplit.users, bw)
        results[bw] = evaluate_rankings(
            vsplit, lambda u, bw=bw, t=table: scores.recommend(u, bw, exposure=t), DEFAULT_KS)
    best, meets = choose_weight(results)
    base = {b: evaluate_rankings(vsplit, lambda u, b=b: scores.recommend(u, b, als=False),
                                 DEFAULT_KS) for b in without}
    best_base, _ = choose_weight(base)
    cov, gini = f"coverage@{EXPOSURE_K}", f"gini@{EXPOSURE_K}"
    top = sorted(results, key=lambda b: -results[b][TUNING_METRIC])[:5]
    account = (f"blend {best}, chosen on a validation split carved from train: the best "
               f"{TUNING_METRIC} " + ("among blends with " if meets else "(no blend reaches ")
               + f"{cov} >= {MIN_COVERAGE} and {gini} <= {MAX_GINI}" + ("" if meets else ")")
               + f"; validation {TUNING_METRIC} of the chosen "
               + f"{results[best][TUNING_METRIC]:.4f} ({cov} {results[best][cov]:.3f}, {gini} "
               + f"{results[best][gini]:.3f}), of retrieval alone "
               + f"{results[Blend(0.0)][TUNING_METRIC]:.4f}, without ALS (two-tower candidates, "
               + f"blend {best_base}) {base[best_base][TUNING_METRIC]:.4f}"
               + "; the 5 most accurate: " + "; ".join(
                   f"[{b}] {results[b][TUNING_METRIC]:.4f} ({cov} {results[b][cov]:.3f}, "
                   f"{gini} {results[b][gini]:.3f})" for b in top))
    progress(account)
    return best, account, best_base


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
             progress: Callable[[str], None] = print, peers: bool = True,
             tune: bool = True, config_file: Path | None = None) -> dict[str, float]:
    """Steps 1-4 of the module docstring. ``tune``: ALS's and the retrieval model's settings
    (:func:`~marquee.evaluation.tuning.tune_models`) and the blend (:func:`tune_blend`) are
    chosen on validation, before the pipeline runs on the train part, and written over
    ``config_file`` to ``out_dir/tuned.yaml``; otherwise the config's are used."""
    from marquee.evaluation.peers import (
        EASE,
        ImplicitALS,
        ItemKNN,
        Popularity,
        evaluate_peers,
        tune_ease,
    )
    from marquee.evaluation.report import write_report
    from marquee.evaluation.tuning import TUNED_CONFIG, tune_models, write_tuned_config
    from pipeline.local_runner import run_dirs, run_local

    started = time.time()
    ds = load_dataset(data_dir)
    split = leave_last_out(ds.interactions)
    train_dir = run_dir / "train-data"
    serving = run_dirs(run_dir)["serving"]
    notes: list[str] = []
    sc = config.serving
    weights = Blend(sc.ranker_weight, sc.item_to_item_weight, sc.popularity_weight,
                    sc.als_weight, sc.exposure_weight)
    without_als = dataclasses.replace(weights, als=0.0, exposure=0.0)
    if tune:
        config, vdir, accounts = tune_models(data_dir, run_dir, split, config, progress)
        weights, account, without_als = tune_blend(vdir, split, config, progress)
        notes += [*accounts, account]
        tuned = write_tuned_config(out_dir / TUNED_CONFIG, config_file, config, weights,
                                   out_dir / EXPOSURE_TABLE)
        notes.append(f"the choices as a config: {tuned} (`--config` of `marquee pipeline run` "
                     "and `marquee serve`)")
    else:
        notes.append(f"blend {weights} (the config's serving section)")
    if (serving / "query_tower").is_dir():
        progress(f"reusing the pushed models in {serving}")
    else:
        progress(f"writing the protocol's train part to {train_dir}")
        write_train_dataset(data_dir, split, train_dir)
        progress("running the pipeline on the train part only")
        run_local(train_dir, run_dir, config, progress=progress)
    metrics: dict[str, float] = {}
    stack = StackScores(train_dir, serving, split, config)
    table = None
    if weights.exposure:
        progress("calibrating exposure: the stack's pages over every user, twice")
        table = stack.calibrated(split.users, weights)
        notes.append(f"calibrated exposure: the table of the stack's pages over the "
                     f"{len(split.users):,} users, {len(table):,} titles, in "
                     f"{table.save(out_dir / EXPOSURE_TABLE)}")
    recommenders = {"retrieval": stack.retrieval,
                    "stack": lambda u: stack.recommend(u, weights, exposure=table)}
    if weights.exposure:
        recommenders["stack_no_exposure"] = lambda u: stack.recommend(
            u, dataclasses.replace(weights, exposure=0.0))
    if stack.has_als:
        recommenders["stack_no_als"] = lambda u: stack.recommend(u, without_als, als=False)
    else:
        notes.append("no ALS model was pushed (als.enabled off, or a model base from before "
                     "it): the stack has the two-tower candidates alone")
    if stack.backend.has_ranker():
        recommenders["ranker"] = lambda u: stack.recommend(u, Blend(1.0))
    else:
        notes.append("no ranker was pushed (the RankingEvaluator did not bless it): the stack "
                     "serves the retrieval order, and there is no 'ranker' row")
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
        als = config.als  # tuned on validation like EASE's l2, when tuning
        peer_list = [Popularity(), EASE(l2=ease.best["l2"]),
                     ImplicitALS(als.factors, als.regularization, als.iterations, als.alpha,
                                 als.seed), ItemKNN()]
        metrics.update(evaluate_peers(split, peer_list, DEFAULT_KS))
        models.update({p.name: (lambda u, p=p: p.recommend(u, max(DEFAULT_KS)))
                       for p in peer_list})
    if truth_file.is_file():
        truth = pd.read_parquet(truth_file)
        for name, fn in models.items():
            for key, v in truth_recall(fn, truth, split).items():
                metrics[f"{name}.{key}"] = v
    notes = [f"data: {data_dir}", f"run: {run_dir}", *notes,
             f"split: {len(split.train):,} train / {len(split.test):,} test positives, "
             f"{len(split.users):,} users, {len(split.catalogue):,} catalogue items",
             f"wall time: {time.time() - started:.0f} s"]
    write_report(metrics, out_dir, title="marquee offline evaluation", notes=notes)
    return metrics
