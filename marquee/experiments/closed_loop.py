"""A closed loop: the simulator's users browse the pages the real serving stack returns.

    simulated day d:  sessions of the audience (its users' own activity and viewing hours)
      each session:   GET /v1/users/{id}/homepage      the real HTTP server on loopback, the
                                                       experiment's arms, the impression log
                      the user watches or skips         the simulator's own watch rule
                      POST /v1/events (with page_id)    the real write path (durable log)
      between days:   optionally retrain on the log and push (`marquee pipeline run`), and the
                      server picks the new version up

The server runs in this process (uvicorn in a thread) on a simulated clock: every page, event
and impression carries simulated time, after the period the dataset was simulated over. Its
event log is the loop's dataset folder (a copy of the simulated dataset with its tables as
folders), so the log and the data are one dataset that the pipeline and ``marquee experiment
analyze`` read like any other.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from marquee.config import Config
from marquee.data import contract as c
from marquee.data.simulate import SimConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long and how the audience browses."""

    days: int = 7
    seed: int = 0
    # Retrain on the log and push every this many days (0: never; a run takes minutes).
    retrain_every: int = 0
    # At most this many sessions a day (the audience's own draw beyond it is cut, sampled
    # uniformly; None: all of them).
    max_sessions_per_day: int | None = None
    # The serving deadlines (request, model calls, each source's) times this. The loop measures
    # what the audience does with the pages; on a machine that is also retraining, production
    # deadlines would drop the ranker or a source from some pages for want of CPU, and the arms
    # would differ by that (a loaded 2-core machine has taken 2.8 s for one page). 1 keeps the
    # config's deadlines. (An arm that overrides `sources` keeps its own deadlines.)
    deadline_scale: float = 100.0


class SimulatedClock:
    """The loop's world time (UTC seconds), set by the driver; the server reads it as its
    clock, so pages, impressions and the skew check all live in simulated time."""

    def __init__(self, t: float):
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, t: float) -> None:
        self.t = max(self.t, float(t))


@dataclasses.dataclass
class LoopSummary:
    workdir: Path
    data_dir: Path
    days: int
    pages: int = 0
    fallbacks: int = 0
    degraded: int = 0  # pages served without a part (a model, a source; the page says which)
    watches_posted: int = 0
    refused: int = 0  # events the server refused (named in the log)
    retrains: int = 0
    seconds: float = 0.0
    pages_by_day: list[int] = dataclasses.field(default_factory=list)
    watches_by_day: list[int] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return (f"closed loop: {self.days} simulated day(s), {self.pages:,} pages served "
                f"({self.fallbacks:,} fallbacks, {self.degraded:,} degraded), "
                f"{self.watches_posted:,} watches posted "
                f"({self.refused} refused), {self.retrains} retrain(s), in {self.seconds:.0f} s; "
                f"dataset and log in {self.data_dir}")


def prepare(dataset: str | Path, workdir: str | Path) -> Path:
    """The loop's dataset folder: ``workdir/data`` with each table of ``dataset`` as a folder
    (the event log appends parts to them). An existing one is kept (a loop resumed)."""
    data = Path(workdir) / "data"
    if data.exists():
        return data
    tmp = Path(workdir) / ".data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for table in c.TABLES:
        files = c.table_files(dataset, table)
        folder = tmp / table
        folder.mkdir(parents=True)
        for n, path in enumerate(files):
            shutil.copyfile(path, folder / f"part-0000000000-{n:04d}.parquet")
    tmp.rename(data)
    return data


class _Client:
    """HTTP/1.1 keep-alive client of the loop's server."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.auth = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> dict:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
        return json.loads(body)

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        self.conn.request("POST", path, json.dumps(payload),
                          {"Content-Type": "application/json", **self.auth})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")

    def close(self) -> None:
        self.conn.close()


class _Server:
    """The serving stack of ``config`` over the loop's dataset, on loopback, with its event
    log in the dataset folder and the loop's clock."""

    def __init__(self, config: Config, data_dir: Path, model_base: Path, clock: SimulatedClock):
        from serving.api.app import create_app
        from serving.api.security import Tokens
        from serving.api.server import ApiServer
        from serving.build import build_service
        from serving.homepage.experiments import Homepages
        from serving.ingest.wiring import open_writes

        self.token = secrets.token_urlsafe(24)
        tokens = Tokens.load(config.serving.auth, {"MARQUEE_EVENTS_TOKEN": self.token})
        service = build_service(config, data_dir, model_base, now=clock)
        self.pages = Homepages(service, now=clock)
        self.writes = open_writes(self.pages, data_dir, "loop", data_dir, now=clock)
        app = create_app(self.pages, self.writes, tokens, config.serving.limits,
                         close_on_shutdown=False)
        self.api = ApiServer(app, limits=config.serving.limits).start()

    @property
    def port(self) -> int:
        return self.api.port

    def close(self) -> None:
        self.api.stop()
        self.writes.close()
        self.pages.stop()


