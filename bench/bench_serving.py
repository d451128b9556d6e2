"""Homepage latency: in-process backend vs TF Serving's gRPC API, side by side, per stage.

    .venv/bin/python bench/bench_serving.py --data build/ml100k --model-base RUN/serving [--n 200]

Starts the development model server on loopback, builds the thin client twice (in-process
SavedModels; gRPC), warms both up, then alternates requests for the same users and prints the
median and p99 of each stage and of the whole request, and the ratio gRPC / in-process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import marquee  # noqa: F401
from marquee.config import Config, ServingConfig
from marquee.dev.model_server import ModelServer
from serving.build import build_service
from serving.state.catalogue import load_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-base", required=True)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    base = Path(args.model_base)
    catalogue, users, interactions = load_frames(args.data)
    config = ServingConfig(deadline_ms=10_000, query_deadline_ms=10_000, rank_deadline_ms=10_000,
                           cache_ttl_seconds=0)  # every request a cache miss
    ids = users.user_ids()
    with ModelServer(str(base), port=0, host="127.0.0.1") as server:
        services = {
            "in_process": build_service(Config(serving=config), None, base,
                                        frames=(catalogue, users, interactions)),
            "grpc": build_service(Config(serving=config), None, base, server.address,
                                  frames=(catalogue, users, interactions)),
        }
        timings: dict[str, dict[str, list[float]]] = {name: {} for name in services}
        for svc in services.values():
            svc.warm_up()
        for n in range(args.n):
            user = ids[n % len(ids)]
            for name, svc in services.items():
                page = svc.homepage(user)
                assert not page.fallback, page.reason
                for stage, ms in page.timings_ms.items():
                    timings[name].setdefault(stage, []).append(ms)
    stages = list(timings["in_process"])
    print(f"{args.n} requests per backend, {config.candidates} candidates, k={config.k}; ms")
    print(f"{'stage':<14}{'in-process p50':>16}{'p99':>9}{'gRPC p50':>11}{'p99':>9}"
          f"{'ratio p50':>11}")
    for stage in stages:
        a, b = np.array(timings["in_process"][stage]), np.array(timings["grpc"].get(stage, [0]))
        print(f"{stage:<14}{np.median(a):>16.2f}{np.percentile(a, 99):>9.2f}"
              f"{np.median(b):>11.2f}{np.percentile(b, 99):>9.2f}"
              f"{np.median(b) / max(np.median(a), 1e-9):>11.2f}")


if __name__ == "__main__":
    main()
