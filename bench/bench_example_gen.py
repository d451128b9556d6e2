"""ContractExampleGen alone on a dataset folder: wall time and peak memory (issue 19).

    .venv/bin/python bench/bench_example_gen.py DATA_DIR [--out build/bench/example_gen]
        [--workers 2] [--limit-gb 12]

Runs the component's Beam graph (``executor.write_examples``: validation, rejects, examples per
split) on the DirectRunner in multi-processing mode, as ``marquee pipeline run`` does, and
samples the resident memory of this process plus every child (the Beam workers) every 0.5 s.
Prints the wall time, rows per second, the examples per split and the peak against the
budget: 12 GB for the whole pipeline at 50M interactions on this 24 GB machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import psutil


class PeakMemory:
    """Largest sum of resident sets of this process and its descendants, sampled; each sample
    also counts towards ``peaks[current]`` (a label the caller moves, e.g. a component)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.current, self.peaks = "run", {}
        self.series: list[tuple[float, int]] = []  # (UTC seconds, bytes) of every sample
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), total)
            self.series.append((time.time(), total))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--out", default="build/bench/example_gen")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", default="multi_processing",
                    choices=["multi_processing", "multi_threading", "in_memory"])
    ap.add_argument("--limit-gb", type=float, default=12.0)
    ap.add_argument("--config", help="a run config (e.g. configs/movielens.yaml); default: the "
                                     "defaults")
    args = ap.parse_args()

    import marquee  # noqa: F401,I001  (quiets TensorFlow and Google's warnings before they load)
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from components.contract_example_gen import executor
    from components.contract_example_gen.executor import read_counts, write_examples
    from marquee.config import Config, load_config
    from marquee.data import contract as c
    from marquee.logs import quiet_libraries

    quiet_libraries()
    config = load_config(args.config) if args.config else Config()
    rows = sum(c.open_parquet(p).metadata.num_rows
               for p in c.table_files(args.data_dir, c.INTERACTIONS))
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    options = PipelineOptions(["--runner=DirectRunner", f"--direct_running_mode={args.mode}",
                               f"--direct_num_workers={args.workers}"])
    print(f"ContractExampleGen on {args.data_dir}: {rows:,} interactions, "
          f"{args.workers} Beam workers ...", flush=True)
    start = time.perf_counter()
    with PeakMemory() as mem:
        with beam.Pipeline(options=options) as p:
            info = write_examples(p, args.data_dir, config, str(out))
    seconds = time.perf_counter() - start
    check = getattr(executor, "check_rejects", None)  # the Beam validation's limit check
    if check is not None:
        report = check(info, args.data_dir, config, str(out))
        info["rejected"] = {t: r.rejected for t, r in report.tables.items()}
    counts = read_counts(str(out))
    peak = mem.peak / 2**30
    print(json.dumps({"counts": counts, "rejected": info["rejected"]}))
    print(f"wall time            {seconds:8.1f} s   ({rows / seconds / 1e3:,.1f}K interactions/s)")
    print(f"peak memory          {peak:8.2f} GB  (driver + Beam workers, sampled every 0.5 s)")
    print(f"  per 1M interactions {peak / rows * 1e6:7.3f} GB; target: the whole pipeline under "
          f"{args.limit_gb:g} GB at 50M interactions")


if __name__ == "__main__":
    main()
