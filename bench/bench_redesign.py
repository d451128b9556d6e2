"""The serving redesign against its baseline: hops of one homepage and homepage latency.

    .venv/bin/python bench/bench_redesign.py [--data build/ml100k] \\
        [--model-base build/ml-run/serving] [--config configs/movielens.yaml] \\
        [--baseline c9925fc] [--n 400] [--rounds 50] [--with-minors]

Two trees serve the same workload: ``before``, a detached worktree of ``--baseline`` (created
under /tmp if missing, run through PYTHONPATH), and ``after``, this checkout. Each runs in its
own subprocess, which builds the service the way its tree does (before:
``serving.app.build_service(data_dir, model_base, config=, min_watch_seconds=)``; after:
``serving.build.build_service(config, data_dir, model_base)``) from ``--config``'s serving
section with the page cache off (``cache_ttl_seconds=0``), every source and re-rank step of
the config on, and every deadline raised so that no source is skipped; in-process models.

- **Hops**: for one uncached homepage of one fixed user (the first with >= 5 watches), every
  Python call made while ``service.homepage(user)`` runs, in every thread (``sys.setprofile``
  installed in the pool threads that answer the sources), is traced. A hop is a call whose
  caller's file and callee's file differ and are both under that tree's ``serving/``. Printed:
  the distinct transitions (caller file -> callee file), all cross-module calls, how often
  the orchestrator (before ``serving/homepage.py``, after ``serving/homepage/service.py``) is
  entered from another serving file, and the serving files touched. A call through a
  non-serving frame (a thread pool, pandas calling back) is no hop: its caller is not serving.
- **Latency**: after warm-up (the service's own plus 20 homepages of users outside the timed
  set), ``--n`` cache-miss homepages over users with >= 5 watches (the config's positive
  rule) at the dataset's last timestamp, in ``--rounds`` alternating rounds (before, after,
  before, after, ...) so both trees see the same machine; short rounds, because on a shared
  2-core machine the load moves within seconds (4 rounds of 100 once gave round ratios from
  0.46 to 1.08). Printed: median and p99 of
  ``timings_ms["total"]`` and of every stage, per tree, the ratio after / before, the median
  of each round, and a bootstrap 95% interval of the ratio (how much of it is noise); and
  ``cpu``, the process CPU time of the request (all threads: a load on the machine moves it
  far less than the wall times), and the load average. The
  stages are each tree's own: after's ``query_tower`` also builds the query's features,
  which before does untimed ahead of the stage; ``total`` is the same span in both.

Under-18 users are left out unless ``--with-minors``: every MovieLens title is unrated, and
since 3a16033 the MovieLens config's ``maturity`` step allows unrated titles for minors
(``unrated: allow``), an argument the baseline's step does not take. It is dropped for a tree
that lacks it (printed), which for everyone but minors changes nothing, while a baseline minor
gets an empty page; leaving minors out keeps the work per request the same in both trees.

Details (every transition, per-request timings) go to ``build/bench_redesign/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "bench_redesign"
BASELINE = "c9925fc"
WARM_USERS = 20
MIN_WATCHES = 5
TARGET_RATIO = 1.0  # the redesign must not be slower
ORCHESTRATOR = {"before": "homepage.py", "after": "homepage/service.py"}
GENEROUS_MS = 30_000.0
BOOTSTRAP = 2000


# --------------------------------------------------------------------------- worker side


def _rerank_for(tree: str, steps: tuple[dict, ...]) -> tuple[tuple[dict, ...], list[str]]:
    """The re-rank steps as ``tree`` can build them: arguments its step lacks are dropped
    (a config newer than the baseline), and named."""
    from serving.rerank import STEPS

    out, dropped = [], []
    for step in steps:
        cls = STEPS.get(step.get("step"))
        if cls is None or not dataclasses.is_dataclass(cls):
            out.append(step)
            continue
        known = {f.name for f in dataclasses.fields(cls)} | {"step"}
        dropped += [f"{step['step']}.{k}={v}" for k, v in step.items() if k not in known]
        out.append({k: v for k, v in step.items() if k in known})
    return tuple(out), dropped


def _config(tree: str, path: str):
    """(the config of ``path`` with the page cache off and no deadline that could skip a step,
    the re-rank arguments ``tree`` does not know and were dropped)."""
    from marquee.config import load_config

    cfg = load_config(path)
    s = cfg.serving
    rerank, dropped = _rerank_for(tree, s.rerank)
    serving = dataclasses.replace(
        s, cache_ttl_seconds=0, deadline_ms=2 * GENEROUS_MS, query_deadline_ms=GENEROUS_MS,
        rank_deadline_ms=GENEROUS_MS, rerank=rerank,
        sources=tuple(dataclasses.replace(x, deadline_ms=GENEROUS_MS) for x in s.sources))
    return dataclasses.replace(cfg, serving=serving), dropped


def _build(tree: str, cfg, data: str, model_base: str):
    """(service, how it was built): each tree's own ``build_service``."""
    if tree == "before":
        from serving.app import build_service

        how = f"serving.app.build_service{inspect.signature(build_service)}"
        return build_service(data, model_base, config=cfg.serving,
                             min_watch_seconds=cfg.data.min_watch_seconds), how
    from serving.build import build_service

    sig = inspect.signature(build_service)
    how = f"serving.build.build_service{sig}"
    named = {"config": cfg, "data_dir": data, "model_base": model_base}
    if set(named) <= set(sig.parameters):
        return build_service(**named), how
    return build_service(cfg, data, model_base), how  # renamed parameters: the documented order


