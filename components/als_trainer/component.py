"""AlsTrainer: the ALS candidate source's item factors, fitted on the retrieval train split and
pushed with the towers they were trained beside (``marquee.als`` is the format)."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.als_trainer.executor import Executor
from marquee.config import Config


class AlsTrainerSpec(ComponentSpec):
    PARAMETERS = {"config_json": ExecutionParameter(type=str)}
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        # the retrieval Trainer's model: its training run is the ALS model's
        "retrieval_model": ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {"model": ChannelParameter(type=standard_artifacts.Model)}


class AlsTrainer(base_component.BaseComponent):
    SPEC_CLASS = AlsTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples, retrieval_model, config: Config):
        super().__init__(spec=AlsTrainerSpec(
            examples=examples, retrieval_model=retrieval_model, config_json=config.to_json(),
            model=types.Channel(type=standard_artifacts.Model)))
