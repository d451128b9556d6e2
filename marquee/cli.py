"""The ``marquee`` command. Each verb parses its options and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path

import click

import marquee  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from marquee.data.contract import ContractError
from marquee.data.simulate import SHAPES, SimConfig
from marquee.logs import quiet_libraries

_SIM_DEFAULTS = SimConfig()  # `marquee data synth` follows the simulator's defaults


def _echo(line: str) -> None:
    click.echo(line, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(marquee.__version__, prog_name="marquee")
def main() -> None:
    """marquee: retrieval -> ranking -> re-ranking for a video-streaming service, on TFX."""


# ----------------------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Create, import and validate datasets (the data contract, docs/data.md)."""


@data.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset folder to write.")
@click.option("--shape", default="default", show_default=True,
              type=click.Choice(sorted(SHAPES)),
              help="A named dataset shape: 'long-tail' is few users and many titles, most "
                   "watched by a handful (600 users, 10,000 titles, 120 days); --users, "
                   "--items and --days override it.")
@click.option("--users", type=click.IntRange(min=1),
              help=f"[default: {_SIM_DEFAULTS.users}, or the shape's]")
@click.option("--items", type=click.IntRange(min=1),
              help=f"[default: {_SIM_DEFAULTS.items}, or the shape's]")
@click.option("--days", type=click.IntRange(min=1),
              help=f"[default: {_SIM_DEFAULTS.days}, or the shape's]")
@click.option("--seed", default=_SIM_DEFAULTS.seed, show_default=True, type=int)
def data_synth(out_dir: str, shape: str, users: int | None, items: int | None,
               days: int | None, seed: int) -> None:
    """Simulate a streaming service (users, catalogue, logged impressions and watches)."""
    from marquee.data.simulate import shape_config, simulate

    try:
        config = shape_config(shape, users=users, items=items, days=days, seed=seed)
        summary = simulate(out_dir, config, progress=_echo)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(summary))


@data.command("validate")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--max-bad-share", default=0.01, show_default=True,
              type=click.FloatRange(0.0, 1.0),
              help="Largest share of rejected rows per table before the command fails.")
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="Where to write rejected rows [default: DATA_DIR/_rejects.csv].")
def data_validate(data_dir: str, max_bad_share: float, rejects: str | None) -> None:
    """Check a dataset folder against the contract; bad rows go to a rejects file."""
    from marquee.data.validate import validate_dataset

    try:
        report = validate_dataset(data_dir, max_bad_share, rejects, progress=_echo)
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@data.command("import-movielens")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
def data_import_movielens(src: str, out_dir: str) -> None:
    """Convert MovieLens (100K, 1M, latest, 20M, 25M) into the data contract."""
    from marquee.data.movielens import import_movielens

    try:
        summary = import_movielens(src, out_dir, progress=_echo)
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(summary))


# ----------------------------------------------------------------------------- pipeline


@main.group()
def pipeline() -> None:
    """Build and run the TFX pipeline."""


@pipeline.command("run")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder in the data contract.")
@click.option("--root", "root", required=True, type=click.Path(file_okay=False),
              help="Run folder: artifacts, SQLite metadata, serving models, summary.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML config (see marquee/config.py for every setting).")
def pipeline_run(data_dir: str, root: str, config_file: str | None) -> None:
    """Run the pipeline locally (LocalDagRunner, Beam DirectRunner)."""
    quiet_libraries()
    from components.anomaly_gate.executor import AnomaliesFound
    from marquee.config import ConfigError, load_config
    from pipeline.local_runner import run_local

    try:
        config = load_config(config_file)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    try:
        summary = run_local(Path(data_dir), Path(root), config, progress=_echo)
    except (ContractError, AnomaliesFound) as e:
        # The data stopped the run (too many rejected rows, or anomalies against the schema):
        # the message names the problem and the fix; a traceback would bury it under TFX's logs.
        raise click.ClickException(str(e)) from e
    click.echo(summary)


@pipeline.command("compile")
@click.option("--out", default="kubeflow/pipeline.json", show_default=True,
              type=click.Path(dir_okay=False),
              help="Output: .json (PipelineJob, Vertex AI) or .yaml (PipelineSpec, KFP 2.x).")
@click.option("--image", help="Image for every step, built from kubeflow/Dockerfile "
              "[default: placeholder gcr.io/YOUR_PROJECT/marquee:VERSION].")
