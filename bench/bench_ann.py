"""ANN at catalogue scale: the index the pipeline pushes vs exact search, side by side (issue 18).

    .venv/bin/python bench/bench_ann.py [--items 500000] [--dim 64] [--queries 300] [--k 1000]
        [--real-run RUN] [--real-items DATA/items.parquet] [--sweep]

Target (issue 18): at 500K titles the pushed ScaNN index answers top-1000 at recall@1000 >= 0.95
against exact search, at least 20x faster than exact search over the same embeddings.

What is measured, per data set:

- the index as the pipeline pushes it: ``build_searcher`` with the default ``IndexConfig`` (build
  time printed), the leaves searched tuned on 250 queries of the same kind that are not measured
  (``tune_leaves_to_search``, as the ScannIndexer does), the indexer's own evaluation,
  ``save_index`` and ``load_index`` from disk, then ``RetrievalIndex.search(query [dim], k)``:
  one query per call, the call serving makes
  (``serving/sources/collaborative.py`` asks for its quota 600 plus the user's watched titles; the
  target is stated at 1000);
- exact search, the fastest honest way on one query: float32 ``items @ q`` (a BLAS gemv, which
  may use every core) + ``argpartition`` for the top k + a sort of those k. Batched exact search
  (32 queries a matmul) is printed as a note: serving searches one query at a time;
- both on the same queries, alternating query by query (which goes first alternates too), so a
  neighbour's load on this shared box hits both alike. p50 / p99 per query; ratio = exact p50 /
  ScaNN p50 (and the same at p99);
- recall@k against ``brute_force_top_k`` (float64, ties to the lower row): for ScaNN and, as a
  check of the reference, for the float32 exact search.

Data sets:

1. synthetic: ``--items`` clustered Gaussians (``synthetic_embeddings``), queries drawn from the
   same clusters but not in the index. This is where the target is checked.
2. real towers, new titles (``--real-items`` with ``--real-run``): the run's pushed candidate tower
   embeds a catalogue it never saw (the simulator's 500K titles; their ids are out of its
   vocabulary, so embeddings come from metadata alone) and its query tower embeds the run's
   held-out eval queries. No 500K learned-embedding set exists here; this is the closest, and a
   hard case (the scores are flat: the 1000th and 2000th best differ by ~0.01).
3. the real run's pushed index at its own size (``--real-run``/serving/retrieval_index, newest),
   with the same eval queries.

``--sweep`` also measures, on both 500K sets, the previous defaults (5,000 leaves, 20% searched,
2 dimensions per block, 1,000 re-scored), 5,000 and 1,000 leaves, and other leaves-searched /
re-scored points of the default tree (through the raw searcher): what the defaults were chosen
from. It adds ~12 minutes (three more builds a set).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import marquee  # noqa: E402,F401  (TF_USE_LEGACY_KERAS and quiet logs before TensorFlow)

# isort: split
import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

from components.scann_indexer.index_lib import (  # noqa: E402
    brute_force_top_k,
    build_searcher,
    evaluate_searcher,
    load_index,
    plan_index,
    save_index,
    tuned,
)
from marquee.artifacts import QUERY_TOWER, RETRIEVAL_INDEX, versions  # noqa: E402
from marquee.config import IndexConfig  # noqa: E402
from marquee.retrieval_index import INDEX_FILE, RetrievalIndex  # noqa: E402

TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0
TARGET_ITEMS = 500_000
WARMUP = 20
BATCH = 32
BLOCK = 10


def synthetic_embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n, dim] float32 unit rows: n / 100 cluster centres plus noise (clustered like learned
    ones; the generator bench/bench_homepage_scale.py used for its 500K index)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 100), dim)).astype(np.float32)
    out = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.normal(size=(n, dim))
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(items: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows of ``items [N, dim]`` for one ``query [dim]``, best first (float32)."""
    scores = items @ query
    n = len(scores)
    if k >= n:
        return np.argsort(-scores, kind="stable")
    top = np.argpartition(scores, n - k)[n - k:]
    return top[np.argsort(-scores[top], kind="stable")]


def exact_batched_ms(items: np.ndarray, queries: np.ndarray, k: int) -> float:
    """ms per query of exact top-k over batches of ``BATCH`` queries (one matmul a batch)."""
    n = len(items)
    t = time.perf_counter()
    for start in range(0, len(queries), BATCH):
        scores = queries[start:start + BATCH] @ items.T
        if k < n:
            np.argpartition(scores, n - k, axis=1)
    return (time.perf_counter() - t) * 1000 / len(queries)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return np.intersect1d(found, exact).size / len(exact)


