"""Drift between consecutive runs' training data: the comparators of the curated schema, as
TFX's DistributionValidator takes them, and what it found.

In the pipeline (``pipeline/pipeline.py``)::

    StatisticsGen ──────────────────────────────► DistributionValidator ─► AnomalyGate
    BaselineStatistics (resolver: the latest statistics ────┘   (train vs     │ (policy)
      an AnomalyGate accepted, i.e. the last run whose data      baseline      ▼
      went on to training)                                       train)     baseline_statistics

DistributionValidator (TFX 1.16; ExampleValidator compares with no earlier statistics) takes
its comparators from a ``DistributionValidatorConfig``, not from a schema: :func:`validator_config`
builds it from the curated schema's ``drift_comparator``s, so the schema stays their one home.
It writes its findings per split pair to ``SplitPair-<test>_<baseline>/SchemaDiff.pb``
(nothing when there is no baseline yet: the first run); :func:`read_drift` reads them back.
:func:`find_drift` is the same comparison on statistics in memory.
"""

from __future__ import annotations

import dataclasses
import os

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from marquee.monitoring.comparators import DRIFT, Comparison, compare, measurements, with_thresholds
from marquee.monitoring.config import MonitorConfig

ANOMALIES_FILE = "SchemaDiff.pb"
SPLIT_PAIR_PREFIX = "SplitPair-"
# The splits compared with the baseline's same split: the retrieval training data (the ranking
# splits are built from the same events, eval is its latest tenth).
DRIFT_SPLITS = ("train",)


def drift_schema(schema: schema_pb2.Schema, monitor: MonitorConfig) -> schema_pb2.Schema:
    """``schema`` with ``monitor``'s drift thresholds (where set) over the per-feature ones."""
    return with_thresholds(schema, DRIFT, monitor.drift_linf_threshold,
                           monitor.drift_jsd_threshold)


def validator_config(schema: schema_pb2.Schema, monitor: MonitorConfig):
    """The DistributionValidatorConfig comparing every feature that has a ``drift_comparator``
    in ``schema`` by that comparator (thresholds as :func:`drift_schema`)."""
    from tfx.proto import distribution_validator_pb2

    config = distribution_validator_pb2.DistributionValidatorConfig()
    for feature in drift_schema(schema, monitor).feature:
        if feature.HasField("drift_comparator"):
            entry = config.default_slice_config.feature.add()
            entry.path.step.append(feature.name)
            entry.distribution_comparator.CopyFrom(feature.drift_comparator)
    if not config.default_slice_config.feature:
        raise ValueError("the schema gives no feature a drift_comparator, so nothing would be "
                         "compared with the previous run; add drift_comparator { infinity_norm "
                         "{ threshold: ... } } (categorical) or jensen_shannon_divergence "
                         "(numeric) to features of pipeline/schema/schema.pbtxt")
    return config


def find_drift(current: statistics_pb2.DatasetFeatureStatisticsList,
               previous: statistics_pb2.DatasetFeatureStatisticsList,
               schema: schema_pb2.Schema, monitor: MonitorConfig = MonitorConfig(),
               ) -> list[Comparison]:
    """Every drift comparator of ``schema`` measured from ``previous`` to ``current`` (one
    dataset each), breached or not."""
    return compare(current, drift_schema(schema, monitor), previous=previous)


@dataclasses.dataclass(frozen=True)
class SplitDrift:
    """What DistributionValidator found for one split pair: every configured comparison."""

    split_pair: str  # "train" when a split is compared with the baseline's same split
    comparisons: tuple[Comparison, ...]

    @property
    def breaches(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.breached]


def _split_pair_name(name: str) -> str:
    half = len(name) // 2
    if len(name) % 2 and name[half] == "_" and name[:half] == name[half + 1:]:
        return name[:half]  # DistributionValidator names a pair "<test>_<baseline>"
    return name


def read_drift(anomalies_uri: str) -> list[SplitDrift]:
    """DistributionValidator's findings under ``anomalies_uri`` (local or a URI), one entry per
    split pair, each listing every feature it compared (and any it could not); ``[]`` when it
    compared nothing (no baseline yet)."""
    import tensorflow as tf

    out = []
    pattern = os.path.join(anomalies_uri, f"{SPLIT_PAIR_PREFIX}*", ANOMALIES_FILE)
    for path in sorted(tf.io.gfile.glob(pattern)):
        pair = os.path.basename(os.path.dirname(path)).removeprefix(SPLIT_PAIR_PREFIX)
        proto = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as fh:
            proto.ParseFromString(fh.read())
        found = measurements(proto, DRIFT)
        out.append(SplitDrift(_split_pair_name(pair), tuple(found)))
    return out
