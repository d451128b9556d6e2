"""The development model server against TF Serving's gRPC API, over real gRPC on loopback.

Every model here is a tiny SavedModel whose version ``v`` answers, for its "serving_default"
signature,

    embedding  = x * v              float32 [None, None]
    shifted_id = item_id + v        int64   [None]
    label      = b"v<v>:" + tag     string  [None]

and for "score": scores = query @ candidates^T * v, so every answer shows which version gave it.
"""

import itertools
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.model_pusher.push_lib import model_config_text
from marquee.dev.model_server import ModelServer, read_model_config, tensor_proto
from serving.models.tf_serving_client import (
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    TensorSpec,
    TFServingClient,
    VersionStatus,
    to_ndarray,
)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
Code = grpc.StatusCode
REPO = Path(__file__).resolve().parents[1]


class _Tower(tf.Module):
    def __init__(self, version: int):
        super().__init__()
        self.scale = tf.Variable(float(version))
        self.shift = tf.Variable(version, dtype=tf.int64)
        self.prefix = tf.Variable(f"v{version}:")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([None], tf.string)])
    def serve(self, item_id, x, tag):
        return {"embedding": x * self.scale, "shifted_id": item_id + self.shift,
                "label": self.prefix + tag}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([None, None], tf.float32)])
    def score(self, query, candidates):
        return {"scores": tf.matmul(query, candidates, transpose_b=True) * self.scale}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """SavedModels of versions 1, 2 and 3, built once: ``zoo / str(v)``."""
    zoo = tmp_path_factory.mktemp("zoo")
    for v in (1, 2, 3):
        tower = _Tower(v)
        tf.saved_model.save(tower, str(zoo / str(v)),
                            signatures={"serving_default": tower.serve, "score": tower.score})
    return zoo


def _install(zoo, base, model: str, version: int) -> None:
    """Copies a version in the way the pusher does: a temp dir renamed into place."""
    tmp = base / model / f".{version}.tmp"
    shutil.copytree(zoo / str(version), tmp)
    tmp.rename(base / model / str(version))


@pytest.fixture(scope="module")
def base(zoo, tmp_path_factory):
    """The pusher's layout: two towers, an index that is no SavedModel, models.config."""
    base = tmp_path_factory.mktemp("serving")
    for model, version in (("query_tower", 1), ("query_tower", 2), ("candidate_tower", 3)):
        _install(zoo, base, model, version)
    (base / "retrieval_index" / "2").mkdir(parents=True)
    (base / "retrieval_index" / "2" / "index.json").write_text("{}")
    (base / "query_tower" / ".4.tmp").mkdir()  # a push still copying: never loaded
    (base / "models.config").write_text(model_config_text(base))
    return base


@pytest.fixture(scope="module")
def server(base):
    with ModelServer(base, host="127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def _tensor(dtype: int, shape: list[int], **values) -> tensor_pb2.TensorProto:
    """A TensorProto built field by field, as any TF Serving client in any language may send."""
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape={"dim": [{"size": s} for s in shape]}, **values)


def _inputs() -> dict[str, tensor_pb2.TensorProto]:
    return {"item_id": _tensor(types_pb2.DT_INT64, [2], int64_val=[7, 9]),
            "x": _tensor(types_pb2.DT_FLOAT, [2, 2], float_val=[1, 2, 3, 4]),
            "tag": _tensor(types_pb2.DT_STRING, [2], string_val=[b"drama", b"kids"])}


def _predict_request(model="query_tower", signature="", version=None, label=None, inputs=None,
                     output_filter=()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for name, tensor in (_inputs() if inputs is None else inputs).items():
        request.inputs[name].CopyFrom(tensor)
    return request


def _predict(channel, request, timeout=10):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout)


