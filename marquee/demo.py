"""`marquee demo`: simulate -> validate -> pipeline -> a homepage for one user, end to end."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from marquee.config import Config
from marquee.data import contract as c

ROWS = 10


def homepage(data_dir: Path, serving_dir: Path, user_id: int | None = None) -> str:
    """A text homepage for one user through the thin client (in-process backend)."""
    from serving.build import build_service

    service = build_service(Config(), data_dir, serving_dir)
    users = service.users
    if user_id is None:  # the user with the longest history: a stable, interesting choice
        user_id = max(users.user_ids(), key=lambda u: (len(users.get(u).history), -u))
    page = service.homepage(user_id, k=ROWS)
    cat = service.catalogue

    def label(i: int) -> str:
        r = cat.row[i]
        return f"{cat.titles[r]}  [{', '.join(cat.genres[r][:3])}]"

    how = (f"FALLBACK ({page.reason})" if page.fallback else
           f"model version {page.model_version}" + (f", degraded: {page.degraded}"
                                                    if page.degraded else ""))
    lines = [f"Homepage for user {user_id} ({how}, {page.timings_ms['total']:.0f} ms)", "",
             "  Recently watched:"]
    lines += [f"    - {label(i)}" for i in users.get(user_id).history[:3]]
    lines += ["", "  Top picks for you:"]
    for n, p in enumerate(page.items, 1):
        why = (f"P(watch > 2 min) {p.p_watch:.2f}" if p.p_watch is not None
               else f"score {p.score:.3f}")
        lines.append(f"    {n:>2}. {label(p.item_id)}   {why}")
    return "\n".join(lines)


def run_demo(workdir: Path, progress: Callable[[str], None] | None = None) -> None:
    from marquee.data.simulate import SimConfig, simulate
    from marquee.data.validate import validate_dataset
    from pipeline.local_runner import run_dirs, run_local

    say = progress or print
    workdir = workdir.resolve()
    data_dir, run_dir = workdir / "data", workdir / "run"
    started = time.time()
    if not (data_dir / f"{c.INTERACTIONS}.parquet").is_file():
        say(f"[1/4] simulating a streaming service into {data_dir}")
        say(str(simulate(data_dir, SimConfig(), progress=say)))
    else:
        say(f"[1/4] reusing simulated data in {data_dir} (delete it to regenerate)")
    say("[2/4] validating it against the data contract")
    say(validate_dataset(data_dir).summary())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    say("[3/4] running the TFX pipeline (ExampleGen -> validation -> Transform -> two-tower "
        "retrieval -> ScaNN index -> ranking -> evaluator -> Pusher); a few minutes on 2 cores")
    config = Config()
    summary = run_local(data_dir, run_dir, config, progress=say)
    say(summary)
    serving = run_dirs(run_dir)["serving"]
    say(f"[4/4] pushed models are in {serving}; a homepage from them:")
    print(homepage(data_dir, serving))
    print(f"\nDemo finished in {time.time() - started:.0f} s. Serve it over HTTP with:\n"
          f"  .venv/bin/marquee serve --data {data_dir} --model-base {serving}\n"
          "then GET /v1/users/{id}/homepage; add --redis URL for the Redis feature store and "
          "cache, --event-log DIR to accept POST /v1/events. Offline evaluation: "
          "`marquee evaluate` (README).")
