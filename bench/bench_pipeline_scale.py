"""The whole pipeline on a large simulated dataset: seconds and peak memory per component.

    .venv/bin/python bench/bench_pipeline_scale.py --data DIR [--root build/scale/run]
        [--config FILE] [--limit-gb 12]
    .venv/bin/python bench/bench_pipeline_scale.py --users 235000 --items 10000 --days 30 ...

Issue 19's run: at least 50M simulated interactions on this 2-core, 24 GB machine with the peak
memory (the driver plus its Beam workers, sampled every second) under 12 GB. Without ``--data``
the simulator writes the dataset first (``--users`` x ``--items`` x ``--days``; 235,000 x 10,000 x
30 is 52.9M interactions). Each component's seconds are its execution's start and end in the
run's ML Metadata; the LocalDagRunner runs one component at a time, so each memory sample is
charged to the component running then. Prints one row per component (seconds, peak GB) and the
whole run's peak against the target; ``RUN/bench.json`` keeps the figures, and the run ends with
the time each component would take on a cluster, derived from them (``derive``).

    .venv/bin/python bench/bench_pipeline_scale.py --report RUN [--memlog FILE]

prints the same table for a run made another way (``marquee pipeline run``), its memory from a
file of ``UTC-seconds bytes`` lines sampled beside it.

    .venv/bin/python bench/bench_pipeline_scale.py --derive RUN/bench.json [--workers 16]
        [--cores 4] [--scale 1]

prints that derivation again for another cluster or data volume, without running anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench_example_gen import PeakMemory  # bench/ is the script's folder

import marquee  # noqa: F401  (quiets TensorFlow before it loads)
from marquee.config import Config, load_config
from marquee.data import contract as c
from marquee.logs import quiet_libraries


def executions(metadata: Path) -> list[tuple[str, float, float]]:
    """(component, start, end) in UTC seconds of every finished execution in the ML Metadata
    store at ``metadata``, by start."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(metadata)
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(cfg)
    node_type = store.get_context_type("node").id
    out = []
    for e in store.get_executions():
        if e.last_known_state not in (metadata_store_pb2.Execution.COMPLETE,
                                      metadata_store_pb2.Execution.CACHED):
            continue
        names = [c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(e.id)
                 if c.type_id == node_type]
        out.append((names[0] if names else f"execution {e.id}",
                    e.create_time_since_epoch / 1000, e.last_update_time_since_epoch / 1000))
    return sorted(out, key=lambda r: r[1])


def component_figures(runs: list[tuple[str, float, float]], series: list[tuple[float, int]]
                      ) -> dict[str, dict]:
    """Seconds and peak bytes (None: no sample in its span) of each component."""
    out = {}
    for node, start, end in runs:
        inside = [b for t, b in series if start <= t <= end]
        out[node] = {"seconds": end - start, "peak": max(inside) if inside else None}
    return out


def print_figures(figures: dict[str, dict]) -> None:
    print(f"\n{'component':<24}{'seconds':>10}{'peak GB':>10}")
    for node, v in figures.items():
        peak = "n/a" if v["peak"] is None else f"{v['peak'] / 2**30:.2f}"
        print(f"{node:<24}{v['seconds']:>10.0f}{peak:>10}")


def read_memlog(path: Path) -> list[tuple[float, int]]:
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return [(float(t), int(b)) for t, b in rows]


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
    if "RankingTrainer" in seconds:
        print("(the RankingTrainer's out-of-fold ALS fits, which its log prints as 'the ALS "
              "feature ... in N s', run on one machine: count them as 'machine', not 'train')")


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
    ap.add_argument("--report", type=Path, metavar="RUN",
                    help="print the figures of a finished run's ML Metadata and stop")
    ap.add_argument("--memlog", type=Path, help="memory samples for --report")
    args = ap.parse_args()
    if args.report:
        figures = component_figures(executions(args.report / "metadata.sqlite"),
                                    read_memlog(args.memlog) if args.memlog else [])
        print_figures(figures)
        print_derived({k: v["seconds"] for k, v in figures.items()}, args.workers, args.cores,
                      args.scale)
        return
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
    sampler = PeakMemory(interval=1.0)
    start = time.perf_counter()
    with sampler:
        run_local(data, args.root, config, progress=print)
    wall = time.perf_counter() - start
    figures = component_figures(executions(args.root / "metadata.sqlite"), sampler.series)
    print_figures(figures)
    peak = sampler.peak
    met = peak / 2**30 < args.limit_gb and rows[c.INTERACTIONS] >= 50e6
    print(f"{'whole run':<24}{wall:>10.0f}{peak / 2**30:>10.2f}   target: under "
          f"{args.limit_gb:g} GB at >= 50M interactions ({'met' if met else 'NOT met'})")
    seconds = {k: v["seconds"] for k, v in figures.items()}
    (args.root / "bench.json").write_text(json.dumps({
        "rows": rows, "wall_seconds": wall, "peak_gb": peak / 2**30, "seconds": seconds,
        "peak_gb_by_component": {k: v["peak"] and v["peak"] / 2**30
                                 for k, v in figures.items()}}, indent=2))
    print_derived(seconds, args.workers, args.cores, args.scale)


if __name__ == "__main__":
    main()
