"""AnomalyGate: fails the pipeline run when ExampleValidator reports any anomaly.

ExampleValidator only records anomalies; downstream components would train on bad data. Place
Transform downstream of this gate (``transform.add_upstream_node(gate)``).
"""

from __future__ import annotations

from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec

from components.anomaly_gate.executor import Executor


class AnomalyGateSpec(ComponentSpec):
    PARAMETERS = {}
    INPUTS = {"anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies)}
    OUTPUTS = {}


class AnomalyGate(base_component.BaseComponent):
    SPEC_CLASS = AnomalyGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, anomalies):
        super().__init__(spec=AnomalyGateSpec(anomalies=anomalies))
