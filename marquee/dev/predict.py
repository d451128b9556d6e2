"""TF Serving's Predict, as the development server answers it: TF Serving's dtype and shape
checks on each input, the signature run, the outputs encoded as TF Serving encodes them."""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from marquee.dev.registry import _GRPC_CODES, DEFAULT_SIGNATURE, Servable, ServingStatus
from serving.models.tf_serving_client import to_ndarray


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