class _HopTracer:
    """Records (caller file, callee file) of every Python call into ``serving_dir``, relative
    to it (caller None when it is outside), in every thread it is installed in."""

    def __init__(self, serving_dir: Path):
        self.root = str(serving_dir.resolve()) + os.sep
        self.calls: list[tuple[str | None, str]] = []
        self._files: dict[str, str | None] = {}

    def _rel(self, filename: str) -> str | None:
        try:
            return self._files[filename]
        except KeyError:
            path = os.path.realpath(filename)
            rel = path[len(self.root):] if path.startswith(self.root) else None
            self._files[filename] = rel
            return rel

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        callee = self._rel(frame.f_code.co_filename)
        if callee is not None:
            caller = frame.f_back
            self.calls.append((self._rel(caller.f_code.co_filename) if caller else None, callee))


def _set_in_pools(fn) -> list[str]:
    """Installs profile function ``fn`` (None: removes it) in every thread of every live
    ThreadPoolExecutor: one task per worker, all held at a barrier so each lands on its own
    thread. Returns the problems (pools it could not reach)."""
    import gc
    from concurrent.futures import ThreadPoolExecutor

    problems = []
    for pool in [o for o in gc.get_objects() if isinstance(o, ThreadPoolExecutor)]:
        if pool._shutdown:
            continue
        n = pool._max_workers
        barrier = threading.Barrier(n)

        def task(b=barrier):
            sys.setprofile(fn)
            b.wait(timeout=30)

        try:
            for f in [pool.submit(task) for _ in range(n)]:
                f.result(timeout=60)
        except Exception as e:  # noqa: BLE001  (reported, the trace says what it missed)
            problems.append(f"{pool._thread_name_prefix or 'pool'}: {type(e).__name__} {e}")
    return problems


def _trace(tree: str, service, user: int, timestamp: int, serving_dir: Path) -> dict:
    tracer = _HopTracer(serving_dir)
    problems = _set_in_pools(tracer)
    threading.setprofile(tracer)
    sys.setprofile(tracer)
    try:
        page = service.homepage(user, timestamp=timestamp)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        problems += _set_in_pools(None)
    orch = ORCHESTRATOR[tree]
    cross = [(a, b) for a, b in tracer.calls if a is not None and a != b]
    edges = Counter(cross)
    return {
        "user": user, "fallback": page.fallback, "degraded": page.degraded,
        "skipped": dict(page.skipped), "items": len(page.items),
        "serving_calls": len(tracer.calls),
        "transitions": len(edges), "cross_calls": len(cross),
        "orchestrator": orch,
        "orchestrator_reentries": sum(n for (a, b), n in edges.items() if b == orch),
        "orchestrator_reentry_from": sorted({a for a, b in edges if b == orch}),
        "files": sorted({b for _, b in tracer.calls}),
        "edges": [[a, b, n] for (a, b), n in edges.most_common()],
        "problems": problems,
    }


def _run(service, users: list[int], timestamp: int) -> dict:
    timings: list[dict[str, float]] = []
    bad: list[str] = []
    for u in users:
        cpu = time.process_time()
        page = service.homepage(u, timestamp=timestamp)
        timings.append(dict(page.timings_ms, cpu=(time.process_time() - cpu) * 1000))
        if page.fallback or page.degraded or page.skipped or page.cached or not page.items:
            bad.append(f"user {u}: {len(page.items)} titles, fallback={page.fallback} "
                       f"reason={page.reason} "
                       f"degraded={page.degraded} skipped={dict(page.skipped)} "
                       f"cached={page.cached}")
    return {"timings": timings, "bad": bad}


