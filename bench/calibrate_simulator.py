"""The simulator's default world against MovieLens 100K, on named statistics (docs/simulator.md).

    .venv/bin/python bench/calibrate_simulator.py
    .venv/bin/python bench/calibrate_simulator.py --seeds 0,1,2          # the spread over seeds
    .venv/bin/python bench/calibrate_simulator.py --data OTHER_DATASET   # one more column
    .venv/bin/python bench/calibrate_simulator.py --set policy_taste_weight=0   # a variant

Simulates ``SimConfig()`` (what ``make demo`` runs; ``--set`` changes fields) with each seed and
imports MovieLens 100K (``../shared/datasets/movielens-100k`` relative to the repository by
default) into ``--workdir``, then prints, per dataset:

* positive watches per user (a watch of at least ``contract.WATCHED_THRESHOLD_SECONDS``, two
  minutes; on MovieLens exactly a rating >= 4), mean and median over every user of the users
  table, and their share of all watches;
* the Gini coefficient of the titles' positive watches, over every title of the catalogue (a
  title nobody watched counts 0; ``protocol.gini``);
* how far a personal model beats popularity on the project's offline protocol
  (``marquee.evaluation``: every watch a positive, the last 10% of each user's by time in test):
  Recall@20 and NDCG@20 of EASE (its L2 tuned on the validation split, ``tune_ease``) and of the
  popularity peer, and their ratios.

The figures are deterministic: the same versions give the same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import marquee  # noqa: F401  (sets the environment before anything imports TensorFlow)
from marquee.data import contract as c
from marquee.data.movielens import import_movielens
from marquee.data.simulate import SimConfig, simulate
from marquee.data.validate import load_dataset
from marquee.evaluation import EASE, Popularity, evaluate_peers, leave_last_out, tune_ease
from marquee.evaluation.protocol import gini

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MOVIELENS = REPO.parent / "shared" / "datasets" / "movielens-100k"
K = 20
ROWS = (  # (key, label, format)
    ("users", "users", "{:,.0f}"),
    ("titles", "titles", "{:,.0f}"),
    ("watches", "watches (protocol positives)", "{:,.0f}"),
    ("positive_share", "share of watches past 2 minutes", "{:.2f}"),
    ("positive_mean", "positive watches per user, mean", "{:.1f}"),
    ("positive_median", "positive watches per user, median", "{:.1f}"),
    ("gini", "Gini of titles' positive watches", "{:.3f}"),
    ("ease_l2", "EASE l2 (tuned on validation)", "{:g}"),
    ("popularity_recall", f"popularity Recall@{K}", "{:.4f}"),
    ("ease_recall", f"EASE Recall@{K}", "{:.4f}"),
    ("recall_ratio", f"EASE / popularity, Recall@{K}", "{:.2f}"),
    ("popularity_ndcg", f"popularity NDCG@{K}", "{:.4f}"),
    ("ease_ndcg", f"EASE NDCG@{K}", "{:.4f}"),
    ("ndcg_ratio", f"EASE / popularity, NDCG@{K}", "{:.2f}"),
)


def statistics(data_dir: Path) -> dict[str, float]:
    """The calibration statistics of one contract dataset (module docstring)."""
    data = load_dataset(data_dir)
    x, users, items = data.interactions, data.users, data.items
    watches = x[x[c.EVENT] == c.EVENT_WATCH]
    positive = watches[watches[c.WATCH_SECONDS] >= c.WATCHED_THRESHOLD_SECONDS]
    per_user = positive.groupby(c.USER_ID).size().reindex(users[c.USER_ID], fill_value=0)
    per_title = positive.groupby(c.ITEM_ID).size().reindex(items[c.ITEM_ID], fill_value=0)
    split = leave_last_out(x)
    l2 = tune_ease(split).best["l2"]
    peers = evaluate_peers(split, [Popularity(), EASE(l2)], ks=(K,))
    out = {
        "users": len(users),
        "titles": len(items),
        "watches": len(watches),
        "positive_share": len(positive) / len(watches),
        "positive_mean": float(per_user.mean()),
        "positive_median": float(per_user.median()),
        "gini": gini(per_title.to_numpy()),
        "ease_l2": l2,
    }
    for metric in ("recall", "ndcg"):
        pop, ease = peers[f"popularity.{metric}@{K}"], peers[f"ease.{metric}@{K}"]
        out.update({f"popularity_{metric}": pop, f"ease_{metric}": ease,
                    f"{metric}_ratio": ease / pop if pop else float("inf")})
    return out


def table(columns: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per statistic, one column per dataset."""
    names = list(columns)
    lines = ["| statistic | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for key, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(columns[n][key]) for n in names)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS,
                        help="the MovieLens 100K folder (u.data, u.item, u.user)")
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "calibrate",
                        help="where the simulated and imported datasets are written")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated SimConfig seeds, one column each (default: 0)")
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="another contract dataset to add as a column (repeatable)")
    parser.add_argument("--set", dest="changes", action="append", default=[],
                        metavar="FIELD=VALUE", help="simulate SimConfig(FIELD=VALUE) (repeatable)")
    args = parser.parse_args()
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    changes = {}
    for change in args.changes:
        name, _, value = change.partition("=")
        if name not in fields or name == "seed" or not value:
            parser.error(f"--set {change}: expected FIELD=VALUE with a SimConfig field other "
                         f"than seed (use --seeds), one of {', '.join(fields)}")
        changes[name] = type(getattr(SimConfig(), name))(value)
    if not (args.movielens / "u.data").is_file():
        parser.error(f"--movielens {args.movielens}: no u.data there; pass the folder the "
                     "MovieLens 100K zip (ml-100k.zip) unpacks to")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")

    began = time.perf_counter()
    columns = {}
    for seed in seeds:
        out = args.workdir / f"simulated-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        try:
            config = dataclasses.replace(SimConfig(), **changes, seed=seed)
        except ValueError as e:
            parser.error(str(e))
        simulate(out, config)
        name = "simulator " + (", ".join(args.changes) if changes else "default")
        columns[name + ("" if seed == 0 else f" (seed {seed})")] = statistics(out)
    for extra in args.data:
        columns[str(extra)] = statistics(extra)
    movielens = args.workdir / "movielens-100k"
    import_movielens(args.movielens, movielens)
    columns["MovieLens 100K"] = statistics(movielens)
    print(table(columns))
    print(f"\n{time.perf_counter() - began:.0f} s; datasets in {args.workdir}")


if __name__ == "__main__":
    main()
