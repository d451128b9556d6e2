"""The whole pipeline on a large simulated dataset: seconds and peak memory per component.

    .venv/bin/python bench/bench_pipeline_scale.py --data DIR [--root build/scale/run]
        [--config FILE] [--limit-gb 12]
    .venv/bin/python bench/bench_pipeline_scale.py --users 235000 --items 10000 --days 30 ...

Issue 19's run: at least 50M simulated interactions on this 2-core, 24 GB machine with the peak
memory (the driver plus its Beam workers, sampled every second) under 12 GB. Without ``--data``
the simulator writes the dataset first (``--users`` x ``--items`` x ``--days``; 235,000 x 10,000 x
30 is 52.9M interactions). The LocalDagRunner runs one component at a time, so each sample is
charged to the component running then. Prints one row per component (seconds, peak GB) and the
whole run's peak against the target; ``RUN/bench.json`` keeps the figures, and the run ends with
the time each component would take on a cluster, derived from them (``derive``).

    .venv/bin/python bench/bench_pipeline_scale.py --derive RUN/bench.json [--workers 16]
        [--cores 4] [--scale 1]

prints that derivation again for another cluster or data volume, without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from bench_example_gen import PeakMemory  # bench/ is the script's folder

import marquee  # noqa: F401  (quiets TensorFlow before it loads)
from marquee.config import Config, load_config
from marquee.data import contract as c
from marquee.logs import quiet_libraries


class Sampler(PeakMemory):
    """Resident memory of this process and its descendants, charged to the running component."""

    def __init__(self, interval: float = 1.0):
        super().__init__(interval)
        self.current = "setup"
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def on_record(self, record: logging.LogRecord) -> bool:
        if record.msg in ("Component %s is running.", "Component %s is finished.") and record.args:
            node = record.args[0]
            if record.msg.endswith("running."):
                self.current, self.started[node] = node, time.perf_counter()
            else:
                self.seconds[node] = time.perf_counter() - self.started.get(node, 0.0)
                print(f"  {node}: {self.seconds[node]:.0f} s, peak "
                      f"{self.peaks.get(node, 0) / 2**30:.2f} GB", flush=True)
                self.current = "between"
        return record.levelno >= logging.WARNING


# How each component's measured seconds on this machine carry over to a cluster of ``workers``
# machines of ``cores`` cores each (``derive``). The assumptions, each a figure to verify:
HERE_CORES = 2
# beam: a Beam step on Dataflow/Flink; its work spreads over every core of the cluster at this
# efficiency (shuffle over the network, stragglers, uneven shards), plus a fixed start (workers
# booting, the job graph staged).
BEAM_EFFICIENCY, BEAM_START_S = 0.7, 180.0
# train: data-parallel training (MultiWorkerMirroredStrategy, one replica a core's worth of the
# measured rate, the per-replica batch kept at the measured 1,024) at this efficiency (the
# gradient all-reduce over the network).
TRAIN_EFFICIENCY = 0.7
KINDS = {
    "ContractExampleGen": "beam", "StatisticsGen": "beam", "Transform": "beam",
    "Trainer": "train", "RankingTrainer": "train",
    # one machine, every core: implicit's ALS and ScaNN's build are multi-threaded
    "AlsTrainer": "machine", "ScannIndexer": "machine",
}  # the rest run in one process, as here ("one"): their time does not change


def derive(seconds: dict[str, float], workers: int, cores: int, scale: float = 1.0
           ) -> dict[str, float]:
    """Derived seconds of each component on ``workers`` x ``cores`` for ``scale`` times the data
    (every component's work taken as linear in the data)."""
    out = {}
    for node, secs in seconds.items():
        kind, work = KINDS.get(node, "one"), secs * scale
        if kind == "beam":
            out[node] = work * HERE_CORES / (workers * cores * BEAM_EFFICIENCY) + BEAM_START_S
        elif kind == "train":
            out[node] = work * HERE_CORES / (workers * cores * TRAIN_EFFICIENCY)
        elif kind == "machine":
            out[node] = work * HERE_CORES / cores
        else:
            out[node] = work
    return out


def print_derived(seconds: dict[str, float], workers: int, cores: int, scale: float) -> None:
    derived = derive(seconds, workers, cores, scale)
    print(f"\nderived, not measured: {workers} workers x {cores} cores, {scale:g}x the data "
          f"(Beam at {BEAM_EFFICIENCY:.0%} efficiency + {BEAM_START_S:.0f} s start, training at "
          f"{TRAIN_EFFICIENCY:.0%}, ALS and ScaNN on one {cores}-core machine, the rest as here)")
    print(f"{'component':<24}{'kind':>8}{'here s':>10}{'cluster s':>11}")
    for node, secs in seconds.items():
        print(f"{node:<24}{KINDS.get(node, 'one'):>8}{secs * scale:>10.0f}{derived[node]:>11.0f}")
    print(f"{'sum':<24}{'':>8}{sum(seconds.values()) * scale:>10.0f}"
          f"{sum(derived.values()):>11.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--users", type=int, default=235_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--root", type=Path, default=Path("build/scale/run"))
    ap.add_argument("--config", type=Path)
    ap.add_argument("--limit-gb", type=float, default=12.0)
    ap.add_argument("--derive", type=Path, metavar="BENCH_JSON",
                    help="print the cluster derivation of a finished run's bench.json and stop")
    ap.add_argument("--workers", type=int, default=16, help="cluster machines (derivation)")
    ap.add_argument("--cores", type=int, default=4, help="cores a machine (derivation)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="times the measured data volume (derivation)")
    args = ap.parse_args()
    if args.derive:
        print_derived(json.loads(args.derive.read_text())["seconds"], args.workers, args.cores,
                      args.scale)
        return
    quiet_libraries()
    from pipeline.local_runner import run_local  # imports TensorFlow and TFX

    data = args.data
    if data is None:
        from marquee.data.simulate import SimConfig, simulate
        data = args.root.parent / "data"
        shutil.rmtree(data, ignore_errors=True)
        simulate(data, SimConfig(users=args.users, items=args.items, days=args.days,
                                 seed=args.seed), progress=print)
    rows = {t: sum(c.open_parquet(p).metadata.num_rows for p in c.table_files(data, t))
            for t in c.TABLES}
    config = load_config(args.config) if args.config else Config()
    shutil.rmtree(args.root, ignore_errors=True)
    print(f"pipeline on {data}: {rows[c.INTERACTIONS]:,} interactions, {rows[c.USERS]:,} users, "
          f"{rows[c.ITEMS]:,} titles -> {args.root}", flush=True)
    absl = logging.getLogger("absl")
    level = absl.level
    sampler = Sampler()
    filt = logging.Filter()
    filt.filter = sampler.on_record  # type: ignore[method-assign]
    absl.addFilter(filt)
    absl.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        with sampler:
            run_local(data, args.root, config)
    finally:
        absl.removeFilter(filt)
        absl.setLevel(level)
    wall = time.perf_counter() - start
    peak = sampler.peak
    print(f"\n{'component':<24}{'seconds':>10}{'peak GB':>10}")
    for node, secs in sampler.seconds.items():
        print(f"{node:<24}{secs:>10.0f}{sampler.peaks.get(node, 0) / 2**30:>10.2f}")
    met = peak / 2**30 < args.limit_gb and rows[c.INTERACTIONS] >= 50e6
    print(f"{'whole run':<24}{wall:>10.0f}{peak / 2**30:>10.2f}   target: under "
          f"{args.limit_gb:g} GB at >= 50M interactions ({'met' if met else 'NOT met'})")
    (args.root / "bench.json").write_text(json.dumps({
        "rows": rows, "wall_seconds": wall, "peak_gb": peak / 2**30,
        "seconds": sampler.seconds,
        "peak_gb_by_component": {k: v / 2**30 for k, v in sampler.peaks.items()}}, indent=2))
    print_derived(sampler.seconds, args.workers, args.cores, args.scale)


if __name__ == "__main__":
    main()