def worker(args: argparse.Namespace) -> None:
    """One tree's side: reads JSON commands on stdin, answers one JSON line each."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (TensorFlow, libraries) goes to the log
    sys.stdout = sys.stderr
    import marquee  # noqa: F401  (sets the environment before anything imports TensorFlow)
    import serving

    serving_dir = Path(serving.__file__).resolve().parent
    cfg, dropped = _config(args.worker, args.config)
    t = time.perf_counter()
    service, how = _build(args.worker, cfg, args.data, args.model_base)
    build_s = time.perf_counter() - t
    cmd = json.loads(sys.stdin.readline())
    t = time.perf_counter()
    _run(service, cmd["warm"], cmd["timestamp"])
    proto.write(json.dumps({
        "serving": str(serving_dir), "marquee": marquee.__file__, "build": how,
        "build_s": build_s, "warm_s": time.perf_counter() - t,
        "sources": [s.name for s in cfg.serving.sources],
        "rerank": [r["step"] for r in cfg.serving.rerank], "dropped": dropped,
        "because_you_watched": cfg.serving.because_you_watched,
        "backend": type(service.backend).__name__}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "trace":
            out = _trace(args.worker, service, cmd["user"], cmd["timestamp"], serving_dir)
        elif cmd["cmd"] == "run":
            out = _run(service, cmd["users"], cmd["timestamp"])
        else:
            break
        proto.write(json.dumps(out) + "\n")
    service.stop()


# --------------------------------------------------------------------------- driver side


class Tree:
    """A worker subprocess serving from ``root``'s code."""

    def __init__(self, name: str, root: Path, args: argparse.Namespace, first: dict):
        self.name, self.root = name, root
        self.log = OUT / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
               "--data", str(Path(args.data).resolve()),
               "--model-base", str(Path(args.model_base).resolve()),
               "--config", str(Path(args.config).resolve())]
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"),
                                     text=True, bufsize=1)
        self.info = self.ask(first)

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"the {self.name} tree ({self.root}) stopped with exit code "
                               f"{self.proc.returncode}; the end of {self.log}:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def baseline_tree(commit: str) -> Path:
    """A detached worktree of ``commit`` under /tmp (created once)."""
    path = Path(f"/tmp/marquee-baseline-{commit}")
    want = subprocess.run(["git", "-C", str(REPO), "rev-parse", commit],
                          capture_output=True, text=True, check=True).stdout.strip()
    for candidate in (Path("/tmp/marquee-baseline"), path):
        head = subprocess.run(["git", "-C", str(candidate), "rev-parse", "HEAD"],
                              capture_output=True, text=True)
        if head.returncode == 0 and head.stdout.strip() == want:
            return candidate
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
                   check=True, capture_output=True)
    return path


def _revision(root: Path) -> str:
    """The commit of ``root``, and how many files under serving/ differ from it."""
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "serving"],
                           capture_output=True, text=True).stdout.splitlines()
    return f"{head} + {len(dirty)} uncommitted change(s) in serving/" if dirty else head


def workload(data: str, min_watch_seconds: float,
             minors: bool) -> tuple[list[int], int, int]:
    """(users with >= MIN_WATCHES positive watches, sorted, without the under-18s unless
    ``minors``; the dataset's last timestamp; the under-18s left out)."""
    import pandas as pd

    df = pd.read_parquet(Path(data) / "interactions.parquet",
                         columns=["user_id", "timestamp", "event", "watch_seconds"])
    watches = df[(df["event"] == "watch") & (df["watch_seconds"] >= min_watch_seconds)]
    counts = watches.groupby("user_id").size()
    users = {int(u) for u in counts[counts >= MIN_WATCHES].index}
    left_out = set()
    if not minors:
        profiles = pd.read_parquet(Path(data) / "users.parquet", columns=["user_id",
                                                                          "age_bucket"])
        left_out = users & set(profiles.loc[profiles["age_bucket"] == "under-18",
                                            "user_id"].astype(int))
    return sorted(users - left_out), int(df["timestamp"].max()), len(left_out)


