"""Homepage latency at catalogue scale: ScaNN vs exact brute force, every source and re-rank on.

    .venv/bin/python bench/bench_homepage_scale.py --model-base RUN/serving \\
        [--items 2000,500000] [--n 300] [--clients 2]

For each catalogue size: the simulator writes a catalogue of that many titles with a week of
watches (``--users`` users), so trending, item-to-item, content, the "Because you watched" rows
and every re-rank step run on real-looking data; the retrieval index is built over synthetic
item embeddings (clustered Gaussians, one per title) twice, as a ScaNN tree (the indexer's
plan) and as exact brute force. Both indexes are pushed beside the query tower and ranker of a
real pipeline run (``--model-base``; its ranker scores the new titles from their metadata, ids
out of vocabulary), and one in-process HomepageService per index answers the same users, on a
cache miss (the page cache is off), alternating request by request so both see the same
machine. Printed per size: p50 / p99 of each stage and of the whole request, requests/s with
``--clients`` concurrent callers, and the brute-force / ScaNN ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import marquee  # noqa: F401
from components.model_pusher.push_lib import CANDIDATE_TOWER, QUERY_TOWER, RANKER, versions
from components.scann_indexer.index_lib import build_and_evaluate, load_index, save_index
from marquee.config import Config, IndexConfig, ServingConfig
from marquee.data.simulate import SimConfig, simulate
from serving.build import build_service
from serving.homepage.service import HomepageService
from serving.state.catalogue import load_frames

GENEROUS = dict(deadline_ms=60_000, query_deadline_ms=30_000, rank_deadline_ms=30_000)


def synthetic_embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n, dim] float32: n / 100 cluster centres plus noise (clustered like learned ones)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 100), dim)).astype(np.float32)
    out = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.normal(size=(n, dim))
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def model_base(real: Path, out: Path, item_ids: np.ndarray, emb: np.ndarray,
               config: IndexConfig) -> dict:
    """``out``: the real run's towers and ranker (linked) + an index over ``emb``."""
    version = str(versions(real / QUERY_TOWER)[-1])
    for model in (QUERY_TOWER, CANDIDATE_TOWER, RANKER):
        if (real / model / version).is_dir():
            (out / model).mkdir(parents=True, exist_ok=True)
            (out / model / version).symlink_to((real / model / version).resolve())
    meta = json.loads((real / "retrieval_index" / version / "index.json").read_text())["metadata"]
    queries = emb[np.random.default_rng(1).choice(len(emb), 200, replace=False)]
    t = time.perf_counter()
    searcher, evaluation = build_and_evaluate(emb, item_ids, queries, config)
    build_s = time.perf_counter() - t
    save_index(searcher, item_ids, evaluation, out / "retrieval_index" / version,
               {"training_run": meta["training_run"], "embedding_dim": emb.shape[1]})
    return {"build_s": build_s, "recall": evaluation.recall, "leaves": evaluation.num_leaves}


def run_requests(svc: HomepageService, users: list[int], clients: int) -> float:
    """requests/s of ``users`` answered by ``clients`` concurrent callers."""
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        pages = list(pool.map(svc.homepage, users))
    assert not any(p.fallback for p in pages), [p.reason for p in pages if p.fallback][:1]
    return len(users) / (time.perf_counter() - t)


def bench_size(real: Path, items: int, users: int, n: int, clients: int, tmp: Path) -> None:
    data = tmp / f"data-{items}"
    t = time.perf_counter()
    simulate(data, SimConfig(users=users, items=items, days=7, seed=0))
    catalogue, user_store, interactions = load_frames(data)
    print(f"\n== {items:,} titles: {len(interactions):,} interactions of {users:,} users "
          f"simulated and loaded in {time.perf_counter() - t:.0f} s", flush=True)
    dim = load_index(next((real / "retrieval_index").iterdir())).dim
    emb = synthetic_embeddings(len(catalogue.item_ids), dim)
    services, info = {}, {}
    for name, config in (("scann", IndexConfig()),
                         ("brute_force", IndexConfig(brute_force_below=10**9))):
        base = tmp / f"base-{items}-{name}"
        info[name] = model_base(real, base, catalogue.item_ids, emb, config)
        print(f"{name}: index built in {info[name]['build_s']:.1f} s, leaves "
              f"{info[name]['leaves']}, recall@100 vs exact {info[name]['recall']:.3f}",
              flush=True)
        # cache off: every request is a miss; every source and re-rank step on (defaults)
        config = ServingConfig(cache_ttl_seconds=0, **GENEROUS)
        config = dataclasses.replace(config, sources=tuple(  # latency here, not deadlines
            dataclasses.replace(s, deadline_ms=30_000) for s in config.sources))
        services[name] = build_service(Config(serving=config), None, base,
                                       frames=(catalogue, user_store, interactions))
    full = [u for u in user_store.user_ids() if len(user_store.get(u).history) >= 5]
    picked = [full[i % len(full)] for i in range(n)]
    timings: dict[str, dict[str, list[float]]] = {name: {} for name in services}
    for svc in services.values():  # warm every path (first calls trace functions)
        for u in picked[:5]:
            svc.homepage(u)
    for u in picked:
        for name, svc in services.items():
            page = svc.homepage(u)
            assert not page.fallback and page.stage == "full", page.reason
            for stage, ms in page.timings_ms.items():
                timings[name].setdefault(stage, []).append(ms)
    rps: dict[str, float] = {}
    for _ in range(2):  # twice, alternating; the second (warm thread pools) counts
        rps = {name: run_requests(svc, picked, clients) for name, svc in services.items()}
    stages = [s for s in timings["scann"] if s in timings["brute_force"]]
    print(f"{n} cache-miss requests per index ({len(full):,} users with >= 5 watches), "
          f"{ServingConfig().candidates} candidates, k={ServingConfig().k}; ms")
    print(f"{'stage':<22}{'ScaNN p50':>10}{'p99':>8}{'exact p50':>11}{'p99':>8}"
          f"{'ratio p50':>11}")
    for stage in stages:
        a, b = np.array(timings["scann"][stage]), np.array(timings["brute_force"][stage])
        print(f"{stage:<22}{np.median(a):>10.2f}{np.percentile(a, 99):>8.2f}"
              f"{np.median(b):>11.2f}{np.percentile(b, 99):>8.2f}"
              f"{np.median(b) / max(np.median(a), 1e-9):>11.2f}")
    print(f"{'requests/s':<22}{rps['scann']:>10.1f}{'':>8}{rps['brute_force']:>11.1f}{'':>8}"
          f"{rps['brute_force'] / rps['scann']:>11.2f}   ({clients} concurrent clients)")
    for svc in services.values():
        svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-base", required=True,
                    help="a pipeline run's serving folder with a pushed ranker (e.g. MovieLens)")
    ap.add_argument("--items", default="2000,500000")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--clients", type=int, default=2)
    args = ap.parse_args()
    real = Path(args.model_base)
    if not versions(real / RANKER):
        raise SystemExit(f"{real} has no pushed ranker; use a run whose ranker was blessed "
                         "(MovieLens: marquee pipeline run --data build/ml100k ...)")
    tmp = Path(tempfile.mkdtemp(prefix="marquee-bench-"))
    try:
        for items in (int(x) for x in args.items.split(",")):
            bench_size(real, items, args.users, args.n, args.clients, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
