"""Homepage latency at catalogue scale, in-process and over TF Serving's gRPC API, side by side.

    .venv/bin/marquee data synth --out build/sim500k --users 20000 --items 500000 --days 7
    .venv/bin/marquee pipeline run --data build/sim500k --root build/run500k
    .venv/bin/python bench/bench_homepage_scale.py --data build/sim500k \\
        --model-base build/run500k/serving [--n 300] [--clients 2]

A real pipeline run over a 500K-title catalogue: its towers, its ranker (whose by-id table holds
every title) and its pushed ScaNN index. Every source and re-rank step of the default config is
on, and the page cache is off, so every request is a miss. Three stacks answer the same users,
request by request in turn, so all see the same machine:

- ``in-process``: the SavedModels in this process, the ranker by id (the default);
- ``in-process, features``: the same, the ranker sent every pair's features (the path of a
  ranker without the by-id signature, and of titles added since training);
- ``gRPC``: the development model server (TF Serving's API) in its own process on loopback.

Printed: p50 / p99 of each stage and of the whole request per stack, with the targets; the
ranker alone on 1,000 candidates each way; requests/s with ``--clients`` concurrent callers.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import marquee  # noqa: F401
from marquee.artifacts import RANKER
from marquee.config import Config, load_config
from serving.build import build_service
from serving.homepage.service import HomepageService
from serving.models.tf_serving_client import ServingError, TFServingClient
from serving.models.versions import newest_complete_version
from serving.state.catalogue import load_frames

REPO = Path(__file__).resolve().parents[1]
GENEROUS = dict(deadline_ms=60_000, query_deadline_ms=30_000, rank_deadline_ms=30_000)
TARGET_P99_MS = {"in-process": 20.0, "gRPC": 30.0}
TARGET_RANKER_MS = 3.0


class FeaturesOnly:
    """A backend's view without the ranker's by-id signature (the features path)."""

    def __init__(self, backend):
        self._backend = backend
        self.name = f"{backend.name}, features"

    def ranks_by_id(self, version=None) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._backend, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_model_server(base: Path) -> tuple[subprocess.Popen, str]:
    """``marquee model-server`` in its own process on loopback, once every model is loaded."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "marquee.cli", "model-server", "--model-base",
                             str(base), "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, version = f"127.0.0.1:{port}", newest_complete_version(base)
    deadline = time.monotonic() + 300
    with TFServingClient(target, timeout_s=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the model server exited with {proc.returncode}")
            try:
                if all(s.state == "AVAILABLE" for m in ("query_tower", RANKER)
                       for s in client.get_model_status(m, version)):
                    return proc, target
            except ServingError:
                pass
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the model server at {target} did not load version {version} in 300 s")


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def ranker_alone(svc: HomepageService, users: list[int], n: int, repeats: int) -> list[float]:
    """ms of the rank step's model call(s) on ``n`` candidates (ids of the catalogue)."""
    ids = svc.catalogue.item_ids[:n].tolist()
    version = svc.backend.serving_version()
    out = []
    for r in range(repeats):
        profile, _ = svc.profile(users[r % len(users)])
        query = svc.query_features(profile, int(time.time()))
        t = time.perf_counter()
        svc.ranking.score(query, ids, np.zeros(len(ids), np.float32), 30.0, version)
        out.append((time.perf_counter() - t) * 1000)
    return out


def requests_per_second(svc: HomepageService, users: list[int], clients: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        pages = list(pool.map(svc.homepage, users))
    bad = [p.reason for p in pages if p.fallback or p.degraded]
    assert not bad, bad[:1]
    return len(users) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the dataset the run was trained on")
    ap.add_argument("--model-base", required=True, help="the run's serving folder (pushed)")
    ap.add_argument("--config", help="the run's config (YAML), if not the defaults")
    ap.add_argument("--n", type=int, default=300, help="requests per stack")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--intra-op-threads", type=int, default=0,
                    help="TensorFlow's threads per op in this process (0: TensorFlow's default)")
    args = ap.parse_args()
    if args.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    base = Path(args.model_base)
    config = load_config(args.config) if args.config else Config()
    # No page cache (every request a miss), and no trending refresh: at 500K titles a refresh
    # is 0.28 s of CPU in a background thread every 300 s, which lands on whichever request
    # runs then; the figures here are per request.
    serving = dataclasses.replace(config.serving, cache_ttl_seconds=0,
                                  trending_refresh_seconds=0, **GENEROUS)
    serving = dataclasses.replace(serving, sources=tuple(  # latency here, not deadlines
        dataclasses.replace(s, deadline_ms=30_000) for s in serving.sources))
    config = dataclasses.replace(config, serving=serving)
    t = time.perf_counter()
    frames = load_frames(args.data, config.data.min_watch_seconds)
    print(f"{len(frames[0].item_ids):,} titles, {len(frames[2]):,} interactions loaded in "
          f"{time.perf_counter() - t:.0f} s; starting the model server", flush=True)
    proc, target = start_model_server(base)
    try:
        t = time.perf_counter()
        local = build_service(config, None, base, frames=frames)
        stacks = {"in-process": local}
        features = build_service(config, None, base, frames=frames, warm_up=False)
        features.backend = features.ranking.backend = FeaturesOnly(features.backend)
        features.warm_up()
        stacks["in-process, features"] = features
        stacks["gRPC"] = build_service(config, None, base, target, frames=frames)
        gc.collect()  # as marquee serve does after start-up (serving/api/server.py)
        gc.freeze()
        print(f"three stacks built in {time.perf_counter() - t:.0f} s "
              f"(ranker by id: {local.backend.ranks_by_id()})", flush=True)
        full = [u for u in local.users.user_ids() if len(local.users.get(u).history) >= 5]
        picked = [full[i % len(full)] for i in range(args.n)]
        for svc in stacks.values():  # warm every path (first calls trace functions)
            for u in picked[:5]:
                svc.homepage(u)
        timings: dict[str, dict[str, list[float]]] = {name: {} for name in stacks}
        for u in picked:
            for name, svc in stacks.items():
                page = svc.homepage(u)
                assert not page.fallback and page.degraded is None and page.stage == "full", (
                    page.reason, page.degraded)
                for stage, ms in page.timings_ms.items():
                    timings[name].setdefault(stage, []).append(ms)
        ranker = {name: [] for name in stacks}
        for _ in range(3):  # alternating rounds
            for name, svc in stacks.items():
                ranker[name] += ranker_alone(svc, picked, serving.candidates, 30)
        rps = {name: 0.0 for name in stacks}
        for _ in range(2):  # twice, alternating; the second (warm thread pools) counts
            rps = {name: requests_per_second(svc, picked, args.clients)
                   for name, svc in stacks.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    names = list(stacks)
    print(f"\n{args.n} cache-miss requests per stack ({len(full):,} users with >= 5 watches), "
          f"{serving.candidates} candidates, k={serving.k}; ms")
    print(f"{'stage':<22}" + "".join(f"{n + ' p50':>26}{'p99':>8}" for n in names))
    stages = [s for s in timings["in-process"] if all(s in timings[n] for n in names)]
    for stage in stages:
        print(f"{stage:<22}" + "".join(f"{pct(timings[n][stage], 50):>26.2f}"
                                       f"{pct(timings[n][stage], 99):>8.2f}" for n in names))
    print()
    for name, target_ms in TARGET_P99_MS.items():
        p99 = pct(timings[name]["total"], 99)
        print(f"total p99 {name:<12} {p99:7.2f} ms   target <= {target_ms:.0f} ms   "
              f"{'met' if p99 <= target_ms else 'NOT met'}")
    ratio = pct(timings["gRPC"]["total"], 99) / pct(timings["in-process"]["total"], 99)
    print(f"gRPC / in-process, total p99: {ratio:.2f}; p50: "
          f"{pct(timings['gRPC']['total'], 50) / pct(timings['in-process']['total'], 50):.2f}")
    print(f"\nthe ranker alone on {serving.candidates} candidates (ms, 90 calls each):")
    for name in names:
        p50 = pct(ranker[name], 50)
        print(f"  {name:<22} p50 {p50:7.2f}  p99 {pct(ranker[name], 99):7.2f}"
              + (f"   target in-process <= {TARGET_RANKER_MS:.0f} ms  "
                 f"{'met' if p50 <= TARGET_RANKER_MS else 'NOT met'}"
                 if name == "in-process" else ""))
    print(f"\nrequests/s with {args.clients} concurrent clients: "
          + ", ".join(f"{n} {rps[n]:.1f}" for n in names))
    for svc in stacks.values():
        svc.stop()


if __name__ == "__main__":
    main()