def _fmt(v: float) -> str:
    return f"{v:.2f}" if v == v else "-"


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def print_hops(traces: dict[str, dict]) -> None:
    b, a = traces["before"], traces["after"]
    print(f"Hops: one uncached homepage of user {b['user']} (a call from one serving file "
          "into another)")
    print(f"{'':<50}{'before':>10}{'after':>10}{'change':>10}")
    rows = [("distinct module transitions (caller -> callee)", "transitions"),
            ("cross-module calls", "cross_calls"),
            ("orchestrator entered from another serving file", "orchestrator_reentries"),
            ("serving files touched", None),
            ("Python calls into serving/ (all)", "serving_calls")]
    for label, key in rows:
        x, y = (len(b["files"]), len(a["files"])) if key is None else (b[key], a[key])
        print(f"{label:<50}{x:>10}{y:>10}{y - x:>+10}")
    for name, t in traces.items():
        print(f"\n{name}: orchestrator serving/{t['orchestrator']}, entered from "
              f"{', '.join(t['orchestrator_reentry_from']) or 'no other serving file'}; "
              f"page: {t['items']} titles, fallback={t['fallback']}, degraded={t['degraded']}, "
              f"skipped={t['skipped'] or 'none'}")
        print(f"  files touched ({len(t['files'])}): {', '.join(t['files'])}")
        print("  transitions, most calls first (calls  caller -> callee):")
        for caller, callee, n in t["edges"][:12]:
            print(f"  {n:>8}  {caller} -> {callee}")
        if len(t["edges"]) > 12:
            print(f"  ... {len(t['edges']) - 12} more in {OUT / 'hops.json'}")
        for p in t["problems"]:
            print(f"  NOTE: the profiler missed a pool: {p}")


