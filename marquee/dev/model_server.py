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

import functools
import logging
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from marquee.dev.predict import fill_tensor_proto, predict, tensor_proto  # noqa: F401
from marquee.dev.registry import (  # noqa: F401  (re-exported: the server's API)
    DEFAULT_POLL_SECONDS,
    MAX_MESSAGE_BYTES,
    SAVED_MODEL_PB,
    ModelSource,
    Servable,
    ServableRegistry,
    ServingStatus,
    State,
    VersionPolicy,
    _error_code,
    load_servable,
    read_model_config,
    saved_model_versions,
)

log = logging.getLogger(__name__)


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
        self._failed: dict[tuple[str, int], float] = {}  # -> when to try again
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

    # Seconds before a version whose load failed is tried again (a folder still being copied;
    # TF Serving retries too).
    RETRY_FAILED_S = 2.0

    def _load(self, source: ModelSource, version: int) -> None:
        if time.monotonic() < self._failed.get((source.name, version), float("-inf")):
            return
        path = source.base_path / str(version)
        self.registry.set_state(source.name, version, State.LOADING)
        start = time.perf_counter()
        try:
            servable = load_servable(source.name, version, path)
        except Exception as e:  # any broken model: report it, keep serving the others
            self._failed[(source.name, version)] = time.monotonic() + self.RETRY_FAILED_S
            self.registry.set_state(source.name, version, State.END, _error_code(e), str(e))
            log.error("failed to load %s version %d from %s after %.2f s (retried in %.0f s): "
                      "%s", source.name, version, path, time.perf_counter() - start,
                      self.RETRY_FAILED_S, e)
            return
        self._failed.pop((source.name, version), None)
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
