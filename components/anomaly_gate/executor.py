"""AnomalyGate executor: stops the run on schema anomalies, and on drift under ``stop``."""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from marquee import io
from marquee.config import Config
from marquee.monitoring.drift import read_drift

ANOMALIES_FILE = "SchemaDiff.pb"
BASELINE_STATISTICS = "baseline_statistics"
DRIFT_BREACHES = "drift_breaches"  # custom property of the baseline: breaches let through


class AnomaliesFound(RuntimeError):
    """The examples do not match the curated schema; the message names each feature."""


class DriftFound(AnomaliesFound):
    """The training data moved past a drift threshold and ``monitor.drift_policy`` is stop."""


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


def check_drift(drift_uri: str | None, policy: str) -> list[str]:
    """The drift breaches DistributionValidator wrote under ``drift_uri`` (None: no validator),
    one line each ('split: feature ...: measure value > threshold (...)'). Under ``policy``
    "stop" any breach raises DriftFound; under "warn" they are returned (and printed)."""
    if drift_uri is None:
        return []
    lines = [f"{split.split_pair}: {c.line()}" for split in read_drift(drift_uri)
             for c in split.breaches]
    if lines and policy == "stop":
        raise DriftFound(
            "DistributionValidator found drift between this run's training data and the last "
            "data the gate accepted (monitor.drift_policy is stop); the run stops before "
            "training:\n  " + "\n  ".join(lines) + "\nIf the shift is expected (a season, a new "
            "market, a catalogue change), accept it: run once with `monitor: {drift_policy: "
            "warn}` in the config, and later runs compare with this data. To loosen a check, "
            "raise the feature's drift_comparator threshold in pipeline/schema/schema.pbtxt "
            "(or monitor.drift_linf_threshold / drift_jsd_threshold for all features of a "
            "measure). Otherwise find what changed upstream of the dataset folder."
        )
    for line in lines:
        print(f"AnomalyGate: drift (monitor.drift_policy is warn, the run goes on): {line}")
    return lines


def publish_baseline(statistics, baseline) -> None:
    """Copies the statistics artifact ``statistics`` (its files and split names) into the output
    artifact ``baseline``: the data the gate let through, which the next run compares with."""
    io.copy_tree(statistics.uri, baseline.uri)
    baseline.split_names = statistics.split_names
    if statistics.has_property("span"):
        baseline.span = statistics.span


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        anomalies = artifact_utils.get_single_instance(input_dict["anomalies"])
        check_anomalies(anomalies.uri)
        drift = input_dict.get("drift_anomalies") or []
        policy = Config.from_json(exec_properties["config_json"]).monitor.drift_policy
        breaches = check_drift(artifact_utils.get_single_instance(drift).uri if drift else None,
                               policy)
        baseline = artifact_utils.get_single_instance(output_dict[BASELINE_STATISTICS])
        publish_baseline(artifact_utils.get_single_instance(input_dict["statistics"]), baseline)
        baseline.set_int_custom_property(DRIFT_BREACHES, len(breaches))
