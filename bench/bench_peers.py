"""The peers' figures on MovieLens 100K under the evaluation protocol, and their fit times.

    .venv/bin/python bench/bench_peers.py                      # tune on validation, then test
    .venv/bin/python bench/bench_peers.py --recall-1000 --out build/peers-ml100k
    .venv/bin/python bench/bench_peers.py --no-tune            # constructor defaults (EASE tuned)

Imports MovieLens 100K (``../shared/datasets/movielens-100k`` by default) into a temporary folder,
splits it leave-last-out (``marquee.evaluation.protocol``), chooses each personal peer's arguments
on a validation split carved from train (EASE's L2 always; ALS and item-kNN unless --no-tune),
then fits every peer on train and prints its test figures. ``--out`` also writes ``metrics.json``
and ``report.md`` there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import marquee  # noqa: F401  (sets the environment before anything imports TensorFlow)
from marquee.data import contract as c
from marquee.data.movielens import import_movielens
from marquee.data.validate import load_dataset
from marquee.evaluation import (
    EASE,
    ImplicitALS,
    ItemKNN,
    Popularity,
    Tuning,
    evaluate_peers,
    leave_last_out,
    tune,
    tune_ease,
)
from marquee.evaluation.peers import ALS_GRID, KNN_GRID
from marquee.evaluation.protocol import DEFAULT_KS
from marquee.evaluation.report import write_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "datasets" / "movielens-100k"
TABLE_KS = DEFAULT_KS
EXPOSURE_K = 50  # coverage and Gini are printed at this K


def _tuned(what: str, run) -> Tuning:
    start = time.perf_counter()
    tuning = run()
    print(f"  {what:<8} {tuning.best}  validation {tuning.metric} "
          f"{max(s for _, s in tuning.scores):.4f}  ({len(tuning.scores)} fits, "
          f"{time.perf_counter() - start:.1f} s)")
    return tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="MovieLens 100K folder")
    parser.add_argument("--recall-1000", action="store_true", help="also print Recall@1000")
    parser.add_argument("--no-tune", action="store_true",
                        help="ALS and item-kNN with their defaults (EASE's L2 is still tuned)")
    parser.add_argument("--out", type=Path, help="write metrics.json and report.md here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        import_movielens(args.src, tmp)
        interactions = load_dataset(tmp).interactions
    split = leave_last_out(interactions)
    test_items = split.test[c.ITEM_ID].to_numpy()
    outside = int(np.sum(~np.isin(test_items, split.catalogue)))
    summary = (f"{len(split.users):,} users, {len(split.train):,} train / {len(split.test):,} "
               f"test positives, catalogue {len(split.catalogue):,} items; {outside} test "
               "positives are outside the catalogue (never hittable, still counted)")
    print(f"MovieLens 100K ({args.src}): {summary}")

    print("tuning on the validation split (carved from train), by NDCG@20:")
    ease = _tuned("ease", lambda: tune_ease(split))
    peers = [Popularity(), EASE(**ease.best)]
    notes = [f"MovieLens 100K: {summary}.", f"EASE {ease.best} chosen on validation."]
    if args.no_tune:
        peers += [ImplicitALS(), ItemKNN()]
        notes.append("ALS and item-kNN with their constructor defaults.")
    else:
        als = _tuned("ials", lambda: tune(split, ImplicitALS, ALS_GRID))
        knn = _tuned("itemknn", lambda: tune(split, ItemKNN, KNN_GRID))
        peers += [ImplicitALS(**als.best), ItemKNN(**knn.best)]
        notes.append(f"ALS {als.best} and item-kNN {knn.best} chosen on validation.")

    extra = (1000,) if args.recall_1000 else ()
    metrics = evaluate_peers(split, peers, ks=TABLE_KS, extra_recall_ks=extra)

    columns = [f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in TABLE_KS]
    columns += [f"coverage@{EXPOSURE_K}", f"gini@{EXPOSURE_K}"]
    columns += [f"recall@{k}" for k in extra]
    print()
    print("| model | " + " | ".join(columns) + " | fit s |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for peer in peers:
        cells = [f"{metrics[f'{peer.name}.{col}']:.4f}" for col in columns]
        cells.append(f"{metrics[f'{peer.name}.fit_seconds']:.2f}")
        print(f"| {peer.name} | " + " | ".join(cells) + " |")
    if args.out:
        path = write_report(metrics, args.out, title="Peers on MovieLens 100K", notes=notes)
        print(f"\nreport: {path}")


if __name__ == "__main__":
    main()