@dataclasses.dataclass
class Row:
    name: str
    items: int
    k: int
    recall: float
    exact_recall: float
    scann_ms: np.ndarray
    exact_ms: np.ndarray
    cold_ms: np.ndarray  # ScaNN right after an exact scan (first of each block)
    note: str = ""

    def speedup(self, q: float) -> float:
        return float(np.percentile(self.exact_ms, q) / np.percentile(self.scann_ms, q))


def side_by_side(name: str, search, items: np.ndarray, queries: np.ndarray, k: int,
                 note: str = "", ids: np.ndarray | None = None) -> Row:
    """``search(query [dim], k) -> rows [k]`` vs exact search on the same queries. With ``ids``
    (row -> item id), ``search`` returns item ids, as serving's does, and the exact search maps
    its rows to ids inside its timing too.

    In blocks of ``BLOCK`` queries, each method in turn over the block (which goes first
    alternates), so both run within ~50 ms of each other and a neighbour's load hits both alike;
    inside a block ScaNN answers back to back, as a server does. The first ScaNN query of a
    block follows a 128 MB exact scan (or the previous block's): its latency is also kept apart
    as the cold-cache figure. Rows returned by ``search`` must be rows of ``items``."""
    k = min(k, len(items))
    reference = brute_force_top_k(queries, items, k)
    exact = (lambda q, k: exact_top_k(items, q, k)) if ids is None else (  # noqa: E731
        lambda q, k: ids[exact_top_k(items, q, k)])
    if ids is not None:
        reference = ids[reference]
    for q in queries[:WARMUP]:
        search(q, k)
        exact(q, k)
    scann_ms, exact_ms = np.empty(len(queries)), np.empty(len(queries))
    hits, exact_hits = np.empty(len(queries)), np.empty(len(queries))
    cold = []
    for b, start in enumerate(range(0, len(queries), BLOCK)):
        block = range(start, min(len(queries), start + BLOCK))
        for scann_turn in ((True, False) if b % 2 == 0 else (False, True)):
            for i in block:
                t = time.perf_counter()
                found = search(queries[i], k) if scann_turn else exact(queries[i], k)
                ms = (time.perf_counter() - t) * 1000
                if scann_turn:
                    scann_ms[i], hits[i] = ms, recall(found, reference[i])
                else:
                    exact_ms[i], exact_hits[i] = ms, recall(found, reference[i])
        cold.append(scann_ms[block[0]])
    return Row(name, len(items), k, float(hits.mean()), float(exact_hits.mean()), scann_ms,
               exact_ms, np.asarray(cold), note)


def pushed_index(items: np.ndarray, queries: np.ndarray, config: IndexConfig, tmp: Path,
                 label: str, tune: np.ndarray | None = None) -> tuple[RetrievalIndex, str]:
    """Builds, tunes (on ``tune``, queries other than the measured ones), evaluates, saves and
    loads the index the way the ScannIndexer and serving do.

    Item ids are the rows, so the loaded index's ids compare directly with exact rows."""
    t = time.perf_counter()
    searcher = build_searcher(items, config)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    searcher, tuning = tuned(searcher, tune, items, config)
    tune_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = evaluate_searcher(searcher, queries[:config.eval_queries], items, config)
    eval_s = time.perf_counter() - t
    out = tmp / label
    save_index(searcher, np.arange(len(items), dtype=np.int64), evaluation, out,
               {"training_run": "bench"})
    index = load_index(out)
    plan = plan_index(len(items), config)
    shape = ("brute force" if plan.brute_force else
             f"{plan.num_leaves} leaves, {evaluation.leaves_to_search} searched (plan "
             f"{plan.leaves_to_search}), re-scored max({plan.reorder}, 2k), "
             f"{config.dims_per_block} dim(s)/block, trained on all {len(items):,} rows")
    info = (f"{label}: {len(items):,} x {items.shape[1]}, {shape}; build {build_s:.1f} s"
            + (f", tuning {tune_s:.1f} s: {tuning.sentence()}" if tuning else
               ", not tuned") +
            f" (indexer's own evaluation {eval_s:.1f} s: recall@{evaluation.k} "
            f"{evaluation.recall:.4f}, p50 {evaluation.latency_ms_p50:.3f} ms, "
            f"{'blessed' if evaluation.blessed else 'NOT blessed'})")
    return index, info


def index_search(index: RetrievalIndex):
    def search(q, k):
        return index.search(q, k)[0]
    return search


def raw_search(searcher, leaves: int, pre: int):
    def search(q, k):
        rows, _ = searcher.search(q, final_num_neighbors=k, pre_reorder_num_neighbors=max(pre, k),
                                  leaves_to_search=leaves)
        return rows.astype(np.int64)
    return search


