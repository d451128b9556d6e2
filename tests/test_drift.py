"""Drift on hand-built statistics: the comparison, TFX's DistributionValidator and the gate.

Hand-checkable numbers used below:

- L-infinity of device shares tv/web 0.6/0.4 -> 0.4/0.6: max(|0.6-0.4|, |0.4-0.6|) = 0.2.
- Jensen-Shannon divergence (base 2) of hour histograms [0.5, 0.5] -> [1, 0] on the same two
  buckets: m = [0.75, 0.25]; KL(p||m) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25) = 0.20752;
  KL(q||m) = log2(1/0.75) = 0.41504; JSD = (0.20752 + 0.41504) / 2 = 0.31128.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2
from tfx.components.distribution_validator import executor as dv_executor
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

from components.anomaly_gate.executor import (
    BASELINE_STATISTICS,
    DRIFT_BREACHES,
    DriftFound,
    check_drift,
)
from components.anomaly_gate.executor import Executor as GateExecutor
from marquee.config import Config, from_dict
from marquee.monitoring.comparators import JSD, LINF
from marquee.monitoring.config import MonitorConfig
from marquee.monitoring.drift import find_drift, read_drift, validator_config
from pipeline.pipeline import SCHEMA_FILE

SCHEMA = text_format.Parse("""
feature { name: "device" type: BYTES
          drift_comparator { infinity_norm { threshold: 0.1 } }
          skew_comparator { infinity_norm { threshold: 0.1 } } }
feature { name: "hour" type: INT
          drift_comparator { jensen_shannon_divergence { threshold: 0.1 } }
          skew_comparator { jensen_shannon_divergence { threshold: 0.1 } } }
