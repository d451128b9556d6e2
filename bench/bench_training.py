"""Retrieval training examples/s and Recall@20/@100 on MovieLens 100K: old vs new input path.

    .venv/bin/python bench/bench_training.py [--run build/bench/movielens-run] [--seeds 0,1,2]

Trains the two towers with ``trainer.retrieval.train_and_export`` (the Trainer's own function)
on the Transform output of a pipeline run folder, once per seed and variant, each in a fresh
process (so no run inherits another's warmed-up TensorFlow), alternating the order of the two
variants from seed to seed: the machine is shared and its speed drifts.

- before: the Trainer as it was before issue 18 (``trainer/retrieval.py`` and ``model.py`` of
  commit BEFORE, read with ``git show``), with today's ``recall_at_k`` so that Recall@20 is
  measured the same way: TFRecords parsed every epoch through a 50,000-record shuffle buffer,
  one step per tf.function call, TFRS's task as the loss, autograph over the towers.
- settings (``--variants before,settings,new``): today's code with the settings of before
  (``in_memory=False, steps_per_execution=1, jit_compile_loss=False``): what those three
  settings are worth on their own.
- new: today's code with the defaults of ``RetrievalConfig``.
- new+KEY=VALUE[+KEY=VALUE...]: today's code with those ``RetrievalConfig`` fields changed
  (``--variants new,new+jit_compile_loss=true``): a setting measured side by side with the
  defaults.

Everything else (batch size, learning rate, epochs, early stopping) is the run's config. ex/s
is the Trainer's ``train_examples_per_second``: epochs x train examples / Keras fit seconds,
the tracing, XLA compiles and the validation pass of every epoch included. "steady" is its
``steady_examples_per_second``: the same over the epochs after the first (validation still
included), the rate a longer training runs at; the "before" code does not measure it.
"trainer s" is the whole ``train_and_export`` (reading, training, recall, export). Recall@k is
on the eval split: the model's top k of the catalogue with the user's earlier watches excluded.

The run folder comes from ``marquee pipeline run --data <imported MovieLens> --root <run>
--config configs/movielens.yaml`` or from bench/bench_pipeline.py (default workdir).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 50_000  # examples/s, issue 18
BEFORE = "bccd2ed69c8c5a7ef8c78db2382ccb3929ce920a"  # the last commit before issue 18's trainer
OLD_SETTINGS = {"in_memory": False, "steps_per_execution": 1, "jit_compile_loss": False}
VARIANTS = ("before", "settings", "new")


def transform_output(run: Path) -> tuple[Path, Path]:
    """(transform_graph dir, transformed_examples dir): the newest Transform run's."""
    sys.path.insert(0, str(REPO))
    from pipeline.local_runner import latest_output, run_dirs

    root = run_dirs(run)["pipeline_root"]
    graph = latest_output(root, "Transform", "transform_graph")
    examples = latest_output(root, "Transform", "transformed_examples")
    if graph is None or examples is None:
        raise SystemExit(
            f"{run} holds no Transform output ({root}/Transform/...); run the pipeline into it "
            "first: .venv/bin/marquee data import-movielens ../shared/datasets/movielens-100k "
            "DATA && .venv/bin/marquee pipeline run --data DATA --root RUN --config "
            "configs/movielens.yaml (or bench/bench_pipeline.py --datasets movielens)")
    return graph, examples


def before_trainer(where: Path):
    """trainer.retrieval as of commit BEFORE, importable as ``trainer_before.retrieval`` (its
    ``trainer.model`` import pointed at the same commit's model), with today's recall_at_k."""
    pkg = where / "trainer_before"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("retrieval", "model"):
        try:
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE}:trainer/{name}.py"],
                                  capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"cannot read trainer/{name}.py of commit {BEFORE} with git ({e}); "
                             "run from a clone that has it, or pass --variants settings,new") from e
        (pkg / f"{name}.py").write_text(
            text.replace("from trainer.model import", "from trainer_before.model import"))
    sys.path.insert(0, str(where))
    import trainer_before.retrieval as before

    from trainer.retrieval import recall_at_k

    before.recall_at_k = recall_at_k  # default ks (20, 100); the same positional arguments
    return before