def print_rows(rows: list[Row], target_items: int) -> None:
    print(f"\n{'set':<40} {'items':>8} {'k':>5} {'recall':>7} {'target':>6} "
          f"{'ScaNN p50/p99 ms':>16} {'exact p50/p99 ms':>16} {'x p50':>6} {'target':>6} "
          f"{'x p99':>6} {'cold x':>6}  verdict")
    for r in rows:
        ok = r.recall >= TARGET_RECALL and r.speedup(50) >= TARGET_SPEEDUP
        verdict = ("meets" if ok else "misses") if r.items >= target_items else "n/a (size)"
        sc = f"{np.percentile(r.scann_ms, 50):.3f}/{np.percentile(r.scann_ms, 99):.3f}"
        ex = f"{np.percentile(r.exact_ms, 50):.2f}/{np.percentile(r.exact_ms, 99):.2f}"
        cold = np.percentile(r.exact_ms, 50) / np.percentile(r.cold_ms, 50)
        print(f"{r.name:<40} {r.items:>8,} {r.k:>5} {r.recall:>7.4f} {'>=0.95':>6} {sc:>16} "
              f"{ex:>16} {r.speedup(50):>6.1f} {'>=20':>6} {r.speedup(99):>6.1f} {cold:>6.1f}  "
              f"{verdict}{' (' + r.note + ')' if r.note else ''}")
    print(f"x p50 / x p99: exact / ScaNN at that percentile; cold x: exact p50 / p50 of the ScaNN "
          f"queries that came right after an exact scan (1 in {BLOCK}). The target applies from "
          f"{target_items:,} titles.")
    checks = ", ".join(f"{r.exact_recall:.4f}" for r in rows)
    print(f"float32 exact search's own recall against the float64 reference, by row: {checks}")


def real_queries(run: Path, n: int):
    """(query tower version, [n, dim] query embeddings of the run's held-out eval examples)."""
    import tensorflow as tf

    from trainer import features as f
    from trainer import raw_inputs

    serving = run / "serving"
    version = versions(serving / QUERY_TOWER)[-1]
    examples = sorted((run / "tfx" / "ContractExampleGen" / "examples").glob("*/Split-eval"))
    if not examples:
        raise SystemExit(f"{run}/tfx/ContractExampleGen/examples/*/Split-eval: no eval examples "
                         "(pass --real-run a pipeline run folder: marquee pipeline run --root RUN)")
    held_out = raw_inputs.read_examples([str(examples[-1] / "*")], limit=n)
    tower = tf.saved_model.load(str(serving / QUERY_TOWER / str(version)))
    q = raw_inputs.embed(tower.signatures["serving_default"],
                         raw_inputs.parse_examples(held_out, f.QUERY_FEATURES))
    return version, q.astype(np.float32)


def real_tower_items(run: Path, version: int, items_file: Path) -> np.ndarray:
    """The run's candidate tower over every title of ``items_file`` (contract items)."""
    import pandas as pd
    import tensorflow as tf

    from marquee.artifacts import CANDIDATE_TOWER
    from serving.state.catalogue import Catalogue

    catalogue = Catalogue.from_frame(pd.read_parquet(items_file))
    tower = tf.saved_model.load(str(run / "serving" / CANDIDATE_TOWER / str(version)))
    fn = tower.signatures["serving_default"]
    out, n = [], len(catalogue.item_ids)
    for start in range(0, n, 8192):
        inputs = catalogue.candidate_inputs(np.arange(start, min(n, start + 8192)))
        out.append(fn(**{k: tf.constant(v) for k, v in inputs.items()})["embedding"].numpy())
    return np.concatenate(out).astype(np.float32)


