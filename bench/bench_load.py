"""Whole-server load: ``marquee serve`` as a real process on loopback, mixed traffic (issue 18).

    .venv/bin/python bench/bench_load.py --data DATA --model-base RUN/serving [--config FILE]
        [--concurrency 4]
        [--requests 6000] [--seconds 60] [--mix hit=50,miss_new=15,miss_k=15,write=20]
        [--wrk-seconds 10]

A closed loop, wrk-style: ``--concurrency`` client threads, each on one persistent HTTP/1.1
connection, send a request, wait for the whole answer, send the next; the run stops after
``--requests`` requests or ``--seconds`` seconds, whichever comes first. Loopback only. Routes,
drawn per request by seeded weights (``--mix``):

- ``hit``: GET /v1/users/{u}/homepage for one of ``--hot-users`` users whose page was cached
  before the run (``HomepageService._cache_version``: default k, no timestamp or seed);
- ``miss_new``: the same route for a user never asked for before (each user once), so the
  whole stack runs: features, sources with the ScaNN search, the ranker, re-rank;
- ``miss_k``: a hot user with ``?k=20``, which is never cached (k is not the default);
- ``write``: POST /v1/events, a watch event with the events-scope bearer token (a random one
  given to the server as MARQUEE_EVENTS_TOKEN), written to a write-ahead log (``--event-log`` in
  a temporary folder: synced to disk before each 200). Writes go to users outside the hot set,
  so they do not invalidate the cached pages the ``hit`` route reads.

Printed: per route p50 / p99 / max latency, requests/s and answers by status code (0: the
connection failed), whether each homepage was cached (the answer's ``cached``) or a fallback;
the server's own figures from /metrics (its per-route latency histogram, read before and after
the run: percentiles are bucket upper bounds); the CPU the client and the server used, to tell
whether the client was the bottleneck; and, with ``--wrk-seconds``, wrk over the hit route alone
as a cross-check of the client. Target (the design budget, ``serving.deadline_ms``): a homepage
under 200 ms; p99 is printed against it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
HOMEPAGE_BUDGET_MS = 200.0
ROUTES = ("hit", "miss_new", "miss_k", "write")
MISS_K = 20
START_TIMEOUT_S = 300
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, token: str, log_dir: Path, out: Path) -> subprocess.Popen:
    """``marquee serve`` on 127.0.0.1:port, returned once /healthz answers."""
    cmd = [sys.executable, "-m", "marquee.cli", "serve", "--data", str(args.data),
           "--model-base", str(args.model_base), "--event-log", str(log_dir),
           "--host", "127.0.0.1", "--port", str(port)]
    if args.config:
        cmd += ["--config", str(args.config)]
    env = {**os.environ, "MARQUEE_EVENTS_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    with open(out, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"marquee serve exited with {proc.returncode}:\n"
                             f"{out.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"marquee serve did not answer /healthz in {START_TIMEOUT_S} s; log: {out}")


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


_SAMPLE = re.compile(r'^(\w+)\{(.*)\} ([0-9.e+-]+|\+Inf|NaN)$')  # route labels hold {}


def samples(text: str, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of metric ``name`` in Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
            out[labels] = float(m.group(3))
    return out


def server_figures(before: str, after: str, seconds: float) -> list[str]:
    """The server's own per-route latency (histogram diff) and homepage outcomes in the run."""
    lines = []
    b = samples(before, "marquee_http_request_duration_seconds_bucket")
    a = samples(after, "marquee_http_request_duration_seconds_bucket")
    by_route = defaultdict(list)
    for labels, value in a.items():
        d = dict(labels)
        le = float("inf") if d["le"] == "+Inf" else float(d["le"])
        by_route[d["route"]].append((le, value - b.get(labels, 0.0)))
    for route, buckets in sorted(by_route.items()):
        buckets.sort()
        total = buckets[-1][1]
        if total <= 0 or route in ("/metrics", "/healthz"):
            continue

        def upper(q, buckets=buckets, total=total):
            le = next(le for le, count in buckets if count >= q * total)
            return "> 2500" if le == float("inf") else f"<= {le * 1000:g}"
        lines.append(f"  {route:<32} {int(total):>7} requests {total / seconds:>7.1f}/s   "
                     f"p50 {upper(0.5)} ms   p99 {upper(0.99)} ms")
    for name, label in (("marquee_homepage_total", "outcome"),
                        ("marquee_writes_total", "outcome"),
                        ("marquee_http_requests_total", "status")):
        b, a = samples(before, name), samples(after, name)
        diff = Counter()
        for labels, value in a.items():
            d = dict(labels)
            if d.get("route") in ("/metrics", "/healthz"):
                continue
            key = f"{d.get('route', '')} {d[label]}".strip()
            diff[key] += value - b.get(labels, 0.0)
        shown = ", ".join(f"{k}: {int(v)}" for k, v in sorted(diff.items()) if v)
        lines.append(f"  {name}: {shown or 'none'}")
    return lines


