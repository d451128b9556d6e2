"""RankingEvaluator: blesses a ranking model only if it beats the last blessed one (or, the first
time, a popularity baseline) on the time-split rank_eval examples. Writes a ModelBlessing that
TFX's LatestBlessedModelStrategy understands."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.ranking_evaluator.executor import Executor
from marquee.config import Config


class RankingEvaluatorSpec(ComponentSpec):
    PARAMETERS = {"config_json": ExecutionParameter(type=str)}
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "retrieval_model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        # the AlsTrainer's model: the rows' ALS scores, for a ranker that takes them
        "als_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {"blessing": ChannelParameter(type=standard_artifacts.ModelBlessing)}


class RankingEvaluator(base_component.BaseComponent):
    SPEC_CLASS = RankingEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, examples, retrieval_model, config: Config, baseline_model=None,
                 als_model=None):
        super().__init__(spec=RankingEvaluatorSpec(
            model=model, examples=examples, retrieval_model=retrieval_model,
            baseline_model=baseline_model, als_model=als_model, config_json=config.to_json(),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
