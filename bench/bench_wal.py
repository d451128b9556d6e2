"""Write-path cost: the durable write-ahead log (fsync group commit), with and without a wait.

    .venv/bin/python bench/bench_wal.py [--count 5000] [--threads 1,8,32] [--dir DIR]

For each thread count, ``--count`` interaction rows are appended, split evenly over the threads
(each starts at a barrier and appends back to back), to three logs in a fresh folder each:

- ``wal 2 ms``: ``serving.ingest.wal.WriteAheadLog``: an append returns once its record is
  fsynced; a batch waits up to 2 ms for more appends after its first;
- ``wal 0 ms``: the same without the wait (a batch is what queued during the previous fsync),
  as ``marquee serve`` runs it (``serving.ingest.wiring``);
- ``no fsync``: the same log without fsync: what durability costs (the record is handed to
  the OS only, as a buffered log would; the server never runs so).

The buffered Parquet log the server had before (c9925fc) is measured against this one through
HTTP, with kill -9 and SIGTERM, by ``bench/bench_writes.py``.

Printed per log and thread count: accepted appends/s (appends / wall seconds of the run), p50
and p99 of one append's latency in ms, and for the WAL the fsyncs and records per fsync. The
target is the write route's budget: WAL p99 <= 20 ms at 8 threads. The folder's file system
is printed too: on tmpfs an fsync costs nothing, so measure on the disk the server logs to.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import marquee  # noqa: E402, F401  (sets the environment before anything imports TensorFlow)
from marquee.data import contract as c  # noqa: E402
from serving.ingest.wal import WriteAheadLog  # noqa: E402

P99_TARGET_MS, TARGET_THREADS = 20.0, 8


def row(n: int) -> dict:
    return {c.USER_ID: n % 1000, c.ITEM_ID: n % 5000, c.TIMESTAMP: 1_700_000_000 + n,
            c.EVENT: c.EVENT_WATCH, c.POSITION: n % 50 + 1, c.WATCH_SECONDS: 600.0,
            c.DEVICE: "tv", c.RATING: None}


def run(append, threads: int, count: int) -> tuple[float, np.ndarray]:
    """Wall seconds and each append's latency (ns) of ``count`` appends over ``threads``."""
    per = count // threads
    latencies = np.empty((threads, per), np.int64)
    barrier = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(per):
            start = time.perf_counter_ns()
            append(row(k * per + i))
            latencies[k, i] = time.perf_counter_ns() - start

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return time.perf_counter() - start, latencies.ravel()


def file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (Linux /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                _, mount, fs = line.split()[:3]
                if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                    best, kind = mount, fs
    except OSError:
        pass
    return kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000, help="appends per log and thread count")
    ap.add_argument("--threads", default="1,8,32", help="comma-separated thread counts")
    ap.add_argument("--dir", help="folder to log in (default: a temporary folder)")
    args = ap.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"{args.count:,} interaction rows per log and thread count, in {root} "
              f"({file_system(root)})\n")
        print(f"{'log':<10}{'threads':>8}{'appends/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'fsyncs':>8}{'rows/batch':>11}")
        p99_at_target: dict[str, float] = {}
        for threads in thread_counts:
            for name, interval, fsync in (("wal 2 ms", 2.0, True), ("wal 0 ms", 0.0, True),
                                          ("no fsync", 0.0, False)):
                folder = root / f"{name.replace(' ', '-')}-{threads}"
                target = WriteAheadLog(folder, commit_interval_ms=interval, fsync=fsync)
                seconds, ns = run(lambda r, w=target: w.append(c.INTERACTIONS, r), threads,
                                  args.count)
                stats = target.stats()
                target.close()
                batches = max(stats["batches"], 1)
                fsyncs = stats["fsyncs"] if fsync else 0
                extra = f"{stats['appended'] / batches:.1f}"
                ms = ns / 1e6
                p99 = float(np.percentile(ms, 99))
                if threads == TARGET_THREADS and fsync:
                    p99_at_target[name] = p99
                print(f"{name:<10}{threads:>8}{len(ns) / seconds:>11,.0f}"
                      f"{np.percentile(ms, 50):>9.2f}{p99:>9.2f}{fsyncs:>8}{extra:>11}")
        print()
        for name, p99 in p99_at_target.items():
            verdict = "met" if p99 <= P99_TARGET_MS else "MISSED"
            print(f"target: {name} p99 <= {P99_TARGET_MS:g} ms at {TARGET_THREADS} threads: "
                  f"{p99:.2f} ms, {verdict}")
        if not p99_at_target:
            print(f"target: WAL p99 <= {P99_TARGET_MS:g} ms at {TARGET_THREADS} threads: "
                  f"not measured (add {TARGET_THREADS} to --threads)")


if __name__ == "__main__":
    main()