def _status(channel, model, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return [(s.version, s.state, s.status.error_code) for s in response.model_version_status]


def test_predict_contract_on_raw_protos(channel):
    response = _predict(channel, _predict_request())
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("query_tower", 2, "serving_default")
    out = response.outputs
    assert set(out) == {"embedding", "shifted_id", "label"}
    assert [(out[k].dtype, [d.size for d in out[k].tensor_shape.dim]) for k in sorted(out)] == [
        (types_pb2.DT_FLOAT, [2, 2]), (types_pb2.DT_STRING, [2]), (types_pb2.DT_INT64, [2])]
    # version 2: [[1, 2], [3, 4]] * 2; [7, 9] + 2; b"v2:" + tag. TF Serving answers in the typed
    # value fields (Tensor::AsProtoField), not in tensor_content.
    assert list(out["embedding"].float_val) == [2, 4, 6, 8]
    assert list(out["shifted_id"].int64_val) == [9, 11]
    assert list(out["label"].string_val) == [b"v2:drama", b"v2:kids"]
    assert not any(out[k].tensor_content for k in out)

    # The second signature: [[1, 0]] @ [[1, 2], [3, 4], [5, 6]]^T = [[1, 3, 5]], times 2.
    score = _predict(channel, _predict_request(signature="score", inputs={
        "query": _tensor(types_pb2.DT_FLOAT, [1, 2], float_val=[1, 0]),
        "candidates": _tensor(types_pb2.DT_FLOAT, [3, 2], float_val=[1, 2, 3, 4, 5, 6])}))
    assert score.model_spec.signature_name == "score"
    assert list(score.outputs["scores"].float_val) == [2, 6, 10]

    # tensor_content (what tf.make_tensor_proto sends) is the same tensor as float_val.
    x = tf.make_tensor_proto(np.array([[1, 2], [3, 4]], np.float32))
    assert x.tensor_content
    same = _predict(channel, _predict_request(inputs={**_inputs(), "x": x}))
    assert list(same.outputs["embedding"].float_val) == [2, 4, 6, 8]


@pytest.mark.parametrize("dtype, shape", itertools.product(
    [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.float16, object],
    [(), (0, 3), (5,), (40, 30)]))  # 1,200 values: past the client's C++ parsing threshold
def test_tensor_encodings_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    if dtype is object:
        value = np.array([str(i).encode() * (i % 4) for i in range(math.prod(shape))],
                         object).reshape(shape)
    else:
        value = (rng.normal(size=shape) * 100).astype(dtype)
    for proto in (tensor_proto(value), tf.make_tensor_proto(value)):
        decoded = to_ndarray(proto)
        assert (decoded.dtype, decoded.shape) == (value.dtype, value.shape)
        np.testing.assert_array_equal(decoded, value)


def test_output_filter(channel):
    response = _predict(channel, _predict_request(output_filter=["label"]))
    assert list(response.outputs) == ["label"]
    assert tf.make_ndarray(response.outputs["label"]).tolist() == [b"v2:drama", b"v2:kids"]


def test_get_model_metadata(channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "query_tower"
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("query_tower", 2)
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(defs)
    assert {"serving_default", "score"} <= set(defs.signature_def)

    def specs(tensors):
        return {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in tensors.items()}

    default = defs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert specs(default.inputs) == {"item_id": (types_pb2.DT_INT64, [-1]),
                                     "x": (types_pb2.DT_FLOAT, [-1, -1]),
                                     "tag": (types_pb2.DT_STRING, [-1])}
    assert specs(default.outputs) == {"embedding": (types_pb2.DT_FLOAT, [-1, -1]),
                                      "shifted_id": (types_pb2.DT_INT64, [-1]),
                                      "label": (types_pb2.DT_STRING, [-1])}


def test_get_model_status(channel):
    # query_tower/1 is on disk, but the latest version policy serves only version 2.
    assert _status(channel, "query_tower") == [(2, AVAILABLE, 0)]
    assert _status(channel, "query_tower", version=2) == [(2, AVAILABLE, 0)]
    assert _status(channel, "candidate_tower") == [(3, AVAILABLE, 0)]


def test_non_saved_model_dirs_are_skipped(server, channel):
    assert sorted(server.registry.names()) == ["candidate_tower", "query_tower"]
    with pytest.raises(grpc.RpcError) as e:
        _predict(channel, _predict_request(model="retrieval_index"))
    assert e.value.code() == Code.NOT_FOUND


def _metadata_request(model="query_tower", fields=("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = model
    return request


def _status_request(model, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def _without(name):
    inputs = _inputs()
    del inputs[name]
    return inputs


_SCORE_MISMATCH = {"query": _tensor(types_pb2.DT_FLOAT, [1, 2], float_val=[1, 0]),
                   "candidates": _tensor(types_pb2.DT_FLOAT, [1, 3], float_val=[1, 2, 3])}

# (rpc, request, code, TF Serving's message, or the part of it this server reproduces)
ERRORS = {
    "unknown model": ("Predict", _predict_request(model="nope"), Code.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": ("Predict", _predict_request(version=7), Code.NOT_FOUND,
                        "Servable not found for request: Specific(query_tower, 7)"),
    "version on disk, not served": ("Predict", _predict_request(version=1), Code.NOT_FOUND,
                                    "Servable not found for request: Specific(query_tower, 1)"),
    "unknown label": ("Predict", _predict_request(label="stable"), Code.INVALID_ARGUMENT,
                      "Unrecognized servable version label: stable"),
    "no model name": ("Predict", _predict_request(model=""), Code.INVALID_ARGUMENT,
                      "ModelSpec has no name specified."),
    "no model spec": ("Predict", predict_pb2.PredictRequest(), Code.INVALID_ARGUMENT,
                      "Missing ModelSpec"),
    "unknown signature": ("Predict", _predict_request(signature="nope"),
                          Code.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    "missing input": ("Predict", _predict_request(inputs=_without("tag")), Code.INVALID_ARGUMENT,
                      "input size does not match signature: 2!=3 len({item_id,x}) != "
                      "len({item_id,tag,x}). Sent extra: {}. Missing but required: {tag}."),
    "extra input": ("Predict", _predict_request(inputs={**_inputs(), "bogus": _inputs()["x"]}),
                    Code.INVALID_ARGUMENT,
                    "input size does not match signature: 4!=3 len({bogus,item_id,tag,x}) != "
                    "len({item_id,tag,x}). Sent extra: {bogus}. Missing but required: {}."),
    "misnamed input": ("Predict",
                       _predict_request(inputs={**_without("tag"), "tags": _inputs()["tag"]}),
                       Code.INVALID_ARGUMENT, "input tensor alias not found in signature: tags. "
                       "Inputs expected to be in the set {item_id,tag,x}."),
    "wrong dtype": ("Predict", _predict_request(inputs={
        **_inputs(), "x": _tensor(types_pb2.DT_DOUBLE, [1, 1], double_val=[1])}),
        Code.INVALID_ARGUMENT, "Expected input x to be DT_FLOAT but got DT_DOUBLE."),
    "unknown dtype": ("Predict", _predict_request(inputs={
        **_inputs(), "x": _tensor(999, [1, 1])}),
        Code.INVALID_ARGUMENT, "Expected input x to be DT_FLOAT but got 999."),
    "wrong rank": ("Predict", _predict_request(inputs={
        **_inputs(), "x": _tensor(types_pb2.DT_FLOAT, [2], float_val=[1, 2])}),
        Code.INVALID_ARGUMENT, "input x: shape [2] does not match the signature's [-1,-1]"),
    "unparsable tensor": ("Predict", _predict_request(inputs={
        **_inputs(), "x": _tensor(types_pb2.DT_FLOAT, [2, 2], tensor_content=b"\0" * 12)}),
        Code.INVALID_ARGUMENT, "tensor parsing error: x"),
    "unknown output": ("Predict", _predict_request(output_filter=["nope"]),
                       Code.INVALID_ARGUMENT, "output tensor alias not found in signature: nope "
                       "Outputs expected to be in the set {embedding,label,shifted_id}."),
    "duplicate output": ("Predict", _predict_request(output_filter=["label", "label"]),
                         Code.INVALID_ARGUMENT, "duplicate output tensor alias: label"),
    "error while running": ("Predict", _predict_request(signature="score",
                                                        inputs=_SCORE_MISMATCH),
                            Code.INVALID_ARGUMENT, "Matrix size-incompatible"),
    "metadata, no field": ("GetModelMetadata", _metadata_request(fields=()),
                           Code.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field"),
    "metadata, unknown field": ("GetModelMetadata", _metadata_request(fields=("graph",)),
                                Code.INVALID_ARGUMENT, "Metadata field graph is not supported"),
    "metadata, unknown model": ("GetModelMetadata", _metadata_request(model="nope"),
                                Code.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    "status, unknown model": ("GetModelStatus", _status_request("nope"), Code.NOT_FOUND,
                              "Could not find any versions of model nope"),
    "status, unknown version": ("GetModelStatus", _status_request("query_tower", 7),
                                Code.NOT_FOUND, "Could not find version 7 of model query_tower"),
    "Classify": ("Classify", classification_pb2.ClassificationRequest(), Code.UNIMPLEMENTED,
                 "Classify is not implemented"),
    "ReloadConfig": ("HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest(),
                     Code.UNIMPLEMENTED, "HandleReloadConfigRequest is not implemented"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_match_tf_serving(channel, case):
    rpc, request, code, message = ERRORS[case]
    stub = (model_service_pb2_grpc.ModelServiceStub if rpc in ("GetModelStatus",
                                                               "HandleReloadConfigRequest")
            else prediction_service_pb2_grpc.PredictionServiceStub)(channel)
    with pytest.raises(grpc.RpcError) as e:
        getattr(stub, rpc)(request, timeout=10)
    assert e.value.code() == code, e.value.details()
    assert message in e.value.details()


def test_pushers_model_config_file(base):
    with ModelServer(model_config_file=base / "models.config", host="127.0.0.1") as server, \
            grpc.insecure_channel(server.address) as channel:
        assert sorted(server.registry.names()) == ["candidate_tower", "query_tower"]
        # the Pusher's config keeps two versions: the previous one serves through a push
        assert _status(channel, "query_tower") == [(1, AVAILABLE, 0), (2, AVAILABLE, 0)]


def test_model_config_file_policies_and_labels(zoo, tmp_path):
    base = tmp_path / "serving"
    for version in (1, 2, 3):
        _install(zoo, base, "query_tower", version)
    _install(zoo, base, "candidate_tower", 1)
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
      config {{
        name: "tower"
        base_path: "{base / 'query_tower'}"
        model_platform: "tensorflow"
        model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
        version_labels {{ key: "stable" value: 1 }}
        version_labels {{ key: "canary" value: 2 }}
      }}
    }}""")
    with ModelServer(model_config_file=config, host="127.0.0.1") as server, \
            grpc.insecure_channel(server.address) as channel:
        assert server.registry.names() == ["tower"]  # candidate_tower is on disk, not listed
        assert _status(channel, "tower") == [(1, AVAILABLE, 0), (2, AVAILABLE, 0)]
        for kwargs, version in (({}, 2), ({"label": "stable"}, 1), ({"label": "canary"}, 2),
                                ({"version": 1}, 1)):
            response = _predict(channel, _predict_request(model="tower", **kwargs))
            assert response.model_spec.version.value == version
            assert tf.make_ndarray(response.outputs["shifted_id"]).tolist() == [7 + version,
                                                                                9 + version]
        for request in (_predict_request(model="tower", version=3),
                        _predict_request(model="candidate_tower")):
            with pytest.raises(grpc.RpcError) as e:
                _predict(channel, request)
            assert e.value.code() == Code.NOT_FOUND


def test_model_config_errors_name_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ValueError, match=r"bad.config: not a TF Serving model config"):
        read_model_config(bad)
    bad.write_text("model_config_list { config { name: 'x' base_path: '/m' "
                   "model_platform: 'pytorch' } }")
    with pytest.raises(ValueError, match="'pytorch' is not supported"):
        read_model_config(bad)


def test_a_taken_port_is_an_error_not_a_shared_port(server, base):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server.port}: is another"):
        ModelServer(base, host="127.0.0.1", port=server.port).start()


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)


def test_hot_swap_under_load_fails_no_request(zoo, tmp_path):
    base = tmp_path / "serving"
    _install(zoo, base, "query_tower", 1)
    with ModelServer(base, host="127.0.0.1", poll_seconds=0.1) as server, \
            grpc.insecure_channel(server.address) as channel:
        stop, errors = threading.Event(), []
        answers: list[list[tuple[float, int, float]]] = [[] for _ in range(4)]

        def hammer(out):
            while not stop.is_set():
                try:
                    response = _predict(channel, _predict_request(output_filter=["embedding"]))
                except grpc.RpcError as e:
                    errors.append(e)
                    continue
                out.append((time.monotonic(), response.model_spec.version.value,
                            float(tf.make_ndarray(response.outputs["embedding"])[0, 0])))

        threads = [threading.Thread(target=hammer, args=(out,)) for out in answers]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: all(answers), 10, "every client thread's first answer")
            pushed_at = time.monotonic()
            _install(zoo, base, "query_tower", 2)
            _wait_for(lambda: all(out[-1][1] == 2 for out in answers), 10, "version 2")
            time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:3]
        for out in answers:
            versions = [v for _, v, _ in out]
            assert versions == sorted(versions) and set(versions) == {1, 2}  # never back to 1
            assert all(embedding == v * 1.0 for _, v, embedding in out)  # x[0, 0] = 1
        switched_s = min(t for out in answers for t, v, _ in out if v == 2) - pushed_at
        assert switched_s < 5, f"took {switched_s:.2f} s to serve the new version"
        assert _status(channel, "query_tower") == [(1, END, 0), (2, AVAILABLE, 0)]


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(zoo, tmp_path):
    base = tmp_path / "serving"
    _install(zoo, base, "query_tower", 1)
    with ModelServer(base, host="127.0.0.1", poll_seconds=0.1) as server, \
            grpc.insecure_channel(server.address) as channel:
        broken = base / "query_tower" / ".2.tmp"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(base / "query_tower" / "2")
        _wait_for(lambda: len(_status(channel, "query_tower")) == 2, 10, "the failed load")
        (v1, v1_state, v1_code), (v2, v2_state, v2_code) = _status(channel, "query_tower")
        assert (v1, v1_state, v1_code, v2, v2_state) == (1, AVAILABLE, 0, 2, END)
        assert v2_code != 0
        assert _predict(channel, _predict_request()).model_spec.version.value == 1


def test_serves_pushes_after_an_empty_start_and_unloads_deleted_versions(zoo, tmp_path):
    base = tmp_path / "serving"  # no push yet: the directory does not even exist
    with ModelServer(base, host="127.0.0.1", poll_seconds=0.1) as server, \
            grpc.insecure_channel(server.address) as channel:
        assert server.registry.names() == []
        _install(zoo, base, "query_tower", 1)
        _install(zoo, base, "query_tower", 2)
        _wait_for(lambda: server.registry.loaded("query_tower") == [2], 10, "the first push")
        shutil.rmtree(base / "query_tower" / "2")  # a rollback: version 1 is the latest again
        _wait_for(lambda: server.registry.loaded("query_tower") == [1], 10, "the rollback")
        assert _predict(channel, _predict_request()).model_spec.version.value == 1
        shutil.rmtree(base / "query_tower")
        _wait_for(lambda: server.registry.names() == [], 10, "the model's removal")
        assert _status(channel, "query_tower") == [(1, END, 0), (2, END, 0)]


def test_server_arguments_are_checked(base):
    with pytest.raises(ValueError, match="give a model base directory"):
        ModelServer()
    with pytest.raises(ValueError, match="poll_seconds must be > 0"):
        ModelServer(base, poll_seconds=0)


def test_client_matches_the_in_process_model(server, zoo):
    rng = np.random.default_rng(0)
    inputs = {"item_id": rng.integers(0, 10_000, 5),
              "x": rng.normal(size=(5, 8)).astype(np.float32),
              "tag": np.array(["drama", "kids", "", "news", "ünïcode"])}
    local = tf.saved_model.load(str(zoo / "2")).signatures
    expected = local["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    with TFServingClient(server.address) as client:
        served, version = client.predict_with_version("query_tower", inputs)
        assert version == 2 and set(served) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(served[name], value.numpy())
        query, candidates = inputs["x"][:2], rng.normal(size=(1000, 8)).astype(np.float32)
        scores = client.predict("query_tower", {"query": query, "candidates": candidates},
                                signature_name="score")
        np.testing.assert_array_equal(
            scores["scores"], local["score"](query=query, candidates=candidates)["scores"])


def test_client_metadata_status_and_errors(server):
    with TFServingClient(server.address) as client:
        metadata = client.get_model_metadata("query_tower")
        assert (metadata.name, metadata.version) == ("query_tower", 2)
        assert metadata.signatures["serving_default"].inputs == {
            "item_id": TensorSpec(tf.int64, (-1,)), "x": TensorSpec(tf.float32, (-1, -1)),
            "tag": TensorSpec(tf.string, (-1,))}
        assert metadata.signatures["score"].outputs == {"scores": TensorSpec(tf.float32, (-1, -1))}
        assert client.get_model_status("query_tower") == [VersionStatus(2, "AVAILABLE", 0, "")]

        with pytest.raises(ModelNotFoundError, match="Latest\\(nope\\)") as e:
            client.predict("nope", {"x": np.zeros((1, 1), np.float32)})
        assert e.value.code == Code.NOT_FOUND and isinstance(e.value.__cause__, grpc.RpcError)
        with pytest.raises(InvalidRequestError, match="Missing but required: {item_id,tag}"):
            client.predict("query_tower", {"x": np.zeros((1, 1), np.float32)})
        with pytest.raises(InvalidRequestError, match="to be DT_FLOAT but got DT_DOUBLE"):
            client.predict("query_tower", {"item_id": np.array([1]), "x": np.zeros((1, 1)),
                                           "tag": np.array(["a"])})
    with TFServingClient(f"127.0.0.1:{_free_port()}", timeout_s=2) as nowhere:
        with pytest.raises(ServerUnavailableError, match="is a model server listening"):
            nowhere.get_model_status("query_tower")


def test_messages_over_grpcs_4mb_default(server):
    x = np.arange(1000 * 2048, dtype=np.float32).reshape(1000, 2048)  # 8 MB each way
    with TFServingClient(server.address) as client:
        served = client.predict("query_tower", {"item_id": np.array([1]), "x": x,
                                                "tag": np.array(["a"])})
    np.testing.assert_array_equal(served["embedding"], x * 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_logs_loads_and_stops_on_sigterm(base):
    port = _free_port()
    code = ("import sys; from marquee.dev.model_server import serve; "
            "serve(sys.argv[1], int(sys.argv[2]), poll_seconds=0.2, host='127.0.0.1')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(base), str(port)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        with TFServingClient(f"127.0.0.1:{port}", timeout_s=2) as client:
            def up():
                try:
                    return client.get_model_status("candidate_tower")[0].state == "AVAILABLE"
                except ServerUnavailableError:
                    return False
            _wait_for(up, 60, "the server subprocess")
            assert client.predict("candidate_tower", {"item_id": np.array([1]),
                                                      "x": np.ones((1, 1), np.float32),
                                                      "tag": np.array(["a"])})["shifted_id"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    log = proc.stderr.read()
    assert re.search(r"loaded query_tower version 2 from \S+ in \d+\.\d\d s", log), log
    assert re.search(r"skipping \S+retrieval_index: no <version>/saved_model.pb", log), log
    assert "shutting down" in log
