"""AnomalyGate: fails the pipeline run on schema anomalies, and on drift when the policy says so.

ExampleValidator and DistributionValidator only record what they found; downstream components
would train on bad data. Place Transform downstream of this gate
(``transform.add_upstream_node(gate)``).

When the data passes, the gate outputs it as ``baseline_statistics`` (a copy of the statistics
it let through): the next run's DistributionValidator compares with the latest of these, so a
run stopped for drift never becomes the baseline (re-running the same data stops again).
"""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.anomaly_gate.executor import BASELINE_STATISTICS, Executor
from marquee.config import Config


class AnomalyGateSpec(ComponentSpec):
    PARAMETERS = {"config_json": ExecutionParameter(type=str)}
    INPUTS = {
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "drift_anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies,
                                            optional=True),
    }
    OUTPUTS = {BASELINE_STATISTICS: ChannelParameter(type=standard_artifacts.ExampleStatistics)}


class AnomalyGate(base_component.BaseComponent):
    SPEC_CLASS = AnomalyGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, anomalies, statistics, config: Config, drift_anomalies=None):
        super().__init__(spec=AnomalyGateSpec(
            anomalies=anomalies, statistics=statistics, drift_anomalies=drift_anomalies,
            config_json=config.to_json(),
            **{BASELINE_STATISTICS: types.Channel(type=standard_artifacts.ExampleStatistics)}))
