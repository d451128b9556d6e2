"""The whole pipeline on a large simulated dataset: seconds and peak memory per component.

    .venv/bin/python bench/bench_pipeline_scale.py --data DIR [--root build/scale/run]
        [--config FILE] [--limit-gb 12]
    .venv/bin/python bench/bench_pipeline_scale.py --users 235000 --items 10000 --days 30 ...

Issue 19's run: at least 50M simulated interactions on this 2-core, 24 GB machine with the peak
memory (the driver plus its Beam workers, sampled every second) under 12 GB. Without ``--data``
the simulator writes the dataset first (``--users`` x ``--items`` x ``--days``; 235,000 x 10,000 x
30 is 52.9M interactions). The LocalDagRunner runs one component at a time, so each sample is
charged to the component running then. Prints one row per component (seconds, peak GB) and the
whole run's peak against the target; ``RUN/bench.json`` keeps the figures.
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
