"""ScannIndexer: embeds the catalogue with the trained candidate tower, builds a ScaNN index,
measures recall@k against brute force and latency on held-out queries, and blesses it or not."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.scann_indexer.executor import Executor
from marquee.config import Config


class ScannIndex(Artifact):
    """A ScaNN index over the catalogue with its item-id mapping (custom property ``blessed``)."""

    TYPE_NAME = "marquee.ScannIndex"


class ScannIndexerSpec(ComponentSpec):
    PARAMETERS = {"config_json": ExecutionParameter(type=str)}
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {"index": ChannelParameter(type=ScannIndex)}


class ScannIndexer(base_component.BaseComponent):
    SPEC_CLASS = ScannIndexerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, examples, config: Config):
        super().__init__(spec=ScannIndexerSpec(
            model=model, examples=examples, config_json=config.to_json(),
            index=types.Channel(type=ScannIndex)))