def sweep(label: str, items: np.ndarray, queries: np.ndarray, k: int, tmp: Path,
          default: RetrievalIndex) -> list[Row]:
    """The previous defaults and the alternatives the defaults were chosen from."""
    rows = []
    base = IndexConfig()
    for name, config in (("5000 leaves, 2 dims/block", dataclasses.replace(
                             base, max_leaves=10**9, dims_per_block=2)),
                         ("5000 leaves", dataclasses.replace(base, max_leaves=10**9)),
                         ("1000 leaves", dataclasses.replace(base, max_leaves=1000))):
        index, info = pushed_index(items, queries, config, tmp, f"{label} {name}")
        print(info, flush=True)
        if config.dims_per_block == 2:  # the previous defaults re-scored max(400, k)
            rows.append(side_by_side(f"{label}: previous defaults", raw_search(
                index._searcher, index._num_leaves // 5, k), items, queries, k))
        rows.append(side_by_side(f"{label}: {name}", index_search(index), items, queries, k))
        if name == "1000 leaves":
            rows.append(side_by_side(f"{label}: {name}, 30% searched", raw_search(
                index._searcher, 300, 2 * k), items, queries, k))
        del index
    leaves = default._num_leaves
    for share, pre in ((0.1, 2 * k), (0.15, 2 * k), (0.3, 2 * k), (0.2, k), (0.2, 4 * k)):
        rows.append(side_by_side(f"{label}: default, {share:.0%} searched, {pre} re-scored",
                                 raw_search(default._searcher, round(leaves * share), pre),
                                 items, queries, k))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500_000, help="synthetic catalogue size")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=300, help="queries per data set")
    ap.add_argument("--k", type=int, default=1000, help="neighbours asked per query")
    ap.add_argument("--real-run", type=Path,
                    help="a pipeline run folder (serving/ and tfx/): its pushed index and "
                         "towers are measured too (at 500K titles the target applies to it)")
    ap.add_argument("--real-items", type=Path,
                    help="with --real-run: contract items (items.parquet) the run's candidate "
                         "tower embeds, as titles it never saw")
    ap.add_argument("--sweep", action="store_true",
                    help="also the previous defaults and the alternatives (adds ~12 min)")
    args = ap.parse_args()
    blas = ", ".join(f"{b['internal_api']} {b['num_threads']} threads"
                     for b in threadpoolctl.threadpool_info())
    print(f"# bench_ann: top-{args.k}, {args.queries} queries a set, single query a call; "
          f"target recall@{args.k} >= {TARGET_RECALL} and exact p50 / ScaNN p50 >= "
          f"{TARGET_SPEEDUP:g}x.\n# cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; "
          f"numpy BLAS {blas}"
          f" (exact search); ScaNN search: 1 thread.\n# defaults: {IndexConfig()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        t = time.perf_counter()
        n_tune = IndexConfig().tune_queries
        both = synthetic_embeddings(args.items + args.queries + n_tune, args.dim)
        items, queries = both[:args.items], both[args.items:args.items + args.queries]
        tune = both[args.items + args.queries:]
        print(f"synthetic: {args.items:,} x {args.dim} generated in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        index, info = pushed_index(items, queries, IndexConfig(), tmp, "synthetic", tune)
        print(info, flush=True)
        rows.append(side_by_side("synthetic, pushed index", index_search(index), items,
                                 queries, args.k))
        print(f"exact search batched ({BATCH} queries a matmul): "
              f"{exact_batched_ms(items, queries, args.k):.2f} ms a query", flush=True)
        if args.sweep:
            rows += sweep("synthetic", items, queries, args.k, tmp, index)
        del index, items, queries, both
        if args.real_run:
            # The pushed index was tuned on the eval split's rows after the indexer's first
            # eval_queries (500): the first --queries rows measured here are not among them.
            # The index rebuilt on the real towers tunes on the rows after the measured ones.
            version, held_out = real_queries(args.real_run, args.queries + n_tune)
            real_q, real_tune = held_out[:args.queries], held_out[args.queries:]
            if args.real_items:
                t = time.perf_counter()
                items = real_tower_items(args.real_run, version, args.real_items)
                print(f"real towers: {len(items):,} titles of {args.real_items} embedded by "
                      f"{args.real_run}'s candidate tower v{version} in "
                      f"{time.perf_counter() - t:.1f} s; {len(real_q)} eval queries",
                      flush=True)
                index, info = pushed_index(items, real_q, IndexConfig(), tmp, "real towers",
                                           real_tune)
                print(info, flush=True)
                rows.append(side_by_side("real towers, new titles, pushed", index_search(index),
                                         items, real_q, args.k, "ids out of vocabulary"))
                if args.sweep:
                    rows += sweep("real towers", items, real_q, args.k, tmp, index)
                del index, items
            pushed = args.real_run / "serving" / RETRIEVAL_INDEX / str(version)
            if not (pushed / INDEX_FILE).is_file():
                raise SystemExit(f"{pushed}: no complete index of query tower v{version}")
            index = load_index(pushed)
            print(f"real run's pushed index: {pushed}, "
                  f"{index.num_items:,} titles, built {index.metadata['evaluation']['reason']}",
                  flush=True)
            # Both return item ids: ScaNN's search as serving calls it, the exact search its
            # rows' ids (index.item_ids[rows], a gather of k).
            rows.append(side_by_side("real run, pushed index", index_search(index),
                                     index.embeddings, real_q, args.k, "its own size",
                                     ids=index.item_ids))
    print_rows(rows, TARGET_ITEMS)


if __name__ == "__main__":
    main()
