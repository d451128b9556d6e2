"""AnomalyGate executor: stops the run when ExampleValidator found anomalies."""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class AnomaliesFound(RuntimeError):
    """The examples do not match the curated schema; the message names each feature."""


def describe_anomalies(anomalies_uri: str) -> list[str]:
    """One line per anomalous feature per split: 'split: feature: what was wrong'.

    ``anomalies_uri`` may be local or a URI (read through tf.io.gfile)."""
    lines = []
    for path in sorted(tf.io.gfile.glob(os.path.join(anomalies_uri, "Split-*", ANOMALIES_FILE))):
        split = os.path.basename(os.path.dirname(path)).removeprefix("Split-")
        proto = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as fh:
            proto.ParseFromString(fh.read())
        for feature, info in sorted(proto.anomaly_info.items()):
            what = "; ".join(r.description for r in info.reason) or info.description
            lines.append(f"{split}: feature '{feature}': {info.short_description}: {what}")
        if proto.HasField("dataset_anomaly_info"):
            d = proto.dataset_anomaly_info
            lines.append(f"{split}: dataset: {d.short_description}: {d.description}")
    return lines


def check_anomalies(anomalies_uri: str) -> None:
    lines = describe_anomalies(anomalies_uri)
    if lines:
        raise AnomaliesFound(
            "ExampleValidator found anomalies against pipeline/schema/schema.pbtxt; the run "
            "stops before training:\n  " + "\n  ".join(lines) + "\nThese rows passed the "
            "data contract (marquee/data/contract.py), so the contract and the schema disagree: "
            "if the new values are intended, add them to pipeline/schema/schema.pbtxt; "
            "otherwise tighten the contract so `marquee data validate` rejects them."
        )


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        anomalies = artifact_utils.get_single_instance(input_dict["anomalies"])
        check_anomalies(anomalies.uri)