@click.option("--pipeline-root", help="Artifact root URI [default: gs://YOUR_BUCKET/marquee/tfx].")
@click.option("--data", "data_dir",
              help="Dataset folder the steps read [default: gs://YOUR_BUCKET/marquee/data].")
@click.option("--serving-dir",
              help="Where ModelPusher writes [default: /models, the models volume].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML config (its beam section picks the Beam runner).")
def pipeline_compile(out: str, image: str | None, pipeline_root: str | None,
                     data_dir: str | None, serving_dir: str | None,
                     config_file: str | None) -> None:
    """Compile the pipeline for Kubeflow Pipelines v2 / Vertex AI (offline)."""
    from marquee.config import ConfigError, load_config
    from pipeline import kubeflow_runner as kr

    try:
        path = kr.compile_pipeline(
            Path(out), image or kr.DEFAULT_IMAGE, pipeline_root or kr.DEFAULT_PIPELINE_ROOT,
            data_dir or kr.DEFAULT_DATA_DIR, serving_dir or kr.DEFAULT_SERVING_DIR,
            load_config(config_file))
    except (ConfigError, kr.CompileError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(path))


# ----------------------------------------------------------------------------- evaluation


@main.command("evaluate")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder in the data contract.")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: the pipeline is run here on the protocol's train part "
                   "(reused if it already holds a push).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where metrics.json and report.md go.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-peers", is_flag=True, help="Skip popularity, EASE, iALS and item-kNN.")
@click.option("--tune-blend/--no-tune-blend", default=True, show_default=True,
              help="Choose ALS's factors, regularization and alpha and the blend "
                   "(serving.ranker_weight, item_to_item_weight, popularity_weight, "
                   "als_weight) on a validation split carved from train (one more pipeline "
                   "run), written to OUT/tuned.yaml; otherwise use the config's.")
def evaluate_cmd(data_dir: str, run_dir: str, out_dir: str, config_file: str | None,
                 no_peers: bool, tune_blend: bool) -> None:
    """Offline evaluation: the served stack, its stages and the peers, one protocol."""
    quiet_libraries()  # it runs the pipeline: the same benign library messages dropped
    from marquee.config import ConfigError, load_config
    from marquee.evaluation.stack import evaluate

    try:
        config = load_config(config_file)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    metrics = evaluate(Path(data_dir), Path(run_dir), Path(out_dir), config, progress=_echo,
                       peers=not no_peers, tune=tune_blend,
                       config_file=Path(config_file) if config_file else None)
    for key in sorted(metrics):
        if key.split(".", 1)[1] in ("recall@20", "ndcg@20", "coverage@50", "gini@50"):
            click.echo(f"{key:<28} {metrics[key]:.4f}")
    click.echo(f"report: {Path(out_dir) / 'report.md'}")


# ----------------------------------------------------------------------------- serving


@main.command("model-server")
@click.option("--model-base", type=click.Path(file_okay=False),
              help="Pusher's serving directory: BASE/<model>/<version>/saved_model.pb.")
@click.option("--model-config-file", type=click.Path(exists=True, dir_okay=False),
              help="TF Serving model config file (text ModelServerConfig); overrides --model-base.")
