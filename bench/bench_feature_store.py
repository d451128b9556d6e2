"""Feature store latency, embedded vs Redis, side by side in one run.

    .venv/bin/python bench/bench_feature_store.py [--iterations 10000] [--rounds 5]

Starts a throwaway ``redis-server`` on a loopback port (the binary must be on PATH:
``apt-get install redis-server``), fills each store with the same user (20 recent watches, 300
watched titles, batch features over 20 genres) and a cached homepage of 50 picks, then times,
per call: a cache hit (``get_cached``), the online feature fetch (``features``) and an event
(``record_event``). Stores take turns within each round so drift hits them alike. Prints p50 and
p99 in microseconds over every call, the median of the rounds' p50s, and the ratios to embedded.
Redis runs over loopback TCP on the same machine: a network hop adds its round trip on top.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import marquee  # noqa: E402, F401  (sets the environment before anything imports TensorFlow)
from marquee.data import contract as c  # noqa: E402
from serving.state.feature_store import BatchFeatures, EmbeddedStore  # noqa: E402
from serving.state.records import Event  # noqa: E402
from serving.state.redis_store import RedisStore  # noqa: E402
from serving.state.resilient_store import ResilientStore  # noqa: E402
from tests.redis_server import REDIS_SERVER, RedisServer  # noqa: E402

USER, MODEL_VERSION = 1, 7
PAGE = {"user_id": USER, "model_version": MODEL_VERSION, "fallback": False, "items": [
    {"item_id": 1000 + i, "title": f"Title number {i}", "score": 1 - i / 100,
     "retrieval_score": 0.5, "p_watch": 0.3, "watch_time_seconds": 1200.0} for i in range(50)]}


def fill(store) -> None:
    for n in range(300):
        store.record_event(Event(USER, 5000 + n, 1_700_000_000 + 60 * n, c.EVENT_WATCH,
                                 600.0 if n % 3 else 60.0, "tv"))
    genres = {f"genre-{g}": 1 / (g + 1) for g in range(20)}
    store.load_batch_features(MODEL_VERSION, {USER: BatchFeatures(genres, 200, 1500.0)}, 3600)
    assert store.put_cached(USER, MODEL_VERSION, PAGE, 3600)


def ops(store, t0: int) -> dict:
    counter = iter(range(10**9))
    return {
        "cache hit (get_cached)": lambda: store.get_cached(USER, MODEL_VERSION),
        "online features (features)": lambda: store.features(USER),
        # impressions: they leave the cached page valid, so the other ops keep measuring hits
        "event (record_event)": lambda: store.record_event(Event(
            USER, 5000, t0 + next(counter), c.EVENT_IMPRESSION, 0.0, "tv")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10_000, help="calls per op per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if REDIS_SERVER is None:
        sys.exit("redis-server is not on PATH: apt-get install -y redis-server")
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            stores = {"embedded": EmbeddedStore(),
                      "redis": RedisStore.connect(server.url, prefix="bench-redis"),
                      "resilient": ResilientStore(RedisStore.connect(
                          server.url, prefix="bench-resilient"))}
            for store in stores.values():
                fill(store)
            calls = {name: ops(store, 1_800_000_000) for name, store in stores.items()}
            samples = {(s, op): [] for s in stores for op in calls["embedded"]}
            round_p50 = {key: [] for key in samples}
            for _ in range(args.rounds):
                for op in calls["embedded"]:
                    for s in stores:
                        fn, out = calls[s][op], np.empty(args.iterations, np.int64)
                        for _ in range(200):
                            fn()  # warm-up
                        for i in range(args.iterations):
                            start = time.perf_counter_ns()
                            fn()
                            out[i] = time.perf_counter_ns() - start
                        samples[(s, op)].append(out)
                        round_p50[(s, op)].append(float(np.median(out)) / 1000)
            assert stores["redis"].get_cached(USER, MODEL_VERSION) == PAGE  # measured real hits
            print(f"{args.rounds} rounds x {args.iterations:,} calls per store and op "
                  f"(redis-server on loopback TCP, socket timeout 50 ms)\n")
            print(f"{'op':<28} {'store':<10} {'p50 us':>8} {'p99 us':>8} "
                  f"{'median of round p50s':>21} {'p50 x emb':>10} {'p99 x emb':>10}")
            for op in calls["embedded"]:
                base = np.concatenate(samples[("embedded", op)]) / 1000
                for s in stores:
                    us = np.concatenate(samples[(s, op)]) / 1000
                    p50, p99 = np.percentile(us, 50), np.percentile(us, 99)
                    print(f"{op:<28} {s:<10} {p50:>8.1f} {p99:>8.1f} "
                          f"{statistics.median(round_p50[(s, op)]):>21.1f} "
                          f"{p50 / np.percentile(base, 50):>9.1f}x "
                          f"{p99 / np.percentile(base, 99):>9.1f}x")
            stats = stores["resilient"].stats()
            print(f"\nresilient wrapper during the run: {stats['redis_outages_total']:g} "
                  f"outage(s), {stats['fallbacks_total']:g} call(s) answered by the embedded store "
                  "(a reply slower than the 50 ms socket timeout counts as an outage)")
            try:
                import hiredis  # noqa: F401

                print("redis-py reply parser: hiredis (C)")
            except ImportError:
                print("redis-py reply parser: pure Python (pip install hiredis: 3-4x faster "
                      "feature fetch)")
            for store in stores.values():
                store.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
