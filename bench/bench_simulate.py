"""Speed and peak memory of the simulator, each size in a fresh process writing to a temp dir.

    .venv/bin/python bench/bench_simulate.py                      # small,medium
    .venv/bin/python bench/bench_simulate.py --sizes small,medium,large

Peak RSS is the child's own ``ru_maxrss``, so each size is measured alone. It should stay flat as
users grow (users and their events are streamed in chunks) and grow only with the catalogue.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {
    "small": dict(users=3_000, items=2_000, days=60),  # the default demo dataset
    "medium": dict(users=100_000, items=50_000, days=30),
    "large": dict(users=1_000_000, items=500_000, days=7),
}


def _child(size: str, out_dir: str) -> None:
    """Runs one size and prints one JSON line with its figures."""
    from marquee.data import contract
    from marquee.data.simulate import SimConfig, simulate

    summary = simulate(out_dir, SimConfig(**SIZES[size]))
    disk = sum(f.stat().st_size for f in Path(out_dir).rglob("*.parquet"))
    print(json.dumps({
        **SIZES[size],
        "rows": summary.rows[contract.INTERACTIONS],
        "truth_rows": summary.truth_rows,
        "seconds": summary.seconds,
        # Linux reports kilobytes.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_mb": disk / 2**20,
    }))


@dataclasses.dataclass
class Row:
    size: str
    users: int
    items: int
    days: int
    rows: int
    truth_rows: int
    seconds: float
    peak_rss_mb: float
    disk_mb: float

    def line(self) -> str:
        return (f"{self.size:<7} {self.users:>10,} {self.items:>8,} {self.days:>5} "
                f"{self.rows:>13,} {self.seconds:>8.1f} {self.rows / self.seconds:>12,.0f} "
                f"{self.peak_rss_mb:>9,.0f} {self.truth_rows:>12,} {self.disk_mb:>9,.0f}")


HEADER = (f"{'size':<7} {'users':>10} {'items':>8} {'days':>5} {'interactions':>13} "
          f"{'seconds':>8} {'rows/s':>12} {'peak MB':>9} {'truth rows':>12} {'disk MB':>9}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium",
                        help=f"comma-separated, from {', '.join(SIZES)} [small,medium]")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    print(HEADER, flush=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-sim-{size}-") as tmp:
            done = subprocess.run([sys.executable, __file__, "--child", size, tmp],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{size} failed (exit {done.returncode}):\n{done.stderr}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(Row(size=size, **figures).line(), flush=True)


if __name__ == "__main__":
    main()