class Plan:
    """What each request is: a seeded draw of routes, users and event bodies (thread-safe)."""

    def __init__(self, args, users: list[int], items: list[int]):
        rng = np.random.default_rng(args.seed)
        users = list(rng.permutation(users))
        self.hot = users[:args.hot_users]
        self.warm = users[args.hot_users:args.hot_users + args.warm_users]
        self.fresh = users[args.hot_users + args.warm_users:]  # each asked for once
        self.writers = self.fresh[::-1]  # outside the hot set
        self.items = items
        names, weights = zip(*args.mix.items(), strict=True)
        self.names, self.p = list(names), np.asarray(weights, float) / sum(weights)
        self.rng, self.lock = rng, threading.Lock()
        self.sent, self.limit = 0, args.requests
        self.next_fresh = 0
        self.stop_at = 0.0

    def next(self) -> tuple[str, str, str, bytes | None] | None:
        """(route, method, path, body) of the next request, or None when the run is over."""
        with self.lock:
            if self.sent >= self.limit or time.monotonic() >= self.stop_at:
                return None
            self.sent += 1
            route = self.names[int(self.rng.choice(len(self.names), p=self.p))]
            if route == "miss_new" and self.next_fresh >= len(self.fresh):
                route = "miss_k"  # every user asked for once already
            if route == "hit":
                return route, "GET", f"/v1/users/{self.pick(self.hot)}/homepage", None
            if route == "miss_k":
                return route, "GET", f"/v1/users/{self.pick(self.hot)}/homepage?k={MISS_K}", None
            if route == "miss_new":
                user = self.fresh[self.next_fresh]
                self.next_fresh += 1
                return route, "GET", f"/v1/users/{user}/homepage", None
            body = {"user_id": int(self.pick(self.writers)), "item_id": int(self.pick(self.items)),
                    "timestamp": int(time.time()) - 1, "event": "watch",
                    "watch_seconds": float(self.rng.uniform(130, 5400)), "device": "tv"}
            return route, "POST", "/v1/events", json.dumps(body).encode()

    def pick(self, values: list):
        return values[int(self.rng.integers(len(values)))]


def client(port: int, token: str, plan: Plan, results: list, errors: Counter) -> None:
    """One closed-loop connection: request, whole answer, next request. ``errors`` counts
    failed connections and degraded pages by cause."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while (job := plan.next()) is not None:
        route, method, path, body = job
        t = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers if body else {})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            status, data = 0, b""
            errors[f"{route}: {type(e).__name__}"] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        ms = (time.perf_counter() - t) * 1000
        degraded = route != "write" and status == 200 and b'"degraded":null' not in data
        if degraded:  # why, its first 90 characters
            errors[f"{route} degraded: {json.loads(data)['degraded'][:90]}"] += 1
        results.append((route, status, ms, b'"cached":true' in data, b'"fallback":true' in data,
                        degraded))
    conn.close()


def run_wrk(port: int, users: list[int], concurrency: int, seconds: int) -> str:
    """wrk over the hit route alone (rotating over the hot users), its own summary lines."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return "  wrk not installed (apt-get install -y -qq wrk): cross-check skipped"
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    script.write("local users = {" + ",".join(str(u) for u in users) + "}\nlocal i = 0\n"
                 "request = function()\n  i = i % #users + 1\n"
                 "  return wrk.format('GET', '/v1/users/' .. users[i] .. '/homepage')\nend\n")
    script.close()
    try:
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                              "-s", script.name, f"http://127.0.0.1:{port}"], capture_output=True,
                             text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(script.name)
    keep = ("Latency ", "50%", "99%", "Requests/sec", "requests in", "Non-2xx", "Socket errors")
    return "\n".join("  " + line.strip() for line in out.splitlines()
                     if line.strip().startswith(keep))


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in ROUTES or not weight:
            raise argparse.ArgumentTypeError(
                f"--mix takes ROUTE=WEIGHT pairs of {', '.join(ROUTES)}, got {part!r}")
        mix[name.strip()] = float(weight)
    if not any(mix.values()) or min(mix.values()) < 0:
        raise argparse.ArgumentTypeError("--mix weights must be >= 0 and not all 0")
    return mix


