"""A small typed client for TensorFlow Serving's gRPC API.

The same client talks to production TF Serving and to the development server in
``marquee/dev/model_server.py``. Tensors go as ``TensorProto`` both ways; gRPC errors come back as
``ServingError`` subclasses that carry the status code and TF Serving's message::

    with TFServingClient("localhost:8500") as client:
        out = client.predict("query_tower", {"user_id": np.array([7], np.int64), ...})
        out["embedding"]            # np.ndarray [batch, dim]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_SIGNATURE = "serving_default"
# gRPC's default 4 MB receive limit is below a large candidate batch's embeddings.
MAX_MESSAGE_BYTES = 256 * 2**20
# Above this many values, typed value fields (float_val...: how TF Serving answers) are decoded by
# TensorFlow's C++ parser; tf.make_ndarray walks them in Python (~5 ms for 64k floats).
_CPP_PARSE_ABOVE = 1024


class ServingError(RuntimeError):
    """A failed call; ``code`` is the gRPC status code, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, rpc: str, model: str, target: str):
        hint = _HINTS.get(code, "")
        super().__init__(f"{rpc} {model!r} at {target}: {code.name}: {details}{hint}")
        self.code, self.details = code, details
        self.rpc, self.model, self.target = rpc, model, target


class ModelNotFoundError(ServingError):
    """NOT_FOUND: no such model, or the version asked for is not loaded."""


class InvalidRequestError(ServingError):
    """INVALID_ARGUMENT or FAILED_PRECONDITION: the request does not fit the signature."""


class ServerUnavailableError(ServingError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: no server answering in time; worth a retry."""


_ERRORS = {
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServerUnavailableError,
}
_HINTS = {
    grpc.StatusCode.UNAVAILABLE: " (is a model server listening there? For development: "
                                 "`marquee model-server --model-base DIR --port P`)",
    grpc.StatusCode.NOT_FOUND: " (GetModelStatus lists the versions the server has loaded)",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One signature input or output; ``shape`` None if the rank is unknown, -1 dims any size."""

    dtype: tf.DType
    shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """The served version of a model and its Predict signatures by name."""

    name: str
    version: int
    signatures: Mapping[str, Signature]


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version's state: "START", "LOADING", "AVAILABLE", "UNLOADING" or "END"."""

    version: int
    state: str
    error_code: int  # tensorflow.error.Code; 0 is OK
    error_message: str


def to_ndarray(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto in either encoding (typed value fields or ``tensor_content``) as an array.

    Same result as ``tf.make_ndarray``, without its Python loop over large value fields.
    Raises ValueError or ``tf.errors.InvalidArgumentError`` if the proto is malformed.
    """
    size = math.prod(d.size for d in tensor.tensor_shape.dim)
    if tensor.tensor_content or size <= _CPP_PARSE_ABOVE:
        return tf.make_ndarray(tensor)
    return tf.io.parse_tensor(tensor.SerializeToString(), tf.as_dtype(tensor.dtype)).numpy()


def _spec(info) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in
                                                              info.tensor_shape.dim)
    return TensorSpec(tf.as_dtype(info.dtype), shape)


def _model_spec(spec, model_name: str, version: int | None) -> None:
    spec.name = model_name
    if version is not None:
        spec.version.value = version


class TFServingClient:
    """Predict, GetModelMetadata and GetModelStatus over one gRPC channel to ``target``."""

    def __init__(self, target: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.target, self.timeout_s = target, timeout_s
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, rpc: str, method, request, model: str, timeout_s: float | None):
        try:
            return method(request, timeout=timeout_s if timeout_s is not None else self.timeout_s)
        except grpc.RpcError as e:
            error = _ERRORS.get(e.code(), ServingError)
            raise error(e.code(), e.details(), rpc, model, self.target) from e

    def predict_with_version(self, model_name: str, inputs: Mapping[str, np.ndarray],
                             signature_name: str = DEFAULT_SIGNATURE, version: int | None = None,
                             timeout_s: float | None = None) -> tuple[dict[str, np.ndarray], int]:
        """Like ``predict``, plus the version that answered (to pair a tower with its index)."""
        request = predict_pb2.PredictRequest()
        _model_spec(request.model_spec, model_name, version)
        request.model_spec.signature_name = signature_name
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        response = self._call("Predict", self._predictions.Predict, request, model_name,
                              timeout_s)
        outputs = {name: to_ndarray(t) for name, t in response.outputs.items()}
        return outputs, response.model_spec.version.value

    def predict(self, model_name: str, inputs: Mapping[str, np.ndarray],
                signature_name: str = DEFAULT_SIGNATURE, version: int | None = None,
                timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Runs ``signature_name`` of ``model_name`` (the latest version unless ``version``).

        ``inputs`` maps each signature input to an array of its dtype (strings as bytes or str);
        returns every signature output as an array. Raises a ``ServingError`` subclass.
        """
        return self.predict_with_version(model_name, inputs, signature_name, version,
                                         timeout_s)[0]

    def get_model_metadata(self, model_name: str, version: int | None = None,
                           timeout_s: float | None = None) -> ModelMetadata:
        """The signatures of the served (latest, or ``version``) version of ``model_name``."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _model_spec(request.model_spec, model_name, version)
        response = self._call("GetModelMetadata", self._predictions.GetModelMetadata, request,
                              model_name, timeout_s)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        # Left out: entries without a method, such as TF2's "__saved_model_init_op", which TF
        # Serving lists too but no request can run.
        signatures = {
            name: Signature({k: _spec(v) for k, v in sig.inputs.items()},
                            {k: _spec(v) for k, v in sig.outputs.items()}, sig.method_name)
            for name, sig in defs.signature_def.items() if sig.method_name}
        return ModelMetadata(response.model_spec.name, response.model_spec.version.value,
                             signatures)

    def get_model_status(self, model_name: str, version: int | None = None,
                         timeout_s: float | None = None) -> list[VersionStatus]:
        """Every version the server knows of ``model_name`` (or just ``version``), ascending."""
        request = get_model_status_pb2.GetModelStatusRequest()
        _model_spec(request.model_spec, model_name, version)
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, model_name,
                              timeout_s)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return sorted((VersionStatus(s.version, state_name(s.state), s.status.error_code,
                                     s.status.error_message)
                       for s in response.model_version_status), key=lambda s: s.version)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
