"""Kubeflow: the compiled pipeline (golden file and structure), the image, the serving manifests.

Regenerate the golden after an intended change to the factory or the config defaults:
``MARQUEE_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_kubeflow.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.model_pusher.push_lib import QUERY_TOWER
from marquee.config import AuthConfig, BeamConfig, Config, LimitsConfig
from pipeline import kubeflow_runner as kr

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "kubeflow" / "pipeline.json"
DOCKERFILE = REPO / "kubeflow" / "Dockerfile"
K8S = REPO / "kubeflow" / "k8s"
# Kubernetes release whose schema the manifests must satisfy (kubernetes-validate ships it).
K8S_VERSION = "1.30"
# The Secret holding the API's bearer tokens: created by hand (kubeflow/README.md), never committed.
API_TOKENS_SECRET = "marquee-api-tokens"
# What the downward API gives an API pod as metadata.name (a Deployment's pod name).
SAMPLE_POD_NAME = "marquee-api-7c9d8f6b5-x2k7q"
REGENERATE_HINT = ("If the change is intended, regenerate the golden and review its diff: "
                   "MARQUEE_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest -q "
                   "tests/test_kubeflow.py && git diff kubeflow/pipeline.json")
FACTORY_COMPONENTS = {"ContractExampleGen", "StatisticsGen", "ImportSchemaGen",
                      "ExampleValidator", "DistributionValidator", "AnomalyGate", "Transform",
                      "Trainer", "ScannIndexer", "AlsTrainer", "ModelPusher", "EmbeddingDrift"}
TFX_V2_ENTRYPOINT = ["python", "-m",
                     "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
# beam_args(BeamConfig(), cores=0): the pod's DirectRunner, one worker per core it sees.
DEFAULT_BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                     "--direct_num_workers=0", "--allow_unsafe_triggers"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    return kr.compile_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.json")


@pytest.fixture(scope="module")
def job(compiled) -> dict:
    return json.loads(compiled.read_text())


def _executors(job: dict) -> dict[str, dict]:
    """Task name -> its executor: a container, or for a TFX Resolver a metadata query."""
    spec = job["pipelineSpec"]
    return {name: spec["deploymentSpec"]["executors"][
                spec["components"][task["componentRef"]["name"]]["executorLabel"]]
            for name, task in spec["root"]["dag"]["tasks"].items()}


def _containers(job: dict) -> dict[str, dict]:
    return {name: e["container"] for name, e in _executors(job).items() if "container" in e}


def _constants(job: dict, task: str) -> dict[str, str]:
    params = job["pipelineSpec"]["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
    return {k: v["runtimeValue"]["constant"] for k, v in params.items() if "runtimeValue" in v}


def _runtime_parameter(job: dict, task: str, name: str) -> str:
    """The pipeline parameter ``task``'s input ``name`` takes, checked to have the same default
    in the spec and in the runtime config; returns that default."""
    spec = job["pipelineSpec"]
    given = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]
    param = given["componentInputParameter"]
    declared = spec["root"]["inputDefinitions"]["parameters"][param]
    assert declared["parameterType"] == "STRING" and declared["isOptional"]
    assert job["runtimeConfig"]["parameterValues"][param] == declared["defaultValue"]
    return declared["defaultValue"]


# ----------------------------------------------------------------------------- compiled spec


def test_compiled_spec_matches_golden(compiled):
    text = compiled.read_text()
    if os.environ.get("MARQUEE_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
        pytest.skip(f"regenerated {GOLDEN.relative_to(REPO)}")
    assert GOLDEN.is_file(), f"{GOLDEN} is missing. {REGENERATE_HINT}"
    golden = GOLDEN.read_text()
    if text != golden:
        diff = list(difflib.unified_diff(golden.splitlines(), text.splitlines(),
                                         "kubeflow/pipeline.json", "compiled now", lineterm=""))
        shown = "\n".join(diff[:80]) + ("\n..." if len(diff) > 80 else "")
        pytest.fail(f"the compiled pipeline differs from the golden file:\n{shown}\n"
                    f"{REGENERATE_HINT}")


def test_golden_parses_as_a_kfp_pipeline_job():
    parsed = json_format.ParseDict(json.loads(GOLDEN.read_text()),
                                   pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(json_format.MessageToDict(parsed.pipeline_spec),
                                 pipeline_spec_pb2.PipelineSpec())
    # 2.1.0 is the only schema the open-source KFP 2.x API server accepts.
    assert spec.schema_version == "2.1.0"
    assert spec.pipeline_info.name == "marquee"
    assert set(spec.root.dag.tasks) >= FACTORY_COMPONENTS


def test_every_factory_node_is_a_task_wired_in_order(job):
    from pipeline.pipeline import create_pipeline

    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    factory = create_pipeline("marquee", "root", "data", "serving", Config())
    ids = {c.id for c in factory.components}
    # A TFX Resolver compiles to one task per input channel, named "<resolver id>-<channel>-...".
    owner = {t: next((i for i in ids if t == i or t.startswith(f"{i}-")), None) for t in tasks}
    assert None not in owner.values(), f"tasks from no factory node: {owner}"
    assert set(owner.values()) == ids
    assert set(tasks) >= FACTORY_COMPONENTS
    # The gate stops Transform on anomalies; the pusher needs both the model and the index.
    assert "AnomalyGate" in tasks["Transform"]["dependentTasks"]
    assert {"Trainer", "ScannIndexer"} <= set(tasks["ModelPusher"]["dependentTasks"])
    # Drift: this run's statistics against the resolved baseline, before the gate decides.
    assert {"StatisticsGen", "BaselineStatistics"} <= set(
        tasks["DistributionValidator"]["dependentTasks"])
    assert "DistributionValidator" in tasks["AnomalyGate"]["dependentTasks"]
    assert "ModelPusher" in tasks["EmbeddingDrift"]["dependentTasks"]
    resolver = _executors(job)["BaselineStatistics"]["resolver"]["outputArtifactQueries"]
    assert resolver["statistics"]["filter"].startswith('schema_title="tfx.ExampleStatistics"')


def test_every_executor_runs_the_image_with_the_tfx_entrypoint_and_beam_args(job):
    executors = _executors(job)
    assert all("container" in e or "resolver" in e for e in executors.values())
    containers = _containers(job)
    assert set(containers) >= FACTORY_COMPONENTS
    for name, container in containers.items():
        assert container["image"] == kr.DEFAULT_IMAGE, name
        assert container["command"] == TFX_V2_ENTRYPOINT, name
        args = container["args"]
        class_path = args[args.index("--executor_class_path") + 1]
        module, _, attr = class_path.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), f"{name}: {class_path}"
        assert args[-len(DEFAULT_BEAM_ARGS):] == DEFAULT_BEAM_ARGS, name


def test_every_component_parameter_is_set(job):
    spec = job["pipelineSpec"]
    for name, task in spec["root"]["dag"]["tasks"].items():
        declared = spec["components"][task["componentRef"]["name"]].get(
            "inputDefinitions", {}).get("parameters", {})
        given = task.get("inputs", {}).get("parameters", {})
        assert set(given) == set(declared), name
        # the paths are the pipeline's runtime parameters; everything else is compiled in
        runtime = {k for k, v in given.items() if "componentInputParameter" in v}
        assert runtime == {"ContractExampleGen": {"data_dir"},
                           "ModelPusher": {"serving_dir"}}.get(name, set()), name
        assert all("constant" in v["runtimeValue"] for k, v in given.items()
                   if k not in runtime), name
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"data_dir", "serving_dir"}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == kr.DEFAULT_PIPELINE_ROOT
    assert _runtime_parameter(job, "ContractExampleGen", "data_dir") == kr.DEFAULT_DATA_DIR
    assert (_runtime_parameter(job, "ModelPusher", "serving_dir") == kr.DEFAULT_SERVING_DIR
            == "/models")
    assert Config.from_json(_constants(job, "ScannIndexer")["config_json"]) == Config()
    assert Config.from_json(_constants(job, "AnomalyGate")["config_json"]) == Config()
    # the drift thresholds are the curated schema's, compiled into the validator's config
    drift = json.loads(_constants(job, "DistributionValidator")["distribution_validator_config"])
    assert len(drift["defaultSliceConfig"]["feature"]) == 11
    # The schema is named by its path in the image, which holds the same file as the checkout.
    schema = _constants(job, "ImportSchemaGen")["schema_file"]
    assert schema == f"{kr.IMAGE_SOURCE_DIR}/pipeline/schema/schema.pbtxt"
    assert (REPO / Path(schema).relative_to(kr.IMAGE_SOURCE_DIR)).is_file()


@pytest.mark.parametrize("runner,extra", [
    ("DataflowRunner", ("--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp")),
    ("FlinkRunner", ("--flink_master=flink:8081", "--environment_type=DOCKER",
                     "--environment_config=reg/marquee:7")),
    ("SparkRunner", ("--spark_master_url=spark://spark:7077", "--environment_type=DOCKER",
                     "--environment_config=reg/marquee:7")),
])
def test_arguments_and_a_scale_out_runner_reach_the_spec(tmp_path, runner, extra):
    config = dataclasses.replace(Config(), beam=BeamConfig(runner=runner, extra_args=extra))
    out = kr.compile_pipeline(tmp_path / "p.json", image="reg/marquee:7",
                              pipeline_root="gs://b/root", data_dir="gs://b/data",
                              serving_dir="/mnt/models", config=config)
    job = json.loads(out.read_text())
    for name, container in _containers(job).items():
        assert container["image"] == "reg/marquee:7", name
        assert container["args"][-4:] == [f"--runner={runner}", *extra], name
        assert not any(a.startswith("--direct_") for a in container["args"]), name
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/root"
    assert _runtime_parameter(job, "ContractExampleGen", "data_dir") == "gs://b/data"
    assert _runtime_parameter(job, "ModelPusher", "serving_dir") == "/mnt/models"


@pytest.mark.parametrize("runner,given,missing", [
    ("DataflowRunner", ("--project=p",), "--region, --temp_location"),
    ("FlinkRunner", (), "--flink_master"),
    ("SparkRunner", ("--environment_type=DOCKER",), "--spark_master_url"),
    ("PortableRunner", ("--environment_type=DOCKER",), "--job_endpoint"),
])
def test_scale_out_runner_without_its_options_is_refused_with_the_fix(runner, given, missing):
    with pytest.raises(kr.CompileError, match=f"lacks {missing}; add them .* extra_args"):
        kr.kubeflow_beam_args(BeamConfig(runner=runner, extra_args=given))


def test_yaml_output_is_the_pipeline_spec_for_kfp_upload(tmp_path, job):
    out = kr.compile_pipeline(tmp_path / "pipeline.yaml")
    spec = yaml.safe_load(out.read_text())
    assert spec == job["pipelineSpec"]
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())


def test_unknown_output_format_is_refused(tmp_path):
    with pytest.raises(kr.CompileError, match="use .json .* or .yaml"):
        kr.compile_pipeline(tmp_path / "pipeline.txt")


# ----------------------------------------------------------------------------- image


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines()
             if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip())
            for ln in text.splitlines() if ln.strip()]


def _lock_version(package: str) -> str:
    m = re.search(rf"^{re.escape(package)}==([\w.]+)$", (REPO / "requirements.lock").read_text(),
                  re.MULTILINE)
    assert m, f"{package} is not pinned in requirements.lock"
    return m.group(1)


def test_image_is_based_on_the_pinned_tfx_release():
    pin = re.search(r'"tfx(?:\[[^\]]*\])?==([\w.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins no tfx version"
    froms = [args for ins, args in _dockerfile() if ins == "FROM"]
    assert froms == [f"gcr.io/tfx-oss-public/tfx:{pin.group(1)}"]
    assert _lock_version("tfx") == pin.group(1)


def test_image_installs_the_lock_the_package_and_the_keras_setting():
    steps = _dockerfile()
    runs = [args for ins, args in steps if ins == "RUN"]
    copies = [args.split() for ins, args in steps if ins == "COPY"]
    assert any("requirements.lock" in c[:-1] for c in copies)
    assert any(re.search(r"python -m pip install (.* )?-r requirements\.lock", r) for r in runs)
    assert any(re.search(r"python -m pip install --no-deps -e \.", r) for r in runs)
    # The compiled spec names repository files under IMAGE_SOURCE_DIR.
    assert [args for ins, args in steps if ins == "WORKDIR"] == [kr.IMAGE_SOURCE_DIR]
    # Every package pyproject.toml installs is copied into the image.
    include = re.search(r"include = \[([^\]]*)\]", (REPO / "pyproject.toml").read_text())
    packages = {p.strip(' "*') for p in include.group(1).split(",")}
    copied = {c[0] for c in copies}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    env = dict(kv.split("=", 1) for ins, args in steps if ins == "ENV"
               for kv in shlex.split(args))
    assert env.get("TF_USE_LEGACY_KERAS") == "1"


# ----------------------------------------------------------------------------- manifests


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _resources() -> list[dict]:
    return [doc for f in _manifest_files() for doc in yaml.safe_load_all(f.read_text()) if doc]


def _one(kind: str, name: str) -> dict:
    found = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(deployment: str) -> dict:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]


def _validator():
    return pytest.importorskip(
        "kubernetes_validate", reason="schema validation needs the dev extra kubernetes-validate "
        "(.venv/bin/pip install kubernetes-validate==1.37.0)")


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path):
    kv = _validator()
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} is not valid "
                        f"Kubernetes {K8S_VERSION}: {e}")


def test_schema_validation_rejects_a_misspelt_field():
    kv = _validator()
    hpa = _one("HorizontalPodAutoscaler", "marquee-api")
    spec = dict(hpa["spec"])
    spec["minReplica"] = spec.pop("minReplicas")
    with pytest.raises(kv.ValidationError, match="minReplica"):
        kv.validate({**hpa, "spec": spec}, K8S_VERSION, strict=True)


def test_kustomize_builds_every_resource():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], check=True, capture_output=True,
                           text=True, timeout=120).stdout
    docs = list(yaml.safe_load_all(built))
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, docs)) == sorted(map(key, _resources()))
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "marquee" for d in docs)


def test_tf_serving_image_matches_the_serving_api_in_the_lock():
    images = [c["image"] for r in _resources() if r["kind"] == "Deployment"
              for c in r["spec"]["template"]["spec"]["containers"]
              if c["image"].startswith("tensorflow/serving:")]
    assert images, "no tensorflow/serving container in kubeflow/k8s"
    api_minor = _lock_version("tensorflow-serving-api").split(".")[:2]
    for image in images:
        assert image.split(":")[1].split(".")[:2] == api_minor, image


def test_services_select_their_deployment_and_its_ports():
    for svc in (r for r in _resources() if r["kind"] == "Service"):
        pod = _one("Deployment", svc["metadata"]["name"])["spec"]["template"]
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: {p['targetPort']}"


def test_tf_serving_reads_the_pushed_models_config_and_is_ready_on_the_query_tower():
    c = _container("tf-serving")
    assert {"--model_config_file=/models/models.config",
            "--model_config_file_poll_wait_seconds=60"} <= set(c["args"])
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {("grpc", 8500),
                                                                     ("http", 8501)}
    probe = c["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == (f"/v1/models/{QUERY_TOWER}", "http")


def test_api_autoscales_on_cpu():
    c = _container("marquee-api")
    assert c["resources"]["requests"]["cpu"], "the HPA needs a CPU request"
    hpa = _one("HorizontalPodAutoscaler", "marquee-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "marquee-api"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def _expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container arg: ``$(NAME)`` of a variable the container defines
    becomes its value, any other reference stays as written, ``$$`` is a literal ``$``."""
    return re.sub(r"\$\$|\$\(([^)]+)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), arg)


def _pod_env(container: dict) -> dict[str, str]:
    """The container's environment in a pod named SAMPLE_POD_NAME, secrets as placeholders."""
    env = {}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env)
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = SAMPLE_POD_NAME
        elif "secretKeyRef" in source:
            env[var["name"]] = f"secret-{source['secretKeyRef']['key']}"
    return env


