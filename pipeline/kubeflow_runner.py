"""Kubeflow runner: the pipeline factory compiled to a Kubeflow Pipelines v2 spec, offline.

The same ``create_pipeline()`` as the local runner; this module only chooses the image, the roots
and the Beam args. It compiles with TFX's ``KubeflowV2DagRunner`` (pipeline spec schema 2.1.0,
the only one the open-source KFP 2.x API server accepts; Vertex AI Pipelines takes it too) and
needs no cluster and no network.

Output, by the suffix of ``out``:

- ``.json``: a ``PipelineJob`` (pipeline spec + runtime config with the pipeline root), what
  Vertex AI Pipelines submits; the checked-in golden is ``kubeflow/pipeline.json``.
- ``.yaml`` / ``.yml``: the ``PipelineSpec`` alone, what ``kfp.Client().upload_pipeline`` and
  ``create_run_from_pipeline_package`` read (they pass the pipeline root separately).

Deterministic output (``tests/test_kubeflow.py`` compares it byte for byte with the golden):

- Paths of files in this repository (the curated schema) are rewritten from the compiling
  checkout to the image's copy under ``IMAGE_SOURCE_DIR`` (where ``kubeflow/Dockerfile`` puts
  the repository), so the spec neither depends on where it was compiled nor breaks in the pod.
- DirectRunner steps get ``--direct_num_workers=0`` unless the config fixes a number: Beam then
  starts one worker per core of the pod, not of the machine that compiled the spec.
- JSON is written with sorted keys, 2-space indent and a final newline.
- Kept as TFX writes them: ``sdkVersion`` ("tfx-1.16.0") and the labels ``tfx_version``,
  ``tfx_py_version``, ``tfx_runner``. They are fixed by ``requirements.lock`` and Python 3.10,
  so a golden diff in them means the compiler changed, which is worth a look. TFX puts no
  timestamp in the spec; the random suffix it can add to component ids applies only to
  pipelines with an exit handler, which ours has not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

import marquee
from marquee.config import BeamConfig, Config
from pipeline.local_runner import PIPELINE_NAME
from pipeline.pipeline import beam_args, create_pipeline

# Where kubeflow/Dockerfile copies the repository (its WORKDIR).
IMAGE_SOURCE_DIR = "/opt/marquee"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Placeholders: replace them with --image / --pipeline-root / --data / --serving-dir at compile
# time, or (all but the image) when submitting a run.
DEFAULT_IMAGE = f"gcr.io/YOUR_PROJECT/marquee:{marquee.__version__}"
DEFAULT_PIPELINE_ROOT = "gs://YOUR_BUCKET/marquee/tfx"
DEFAULT_DATA_DIR = "gs://YOUR_BUCKET/marquee/data"
# The models volume (kubeflow/k8s/models-pvc.yaml) as TF Serving and the API mount it.
DEFAULT_SERVING_DIR = "/models"

# Options a scale-out Beam runner cannot start without, checked here rather than in a pod
# after the cluster has scheduled the step.
REQUIRED_BEAM_OPTIONS = {
    "DataflowRunner": ("--project", "--region", "--temp_location"),
    "FlinkRunner": ("--flink_master",),
    "SparkRunner": ("--spark_master_url",),
    "PortableRunner": ("--job_endpoint",),
}


# The pipeline's runtime parameters (a submission's ``parameter_values``).
DATA_DIR = "data_dir"
SERVING_DIR = "serving_dir"


class CompileError(ValueError):
    pass


def runtime_parameter(name: str, default: str):
    """A string parameter of the compiled pipeline, ``default`` unless a submission sets it."""
    from tfx.orchestration import data_types

    return data_types.RuntimeParameter(name=name, ptype=str, default=default)


def kubeflow_beam_args(beam: BeamConfig) -> list[str]:
    """Beam args for pipeline steps in pods: the config's runner and ``extra_args``.

    Raises ``CompileError`` naming the missing options when a Dataflow, Flink, Spark or portable
    runner
    lacks what it needs to start.
    """
    given = {a.split("=", 1)[0] for a in beam.extra_args}
    missing = [o for o in REQUIRED_BEAM_OPTIONS.get(beam.runner, ()) if o not in given]
    if missing:
        example = ", ".join(f'"{o}=..."' for o in missing)
        raise CompileError(
            f"beam.runner is {beam.runner}, but beam.extra_args lacks {', '.join(missing)}; "
            f"add them to the beam section of the config file, e.g. extra_args: [{example}]")
    # cores=0: DirectRunner reads --direct_num_workers=0 as one worker per core of the pod.
    return beam_args(beam, cores=0)


def _relocate_repo_paths(pipeline) -> None:
    """Points exec properties that name files of this checkout at the image's copy of them."""
    for component in pipeline.components:
        props = component.exec_properties
        for key, value in props.items():
            if isinstance(value, str) and os.path.isabs(value) and Path(value).is_file():
                path = Path(value).resolve()
                if path.is_relative_to(PROJECT_ROOT):
                    rel = path.relative_to(PROJECT_ROOT).as_posix()
                    props[key] = f"{IMAGE_SOURCE_DIR}/{rel}"


def compile_pipeline(
    out: Path,
    image: str = DEFAULT_IMAGE,
    pipeline_root: str = DEFAULT_PIPELINE_ROOT,
    data_dir: str = DEFAULT_DATA_DIR,
    serving_dir: str = DEFAULT_SERVING_DIR,
    config: Config = Config(),
) -> Path:
    """Compiles the pipeline for Kubeflow Pipelines v2 into ``out``; returns ``out``.

    ``image`` runs every step (build it from ``kubeflow/Dockerfile``). ``data_dir`` and
    ``serving_dir`` become the pipeline's runtime parameters ``data_dir`` and ``serving_dir``
    with these defaults, and ``pipeline_root`` the runtime config's output directory: a
    submission may override all three without recompiling.
    """
    from tfx import v1 as tfx

    out = Path(out)
    if out.suffix not in (".json", ".yaml", ".yml"):
        raise CompileError(
            f"{out}: unknown format {out.suffix or '(no suffix)'}; use .json for a PipelineJob "
            "(Vertex AI Pipelines) or .yaml for a PipelineSpec (Kubeflow Pipelines 2.x upload)")
    p = create_pipeline(PIPELINE_NAME, pipeline_root, runtime_parameter(DATA_DIR, data_dir),
                        runtime_parameter(SERVING_DIR, serving_dir), config,
                        beam_pipeline_args=kubeflow_beam_args(config.beam))
    _relocate_repo_paths(p)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True))
    defaults = {DATA_DIR: data_dir, SERVING_DIR: serving_dir}
    job = runner.run(p, parameter_values=defaults, write_out=False)
    # The defaults in the spec itself too, so the bare PipelineSpec (.yaml) runs without them.
    params = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, value in defaults.items():
        params[name].update(defaultValue=value, isOptional=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")
    else:
        out.write_text(yaml.safe_dump(job["pipelineSpec"], sort_keys=True))
    return out
