"""A development model server that speaks TensorFlow Serving's gRPC API.

Production serves the pushed SavedModels with the real ``tensorflow/serving`` binary, which
cannot be installed on development machines (no PyPI or Debian package, no Docker engine). This
server implements the same gRPC services from the official protos in ``tensorflow_serving.apis``
so that development and tests run exactly the client code production runs:

    PredictionService.Predict           inputs/outputs as TensorProto, output_filter
    PredictionService.GetModelMetadata  metadata_field "signature_def" -> SignatureDefMap in Any
    ModelService.GetModelStatus         per version: LOADING, AVAILABLE, END (with any error)
    everything else                     UNIMPLEMENTED

Status codes and error texts follow TF Serving's own (``predict_util.cc``, ``server_core.cc``,
``get_model_metadata_impl.cc``, ``get_model_status_impl.cc``).

What it serves, as TF Serving does:

- ``model_base``: every ``BASE/<model_name>/`` whose integer version directories hold a
  ``saved_model.pb``; other directories (the pusher's ``retrieval_index``, temp dirs) are skipped.
- ``model_config_file``: TF Serving's text-format ``ModelServerConfig``; exactly the listed models,
  with their ``model_version_policy`` (latest by default, all, specific) and ``version_labels``.

A background thread polls the version directories every ``poll_seconds``. A new version is loaded
beside the one serving and swapped in atomically once loaded; requests already running keep
their reference to the old version and finish on it. A version that fails to load is logged and
reported END with its error by GetModelStatus; the old version keeps serving.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2
from tensorflow_serving.config.file_system_storage_path_source_pb2 import (
    FileSystemStoragePathSourceConfig,
)

from serving.models.tf_serving_client import to_ndarray

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


def _dtype(enum: int) -> str:
    return types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else str(enum)


def _shape(dims) -> str:
    return "[" + ",".join(str(d.size) for d in dims) + "]"


def _check_input(alias: str, tensor, info: meta_graph_pb2.TensorInfo) -> tf.Tensor:
    """The request tensor for one signature input, after TF Serving's dtype and shape checks."""
    if tensor.dtype != info.dtype:
        raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                            f"Expected input {alias} to be {_dtype(info.dtype)} but got "
                            f"{_dtype(tensor.dtype)}.")
    want, got = info.tensor_shape, tensor.tensor_shape
    if not want.unknown_rank and (
            len(want.dim) != len(got.dim)
            or any(w.size not in (-1, g.size) for w, g in zip(want.dim, got.dim, strict=True))):
        raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                            f"input {alias}: shape {_shape(got.dim)} does not match the "
                            f"signature's {_shape(want.dim)} (-1: any size)")
    try:
        return tf.convert_to_tensor(to_ndarray(tensor), dtype=tf.as_dtype(info.dtype))
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor parsing error: {alias}") from e


# TensorProto's typed value fields, which TF Serving's Predict answers in (Tensor::AsProtoField).
# Packed fixed-width fields: field number and little-endian numpy dtype, written as raw bytes.
_PACKED_FIELDS = {types_pb2.DT_FLOAT: (5, "<f4"), types_pb2.DT_DOUBLE: (6, "<f8")}
_VALUE_FIELDS = {types_pb2.DT_INT8: "int_val", types_pb2.DT_INT16: "int_val",
                 types_pb2.DT_INT32: "int_val", types_pb2.DT_UINT8: "int_val",
                 types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val",
                 types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
                 types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def fill_tensor_proto(proto: tensor_pb2.TensorProto, value: np.ndarray) -> None:
    """Writes ``value`` into an empty ``proto`` the way TF Serving's Predict answers: in the typed
    value fields (``float_val``, ``int64_val``, ``string_val``...), not ``tensor_content``, so a
    client reading ``float_val`` directly, as many non-Python ones do, works against both."""
    dtype = tf.as_dtype(value.dtype).as_datatype_enum
    if dtype not in _PACKED_FIELDS and dtype not in _VALUE_FIELDS:
        proto.CopyFrom(tf.make_tensor_proto(value))  # half, bfloat16, complex: rare in our models
        return
    proto.dtype = dtype
    proto.tensor_shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
    if dtype in _PACKED_FIELDS:  # filled in place by one C++ parse, not a Python loop
        field, little_endian = _PACKED_FIELDS[dtype]
        data = np.ascontiguousarray(value, little_endian).tobytes()
        proto.MergeFromString(bytes([field << 3 | 2]) + _varint(len(data)) + data)
    else:
        getattr(proto, _VALUE_FIELDS[dtype]).extend(value.ravel().tolist())


def tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """``value`` as a TensorProto in TF Serving's answer encoding (see ``fill_tensor_proto``)."""
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, value)
    return proto


def predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Runs one PredictRequest on ``servable``, validating it the way TF Serving does."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature, function = servable.signature_defs.get(name), servable.functions.get(name)
    if signature is None or function is None:
        raise ServingStatus(grpc.StatusCode.FAILED_PRECONDITION,
                            f'Serving signature key "{name}" not found.')
    sent, expected = sorted(request.inputs), sorted(signature.inputs)
    if len(sent) != len(expected):
        raise ServingStatus(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}.")
    for alias in sent:
        if alias not in signature.inputs:
            raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input tensor alias not found in signature: {alias}. Inputs "
                                f"expected to be in the set {{{','.join(expected)}}}.")
    wanted = list(request.output_filter) or list(signature.outputs)
    for i, alias in enumerate(wanted):
        if alias not in signature.outputs:
            raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                f"output tensor alias not found in signature: {alias} Outputs "
                                f"expected to be in the set {{{','.join(sorted(signature.outputs))}"
                                "}.")
        if alias in wanted[:i]:
            raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                f"duplicate output tensor alias: {alias}")
    inputs = {a: _check_input(a, request.inputs[a], signature.inputs[a]) for a in sent}
    try:
        with servable.lock:
            outputs = function(**inputs)
    except tf.errors.OpError as e:
        raise ServingStatus(_GRPC_CODES[e.error_code], e.message) from e
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = servable.version
    for alias in wanted:
        fill_tensor_proto(response.outputs[alias], outputs[alias].numpy())
    return response


