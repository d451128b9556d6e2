"""Writes over HTTP: today's durable server vs the buffered log of c9925fc, side by side.

    .venv/bin/python bench/bench_writes.py [--count 3000] [--clients 1,8,32] [--rounds 3] \
        [--baseline /tmp/marquee-baseline] [--data DIR] [--dir DIR]

Two real server processes on loopback, each logging to its own temporary folder:

- ``new``: this tree's ``marquee serve --insecure-dev``: every write is in the write-ahead log
  (``serving/ingest/wal.py``, one fsync per group commit) before its 200;
- ``old``: ``marquee serve`` of a git worktree of c9925fc (``--baseline``; created with ``git
  worktree add`` if missing, and checked to be what the process imports): events buffered in
  ``EventLog`` Parquet parts (a row group per 100 rows, a part closed per 10,000), 200 first.

The data is simulated (``marquee data synth``, 2,000 users, 500 titles, 7 days) unless
``--data``; the model base is empty, so homepages fall back to popularity (writes need no model).
Load: ``POST /v1/events`` of distinct valid watches (the dataset's users and titles) from C
client threads, closed loop, ``--count`` writes per server and C, one ``http.client`` connection
per thread (keep-alive where the server offers it: the old one answers HTTP/1.0 and closes
each). The servers take turns within each C (``--rounds`` slices, which goes first flipping each
time), so both see the same machine, however busy.
The new server's write rate limit (500/s per client address, and every client here is
127.0.0.1) is lifted through ``--config``: the table measures the write path, not the limiter.

Printed per server and C: accepted writes/s (200s / wall seconds), p50 and p99 latency of the
200s in ms, non-200 answers, TCP connections opened, the server's CPU ms per accepted write and,
for the new one, fsyncs and rows per fsync (its /metrics). Then, after ``kill -9`` of both
(and again, on fresh logs, after SIGTERM): how many accepted writes are readable in
``LOG/interactions/*.parquet`` -- the new server's after one restart (which compacts its log),
the old one's as it left them (a part never closed stays ``.parquet.inprogress``, unreadable).
Target: a 200 means on disk (all accepted writes readable after kill -9).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "c9925fc"
# Lifts the new server's per-client write rate limit (every client here is 127.0.0.1).
UNLIMITED = "serving:\n  limits:\n    write_rate_per_second: 1000000\n    write_burst: 1000000\n"
WARMUP = 50  # writes per server before the measured runs (counted in the durability check)
KEY = ["user_id", "item_id", "timestamp", "watch_seconds"]  # what identifies a write on disk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One ``serve`` child process on a free loopback port; ``name`` is ``new`` or ``old``."""

    def __init__(self, name: str, tree: Path, data: Path, models: Path, log: Path,
                 out: Path, config: Path | None):
        self.name, self.tree, self.log, self.port = name, tree, log, free_port()
        args = ["--data", str(data), "--model-base", str(models), "--event-log", str(log),
                "--port", str(self.port)]
        if name == "new":
            args += ["--insecure-dev", "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))
        self.out_path, self.out = out, open(out, "ab")  # noqa: SIM115 (the child's lifetime)
        # cwd = the tree: `-m` puts the cwd first on sys.path, so the tree's code is imported
        self.proc = subprocess.Popen([sys.executable, "-m", "marquee.cli", "serve", *args],
                                     cwd=tree, env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited ({self.proc.returncode}): "
                                   f"{self.out_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} server: no /healthz within {timeout_s:.0f} s; see "
                           f"{self.out_path}")

    def wal_stats(self) -> dict[str, float]:
        """The new server's ``marquee_wal_*`` readings from /metrics (empty for the old)."""
        if self.name != "new":
            return {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r"^marquee_wal_(\w+) (\S+)$", text, re.M)}

    def stop(self, sig: int, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.out.close()
        return code


def imported_from(tree: Path) -> str:
    """Where ``serving`` comes from for a server started as ``Server`` starts it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    return subprocess.run([sys.executable, "-c", "import serving; print(serving.__file__)"],
                          cwd=tree, env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def baseline_tree(path: Path) -> Path:
    """The worktree of c9925fc at ``path``, added if missing (never removed)."""
    if not (path / "marquee" / "cli.py").is_file():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path),
                        BASELINE_COMMIT], check=True, capture_output=True, timeout=120)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, text=True,
                          capture_output=True).stdout.strip()
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", BASELINE_COMMIT], check=True,
                          text=True, capture_output=True).stdout.strip()
    if head != full:
        raise SystemExit(f"{path} is at {head[:7]}, not {BASELINE_COMMIT}: pass another "
                         "--baseline, or check it out there")
    return path


def make_rows(data: Path, n: int) -> list[dict]:
    """``n`` distinct valid watches of the dataset's users and titles (watch seconds 60 + i)."""
    users = pd.read_parquet(data / "users.parquet", columns=["user_id"])["user_id"].tolist()
    items = pd.read_parquet(data / "items.parquet", columns=["item_id"])["item_id"].tolist()
    now = int(time.time()) - 60
    return [{"user_id": int(users[i % len(users)]), "item_id": int(items[(7 * i) % len(items)]),
             "timestamp": now - i % 86_400, "event": "watch", "watch_seconds": 60.0 + i,
             "device": "tv"} for i in range(n)]


def key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def load(port: int, rows: list[dict], clients: int) -> dict:
    """Posts ``rows`` from ``clients`` threads, closed loop (row i from thread i % clients).
    Returns wall seconds, each request's latency (ms) and status (0: no answer), the accepted
    rows' keys, the TCP connections opened and the non-200 answers by status or exception."""
    n = len(rows)
    ms, status = np.zeros(n), np.zeros(n, np.int32)
    connects = [0] * clients
    errors: collections.Counter[str] = collections.Counter()
    barrier = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json"}
    bodies = [json.dumps(r).encode() for r in rows]

    def work(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        for i in range(k, n, clients):
            connects[k] += conn.sock is None  # http.client reconnects when the server closed
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/events", bodies[i], headers)
                resp = conn.getresponse()
                resp.read()
                status[i] = resp.status
                if resp.status != 200:
                    errors[f"HTTP {resp.status}"] += 1
            except (OSError, http.client.HTTPException) as e:
                errors[type(e).__name__] += 1
                conn.close()
            ms[i] = (time.perf_counter() - start) * 1000
        conn.close()

    pool = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ms": ms, "status": status, "connects": sum(connects),
            "accepted": {key(rows[i]) for i in np.flatnonzero(status == 200)}, "errors": errors}


def measured(server: Server, rows: list[dict], clients: int) -> dict:
    """``load`` plus the server's CPU seconds and /metrics WAL counters over the run."""
    wal0, cpu0 = server.wal_stats(), cpu_seconds(server.proc.pid)
    r = load(server.port, rows, clients)
    wal1 = server.wal_stats()
    r["cpu"] = cpu_seconds(server.proc.pid) - cpu0
    r["wal"] = collections.Counter({m: wal1[m] - wal0[m] for m in wal1})
    return r


def merged(runs: list[dict]) -> dict:
    """The runs of one server and client count as one."""
    out = {k: sum((r[k] for r in runs), start=type(runs[0][k])())
           for k in ("seconds", "connects", "cpu", "errors", "wal")}
    out["ms"] = np.concatenate([r["ms"] for r in runs])
    out["status"] = np.concatenate([r["status"] for r in runs])
    out["accepted"] = set().union(*(r["accepted"] for r in runs))
    return out


def on_disk(log: Path) -> tuple[set[tuple], int, int]:
    """Keys readable in ``log/interactions/*.parquet``; unreadable parts and their bytes
    (``.parquet.inprogress`` files, or a ``.parquet`` that does not open)."""
    found, bad, bad_bytes = set(), 0, 0
    folder = log / "interactions"
    for path in sorted(folder.glob("*.parquet")):
        try:
            frame = pq.read_table(path, columns=KEY).to_pandas()
        except (OSError, pa.ArrowException):  # no footer, torn: counted as unreadable
            bad, bad_bytes = bad + 1, bad_bytes + path.stat().st_size
            continue
        found.update((int(u), int(i), int(t), float(w)) for u, i, t, w in
                     frame.itertuples(index=False))
    for path in folder.glob("*.inprogress"):
        bad, bad_bytes = bad + 1, bad_bytes + path.stat().st_size
    return found, bad, bad_bytes


def durability(stop: str, servers: dict[str, Server], accepted: dict[str, set[tuple]],
               restart) -> list[str]:
    """Stops both servers with ``stop`` (SIGKILL or SIGTERM) and counts the accepted writes
    readable afterwards; the new server's after one restart (``restart(log)``)."""
    sig = signal.SIGKILL if stop == "kill -9" else signal.SIGTERM
    codes = {name: s.stop(sig) for name, s in servers.items()}
    lines = []
    for name, server in servers.items():
        acked = accepted[name]
        found, bad, bad_bytes = on_disk(server.log)
        how = "as left"
        if name == "new":  # what the background compaction had written, then the restart's
            how = f"after a restart (as left: {len(acked & found):,})"
            restart(server.log).stop(signal.SIGTERM)
            found, bad, bad_bytes = on_disk(server.log)
        kept = len(acked & found)
        extra = f"; {bad} unreadable part(s), {bad_bytes / 1024:,.0f} KiB" if bad else ""
        verdict = "met" if kept == len(acked) else "MISSED"
        lines.append(f"{stop:<8} {name}: exit {codes[name]}, {len(acked):,} accepted, "
                     f"{kept:,} readable {how} ({100 * kept / max(len(acked), 1):.1f}%)"
                     f"{extra}   target: 200 means on disk: {verdict}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=3000, help="writes per server and client count")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client thread counts")
    ap.add_argument("--rounds", type=int, default=3,
                    help="slices of --count per client count, the servers alternating per slice")
    ap.add_argument("--term-clients", type=int, default=8,
                    help="client threads of the SIGTERM phase (--count writes per server)")
    ap.add_argument("--baseline", default="/tmp/marquee-baseline",
                    help=f"git worktree of {BASELINE_COMMIT} (added if missing)")
    ap.add_argument("--data", help="dataset folder (default: simulated into the work folder)")
    ap.add_argument("--dir", help="folder for the work folder (default: the system's temp)")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    began = time.monotonic()
    trees = {"new": REPO, "old": baseline_tree(Path(args.baseline))}
    for name, tree in trees.items():
        where = imported_from(tree)
        if not where.startswith(str(tree.resolve()) + "/"):
            raise SystemExit(f"the {name} server would import serving from {where}, not {tree}")
        print(f"{name}: serving imported from {where}")
    with tempfile.TemporaryDirectory(prefix="bench-writes-", dir=args.dir) as tmp:
        root = Path(tmp).resolve()
        started: list[Server] = []
        try:
            config = root / "limits.yaml"
            config.write_text(UNLIMITED)
            if args.data:
                data = Path(args.data).resolve()
            else:
                data = root / "data"
                subprocess.run([sys.executable, "-m", "marquee.cli", "data", "synth", "--out",
                                str(data), "--users", "2000", "--items", "500", "--days", "7"],
                               cwd=REPO, check=True, capture_output=True, timeout=300)
            models = root / "no-models"
            rows = make_rows(data, WARMUP + (len(clients) + 1) * args.count)
            starts = {"n": 0}

            def start(name: str, log: Path) -> Server:
                starts["n"] += 1
                started.append(Server(name, trees[name], data, models, log,
                                      root / f"{name}-{starts['n']}.out", config))
                return started[-1]

            def restart(log: Path) -> Server:
                return start("new", log).wait_ready()

            servers = {name: start(name, root / f"{name}-log") for name in trees}
            for s in servers.values():
                s.wait_ready()
            for name, s in servers.items():  # what each process logged at start-up
                said = [line for line in s.out_path.read_text().splitlines()
                        if "homepage API on" in line]
                print(f"{name}: {said[-1].split(' ', 3)[-1] if said else '?'}")
            accepted = {name: load(s.port, rows[:WARMUP], 1)["accepted"]
                        for name, s in servers.items()}
            print(f"\n{args.count:,} POST /v1/events per server and client count, closed loop, "
                  f"in {root}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
            print(f"{'server':<8}{'clients':>8}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'errors':>8}{'conns':>7}{'cpu ms/w':>10}{'fsyncs':>8}{'rows/fsync':>11}")
            failures = []
            for k, c in enumerate(clients):
                batch = rows[WARMUP + k * args.count:WARMUP + (k + 1) * args.count]
                runs: dict[str, list[dict]] = {name: [] for name in trees}
                for j in range(args.rounds):  # a slice each, the order flipping every round
                    part = batch[j * len(batch) // args.rounds:(j + 1) * len(batch) // args.rounds]
                    for name in (("new", "old") if (k + j) % 2 == 0 else ("old", "new")):
                        runs[name].append(measured(servers[name], part, c))
                for name in trees:
                    r = merged(runs[name])
                    accepted[name] |= r["accepted"]
                    if r["errors"]:
                        failures.append(f"{name} at {c} clients: " + ", ".join(
                            f"{n} x {what}" for what, n in r["errors"].most_common()))
                    good = r["ms"][r["status"] == 200]
                    n_ok = len(r["accepted"])
                    p50, p99 = (np.percentile(good, [50, 99]) if n_ok else (np.nan, np.nan))
                    fsyncs = rows_per = ""
                    if r["wal"]:
                        fsyncs = f"{r['wal']['fsyncs']:.0f}"
                        rows_per = f"{r['wal']['appended'] / max(r['wal']['fsyncs'], 1):.1f}"
                    print(f"{name:<8}{c:>8}{n_ok / r['seconds']:>10,.0f}{p50:>9.2f}{p99:>9.2f}"
                          f"{len(r['status']) - n_ok:>8}{r['connects']:>7}"
                          f"{1000 * r['cpu'] / max(n_ok, 1):>10.2f}{fsyncs:>8}{rows_per:>11}")
            print("errors: " + ("; ".join(failures) if failures else "none") + "\n")
            for line in durability("kill -9", servers, accepted, restart):
                print(line)
            servers = {name: start(name, root / f"{name}-log-term") for name in trees}
            for s in servers.values():
                s.wait_ready()
            batch = rows[WARMUP + len(clients) * args.count:]
            accepted = {name: load(s.port, batch, args.term_clients)["accepted"]
                        for name, s in servers.items()}
            for line in durability("SIGTERM", servers, accepted, restart):
                print(line)
            print(f"\nold: a part file is closed at 10,000 rows or on a clean close, which neither "
                  f"stop reaches; load average {os.getloadavg()[0]:.2f}; "
                  f"{time.monotonic() - began:.0f} s in all")
        finally:  # a server left running by a failure is killed
            for s in started:
                if s.proc.poll() is None:
                    s.proc.kill()
                    s.proc.wait()
                s.out.close()


if __name__ == "__main__":
    main()
