"""Local runner: the pipeline factory on TFX's LocalDagRunner and Beam's DirectRunner.

RUN_DIR layout::

    RUN_DIR/tfx/            pipeline root (every component's artifacts)
    RUN_DIR/metadata.sqlite ML Metadata
    RUN_DIR/serving/        pushed models (TF Serving layout, see components/model_pusher)
    RUN_DIR/summary.md      what ran, row counts, metrics, where the outputs are (and, for a
                            run that stopped, the error)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from marquee.als import ALS_FILE
from marquee.config import Config
from marquee.logs import component_progress
from marquee.monitoring.embedding_drift import REPORT_FILE, report_lines
from pipeline.pipeline import beam_args, create_pipeline

PIPELINE_NAME = "marquee"
log = logging.getLogger(__name__)


def run_dirs(root: Path) -> dict[str, Path]:
    return {"pipeline_root": root / "tfx", "metadata": root / "metadata.sqlite",
            "serving": root / "serving", "summary": root / "summary.md"}


def run_local(data_dir: Path, root: Path, config: Config,
              progress: Callable[[str], None] | None = None) -> str:
    """Runs the whole pipeline; returns the run summary (also written to RUN_DIR/summary.md)."""
    from tfx import v1 as tfx

    say = progress or (lambda _: None)
    root = root.resolve()
    dirs = run_dirs(root)
    root.mkdir(parents=True, exist_ok=True)
    interactions = _interactions(data_dir)
    args = beam_args(config.beam, os.cpu_count() or 1, interactions)
    p = create_pipeline(
        PIPELINE_NAME, str(dirs["pipeline_root"]), str(Path(data_dir).resolve()),
        str(dirs["serving"]), config,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(dirs["metadata"])),
        beam_pipeline_args=args,
    )
    say(f"running the pipeline on {data_dir} into {root} (LocalDagRunner, Beam "
        f"{config.beam.runner}{_mode_note(config, interactions)})")
    started = time.time()
    try:
        with component_progress(say):
            tfx.orchestration.LocalDagRunner().run(p)
    except Exception as e:
        # Say in the run folder where and why it stopped, then let the caller report it.
        try:
            dirs["summary"].write_text(summarize(root, data_dir, time.time() - started,
                                                 stopped=f"{type(e).__name__}: {e}",
                                                 started=started))
        except Exception as summary_error:  # never hide the run's own error behind this one
            log.warning("could not write %s: %s", dirs["summary"], summary_error)
        raise
    summary = summarize(root, data_dir, time.time() - started, started=started)
    dirs["summary"].write_text(summary)
    return summary


def _interactions(data_dir: Path) -> int | None:
    """The dataset's interactions (beam.direct_running_mode auto); None when the folder cannot
    be read, which ContractExampleGen then reports in full."""
    from marquee.data import contract

    try:
        return contract.table_rows(data_dir, contract.INTERACTIONS)
    except (contract.ContractError, OSError):
        return None


def _mode_note(config: Config, interactions: int | None) -> str:
    if config.beam.runner != "DirectRunner":
        return ""
    mode = config.beam.running_mode(interactions)
    if config.beam.direct_running_mode != "auto":
        return f", {mode}"
    if interactions is None:
        return f", {mode}: beam.direct_running_mode auto, interactions not counted"
    side = "<" if mode == "in_memory" else ">="
    return (f", {mode}: {interactions:,} interactions {side} beam.in_memory_below "
            f"{config.beam.in_memory_below:,}")


def latest_output(pipeline_root: Path, component: str, output: str, since: float = 0.0
            ) -> Path | None:
    """The newest output folder of ``component`` written at or after ``since`` (UTC seconds):
    a run folder holds every earlier run's artifacts too."""
    d = pipeline_root / component / output
    if not d.is_dir():
        return None
    runs = sorted((p for p in d.iterdir() if p.name.isdigit() and p.stat().st_mtime >= since),
                  key=lambda p: int(p.name))
    return runs[-1] if runs else None


def drift_lines(pipeline_root: Path, since: float = 0.0) -> list[str]:
    """The summary's drift section: what DistributionValidator measured in this run."""
    from marquee.monitoring.drift import read_drift

    anomalies = latest_output(pipeline_root, "DistributionValidator", "anomalies", since)
    if anomalies is None:
        return []
    found = read_drift(str(anomalies))
    if not found:
        return ["## Drift", "", "- no baseline yet (no earlier run in this run folder got past "
                "its AnomalyGate): nothing compared; once the gate accepts this run's data, the "
                "next run compares with it", ""]
    lines = ["## Drift", "", "Against the last data an AnomalyGate accepted:", ""]
    for split in found:
        bad = split.breaches
        lines.append(f"- {split.split_pair}: {len(bad)} of {len(split.comparisons)} features "
                     "past their threshold")
        lines += [f"  - {c.line()}" for c in split.comparisons]
    return lines + [""]