""", schema_pb2.Schema())
EVEN_HOURS = [(0, 12, 50), (12, 24, 50)]


def stats(device: dict[str, int], hour: list[tuple[float, float, int]]
          ) -> statistics_pb2.DatasetFeatureStatisticsList:
    """One dataset: a string feature ``device`` with these value counts and an int feature
    ``hour`` with this standard histogram [(low, high, count)], as StatisticsGen writes them."""
    out = statistics_pb2.DatasetFeatureStatisticsList()
    n = sum(device.values())
    d = out.datasets.add(num_examples=n)
    f = d.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
    f.path.step.append("device")
    f.string_stats.common_stats.num_non_missing = n
    f.string_stats.common_stats.min_num_values = f.string_stats.common_stats.max_num_values = 1
    f.string_stats.unique = len(device)
    ranked = sorted(device.items(), key=lambda kv: -kv[1])
    for rank, (label, count) in enumerate(ranked):
        f.string_stats.top_values.add(value=label, frequency=count)
        f.string_stats.rank_histogram.buckets.add(low_rank=rank, high_rank=rank, label=label,
                                                  sample_count=count)
    g = d.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
    g.path.step.append("hour")
    g.num_stats.common_stats.num_non_missing = sum(c for _, _, c in hour)
    g.num_stats.common_stats.min_num_values = g.num_stats.common_stats.max_num_values = 1
    g.num_stats.min, g.num_stats.max = hour[0][0], hour[-1][1]
    h = g.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
    for low, high, count in hour:
        h.buckets.add(low_value=low, high_value=high, sample_count=count)
    return out


def by_feature(comparisons) -> dict:
    return {c.feature: c for c in comparisons}


# ----------------------------------------------------------------------------- the comparison


def test_a_shifted_categorical_feature_trips_drift_and_an_unchanged_numeric_one_does_not():
    found = by_feature(find_drift(stats({"tv": 40, "web": 60}, EVEN_HOURS),
                                  stats({"tv": 60, "web": 40}, EVEN_HOURS), SCHEMA))
    assert found["device"].measure == LINF
    assert found["device"].value == pytest.approx(0.2)
    assert found["device"].breached
    assert "web" in found["device"].detail  # TFDV names the value that moved most
    assert found["hour"].measure == JSD
    assert found["hour"].value == pytest.approx(0.0)
    assert not found["hour"].breached


def test_a_shifted_numeric_feature_trips_drift():
    found = by_feature(find_drift(stats({"tv": 60, "web": 40}, [(0, 12, 100), (12, 24, 0)]),
                                  stats({"tv": 60, "web": 40}, EVEN_HOURS), SCHEMA))
    assert found["hour"].value == pytest.approx(0.31128, abs=1e-5)
    assert found["hour"].breached
    assert not found["device"].breached and found["device"].value == pytest.approx(0.0)


def test_a_shift_within_the_threshold_is_not_a_breach():
    # 0.60 -> 0.55: L-infinity 0.05 <= 0.1
    (device, _) = find_drift(stats({"tv": 55, "web": 45}, EVEN_HOURS),
                             stats({"tv": 60, "web": 40}, EVEN_HOURS), SCHEMA)
    assert device.value == pytest.approx(0.05) and not device.breached


def test_config_thresholds_replace_the_schemas_for_one_measure():
    monitor = MonitorConfig(drift_linf_threshold=0.25)
    found = by_feature(find_drift(stats({"tv": 40, "web": 60}, [(0, 12, 100), (12, 24, 0)]),
                                  stats({"tv": 60, "web": 40}, EVEN_HOURS), SCHEMA, monitor))
    assert (found["device"].threshold, found["device"].breached) == (0.25, False)  # 0.2 <= 0.25
    assert (found["hour"].threshold, found["hour"].breached) == (0.1, True)  # 0.311 > 0.1


def test_a_feature_missing_from_the_new_statistics_is_a_breach_not_a_pass():
    current = stats({"tv": 60, "web": 40}, EVEN_HOURS)
    del current.datasets[0].features[1]  # no hour statistics at all
    found = by_feature(find_drift(current, stats({"tv": 60, "web": 40}, EVEN_HOURS), SCHEMA))
    assert found["hour"].value is None and found["hour"].breached
    assert not found["device"].breached


def test_the_policy_and_thresholds_are_checked_when_the_config_loads():
    with pytest.raises(ValueError, match="drift_policy: expected one of warn, stop, got 'halt'"):
        from_dict({"monitor": {"drift_policy": "halt"}})
    with pytest.raises(ValueError, match="drift_jsd_threshold: expected a number >= 0"):
        from_dict({"monitor": {"drift_jsd_threshold": -0.1}})
    assert from_dict({"monitor": {"drift_policy": "stop"}}).monitor.drift_policy == "stop"


# ----------------------------------------------------------------------------- the curated schema

CATEGORICAL = {"country", "subscription_tier", "age_bucket", "device", "genres"}
NUMERIC = {"hour", "day_of_week", "release_year", "duration_seconds", "watch_seconds",
           "position"}


def test_the_curated_schema_compares_categorical_features_by_linf_and_numeric_ones_by_jsd():
    schema = io_utils.SchemaReader().read(SCHEMA_FILE)
    drift = {f.name: f for f in schema.feature if f.HasField("drift_comparator")}
    assert set(drift) == CATEGORICAL | NUMERIC  # ids, titles and timestamps always move
    for name, feature in drift.items():
        has_linf = feature.drift_comparator.HasField("infinity_norm")
        has_jsd = feature.drift_comparator.HasField("jensen_shannon_divergence")
        assert (has_linf, has_jsd) == ((True, False) if name in CATEGORICAL else (False, True))
        assert (feature.type == schema_pb2.BYTES) == (name in CATEGORICAL), name
    skew = {f.name for f in schema.feature if f.HasField("skew_comparator")}
    # no watch time on a shown title, positions of the page layout, and a log window of a few
    # days holds few weekdays
    assert skew == CATEGORICAL | NUMERIC - {"watch_seconds", "position", "day_of_week"}


def test_the_validator_config_carries_the_schemas_drift_comparators_with_config_overrides():
    schema = io_utils.SchemaReader().read(SCHEMA_FILE)
    config = validator_config(schema, MonitorConfig(drift_jsd_threshold=0.3))
    got = {".".join(f.path.step): f.distribution_comparator
           for f in config.default_slice_config.feature}
    assert set(got) == CATEGORICAL | NUMERIC
    schema_linf = {f.name: f.drift_comparator.infinity_norm.threshold for f in schema.feature
                   if f.name in CATEGORICAL}
    for name, comparator in got.items():
        if name in CATEGORICAL:
            assert comparator.infinity_norm.threshold == pytest.approx(schema_linf[name])
        else:
            assert comparator.jensen_shannon_divergence.threshold == pytest.approx(0.3)


def test_a_schema_without_drift_comparators_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="gives no feature a drift_comparator.*schema.pbtxt"):
        validator_config(schema_pb2.Schema(), MonitorConfig())


# ---------------------------------------------------------------------- DistributionValidator


def _statistics_artifact(root, name: str, split_stats: dict
                         ) -> standard_artifacts.ExampleStatistics:
    artifact = standard_artifacts.ExampleStatistics()
    artifact.uri = str(root / name)
    artifact.split_names = artifact_utils.encode_split_names(list(split_stats))
    for split, s in split_stats.items():
        (root / name / f"Split-{split}").mkdir(parents=True)
        (root / name / f"Split-{split}" / "FeatureStats.pb").write_bytes(s.SerializeToString())
    return artifact


def _validate(tmp_path, current, baseline) -> str:
    """TFX's DistributionValidator executor, as the pipeline configures it, on hand-built
    statistics; returns its anomalies folder."""
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(tmp_path / "anomalies")
    inputs = {"statistics": [_statistics_artifact(tmp_path, "current", {"train": current})],
              "baseline_statistics": ([_statistics_artifact(tmp_path, "baseline",
                                                            {"train": baseline})]
                                      if baseline is not None else [])}
    dv_executor.Executor().Do(inputs, {"anomalies": [anomalies]}, {
        "distribution_validator_config": validator_config(SCHEMA, MonitorConfig()),
        "include_split_pairs": json.dumps([["train", "train"]])})
    return anomalies.uri


def test_the_distribution_validator_finds_the_shifted_feature_only(tmp_path):
    uri = _validate(tmp_path, stats({"tv": 40, "web": 60}, EVEN_HOURS),
                    stats({"tv": 60, "web": 40}, EVEN_HOURS))
    (split,) = read_drift(uri)
    assert split.split_pair == "train"
    found = by_feature(split.comparisons)
    assert set(found) == {"device", "hour"}
    assert found["device"].value == pytest.approx(0.2) and found["device"].breached
    assert found["hour"].value == pytest.approx(0.0) and not found["hour"].breached
    assert [c.feature for c in split.breaches] == ["device"]


def test_without_a_baseline_nothing_is_compared_and_the_gate_passes(tmp_path):
    uri = _validate(tmp_path, stats({"tv": 40, "web": 60}, EVEN_HOURS), None)
    assert read_drift(uri) == []
    assert check_drift(uri, "stop") == []


def test_the_gate_stops_under_stop_naming_the_feature_and_the_fix(tmp_path):
    uri = _validate(tmp_path, stats({"tv": 40, "web": 60}, EVEN_HOURS),
                    stats({"tv": 60, "web": 40}, EVEN_HOURS))
    with pytest.raises(DriftFound) as e:
        check_drift(uri, "stop")
    message = str(e.value)
    assert "train: feature 'device': L-infinity 0.2000 > 0.1" in message
    assert "'hour'" not in message
    assert "drift_policy: warn" in message and "schema.pbtxt" in message


def _gate(tmp_path, drift_uri: str, policy: str):
    schema_anomalies = standard_artifacts.ExampleAnomalies()
    schema_anomalies.uri = str(tmp_path / "schema_anomalies")  # empty: no schema anomaly
    drift = standard_artifacts.ExampleAnomalies()
    drift.uri = drift_uri
    statistics = artifact_utils.get_single_instance(
        [_statistics_artifact(tmp_path, "gate_in", {"train": stats({"tv": 1}, EVEN_HOURS)})])
    baseline = standard_artifacts.ExampleStatistics()
    baseline.uri = str(tmp_path / "gate_out")
    config = dataclasses.replace(Config(), monitor=MonitorConfig(drift_policy=policy))
    GateExecutor().Do({"anomalies": [schema_anomalies], "drift_anomalies": [drift],
                       "statistics": [statistics]},
                      {BASELINE_STATISTICS: [baseline]}, {"config_json": config.to_json()})
    return statistics, baseline


def test_the_gate_lets_drift_through_under_warn_and_publishes_the_new_baseline(tmp_path, capsys):
    uri = _validate(tmp_path, stats({"tv": 40, "web": 60}, EVEN_HOURS),
                    stats({"tv": 60, "web": 40}, EVEN_HOURS))
    statistics, baseline = _gate(tmp_path, uri, "warn")
    assert "drift (monitor.drift_policy is warn, the run goes on): train: feature 'device'" in (
        capsys.readouterr().out)
    assert baseline.get_int_custom_property(DRIFT_BREACHES) == 1
    assert baseline.split_names == statistics.split_names
    copied = tmp_path / "gate_out" / "Split-train" / "FeatureStats.pb"
    assert copied.read_bytes() == (tmp_path / "gate_in" / "Split-train" /
                                   "FeatureStats.pb").read_bytes()


def test_a_gate_stopped_for_drift_publishes_no_baseline(tmp_path):
    uri = _validate(tmp_path, stats({"tv": 40, "web": 60}, EVEN_HOURS),
                    stats({"tv": 60, "web": 40}, EVEN_HOURS))
    with pytest.raises(DriftFound):
        _gate(tmp_path, uri, "stop")
    assert not (tmp_path / "gate_out").exists()
