"""The ranker's network: quality and the by-id call's latency of each shape, side by side.

    .venv/bin/python bench/bench_ranker.py --run build/bench/movielens-run \
        --config configs/movielens.yaml [--variants full=0:256,128 r32=32:256,128 ...]
        [--seeds 0,1] [--calls 300] [--workdir build/bench/ranker]

Target (issue 18): the ranker scores 1,000 candidates in <= 3 ms in-process, with its quality
unchanged. A variant is ``name=RANK:WIDTHS``: the cross layers' rank
(``RankingConfig.cross_projection_dim``, 0 = full rank) and the deep tower's widths
(``deep_layers``). Every other setting is the config's.

For each variant and seed, a child process trains the ranker with the RankingTrainer's own
``run_fn`` on the run's artifacts (its examples, Transform graph, retrieval towers and ALS model),
exports it as the pipeline does, and scores rank_eval with the RankingEvaluator's ``evaluate``:
AUC and log loss of P(watched) against the popularity baseline the gate compares with.

Then one process loads every variant's export (seed 0) and times ``rank_by_id`` on 1,000
candidates the way the in-process backend calls it (``tf.constant`` inputs, the page's query
once): variants alternate call by call, so a neighbour's load hits all alike. p50 / p99 ms.
The multiply-adds per candidate of the head are printed beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import marquee  # noqa: E402,F401  (TF_USE_LEGACY_KERAS and quiet logs before TensorFlow)

# isort: split
import numpy as np  # noqa: E402

from marquee.config import Config, load_config  # noqa: E402

TARGET_MS = 3.0
CANDIDATES = 1000
# The shape before issue 18 (full rank, 256/128), the default since (rank 16, 64/32) and two
# between them.
DEFAULT_VARIANTS = ("full=0:256,128", "r32=32:256,128", "r16-narrow=16:128,64",
                    "r16-64=16:64,32")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    rank: int
    deep: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        try:
            name, shape = text.split("=")
            rank, widths = shape.split(":")
            return cls(name, int(rank), tuple(int(w) for w in widths.split(",") if w))
        except ValueError:
            raise SystemExit(f"--variants: expected NAME=RANK:WIDTH,WIDTH (e.g. r32=32:256,128), "
                             f"got {text!r}") from None

    def ranking(self, config: Config) -> Config:
        ranking = dataclasses.replace(config.ranking, cross_projection_dim=self.rank,
                                      deep_layers=self.deep)
        return dataclasses.replace(config, ranking=ranking)


def newest(folder: Path) -> Path:
    runs = [p for p in folder.glob("*") if p.name.isdigit()]
    if not runs:
        raise SystemExit(f"no artifact under {folder}: run the pipeline first "
                         "(bench/bench_pipeline.py --datasets movielens makes one)")
    return max(runs, key=lambda p: int(p.name))


def artifacts(run: Path) -> dict[str, str]:
    from tfx.utils import path_utils

    tfx_dir = run / "tfx"
    als = tfx_dir / "AlsTrainer" / "model"
    return {"examples": str(newest(tfx_dir / "ContractExampleGen" / "examples")),
            "transform": str(newest(tfx_dir / "Transform" / "transform_graph")),
            "retrieval": path_utils.serving_model_path(str(newest(tfx_dir / "Trainer" / "model"))),
            "als": str(newest(als)) if als.exists() else ""}


def head_macs(width: int, variant: Variant, cross_layers: int) -> int:
    """Multiply-adds per candidate of the cross layers, the deep tower and the two heads."""
    cross = width * (2 * variant.rank if variant.rank else width)
    dims = (width,) + variant.deep
    deep = sum(a * b for a, b in zip(dims, dims[1:], strict=False))
    return cross_layers * cross + deep + 2 * dims[-1]


def train_one(run: Path, config: Config, out: Path, seed: int) -> dict:
    """In the child: the RankingTrainer's run_fn, then the RankingEvaluator's evaluate."""
    from components.contract_example_gen.example_lib import RANK_TRAIN
    from components.ranking_evaluator.executor import RANKER, evaluate
    from trainer.ranking import ALS_MODEL_KEY, run_fn

    paths = artifacts(run)
    config = dataclasses.replace(config, ranking=dataclasses.replace(config.ranking, seed=seed))
    custom = {"config": config.to_json()}
    if paths["als"]:
        custom[ALS_MODEL_KEY] = paths["als"]
    fn_args = types.SimpleNamespace(
        train_files=[os.path.join(paths["examples"], f"Split-{RANK_TRAIN}", "*")],
        base_model=paths["retrieval"], custom_config=custom,
        transform_output=paths["transform"], serving_model_dir=str(out))
    t = time.perf_counter()
    run_fn(fn_args)
    seconds = time.perf_counter() - t
    result = evaluate(str(out / RANKER), None, paths["examples"], paths["retrieval"], config,
                      paths["als"] or None)
    info = json.loads((out / "metadata.json").read_text())
    return {"candidate": result["candidate_metrics"]["all"],
            "baseline": result["baseline_metrics"]["all"],
            "blessed": result["blessed"], "run_fn_seconds": round(seconds, 1),
            "train_examples": info["metrics"]["train_examples"]}


def time_variants(dirs: dict[str, Path], run: Path, calls: int) -> dict[str, list[float]]:
    """ms per rank_by_id call on CANDIDATES ids, the variants alternating call by call."""
    import tensorflow as tf

    from components.contract_example_gen.example_lib import RANK_EVAL
    from components.ranking_evaluator.executor import RANKER
    from trainer import features as f
    from trainer.ranking import ALS_SCORE, RANK_BY_ID, RETRIEVAL_SCORE, load_catalogue, load_split

    paths = artifacts(run)
    rows = load_split([os.path.join(paths["examples"], f"Split-{RANK_EVAL}", "*")],
                      paths["retrieval"], limit=calls)
    catalogue = load_catalogue([os.path.join(paths["examples"], "Split-catalogue", "*")])
    ids = np.resize(catalogue[f.ITEM_ID].astype(np.int64), CANDIDATES)  # repeats if fewer
    fns = {name: tf.saved_model.load(str(d / RANKER)).signatures[RANK_BY_ID]
           for name, d in dirs.items()}
    scores = np.linspace(1.0, 0.0, CANDIDATES, dtype=np.float32)

    def inputs(fn, i: int) -> dict:
        keys = fn.structured_input_signature[1]
        row = i % len(rows[f.ITEM_ID])
        out = {k: rows[k][row:row + 1] for k in f.QUERY_FEATURES}
        out[f.ITEM_ID] = ids
        out[RETRIEVAL_SCORE] = scores
        if ALS_SCORE in keys:
            out[ALS_SCORE] = scores
        return {k: tf.constant(v) for k, v in out.items()}

    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(20 + calls):
        order = list(fns) if i % 2 else list(fns)[::-1]
        for name in order:
            fn = fns[name]
            t = time.perf_counter()
            fn(**inputs(fn, i))
            if i >= 20:
                out[name].append((time.perf_counter() - t) * 1000)
    return out


def feature_width(directory: Path) -> int:
    """The head's input width: the length of the ranker's LayerNorm scale (``model.norm``),
    found through the SavedModel checkpoint's object graph."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    from components.ranking_evaluator.executor import RANKER

    reader = tf.train.load_checkpoint(str(directory / RANKER / "variables" / "variables"))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    node = graph.nodes[0]
    for name in ("model", "norm", "gamma"):
        node = graph.nodes[next(c.node_id for c in node.children if c.local_name == name)]
    return int(reader.get_variable_to_shape_map()[node.attributes[0].checkpoint_key][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a pipeline run's root (its tfx/ folder)")
    ap.add_argument("--config", help="the run's config (YAML), if not the defaults")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--workdir", default="build/bench/ranker")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the variants already trained in --workdir (their bench.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    run, work = Path(args.run), Path(args.workdir)
    config = load_config(args.config) if args.config else Config()
    variants = [Variant.parse(v) for v in args.variants]
    if args.child:  # VARIANT:SEED, in its own process
        text, seed = args.child.rsplit(":", 1)
        (variant,) = [v for v in variants if v.name == text]
        out = work / variant.name / seed
        result = train_one(run, variant.ranking(config), out, int(seed))
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {v.name: [] for v in variants}
    for seed in seeds:  # the variants' order alternates from seed to seed
        for variant in (variants if seed % 2 == 0 else variants[::-1]):
            done = work / variant.name / str(seed) / "bench.json"
            if not (args.reuse and done.is_file()):
                print(f"training {variant.name} (seed {seed})", flush=True)
                cmd = [sys.executable, __file__, "--run", str(run), "--workdir", str(work),
                       "--variants", *args.variants, "--child", f"{variant.name}:{seed}"]
                if args.config:
                    cmd += ["--config", args.config]
                log = work / f"{variant.name}-{seed}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("w") as out:  # the child's library chatter
                    code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
                if code:
                    raise SystemExit(f"training {variant.name} (seed {seed}) failed with exit "
                                     f"code {code}; its output is in {log}")
            result = json.loads(done.read_text())
            print(f"{variant.name} (seed {seed}):", end="", flush=True)
            results[variant.name].append(result)
            c = result["candidate"]
            print(f"  AUC {c['auc']:.4f}  log loss {c['log_loss']:.4f}  "
                  f"({result['run_fn_seconds']:.0f} s)", flush=True)
    dirs = {v.name: work / v.name / str(seeds[0]) for v in variants}
    print(f"timing rank_by_id on {CANDIDATES} candidates, {args.calls} calls a variant", flush=True)
    timings = time_variants(dirs, run, args.calls)
    width = feature_width(dirs[variants[0].name])
    base = results[variants[0].name][0]["baseline"]
    print(f"\n{results[variants[0].name][0]['train_examples']:,} ranking train examples; "
          f"popularity baseline: AUC {base['auc']:.4f}, log loss {base['log_loss']:.4f}")
    print(f"{'variant':<14}{'rank':>5}{'deep':>10}{'MAC/cand':>10}{'AUC (per seed)':>28}"
          f"{'log loss (per seed)':>28}{'p50 ms':>9}{'p99 ms':>9}   target p50 <= {TARGET_MS} ms")
    for v in variants:
        aucs = [r["candidate"]["auc"] for r in results[v.name]]
        losses = [r["candidate"]["log_loss"] for r in results[v.name]]
        ms = np.asarray(timings[v.name])
        p50 = float(np.percentile(ms, 50))
        print(f"{v.name:<14}{v.rank or 'full':>5}{','.join(map(str, v.deep)):>10}"
              f"{head_macs(width, v, config.ranking.cross_layers):>10,}"
              f"{' '.join(f'{a:.4f}' for a in aucs):>28}"
              f"{' '.join(f'{x:.4f}' for x in losses):>28}"
              f"{p50:>9.2f}{np.percentile(ms, 99):>9.2f}   "
              f"{'met' if p50 <= TARGET_MS else 'NOT met'}")
    first = variants[0].name
    for v in variants[1:]:
        ratio = np.median(timings[first]) / np.median(timings[v.name])
        print(f"  {v.name}: {ratio:.2f}x faster than {first} at p50")


if __name__ == "__main__":
    main()
