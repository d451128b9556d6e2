"""``marquee monitor``: train/serve skew of the serving log, embedding drift per pushed version,
and the report that puts them together with the exposure of the log.

Drift between consecutive runs' training data is checked inside the pipeline (the
DistributionValidator and the AnomalyGate); these commands look at what the pipeline cannot see
or summarise what it recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group()
def monitor() -> None:
    """Train/serve skew, embedding drift and the monitoring report (docs/monitoring.md)."""


@monitor.command("skew")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--events", "events_dir", required=True,
              type=click.Path(exists=True, file_okay=False),
              help="The serving event log folder (`marquee serve --event-log DIR`; its "
                   "interactions/ parts are read).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The dataset folder the pipeline trained on: the users and titles the "
                   "logged rows are joined with.")
@click.option("--statistics", "statistics_dir", type=click.Path(exists=True, file_okay=False),
              help="An ExampleStatistics artifact folder (holding Split-train/) instead of "
                   "the run folder's latest accepted statistics.")
@click.option("--since", type=click.IntRange(min=0),
              help="Only logged rows at or after these UTC seconds.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The pipeline's config: monitor.skew_* thresholds and sample size, "
                   "data.min_watch_seconds.")
def skew(run_dir: str | None, events_dir: str, data_dir: str, statistics_dir: str | None,
         since: int | None, config_file: str | None) -> None:
    """Compare what serving logged with the training statistics of RUN_DIR, by the curated
    schema's skew comparators; print the features out of bounds. Exits 1 if any is."""
    from tfx.utils import io_utils

    from marquee.config import ConfigError, load_config
    from marquee.data.contract import ContractError
    from marquee.monitoring.skew import SkewInputError, skew_report
    from pipeline.pipeline import SCHEMA_FILE

    if run_dir is None and statistics_dir is None:
        raise click.UsageError("give the run folder RUN_DIR or --statistics DIR")
    try:
        report = skew_report(events_dir, data_dir, io_utils.SchemaReader().read(SCHEMA_FILE),
                             load_config(config_file), run_dir=run_dir,
                             statistics_dir=statistics_dir, since=since)
    except (ConfigError, ContractError, SkewInputError) as e:
        raise click.ClickException(str(e)) from e
    click.echo("\n".join(report.lines()))
    if any(report.out_of_bounds.values()):
        sys.exit(1)


@monitor.command("embeddings")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The full reports, one JSON per line.")
def embeddings(run_dir: str, as_json: bool) -> None:
    """Embedding drift of every version RUN_DIR's pipeline pushed, against the version before
    it: query and candidate norm distributions, top-k neighbour overlap per title."""
    from marquee.monitoring.embedding_drift import read_reports, report_lines

    reports = read_reports(str(Path(run_dir) / "tfx"))
    if not reports:
        raise click.ClickException(
            f"{run_dir}: no embedding drift reports (RUN_DIR/tfx/EmbeddingDrift/report/*/); "
            "they are written by runs of `marquee pipeline run --root RUN_DIR` that push")
    for report in reports:
        click.echo(json.dumps(report, sort_keys=True) if as_json
                   else "\n  ".join(report_lines(report)))


@monitor.command("report")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="The pipeline run folder (`marquee pipeline run --root`): drift, skew and "
                   "embedding drift. Without it the report covers the log alone.")
@click.option("--log", "log_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The folder serving logged into (`marquee serve --event-log DIR`; its "
                   "interactions/ parts are read).")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False),
              help="The dataset folder of the log's users and titles (default: --log, as for "
                   "`marquee serve --event-log DATA --data DATA`).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for report.md and its plots (files there are replaced).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The config: monitor.alert_* thresholds, monitor.skew_*, "
                   "data.min_watch_seconds, serving.explore_new_days.")
def report(run_dir: str | None, log_dir: str, data_dir: str | None, out_dir: str,
           config_file: str | None) -> None:
    """Write OUT/report.md with plots: drift per feature between runs, train/serve skew,
    exposure and diversity per day and arm, embedding drift per pushed version, and every
    alert. Exits 1 on any alert, 2 on input it cannot read."""
    from marquee.config import ConfigError, load_config
    from marquee.monitoring.report import ReportInputError, monitor_report

    try:
        config = load_config(config_file)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--config") from e
    try:
        result = monitor_report(run_dir, log_dir, out_dir, config, data_dir=data_dir)
    except ReportInputError as e:
        raise click.BadParameter(str(e), param_hint=e.option) from e
    click.echo(result.summary())
    if result.alerts:
        sys.exit(1)