@click.option("--port", default=8500, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--poll-seconds", default=1.0, show_default=True, type=click.FloatRange(0.05))
def model_server(model_base: str | None, model_config_file: str | None, port: int, host: str,
                 poll_seconds: float) -> None:
    """Development model server speaking TF Serving's gRPC API (production: tensorflow/serving)."""
    from marquee.dev.model_server import serve

    if not model_base and not model_config_file:
        raise click.UsageError("give --model-base DIR or --model-config-file FILE")
    serve(model_base, port, model_config_file=model_config_file, poll_seconds=poll_seconds,
          host=host)


@main.command("serve")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder: the catalogue and the users' histories.")
@click.option("--model-base", required=True, type=click.Path(file_okay=False),
              help="Pusher's serving directory (the index is searched in-process from here).")
@click.option("--tf-serving", help="HOST:PORT of TF Serving (or marquee model-server); "
              "without it the SavedModels are loaded in-process.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 to accept connections from other hosts (the "
                   "Kubernetes manifest passes it).")
@click.option("--redis", "redis_url", help="Redis URL (redis://HOST:PORT/DB) for online features "
              "and the homepage cache, shared by replicas; the embedded store answers while it "
              "is down. Without it: the embedded store only.")
@click.option("--event-log", type=click.Path(file_okay=False),
              help="Folder the write routes log to: a write-ahead log (DIR/wal/REPLICA/, synced "
                   "before each 200), compacted into the contract's Parquet parts "
                   "(DIR/interactions/, items/, users/, onboarding/) the next pipeline run "
                   "reads. Without it the write routes answer 503.")
@click.option("--replica-id", default="0", show_default=True,
              help="This replica's name in the event log (DIR/wal/REPLICA/): replicas sharing "
                   "one log folder need distinct ids; a second writer with the same id is "
                   "refused at start-up.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The pipeline's config: its serving section (sources, re-rank, auth tokens, "
                   "limits) and data.min_watch_seconds (what a positive watch is).")
@click.option("--insecure-dev", is_flag=True,
              help="Accept writes without tokens (a local demo only: anyone who can reach the "
                   "port can write). Without it, write routes need the tokens of "
                   "serving.auth (default: MARQUEE_EVENTS_TOKEN, MARQUEE_ADMIN_TOKEN).")
def serve_api(data_dir: str, model_base: str, tf_serving: str | None, port: int,
              host: str, redis_url: str | None, event_log: str | None, replica_id: str,
              config_file: str | None, insecure_dev: bool) -> None:
    """The homepage HTTP API (FastAPI on uvicorn): GET /v1/users/{id}/homepage, the write
    routes, /healthz, /metrics, /docs. SIGTERM or SIGINT drains requests and closes the log."""
    from marquee.config import ConfigError, load_config
    from serving.api.server import ServeOptions, serve
    from serving.ingest.wal import WalError
    from serving.state.feature_store import StoreUnavailable

    _quiet_logging()
    try:
        serve(ServeOptions(data_dir=data_dir, model_base=model_base, tf_serving=tf_serving,
                           port=port, host=host, redis_url=redis_url, event_log=event_log,
                           replica_id=replica_id, insecure_dev=insecure_dev),
              load_config(config_file))
    except (StoreUnavailable, ContractError, ConfigError, WalError, ValueError) as e:
        raise click.ClickException(str(e)) from e  # start-up: Redis, log, config, tokens


def _quiet_logging() -> None:
    """INFO for marquee's own loggers, WARNING for the libraries'."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    for name in ("marquee", "serving", "pipeline", "components", "trainer"):
        logging.getLogger(name).setLevel(logging.INFO)


@main.group()
def features() -> None:
    """Batch user features for the online feature store."""


@features.command("load")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder in the data contract.")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="The Redis that `marquee serve --redis` reads.")
@click.option("--ttl-hours", default=2.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Hours until the loaded features expire; load again before then.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The pipeline's config: data.min_watch_seconds is what a positive watch is.")
def features_load(run_dir: str, data_dir: str, redis_url: str, ttl_hours: float,
                  config_file: str | None) -> None:
    """Per-user genre affinities, watch count and mean watch seconds, loaded into Redis under
    the run's latest pushed version (RUN_DIR/serving/query_tower/<version>)."""
    from marquee.config import ConfigError, load_config
    from marquee.features_load import NoPushedVersion, latest_pushed_version, load_features
    from serving.state.feature_store import StoreUnavailable
    from serving.state.redis_store import RedisStore

    try:
        min_watch = load_config(config_file).data.min_watch_seconds
        latest_pushed_version(run_dir)  # the cheap check first
        store = RedisStore.connect(redis_url, timeout_s=5.0)  # bulk writes: not 50 ms
        try:
            summary = load_features(run_dir, data_dir, store, ttl_hours * 3600, min_watch)
        finally:
            store.close()
    except (NoPushedVersion, StoreUnavailable, ConfigError, ValueError) as e:  # + contract, URL
        raise click.ClickException(str(e)) from e
    click.echo(str(summary))


# ----------------------------------------------------------------------------- demo


@main.command("demo")
@click.option("--workdir", default="build/demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the demo writes data and runs.")
def demo(workdir: str) -> None:
    """Run everything end to end on simulated data and print a homepage."""
    quiet_libraries()
    from marquee.demo import run_demo

    run_demo(Path(workdir), progress=_echo)


# ---------------------------------------------------------------- experiments, monitoring

from marquee.experiments.cli import experiment  # noqa: E402 (the groups' modules, after main)
from marquee.monitoring.cli import monitor  # noqa: E402

main.add_command(experiment)
main.add_command(monitor)


if __name__ == "__main__":
    main()