def _served(root: Path) -> tuple[dict, dict[str, dict]]:
    """The API container's command line as the real ``marquee serve`` parses it in a pod:
    ``$(VAR)``s expanded as Kubernetes does, and every path option moved under ``root``, where
    only the container's volume mounts exist (so click's exists checks pass for mounted paths
    only). Returns ``ctx.params`` and, for each path option given, the volume mount it is on;
    fails the test if the CLI refuses the args or a path is on no mount."""
    import click

    from marquee.cli import main

    c = _container("marquee-api")
    # the image's `marquee` is the console script of marquee.cli:main
    scripts = re.search(r"^\[project\.scripts\]\n((?:.+\n)*)",
                        (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert f'{c["command"][0]} = "marquee.cli:main"' in scripts[1], c["command"]
    name, *args = c["command"][1:] + [_expand(a, _pod_env(c)) for a in c["args"]]
    assert name in main.commands, f"no command {name!r} in marquee.cli"
    command = main.commands[name]
    path_opts = {o for p in command.params if isinstance(p.type, click.Path) for o in p.opts}

    def in_pod(path: str) -> str:
        return str(root / path.lstrip("/")) if path.startswith("/") else path

    for i, arg in enumerate(args):
        opt, eq, value = arg.partition("=")
        if eq and opt in path_opts:
            args[i] = f"{opt}={in_pod(value)}"
        elif arg in path_opts and i + 1 < len(args):
            args[i + 1] = in_pod(args[i + 1])
    mounts = c.get("volumeMounts", [])
    for m in mounts:
        (root / m["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    try:
        ctx = command.make_context(name, args)
    except click.UsageError as e:
        pytest.fail(f"`marquee {name}` refuses the args of api.yaml: {e.format_message()}")
    on_mount = {}
    for p in command.params:
        value = ctx.params[p.name]
        if not isinstance(p.type, click.Path) or value is None:
            continue
        assert Path(value).is_relative_to(root), f"--{p.name}: {value} is not an absolute path"
        pod_path = PurePosixPath("/", Path(value).relative_to(root))
        found = [m for m in mounts if PurePosixPath(m["mountPath"]) in
                 (pod_path, *pod_path.parents)]
        assert found, f"{p.name}={pod_path} is on no volume mount of the API container"
        on_mount[p.name] = max(found, key=lambda m: len(m["mountPath"]))
    return ctx.params, on_mount


def test_api_args_are_accepted_by_the_serve_command_and_name_mounted_paths(tmp_path):
    params, on_mount = _served(tmp_path)
    c = _container("marquee-api")
    # listens for the Service on the container's http port; writes are authenticated
    assert params["host"] == "0.0.0.0"
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {("http", params["port"])}
    assert not params["insecure_dev"]
    assert params["model_base"] == str(tmp_path / kr.DEFAULT_SERVING_DIR.lstrip("/"))
    # the dataset is only read; the event log is written by every replica, so it is shared
    assert {"data_dir", "model_base", "event_log"} <= on_mount.keys()
    assert on_mount["data_dir"].get("readOnly") is True
    assert on_mount["event_log"].get("readOnly", False) is False
    pod = _one("Deployment", "marquee-api")["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    events = claims[on_mount["event_log"]["name"]]
    assert not events.get("readOnly", False)
    assert "ReadWriteMany" in _one("PersistentVolumeClaim",
                                   events["claimName"])["spec"]["accessModes"]
    assert claims[on_mount["data_dir"]["name"]].get("readOnly") is True


def test_every_claim_a_deployment_mounts_is_in_the_manifests():
    for d in (r for r in _resources() if r["kind"] == "Deployment"):
        for v in d["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                _one("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])


def test_api_replica_id_is_the_pod_name(tmp_path):
    # Replicas share the event log; a second writer under one id is refused at start-up.
    params, _ = _served(tmp_path)
    assert params["replica_id"] == SAMPLE_POD_NAME


def test_api_reaches_redis_and_tf_serving_through_their_services(tmp_path):
    params, _ = _served(tmp_path)
    redis = urlsplit(params["redis_url"])
    assert redis.scheme == "redis"
    ports = {p["port"]: p["name"] for p in _one("Service", redis.hostname)["spec"]["ports"]}
    assert ports.get(redis.port) == "redis", f"Service {redis.hostname} has no port {redis.port}"
    host, _, port = params["tf_serving"].rpartition(":")
    ports = {p["port"]: p["name"] for p in _one("Service", host)["spec"]["ports"]}
    assert ports.get(int(port)) == "grpc", f"Service {host} has no gRPC port {port}"
    tf_serving = _container("tf-serving")
    assert {p["name"]: p["containerPort"] for p in tf_serving["ports"]}["grpc"] == int(port)


def test_api_tokens_come_from_a_secret_that_is_not_committed():
    env = {v["name"]: v for v in _container("marquee-api")["env"]}
    for scope in ("events", "admin"):
        (var,) = [t.env for t in AuthConfig().tokens if t.scope == scope]
        assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {
            "name": API_TOKENS_SECRET, "key": f"{scope}-token"}}}, var
    assert not [r for r in _resources() if r["kind"] == "Secret"], "a Secret is committed"
    readme = (REPO / "kubeflow" / "README.md").read_text()
    assert f"kubectl create secret generic {API_TOKENS_SECRET}" in readme
    assert {"--from-literal=events-token=", "--from-literal=admin-token="} <= set(
        re.findall(r"--from-literal=[\w-]+=", readme))


def _http_probe_window(probe: dict) -> int:
    """Seconds of failed checks before the probe acts (Kubernetes' defaults: 10 s, 3 times)."""
    assert probe["httpGet"] == {"path": "/healthz", "port": "http"}
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_api_probes_ask_healthz_and_liveness_waits_longer_than_readiness():
    c = _container("marquee-api")
    ready, live = _http_probe_window(c["readinessProbe"]), _http_probe_window(c["livenessProbe"])
    # a struggling pod leaves the Service well before it is restarted
    assert live >= 60 and live >= 4 * ready, (ready, live)
    assert _http_probe_window(c["startupProbe"]) >= 120


# Seconds the server may take to drain and close the write-ahead log after the requests finished.
WRITE_CLOSE_BUDGET_S = 5


def test_api_termination_grace_outlasts_the_server_shutdown_grace():
    pod = _one("Deployment", "marquee-api")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + LimitsConfig().shutdown_grace_seconds + WRITE_CLOSE_BUDGET_S
    assert pod["terminationGracePeriodSeconds"] >= needed, needed


@pytest.mark.parametrize("deployment", ["tf-serving", "marquee-api"])
def test_models_volume_is_mounted_read_only_where_the_pusher_writes(deployment):
    pod = _one("Deployment", deployment)["spec"]["template"]["spec"]
    claim = _one("PersistentVolumeClaim", "marquee-models")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    (volume,) = [v for v in pod["volumes"]
                 if v.get("persistentVolumeClaim", {}).get("claimName") == "marquee-models"]
    assert volume["persistentVolumeClaim"] == {"claimName": "marquee-models", "readOnly": True}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": kr.DEFAULT_SERVING_DIR,
                     "readOnly": True}