def print_latency(timings: dict[str, list[dict]], n_users: int, rounds: int) -> None:
    import numpy as np

    print(f"\nLatency: {sum(len(v) for v in timings.values()) // 2} cache-miss homepages per "
          f"tree ({rounds} alternating rounds, {n_users} distinct users with >= {MIN_WATCHES} "
          "watches); timings_ms, ms")
    stages: list[str] = []
    for pages in timings.values():
        for p in pages:
            stages += [s for s in p if s not in stages]
    stages.sort(key=lambda s: (s == "total") + 2 * (s == "cpu"))
    print(f"{'stage (cpu: CPU ms)':<22}{'before p50':>11}{'p99':>9}{'after p50':>11}{'p99':>9}"
          f"{'ratio p50':>11}{'ratio p99':>11}")
    for stage in stages:
        x = [p[stage] for p in timings["before"] if stage in p]
        y = [p[stage] for p in timings["after"] if stage in p]
        r50 = _pct(y, 50) / _pct(x, 50) if x and y and _pct(x, 50) > 0 else float("nan")
        r99 = _pct(y, 99) / _pct(x, 99) if x and y and _pct(x, 99) > 0 else float("nan")
        print(f"{stage:<22}{_fmt(_pct(x, 50)):>11}{_fmt(_pct(x, 99)):>9}{_fmt(_pct(y, 50)):>11}"
              f"{_fmt(_pct(y, 99)):>9}{_fmt(r50):>11}{_fmt(r99):>11}")
    total = {k: np.array([p["total"] for p in v]) for k, v in timings.items()}
    per = -(-len(total["before"]) // rounds)
    medians = [(np.median(total["before"][i:i + per]), np.median(total["after"][i:i + per]))
               for i in range(0, len(total["before"]), per)]
    ratios = np.array([a / b for b, a in medians])
    print(f"\nper round ({len(medians)} rounds), median total after / before: median "
          f"{np.median(ratios):.3f}, range {ratios.min():.3f}-{ratios.max():.3f}; before's "
          f"round medians {min(b for b, _ in medians):.2f}-{max(b for b, _ in medians):.2f} ms")
    rng = np.random.default_rng(0)  # the spread of the ratio over resampled requests
    boot = {k: rng.choice(v, size=(BOOTSTRAP, len(v))) for k, v in total.items()}
    for q, label in ((50, "median"), (99, "p99")):
        r = np.percentile(total["after"], q) / np.percentile(total["before"], q)
        lo, hi = np.percentile(np.percentile(boot["after"], q, axis=1)
                               / np.percentile(boot["before"], q, axis=1), [2.5, 97.5])
        verdict = "met" if r <= TARGET_RATIO else "MISSED"
        print(f"target: {label} total after / before <= {TARGET_RATIO:.2f} (the redesign must "
              f"not be slower): {r:.3f} (bootstrap 95% {lo:.3f}-{hi:.3f}), {verdict}")
    cpu = {k: np.array([p["cpu"] for p in v]) for k, v in timings.items()}
    boot = {k: rng.choice(v, size=(BOOTSTRAP, len(v))) for k, v in cpu.items()}
    lo, hi = np.percentile(np.median(boot["after"], axis=1) / np.median(boot["before"], axis=1),
                           [2.5, 97.5])
    print(f"CPU per homepage, median after / before: "
          f"{np.median(cpu['after']) / np.median(cpu['before']):.3f} (bootstrap 95% "
          f"{lo:.3f}-{hi:.3f}); the machine's load moves it less than the wall times")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "build" / "ml100k"))
    ap.add_argument("--model-base", default=str(REPO / "build" / "ml-run" / "serving"))
    ap.add_argument("--config", default=str(REPO / "configs" / "movielens.yaml"))
    ap.add_argument("--baseline", default=BASELINE, help="commit of the flat serving/")
    ap.add_argument("--n", type=int, default=400, help="homepages per tree")
    ap.add_argument("--rounds", type=int, default=50,
                    help="alternations; short rounds keep a load change on one tree's side")
    ap.add_argument("--with-minors", action="store_true",
                    help="time the under-18 users too (see the docstring)")
    ap.add_argument("--worker", choices=["before", "after"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.rounds < 1 or args.n < args.rounds:
        ap.error("--n must be at least --rounds, and --rounds at least 1")
    OUT.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from marquee.config import load_config

    users, timestamp, minors = workload(args.data, load_config(args.config).data.min_watch_seconds,
                                        args.with_minors)
    if len(users) < 2 + WARM_USERS:
        raise SystemExit(f"{len(users)} users with >= {MIN_WATCHES} watches in {args.data}: "
                         f"too few for a trace user, {WARM_USERS} warm-up users and a timed set")
    traced, warm, pool = users[0], users[-WARM_USERS:], users[1:-WARM_USERS]
    timed = [pool[i % len(pool)] for i in range(args.n)]
    first = {"warm": warm, "timestamp": timestamp}
    roots = {"before": baseline_tree(args.baseline), "after": REPO}
    trees: dict[str, Tree] = {}
    load_start = os.getloadavg()[0]
    try:
        for name, root in roots.items():  # one at a time: both load TensorFlow
            trees[name] = Tree(name, root, args, first)
        for t in trees.values():
            i = t.info
            print(f"{t.name:<7} {t.root} at {_revision(t.root)} (serving: {i['serving']}; "
                  f"marquee: {i['marquee']})")
            print(f"        {i['build']}: {i['build_s']:.1f} s, warm-up {i['warm_s']:.1f} s, "
                  f"backend {i['backend']}")
        i = trees["after"].info
        print(f"sources {i['sources']}, re-rank {i['rerank']}, because_you_watched "
              f"{i['because_you_watched']}; cache off, deadlines {GENEROUS_MS:g} ms; "
              f"timestamp {timestamp}")
        for t in trees.values():
            if t.info["dropped"]:
                print(f"{t.name}: re-rank arguments of {args.config} its steps do not take, "
                      f"dropped: {', '.join(t.info['dropped'])}")
        if minors:
            print(f"{minors} under-18 users left out (--with-minors keeps them): how a minor's "
                  "page treats unrated titles is a config and behaviour change apart from the "
                  "restructure")
        print()
        traces = {name: t.ask({"cmd": "trace", "user": traced, "timestamp": timestamp})
                  for name, t in trees.items()}
        print_hops(traces)
        timings: dict[str, list[dict]] = {name: [] for name in trees}
        bad: dict[str, list[str]] = {name: [] for name in trees}
        per = -(-len(timed) // args.rounds)
        for r in range(args.rounds):
            chunk = timed[r * per:(r + 1) * per]
            for name, t in trees.items():
                out = t.ask({"cmd": "run", "users": chunk, "timestamp": timestamp})
                timings[name] += out["timings"]
                bad[name] += out["bad"]
        load_end = os.getloadavg()[0]
        print_latency(timings, len(set(timed)), args.rounds)
        print(f"load average (1 min) {load_start:.2f} at the start, {load_end:.2f} after the "
              f"timed rounds, on {os.cpu_count()} cores: other processes share the machine")
        for name, b in bad.items():
            if b:
                print(f"NOTE: {name}: {len(b)} of {len(timings[name])} pages not full pages "
                      f"from every source (kept in the figures), e.g. {b[0]}")
        (OUT / "hops.json").write_text(json.dumps(traces, indent=1))
        (OUT / "timings.json").write_text(json.dumps(timings))
    finally:
        for t in trees.values():
            t.close()


if __name__ == "__main__":
    main()