def _rpc(method):
    """Answers a ServingStatus raised by ``method`` with its gRPC status code and message."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingStatus as e:
            context.abort(e.code, e.message)
    return wrapper


def _require_model_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _unimplemented(rpc: str):
    def method(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{rpc} is not implemented by marquee's development model server "
                      "(marquee/dev/model_server.py); TensorFlow Serving implements it.")
    return method


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ServableRegistry):
        self._registry = registry

    @_rpc
    def Predict(self, request, context):
        _require_model_spec(request)
        return predict(self._registry.resolve(request.model_spec), request)

    @_rpc
    def GetModelMetadata(self, request, context):
        _require_model_spec(request)
        if not request.metadata_field:
            raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"Metadata field {field} is not supported")
        servable = self._registry.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(
            get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs))
        return response

    Classify = _unimplemented("Classify")
    Regress = _unimplemented("Regress")
    MultiInference = _unimplemented("MultiInference")


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ServableRegistry):
        self._registry = registry

    @_rpc
    def GetModelStatus(self, request, context):
        _require_model_spec(request)
        return self._registry.status(request.model_spec)

    HandleReloadConfigRequest = _unimplemented("HandleReloadConfigRequest")


class ModelServer:
    """TF Serving's gRPC API over SavedModels on disk, started and stopped in-process.

    ``with ModelServer(base, port=0) as server: ...`` serves on ``server.port`` (0 picks a free
    port). ``start()`` returns once the initial versions are loaded, as TF Serving does.
    """

    def __init__(self, model_base: str | Path | None = None, *,
                 model_config_file: str | Path | None = None, port: int = 0,
                 host: str = "0.0.0.0", poll_seconds: float = DEFAULT_POLL_SECONDS,
                 max_workers: int = 16):
        if model_base is None and model_config_file is None:
            raise ValueError("give a model base directory (BASE/<model>/<version>/saved_model.pb)"
                             " or a TF Serving model config file")
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0; got {poll_seconds}")
        self.model_base = Path(model_base) if model_base is not None else None
        self.model_config_file = model_config_file
        # Read once, as TF Serving does without --model_config_file_poll_wait_seconds.
        self._configured = read_model_config(model_config_file) if model_config_file else None
        self.host, self.poll_seconds, self.port = host, poll_seconds, port
        self.registry = ServableRegistry()
        self._max_workers = max_workers
        self._failed: set[tuple[str, int]] = set()
        self._skipped: set[str] = set()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        """Where a client on this machine reaches the server, e.g. ``localhost:8500``."""
        host = "localhost" if self.host in ("0.0.0.0", "[::]") else self.host
        return f"{host}:{self.port}"

    def sources(self) -> list[ModelSource]:
        """The models to serve now: the config file's, or every SavedModel dir under the base."""
        if self._configured is not None:
            return self._configured
        found = []
        dirs = sorted(self.model_base.iterdir()) if self.model_base.is_dir() else []
        for d in dirs:
            if not d.is_dir() or d.name.startswith("."):
                continue
            if saved_model_versions(d) or d.name in self.registry.names():
                found.append(ModelSource(d.name, d))
            elif d.name not in self._skipped:
                self._skipped.add(d.name)
                log.info("skipping %s: no <version>/%s under it (not a SavedModel)", d,
                         SAVED_MODEL_PB)
        gone = set(self.registry.names()) - {s.name for s in found}
        return found + [ModelSource(name, self.model_base / name) for name in sorted(gone)]

    def sync(self) -> None:
        """Loads aspired versions not yet loaded, then unloads versions no longer aspired.

        Availability first, like TF Serving's default policy: a model's old versions are unloaded
        only once one of its aspired versions is available, so a failed load keeps the old one.
        """
        for source in self.sources():
            self.registry.set_labels(source.name, source.labels)
            aspired = source.aspired(saved_model_versions(source.base_path))
            for version in aspired:
                if version not in self.registry.loaded(source.name):
                    self._load(source, version)
            loaded = self.registry.loaded(source.name)
            if not aspired or any(v in loaded for v in aspired):
                for version in set(loaded) - set(aspired):
                    self.registry.remove(source.name, version)
                    log.info("unloaded %s version %d", source.name, version)

    def _load(self, source: ModelSource, version: int) -> None:
        if (source.name, version) in self._failed:
            return
        path = source.base_path / str(version)
        self.registry.set_state(source.name, version, State.LOADING)
        start = time.perf_counter()
        try:
            servable = load_servable(source.name, version, path)
        except Exception as e:  # any broken model: report it, keep serving the others
            self._failed.add((source.name, version))
            self.registry.set_state(source.name, version, State.END, _error_code(e), str(e))
            log.error("failed to load %s version %d from %s after %.2f s (not retried; push a "
                      "new version): %s", source.name, version, path,
                      time.perf_counter() - start, e)
            return
        self.registry.add(servable)
        log.info("loaded %s version %d from %s in %.2f s", source.name, version, path,
                 time.perf_counter() - start)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except OSError as e:  # e.g. the base dir briefly unreadable: keep serving, retry
                log.warning("polling for model versions failed, retrying in %.1f s: %s",
                            self.poll_seconds, e)

    def start(self) -> ModelServer:
        self.sync()
        if not self.registry.names():
            log.warning("no model to serve yet in %s; waiting for <model>/<version>/%s",
                        self.model_config_file or self.model_base, SAVED_MODEL_PB)
        # so_reuseport off: a second server on a taken port fails instead of sharing its traffic.
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
        self._server = grpc.server(futures.ThreadPoolExecutor(self._max_workers,
                                                              thread_name_prefix="predict"),
                                   options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self.registry), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            _ModelService(self.registry), self._server)
        try:
            self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as e:
            raise OSError(f"cannot listen on {self.host}:{self.port}: is another server using "
                          "that port? Pick another port (0 picks a free one).") from e
        self._server.start()
        self._poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._poller.start()
        return self

    def stop(self, grace_s: float | None = 1.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace_s).wait()
        if self._poller is not None:
            self._poller.join()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(model_base: str | Path | None, port: int, model_config_file: str | Path | None = None,
          poll_seconds: float = DEFAULT_POLL_SECONDS, host: str = "0.0.0.0") -> None:
    """Serves until SIGINT or SIGTERM. With ``model_config_file``, ``model_base`` is ignored,
    as TF Serving ignores --model_base_path when given --model_config_file."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if model_config_file is not None and model_base is not None:
        log.info("serving the models of %s (model base %s is not used)", model_config_file,
                 model_base)
        model_base = None
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with ModelServer(model_base, model_config_file=model_config_file, port=port, host=host,
                     poll_seconds=poll_seconds) as server:
        served = {n: server.registry.loaded(n) for n in server.registry.names()}
        log.info("TF Serving gRPC API on %s:%d, serving %s, polling every %.1f s", host,
                 server.port, served or "nothing yet", poll_seconds)
        while not done.wait(0.5):
            pass
        log.info("shutting down")