def report(results: list, seconds: float, concurrency: int) -> None:
    print(f"\n{'route':<9} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'target p99':>11}  status codes; homepages cached / fallback / degraded")
    for route in ROUTES + ("all",):
        rows = [r for r in results if route in ("all", r[0])]
        if not rows:
            continue
        ms = np.array([r[2] for r in rows])
        codes = Counter(r[1] for r in rows)
        target = "" if route == "write" else (
            f"< {HOMEPAGE_BUDGET_MS:g}: " + ("yes" if np.percentile(ms, 99) < HOMEPAGE_BUDGET_MS
                                             else "NO"))
        if route == "all":
            target = ""
        pages = [r for r in rows if r[0] != "write" and r[1] == 200]
        extra = (f"; cached {sum(r[3] for r in pages)} / fallback {sum(r[4] for r in pages)}"
                 f" / degraded {sum(r[5] for r in pages)}" if pages else "")
        print(f"{route:<9} {len(rows):>8} {len(rows) / seconds:>7.1f} {np.percentile(ms, 50):>8.1f}"
              f" {np.percentile(ms, 99):>8.1f} {ms.max():>8.1f} {target:>11}  "
              f"{dict(sorted(codes.items()))}{extra}")
    print(f"({concurrency} connections, closed loop: each waits for its answer before the next "
          f"request; latency is the client's, send to last byte)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="dataset folder marquee serve reads (the run's training data)")
    ap.add_argument("--model-base", type=Path, required=True,
                    help="a pipeline run's pushed serving folder")
    ap.add_argument("--config", type=Path, help="the run's config (YAML), if not the defaults")
    ap.add_argument("--concurrency", type=int, default=4, choices=range(1, 9), metavar="2-8")
    ap.add_argument("--requests", type=int, default=10_000, help="at most this many requests")
    ap.add_argument("--seconds", type=float, default=60.0, help="at most this long")
    ap.add_argument("--mix", type=parse_mix, default=parse_mix("hit=50,miss_new=15,miss_k=15,"
                                                                "write=20"))
    ap.add_argument("--hot-users", type=int, default=200, help="users cached before the run")
    ap.add_argument("--warm-users", type=int, default=40, help="misses sent before the run")
    ap.add_argument("--wrk-seconds", type=int, default=10, help="wrk on the hit route; 0: skip")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for path in (args.data / "users.parquet", args.data / "items.parquet", args.model_base):
        if not path.exists():
            raise SystemExit(
                f"{path} does not exist: pass --data (a dataset folder) and --model-base (a "
                "run's serving folder). To make both: .venv/bin/marquee data synth --out DATA "
                "--users 4000 --items 4000 && .venv/bin/marquee pipeline run --data DATA --root "
                "RUN, then --data DATA --model-base RUN/serving")
    users = pd.read_parquet(args.data / "users.parquet")["user_id"].astype(int).tolist()
    items = pd.read_parquet(args.data / "items.parquet")["item_id"].astype(int).tolist()
    plan = Plan(args, users, items)
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        port = free_port()
        t = time.perf_counter()
        proc = start_server(args, port, token, Path(tmp) / "log", Path(tmp) / "server.log")
        try:
            print(f"# bench_load: marquee serve --data {args.data} --model-base "
                  f"{args.model_base} on 127.0.0.1:{port} (pid {proc.pid}), up in "
                  f"{time.perf_counter() - t:.0f} s; event log in a temporary folder\n"
                  f"# mix {dict(args.mix)}; {args.concurrency} connections; at most "
                  f"{args.requests} requests or {args.seconds:g} s; {len(plan.hot)} hot users "
                  f"(cached first), {len(plan.fresh)} never-asked users for miss_new, "
                  f"miss_k = ?k={MISS_K}; cores {os.cpu_count()}, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            t = time.perf_counter()
            warm = Counter()
            for path in ([f"/v1/users/{u}/homepage" for u in plan.hot] +
                         [f"/v1/users/{u}/homepage" for u in plan.warm] +
                         [f"/v1/users/{u}/homepage?k={MISS_K}" for u in plan.warm]):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
                    warm[r.status] += 1
            print(f"warm-up: {sum(warm.values())} homepages {dict(warm)} in "
                  f"{time.perf_counter() - t:.1f} s (hot pages cached, models warmed)",
                  flush=True)
            results: list = []
            errors: Counter = Counter()
            before = scrape(port)
            cpu0, srv0, t0 = time.process_time(), server_cpu_s(proc.pid), time.perf_counter()
            plan.stop_at = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(port, token, plan, results, errors))
                       for _ in range(args.concurrency)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0
            client_cores = (time.process_time() - cpu0) / wall
            server_cores = (server_cpu_s(proc.pid) - srv0) / wall
            after = scrape(port)
            report(results, wall, args.concurrency)
            for what, count in sorted(errors.items()):
                print(f"  {count} x {what}")
            print("\nserver's own figures (/metrics, this run only; histogram bucket bounds):")
            print("\n".join(server_figures(before, after, wall)))
            bound = ("likely: it used most of the one core a Python process's threads share"
                     if client_cores > 0.8 else "no: it used under 0.8 of a core")
            print(f"\nCPU over {wall:.1f} s: client {client_cores:.2f} cores, server "
                  f"{server_cores:.2f} cores, of {os.cpu_count()}. Client the bottleneck? "
                  f"{bound}; the server process {'was' if server_cores > 0.8 else 'was not'} "
                  f"busy (a Python server's request work is mostly GIL-bound: ~1 core).")
            if args.wrk_seconds:
                hit = [r[2] for r in results if r[0] == "hit"]
                print(f"\nwrk cross-check, hit route alone, {args.concurrency} connections, "
                      f"{args.wrk_seconds} s (the Python client's hit p50 in the mix: "
                      f"{np.percentile(hit, 50) if hit else float('nan'):.1f} ms):", flush=True)
                print(run_wrk(port, plan.hot, args.concurrency, args.wrk_seconds))
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15):
                print(f"marquee serve exited with {proc.returncode}; its log:\n"
                      f"{(Path(tmp) / 'server.log').read_text()[-2000:]}")


if __name__ == "__main__":
    main()
