"""EmbeddingDrift: after a push, how far the new version's embeddings moved from the previous
pushed version's (norm distributions, top-k neighbour overlap per title); see
``marquee/monitoring/embedding_drift.py``. A report only: it blesses and stops nothing."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.embedding_drift.executor import Executor
from marquee.config import Config


class EmbeddingDriftReport(Artifact):
    """``embedding_drift.json`` (the report) and ``neighbour_overlap.csv`` (item_id, overlap)."""

    TYPE_NAME = "marquee.EmbeddingDriftReport"


class EmbeddingDriftSpec(ComponentSpec):
    PARAMETERS = {"config_json": ExecutionParameter(type=str)}
    INPUTS = {
        "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {"report": ChannelParameter(type=EmbeddingDriftReport)}


class EmbeddingDrift(base_component.BaseComponent):
    SPEC_CLASS = EmbeddingDriftSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, pushed_model, examples, config: Config):
        super().__init__(spec=EmbeddingDriftSpec(
            pushed_model=pushed_model, examples=examples, config_json=config.to_json(),
            report=types.Channel(type=EmbeddingDriftReport)))
