"""``marquee experiment``: plan an experiment's size and analyse one from the logged data."""

from __future__ import annotations

from pathlib import Path

import click

from marquee.data.contract import ContractError


def _echo(line: str) -> None:
    click.echo(line, err=True)


@click.group("experiment")
def experiment() -> None:
    """Online experiments: size them, analyse them (docs/experiments.md)."""


@experiment.command("plan")
@click.option("--baseline", required=True, type=click.FloatRange(0, 1, min_open=True,
                                                                  max_open=True),
              help="The control's rate of the primary metric, e.g. 0.25 for a watch-through "
                   "rate of 25%.")
@click.option("--mde", required=True, type=click.FloatRange(0, min_open=True),
              help="Smallest relative change worth detecting, e.g. 0.01 for a 1% lift.")
@click.option("--alpha", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Two-sided significance level.")
@click.option("--power", default=0.8, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Chance of detecting a change of exactly --mde.")
def plan(baseline: float, mde: float, alpha: float, power: float) -> None:
    """Users per arm (and for two arms) to detect a relative change of a rate."""
    from marquee.experiments.stats import users_per_arm

    n = users_per_arm(baseline, mde, alpha, power)
    click.echo(f"users per arm   {n:>12,}")
    click.echo(f"total (2 arms)  {2 * n:>12,}")
    click.echo(f"to detect {baseline:g} -> {baseline * (1 + mde):g} ({mde:+.2%}) with "
               f"alpha {alpha:g} (two-sided) and power {power:g}")


@experiment.command("analyze")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder in the data contract holding the impression log (the "
                   "folder of `marquee serve --event-log`).")
@click.option("--config", "config_file", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The config the experiment was served with (serving.experiments).")
@click.option("--experiment", "experiment_id", required=True, help="The experiment's id.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where report.md, its plots and the rejected rows go.")
@click.option("--primary", help="The metric the decision is made on [default: the "
              "watch-through rate]; the metrics are listed in docs/experiments.md.")
@click.option("--alpha", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
def analyze_cmd(data_dir: str, config_file: str, experiment_id: str, out_dir: str,
                primary: str | None, alpha: float) -> None:
    """Per-arm metrics, differences with CUPED, guardrails and the sample ratio, as a report."""
    from marquee.config import ConfigError, load_config
    from marquee.experiments.analyze import ExperimentDataError, analyze, find_experiment
    from marquee.experiments.report import summary, write_report

    try:
        config = load_config(config_file)
        find_experiment(config, experiment_id)  # the cheap check before reading the data
        _echo(f"reading {data_dir}")
        result = analyze(data_dir, config, experiment_id, Path(out_dir) / "_rejects.csv",
                         alpha=alpha, **({"primary": primary} if primary else {}))
    except (ConfigError, ContractError, ExperimentDataError) as e:
        raise click.ClickException(str(e)) from e
    path = write_report(result, out_dir)
    click.echo(summary(result))
    click.echo(f"report: {path}")