def overrides(variant: str) -> dict:
    """The RetrievalConfig fields a ``new+KEY=VALUE...`` variant sets (``{}`` for the others),
    each value parsed as the field's type."""
    from marquee.config import RetrievalConfig

    if not variant.startswith("new+"):
        return {}
    fields = {f.name: f.type for f in dataclasses.fields(RetrievalConfig)}
    out = {}
    for item in variant.split("+")[1:]:
        key, _, value = item.partition("=")
        kind = fields.get(key)
        if kind is None or not value:
            raise SystemExit(f"--variants {variant}: expected new+KEY=VALUE with KEY a "
                             f"RetrievalConfig field ({', '.join(fields)}), got {item!r}")
        if kind in ("bool", bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--variants {variant}: {key} takes true or false, got {value!r}")
            out[key] = value.lower() == "true"
        else:
            out[key] = {"int": int, "float": float}.get(kind, str)(value)
    return out


def worker(run: Path, variant: str, seed: int) -> dict:
    """One training in this process; returns its metrics."""
    import marquee  # noqa: F401  (Keras 2 for TFRS, before TensorFlow loads)
    from marquee.config import load_config
    from trainer import retrieval

    graph, examples = transform_output(run)
    config = load_config(REPO / "configs" / "movielens.yaml")
    cfg = dataclasses.replace(config.retrieval, seed=seed,
                              **(OLD_SETTINGS if variant == "settings" else overrides(variant)))
    config = dataclasses.replace(config, retrieval=cfg)
    with tempfile.TemporaryDirectory() as serving, tempfile.TemporaryDirectory() as code:
        train_and_export = (before_trainer(Path(code)) if variant == "before"
                            else retrieval).train_and_export
        started = time.perf_counter()
        meta = train_and_export(
            [str(examples / "Split-train" / "*")], [str(examples / "Split-eval" / "*")],
            [str(examples / "Split-catalogue" / "*")], str(graph), serving, cfg,
            config.to_json())
        seconds = time.perf_counter() - started
    return {**meta["metrics"], "trainer_seconds": seconds}


def run_one(run: Path, variant: str, seed: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--run", str(run), "--worker", f"{variant}:{seed}"],
        capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"the {variant} training (seed {seed}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(REPO / "build" / "bench" / "movielens-run"),
                    help="a pipeline run folder on MovieLens 100K (holding tfx/Transform)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--variants", default="before,new",
                    help=f"some of {','.join(VARIANTS)}, run in this order (reversed every "
                         "other seed)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    run = Path(args.run).resolve()
    if args.worker:
        variant, seed = args.worker.rsplit(":", 1)
        print(json.dumps(worker(run, variant, int(seed))))
        return
    transform_output(run)  # fail early, with the fix
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = tuple(args.variants.split(","))
    if not variants or {v for v in variants if not v.startswith("new+")} - set(VARIANTS):
        raise SystemExit(f"--variants: choose from {', '.join(VARIANTS)} and new+KEY=VALUE, "
                         f"got {args.variants}")
    for v in variants:
        overrides(v)  # fail early, with the fix
    width = max(8, *map(len, variants))
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    for i, seed in enumerate(seeds):
        for variant in (variants if i % 2 == 0 else variants[::-1]):
            m = run_one(run, variant, seed)
            rows[variant].append(m)
            print(f"seed {seed} {variant:>{width}}: {m['train_examples_per_second']:>9,.0f} ex/s  "
                  f"steady {_rate(m.get('steady_examples_per_second')):>7}  "
                  f"epochs {m['epochs_run']}  fit {m['train_seconds']:5.1f} s  trainer "
                  f"{m['trainer_seconds']:5.1f} s  R@20 {m['recall@20']:.4f}  "
                  f"R@100 {m['recall@100']:.4f}", flush=True)
    med = {v: {k: statistics.median(r[k] for r in rows[v]) for k in (
        "train_examples_per_second", "train_seconds", "trainer_seconds", "recall@20",
        "recall@100", "epochs_run")} for v in variants}
    for v in variants:
        steady = [r["steady_examples_per_second"] for r in rows[v]
                  if r.get("steady_examples_per_second")]
        med[v]["steady"] = statistics.median(steady) if steady else None
    first = rows[variants[0]][0]
    print(f"\nMovieLens 100K eval split, {first['train_examples']:,} train examples, "
          f"{first['eval_queries']:,} eval queries; medians over seeds {args.seeds}")
    print(f"{'':>{width}}{'ex/s':>10}{'steady':>9}{'target':>9}{'fit s':>8}{'trainer s':>11}"
          f"{'epochs':>8}{'R@20':>8}{'R@100':>8}   R@20 per seed")
    for v in variants:
        m = med[v]
        print(f"{v:>{width}}{m['train_examples_per_second']:>10,.0f}{_rate(m['steady']):>9}"
              f"{TARGET:>9,}"
              f"{m['train_seconds']:>8.1f}{m['trainer_seconds']:>11.1f}{m['epochs_run']:>8.0f}"
              f"{m['recall@20']:>8.4f}{m['recall@100']:>8.4f}   "
              + " ".join(f"{r['recall@20']:.4f}" for r in rows[v]))
    pop = rows[variants[0]][0]
    print(f"popularity: R@20 {pop['popularity_recall@20']:.4f}  "
          f"R@100 {pop['popularity_recall@100']:.4f}")
    if "new" in med:
        for what, key in (("whole fit", "train_examples_per_second"), ("steady", "steady")):
            rate = med["new"][key]
            ok = rate is not None and rate >= TARGET
            print(f"new, {what}: the median {_rate(rate)} ex/s {'meets' if ok else 'misses'} "
                  f"the target of {TARGET:,}")


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


if __name__ == "__main__":
    main()
