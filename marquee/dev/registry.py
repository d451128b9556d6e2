"""The development model server's servables: TF Serving's model config, versions and loading."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2
from tensorflow_serving.config.file_system_storage_path_source_pb2 import (
    FileSystemStoragePathSourceConfig,
)

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0
DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
SAVED_MODEL_PB = "saved_model.pb"
# TF Serving allows messages up to INT32_MAX bytes; a 1,000-candidate batch is a few MB.
MAX_MESSAGE_BYTES = 2**31 - 1

VersionPolicy = FileSystemStoragePathSourceConfig.ServableVersionPolicy
State = get_model_status_pb2.ModelVersionStatus.State
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}  # tensorflow.error.Code -> gRPC


class ServingStatus(Exception):
    """A request error carrying the gRPC status code TF Serving answers with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model to serve: where its version directories live and which of them to serve."""

    name: str
    base_path: Path
    policy: VersionPolicy = dataclasses.field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def aspired(self, on_disk: Sequence[int]) -> list[int]:
        """The versions to serve among ``on_disk``, by TF Serving's version policy."""
        on_disk = sorted(on_disk)
        choice = self.policy.WhichOneof("policy_choice")
        if choice == "all":
            return on_disk
        if choice == "specific":
            return [v for v in on_disk if v in set(self.policy.specific.versions)]
        return on_disk[-max(1, self.policy.latest.num_versions):]


def saved_model_versions(model_dir: Path) -> list[int]:
    """Integer version directories of ``model_dir`` that hold a SavedModel, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.name.isascii() and p.name.isdigit() and (p / SAVED_MODEL_PB).is_file())


def read_model_config(path: str | Path) -> list[ModelSource]:
    """The models of a TF Serving ``--model_config_file`` (text-format ``ModelServerConfig``)."""
    path = Path(path)
    try:
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a TF Serving model config (text-format ModelServerConfig "
                         f"with model_config_list {{ config {{ name base_path }} }}): {e}") from e
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported, not custom_model_config")
    sources = []
    for c in config.model_config_list.config:
        if not c.name or not c.base_path:
            raise ValueError(f"{path}: every config needs a name and a base_path; got {c}")
        if c.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {c.name}: model_platform {c.model_platform!r} is "
                             "not supported; this server serves TensorFlow SavedModels only")
        sources.append(ModelSource(c.name, Path(c.base_path), c.model_version_policy,
                                   dict(c.version_labels)))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: model names must be unique; got {names}")
    return sources


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of a model: its signature functions and their SignatureDefs."""

    name: str
    version: int
    functions: Mapping[str, tf.types.experimental.ConcreteFunction]
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    module: object  # keeps the loaded SavedModel (variables) alive while any request holds this
    # Serialises this version's calls: concurrent calls of a loaded signature with different
    # batch sizes corrupt the heap in TF 2.16 (serving.models.backends.InProcessBackend says more).
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, compare=False)


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Loads ``path``'s MetaGraph tagged "serve", as TF Serving does."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / SAVED_MODEL_PB).read_bytes())
    meta = [m for m in saved_model.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    if not meta:
        tags = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
        raise ValueError(f"{path}: no MetaGraph tagged {SERVE_TAG!r} (tags: {tags})")
    module = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    return Servable(name, version, dict(module.signatures), dict(meta[0].signature_def), module)


class ServableRegistry:
    """The versions being served and every version's state, swapped under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servables: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, Mapping[str, int]] = {}
        # (state, tensorflow.error.Code, message) per model and version, kept after unload (END)
        self._states: dict[str, dict[int, tuple[int, int, str]]] = {}

    def loaded(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._servables.get(name, {}))

    def names(self) -> list[str]:
        with self._lock:
            return list(self._servables)

    def set_labels(self, name: str, labels: Mapping[str, int]) -> None:
        with self._lock:
            self._labels[name] = labels

    def set_state(self, name: str, version: int, state: int, code: int = 0, msg: str = "") -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = (state, code, msg)

    # Writers replace a model's version dict rather than change it: a reader's snapshot stays valid.
    def add(self, servable: Servable) -> None:
        with self._lock:
            versions = self._servables.get(servable.name, {})
            self._servables[servable.name] = {**versions, servable.version: servable}
            self._states.setdefault(servable.name, {})[servable.version] = (State.AVAILABLE, 0, "")

    def remove(self, name: str, version: int) -> None:
        with self._lock:
            versions = {v: s for v, s in self._servables.get(name, {}).items() if v != version}
            if versions:
                self._servables[name] = versions
            else:
                self._servables.pop(name, None)
            self._states.setdefault(name, {})[version] = (State.END, 0, "")

    def resolve(self, spec) -> Servable:
        """The servable a ``ModelSpec`` asks for: its version, its label's, or the latest."""
        if not spec.name:
            raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                "ModelSpec has no name specified.")
        with self._lock:
            versions = self._servables.get(spec.name, {})
            labels = self._labels.get(spec.name, {})
        choice = spec.WhichOneof("version_choice")
        if choice is None:
            if not versions:
                raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                                    f"Servable not found for request: Latest({spec.name})")
            return versions[max(versions)]
        if choice == "version_label":
            if spec.version_label not in labels:
                raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"Unrecognized servable version label: {spec.version_label}")
            version = labels[spec.version_label]
        else:
            version = spec.version.value
        if version not in versions:
            raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                                f"Servable not found for request: Specific({spec.name}, {version})")
        return versions[version]

    def status(self, spec) -> get_model_status_pb2.GetModelStatusResponse:
        with self._lock:
            states = dict(self._states.get(spec.name, {}))
        if spec.HasField("version"):
            version = spec.version.value
            if version not in states:
                raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                                    f"Could not find version {version} of model {spec.name}")
            states = {version: states[version]}
        elif not states:
            raise ServingStatus(grpc.StatusCode.NOT_FOUND,
                                f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, (state, code, msg) in sorted(states.items()):
            status = response.model_version_status.add(version=version, state=state)
            status.status.error_code, status.status.error_message = code, msg
        return response


def _error_code(e: Exception) -> int:
    return e.error_code if isinstance(e, tf.errors.OpError) else tf.errors.UNKNOWN


