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


@experiment.command("simulate")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A simulated dataset (`marquee data synth`, `make demo`'s build/demo/data).")
@click.option("--models", "model_base", required=True,
              type=click.Path(exists=True, file_okay=False),
              help="The pushed models trained on it (a pipeline run's serving/ folder).")
@click.option("--config", "config_file", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The serving config with serving.experiments (docs/experiments.md).")
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Where the loop's dataset and impression log, and the reports, go.")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 365))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-sessions-per-day", type=click.IntRange(min=1),
              help="Bound the sessions a day (default: every session the audience draws).")
@click.option("--retrain-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Retrain on the log and push every N days (0: never; minutes per run).")
def simulate_cmd(data_dir: str, model_base: str, config_file: str, workdir: str, days: int,
                 seed: int, max_sessions_per_day: int | None, retrain_every: int) -> None:
    """The simulator's users browse the real serving stack's pages for their arm, and their
    watches flow back through POST /v1/events, for --days simulated days; then every
    experiment of the config is analysed into WORKDIR/reports/<id>/."""
    from marquee.config import ConfigError, load_config
    from marquee.experiments.analyze import ExperimentDataError, analyze
    from marquee.experiments.closed_loop import LoopConfig, retrain_step, run_loop, sim_config_of
    from marquee.experiments.report import summary, write_report
    from marquee.logs import quiet_libraries

    quiet_libraries()

    try:
        config = load_config(config_file)
        if not config.serving.experiments:
            raise ConfigError(f"{config_file}: serving.experiments is empty; the loop compares "
                              "the arms of an experiment (docs/experiments.md)")
        sim = sim_config_of(data_dir)
        loop = LoopConfig(days=days, seed=seed, retrain_every=retrain_every,
                          max_sessions_per_day=max_sessions_per_day)
        done = run_loop(sim, data_dir, model_base, config, workdir, loop,
                        retrain=retrain_step(config, Path(workdir), _echo), progress=_echo)
        click.echo(str(done))
        for e in config.serving.experiments:
            out = Path(workdir) / "reports" / e.id
            result = analyze(done.data_dir, config, e.id, out / "_rejects.csv")
            write_report(result, out)
            click.echo(summary(result))
            click.echo(f"report: {out / 'report.md'}")
    except (ConfigError, ContractError, ExperimentDataError, ValueError) as e:
        raise click.ClickException(str(e)) from e