def component_seconds(metadata_path: Path, since: float = 0.0) -> dict[str, float]:
    """Wall seconds per component from ML Metadata (executions that started after ``since``)."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(metadata_path)
    store = metadata_store.MetadataStore(cfg)
    types = {t.id: t.name for t in store.get_execution_types()}
    node_type = store.get_context_type("node")
    out: dict[str, float] = {}
    for e in store.get_executions():
        if e.create_time_since_epoch / 1000 < since:
            continue
        # The node context ("<pipeline>.<node id>") tells two Trainers apart.
        nodes = [ctx.name for ctx in store.get_contexts_by_execution(e.id)
                 if ctx.type_id == node_type.id]
        name = (nodes[0].rsplit(".", 1)[-1] if nodes
                else types.get(e.type_id, str(e.type_id)).rsplit(".", 1)[-1])
        out[name] = (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000
    return out


def summarize(root: Path, data_dir: Path, seconds: float, stopped: str | None = None,
              started: float | None = None) -> str:
    """RUN_DIR/summary.md: what ran, counts, metrics, outputs; ``stopped``: the error that ended
    a run early (what completed is still listed); ``started``: when the run began (UTC seconds;
    default ``seconds`` ago), which tells its outputs from an earlier run's in the folder."""
    dirs = run_dirs(root)
    pr = dirs["pipeline_root"]
    # this run's outputs only: a run folder holds every earlier run's too
    since = started if started is not None else time.time() - seconds - 5
    lines = ["# marquee pipeline run", "", f"- data: {Path(data_dir).resolve()}",
             f"- run folder: {root}", f"- wall time: {seconds:.0f} s", ""]
    if stopped:
        lines += ["## Stopped", "", "The run stopped before the end; nothing after the failing "
                  "step ran.", "", "```", stopped, "```", ""]
    ex = latest_output(pr, "ContractExampleGen", "examples", since)
    if ex and (ex / "counts.json").is_file():
        info = json.loads((ex / "counts.json").read_text())
        cutoff = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info["eval_cutoff"]))
        lines += ["## Examples", "",
                  *(f"- {k}: {v:,}" for k, v in info["counts"].items()),
                  f"- time split: eval from {cutoff} UTC",
                  f"- rejected rows: {info['rejected']} (details: {info['rejects']})", ""]
    lines += drift_lines(pr, since)
    model = latest_output(pr, "Trainer", "model", since)
    meta_file = model / "Format-Serving" / "metadata.json" if model else None
    if meta_file and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        lines += ["## Retrieval model", "", f"- training run: {meta['training_run']}",
                  *(f"- {k}: {v}" for k, v in meta["metrics"].items()), ""]
    index = latest_output(pr, "ScannIndexer", "index", since)
    if index and (index / "index.json").is_file():
        ev = json.loads((index / "index.json").read_text()).get("evaluation", {})
        lines += ["## ScaNN index", "", *(f"- {k}: {v}" for k, v in ev.items()), ""]
    als = latest_output(pr, "AlsTrainer", "model", since)
    if als and (als / ALS_FILE).is_file():
        doc = json.loads((als / ALS_FILE).read_text())
        lines += ["## ALS source", "", f"- {doc['factors']} factors over {doc['items']:,} "
                  f"titles, regularization {doc['regularization']:g}, alpha {doc['alpha']:g}",
                  *(f"- {k}: {v}" for k, v in doc.get("metadata", {}).items()), ""]
    pushed = latest_output(pr, "ModelPusher", "pushed_model", since)
    if pushed and (pushed / "push.json").is_file():
        push = json.loads((pushed / "push.json").read_text())
        lines += ["## Push", "", f"- {push['reason']}",
                  *(f"- {k}: {v}" for k, v in push.get("paths", {}).items()), ""]
    report = latest_output(pr, "EmbeddingDrift", "report", since)
    if report and (report / REPORT_FILE).is_file():
        lines += ["## Embedding drift", "",
                  *(f"- {line}" for line in report_lines(json.loads(
                      (report / REPORT_FILE).read_text()))), ""]
    try:
        secs = component_seconds(dirs["metadata"], since)
        lines += ["## Seconds per component", "", *(f"- {k}: {v:.1f}" for k, v in secs.items())]
    except Exception as e:  # the summary is best effort; say why the timing is missing
        lines += [f"(component timings unavailable: {e})"]
    return "\n".join(lines) + "\n"