def run_loop(sim: SimConfig, dataset: str | Path, model_base: str | Path, config: Config,
             workdir: str | Path, loop: LoopConfig = LoopConfig(),
             retrain: Callable[[Path, Path], None] | None = None,
             progress: Callable[[str], None] | None = None) -> LoopSummary:
    """Runs the closed loop (module docstring) over ``dataset`` (what ``simulate(dataset,
    sim)`` wrote) with the models pushed to ``model_base`` and the serving ``config`` (its
    ``serving.experiments`` decide what each user is served). ``retrain(data_dir, model_base)``
    runs the pipeline between days when ``loop.retrain_every`` asks for it."""
    from marquee.data.audience import Audience

    began = time.perf_counter()
    say = progress or (lambda line: None)
    workdir, model_base = Path(workdir), Path(model_base)
    data_dir = prepare(dataset, workdir)
    audience = Audience.of(sim)
    clock = SimulatedClock(sim.end)
    summary = LoopSummary(workdir, data_dir, loop.days)
    config = relaxed_deadlines(config, loop.deadline_scale)
    server = _Server(config, data_dir, model_base, clock)
    try:
        for day in range(loop.days):
            if loop.retrain_every and day and day % loop.retrain_every == 0:
                if retrain is None:
                    raise ValueError("LoopConfig.retrain_every is set but no retrain step was "
                                     "given; pass retrain= (e.g. the pipeline run)")
                server.close()
                say(f"closed loop: day {day}: retraining on {data_dir}")
                retrain(data_dir, model_base)
                summary.retrains += 1
                server = _Server(config, data_dir, model_base, clock)
            pages, watches = _day(audience, server, clock, day, loop, summary)
            summary.pages_by_day.append(pages)
            summary.watches_by_day.append(watches)
            say(f"closed loop: day {day + 1}/{loop.days}: {pages:,} pages, {watches:,} watches "
                f"posted, {time.perf_counter() - began:.0f} s")
    finally:
        server.close()
    summary.seconds = time.perf_counter() - began
    return summary


def relaxed_deadlines(config: Config, scale: float) -> Config:
    """``config`` with every serving deadline (request, query, ranker, sources) times ``scale``."""
    if not scale > 0:
        raise ValueError(f"deadline_scale: expected a number > 0, got {scale!r}")
    s = config.serving
    return dataclasses.replace(config, serving=dataclasses.replace(
        s, deadline_ms=s.deadline_ms * scale, query_deadline_ms=s.query_deadline_ms * scale,
        rank_deadline_ms=s.rank_deadline_ms * scale,
        sources=tuple(dataclasses.replace(src, deadline_ms=src.deadline_ms * scale)
                      for src in s.sources)))


def _day(audience, server: _Server, clock: SimulatedClock, day: int, loop: LoopConfig,
         summary: LoopSummary) -> tuple[int, int]:
    users, times = audience.sessions(day, seed=loop.seed)
    if loop.max_sessions_per_day is not None and len(users) > loop.max_sessions_per_day:
        keep = np.sort(np.random.default_rng([loop.seed, day, 7]).choice(
            len(users), loop.max_sessions_per_day, replace=False))
        users, times = users[keep], times[keep]
    client = _Client(server.port, server.token)
    pages = watches = 0
    try:
        for n, (user, t) in enumerate(zip(users.tolist(), times.tolist(), strict=True)):
            clock.advance(t)
            page = client.get(f"/v1/users/{user}/homepage")
            pages += 1
            summary.pages += 1
            summary.fallbacks += bool(page["fallback"])
            summary.degraded += bool(page.get("degraded") or page.get("skipped"))
            shown = np.array([p["item_id"] for p in page["items"]], np.int64)
            rows = audience.respond(np.array([user]), [shown], np.array([t]),
                                    seed=(loop.seed * 1_000_003 + day) * 1_000_003 + n)
            for k in np.argsort(rows[c.TIMESTAMP], kind="stable"):
                event = {c.USER_ID: int(rows[c.USER_ID][k]), c.ITEM_ID: int(rows[c.ITEM_ID][k]),
                         c.TIMESTAMP: int(rows[c.TIMESTAMP][k]), c.EVENT: c.EVENT_WATCH,
                         c.POSITION: int(rows[c.POSITION][k]),
                         c.WATCH_SECONDS: float(rows[c.WATCH_SECONDS][k]),
                         c.DEVICE: str(rows[c.DEVICE][k]), c.PAGE_ID: page["page_id"]}
                clock.advance(event[c.TIMESTAMP])
                status, body = client.post("/v1/events", event)
                if status == 200:
                    watches += 1
                    summary.watches_posted += 1
                else:
                    summary.refused += 1
                    log.warning("closed loop: event refused (HTTP %d): %s", status, body)
    finally:
        client.close()
    return pages, watches


def retrain_step(config: Config, workdir: Path,
                 progress: Callable[[str], None] | None = None) -> Callable[[Path, Path], None]:
    """Retraining between days: the pipeline on the loop's dataset (with its log), pushing to
    the run that owns ``model_base`` (``RUN/serving``), so the server finds the new version."""
    from pipeline.local_runner import run_dirs, run_local

    def retrain(data_dir: Path, model_base: Path) -> None:
        root = model_base.parent
        if run_dirs(root)["serving"].resolve() != model_base.resolve():
            raise ValueError(f"--models {model_base}: retraining pushes to a pipeline run's "
                             "serving/ folder (RUN/serving); pass that folder")
        summary = run_local(data_dir, root, config, progress)
        with (Path(workdir) / "retrains.md").open("a") as out:
            out.write(summary + "\n")

    return retrain


def sim_config_of(dataset: str | Path) -> SimConfig:
    """The SimConfig a simulated dataset was written with (its ``_truth/config.json``)."""
    from marquee.data.simulate import read_sim_config

    return read_sim_config(dataset)
