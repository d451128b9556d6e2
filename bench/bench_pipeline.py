"""Pipeline wall time per component and retrieval training examples/s, side by side.

    .venv/bin/python bench/bench_pipeline.py [--datasets demo,movielens] [--workdir build/bench]

Runs the real pipeline (LocalDagRunner, Beam DirectRunner, one worker per core) on the
simulator's default dataset and on MovieLens 100K imported from ../shared/datasets, one after
the other in this process, and prints one table, with issue 18's targets beside the figures:
the MovieLens 100K pipeline under 120 s wall end to end, retrieval training at >= 50K examples/s.
The component that takes the most time is named.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import marquee  # noqa: F401
from marquee.config import Config, load_config
from marquee.data.movielens import import_movielens
from marquee.data.simulate import SimConfig, simulate
from marquee.logs import component_progress, quiet_libraries
from pipeline.local_runner import component_seconds, run_dirs, run_local

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO.parent / "shared" / "datasets" / "movielens-100k"
ORDER = ["ContractExampleGen", "StatisticsGen", "ExampleValidator", "DistributionValidator",
         "AnomalyGate", "Transform", "Trainer", "ScannIndexer", "AlsTrainer", "RankingTrainer",
         "RankingEvaluator", "ModelPusher", "EmbeddingDrift"]
TARGET_WALL_S = {"movielens": 120.0}  # issue 18
TARGET_EXAMPLES_PER_S = 50_000


def prepare(name: str, workdir: Path) -> tuple[Path, Config]:
    data = workdir / f"{name}-data"
    if data.exists():
        shutil.rmtree(data)
    if name == "demo":
        simulate(data, SimConfig())
        return data, Config()
    if name == "movielens":
        import_movielens(MOVIELENS, data)
        return data, load_config(REPO / "configs" / "movielens.yaml")
    raise SystemExit(f"unknown dataset {name!r}; choose from demo, movielens")


def run_one(name: str, workdir: Path) -> dict:
    data, config = prepare(name, workdir)
    root = workdir / f"{name}-run"
    if root.exists():
        shutil.rmtree(root)
    started = time.time()
    print(f"{name}: running the pipeline into {root}", flush=True)
    with component_progress(lambda line: print(f"  {line}", flush=True)):
        run_local(data, root, config)
    wall = time.time() - started
    secs = component_seconds(run_dirs(root)["metadata"])
    (model,) = (root / "tfx" / "Trainer" / "model").glob("*/Format-Serving/metadata.json")
    metrics = json.loads(model.read_text())["metrics"]
    return {"dataset": name, "wall": wall, **secs, "train_examples": metrics["train_examples"],
            "examples_per_s": metrics["train_examples_per_second"],
            "recall@20": metrics.get("recall@20"), "recall@100": metrics.get("recall@100"),
            "popularity_recall@100": metrics.get("popularity_recall@100")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="demo,movielens")
    ap.add_argument("--workdir", default=str(REPO / "build" / "bench"))
    args = ap.parse_args()
    quiet_libraries()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [run_one(name, workdir) for name in args.datasets.split(",")]
    cols = ["wall"] + ORDER
    print(f"{'dataset':<10}" + "".join(f"{c[:12]:>13}" for c in cols) + f"{'train ex':>10}"
          f"{'ex/s':>9}{'R@100':>8}{'pop R@100':>10}")
    for r in rows:
        print(f"{r['dataset']:<10}" + "".join(f"{r.get(c, float('nan')):>13.1f}" for c in cols)
              + f"{r['train_examples']:>10,}{r['examples_per_s']:>9,.0f}"
              f"{r['recall@100'] or float('nan'):>8.3f}"
              f"{r['popularity_recall@100'] or float('nan'):>10.3f}")
    print("seconds per component from ML Metadata; ex/s = retrieval training examples/s "
          "(epochs x examples / Keras fit seconds)")
    for r in rows:
        parts = {c: r[c] for c in r if c not in ("dataset", "wall") and c[0].isupper()}
        top = max(parts, key=parts.get)
        target = TARGET_WALL_S.get(r["dataset"])
        wall = (f"wall {r['wall']:.1f} s (target < {target:.0f} s: "
                f"{'met' if r['wall'] < target else 'NOT met'})" if target
                else f"wall {r['wall']:.1f} s")
        print(f"{r['dataset']}: {wall}; training {r['examples_per_s']:,.0f} ex/s (target >= "
              f"{TARGET_EXAMPLES_PER_S:,}: "
              f"{'met' if r['examples_per_s'] >= TARGET_EXAMPLES_PER_S else 'NOT met'}); "
              f"slowest component {top} {parts[top]:.1f} s ({parts[top] / r['wall']:.0%} of wall)"
              + (f"; Recall@20 {r['recall@20']:.4f}" if r.get("recall@20") else ""))


if __name__ == "__main__":
    main()
