"""What re-ranking buys and costs: diversity and coverage with it on and off, and the NDCG given up.

    .venv/bin/python bench/bench_rerank.py --data build/ml100k --run build/ml-eval/run
    .venv/bin/python bench/bench_rerank.py --data build/demo/data --run build/demo-eval/run

``--run`` is a ``marquee evaluate`` run folder: its pipeline was trained on the protocol's train
part only (``RUN/train-data``), so the offline protocol (``marquee.evaluation.protocol``) can
score the served homepage. Two services answer every protocol user at the time of their first
test positive, with every candidate source on and the page cache off:

- ``off``: only the filter steps (exclude watched, maturity): the ranker's order;
- ``on``: the configured re-rank steps (default: freshness, at most N per genre, MMR,
  exploration, plus the filters).

Printed for each: NDCG@10 and @50, Recall@50, Coverage@50, Gini@50 (the protocol's
definitions) and intra-list diversity: the mean over users of the mean pairwise genre distance
(1 - Jaccard of the two titles' genre sets) within the top 50.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np

import marquee  # noqa: F401
from marquee.config import load_config
from marquee.data import contract as c
from marquee.data.validate import load_dataset
from marquee.evaluation.protocol import NO_ITEM, evaluate_rankings, leave_last_out
from serving.build import build_service
from serving.state.catalogue import Catalogue, load_frames

K = 50
GENEROUS = dict(deadline_ms=60_000, query_deadline_ms=30_000, rank_deadline_ms=30_000)


def genre_distance(a: set[str], b: set[str]) -> float:
    """1 - |a & b| / |a | b|; two titles without genres are alike (0)."""
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


def intra_list_diversity(lists: np.ndarray, catalogue: Catalogue) -> float:
    """Mean over rows of the mean pairwise genre distance of the row's titles (padding
    ignored; rows with fewer than two titles skipped)."""
    per_row = []
    for row in lists:
        ids = [int(i) for i in row if i != NO_ITEM]
        genres = [set(catalogue.genres[catalogue.row[i]]) for i in ids]
        pairs = [genre_distance(a, b) for a, b in itertools.combinations(genres, 2)]
        if pairs:
            per_row.append(float(np.mean(pairs)))
    return float(np.mean(per_row)) if per_row else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the dataset `marquee evaluate` split")
    ap.add_argument("--run", required=True, help="its `marquee evaluate` run folder")
    ap.add_argument("--config", help="the config the run used (for its serving section)")
    args = ap.parse_args()
    run = Path(args.run)
    full = load_config(args.config)  # the defaults without --config
    config, min_watch = full.serving, full.data.min_watch_seconds
    split = leave_last_out(load_dataset(args.data).interactions)
    catalogue, users, interactions = load_frames(run / "train-data", min_watch)
    first = split.test.groupby(c.USER_ID)[c.TIMESTAMP].min().to_dict()
    allowed = set(split.catalogue.tolist())
    filters = tuple(s for s in config.rerank if s["step"] in ("exclude_watched", "maturity"))
    modes = {"off": dataclasses.replace(config, rerank=filters), "on": config}
    results, lists_by_mode = {}, {}
    for mode, cfg in modes.items():
        cfg = dataclasses.replace(cfg, k=K, cache_ttl_seconds=0, because_you_watched=0,
                                  sources=tuple(dataclasses.replace(s, deadline_ms=30_000)
                                                for s in cfg.sources), **GENEROUS)
        base = run / "serving"
        svc = build_service(dataclasses.replace(full, serving=cfg), None, base,
                            frames=(catalogue, users, interactions))
        t = time.perf_counter()
        pages: dict[int, list[int]] = {}

        def recommend(user_ids: np.ndarray, svc=svc, pages=pages) -> np.ndarray:
            out = np.full((len(user_ids), K), NO_ITEM, np.int64)
            for r, u in enumerate(user_ids.tolist()):
                if u not in pages:
                    page = svc.homepage(u, K + 50, timestamp=int(first.get(u, 0)), seed=u)
                    if page.fallback:
                        raise RuntimeError(f"user {u} fell back: {page.reason}")
                    pages[u] = [p.item_id for p in page.items if p.item_id in allowed][:K]
                out[r, :len(pages[u])] = pages[u]
            return out

        results[mode] = evaluate_rankings(split, recommend, (10, K))
        lists_by_mode[mode] = recommend(split.users)
        results[mode]["diversity@50"] = intra_list_diversity(lists_by_mode[mode], catalogue)
        results[mode]["seconds"] = time.perf_counter() - t
        svc.stop()
    print(f"{args.data}: {len(split.users):,} users, {len(allowed):,} catalogue titles; "
          f"re-rank on = {[s['step'] for s in config.rerank]}")
    keys = ["ndcg@10", f"ndcg@{K}", f"recall@{K}", f"coverage@{K}", f"gini@{K}", "diversity@50"]
    print(f"{'metric':<16}{'re-rank off':>12}{'on':>10}{'on - off':>10}")
    for key in keys:
        a, b = results["off"][key], results["on"][key]
        print(f"{key:<16}{a:>12.4f}{b:>10.4f}{b - a:>+10.4f}")


if __name__ == "__main__":
    main()
