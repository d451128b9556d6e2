"""RankingTrainer: TFX's Trainer with one more input, the ALS model, whose scores are the
ranker's ALS feature (``trainer/als_feature.py``). The stock Trainer takes no second model; this
spec adds ``als_model`` and the executor hands its URI to ``run_fn`` in ``custom_config``."""

from __future__ import annotations

from tfx import types
from tfx.components.trainer import component as trainer_component
from tfx.dsl.components.base import executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components.ranking_trainer.executor import ALS_MODEL, Executor


class RankingTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
              ALS_MODEL: ChannelParameter(type=standard_artifacts.Model, optional=True)}


class RankingTrainer(trainer_component.Trainer):
    SPEC_CLASS = RankingTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, *, examples, transform_graph, base_model, run_fn: str,
                 train_args: trainer_pb2.TrainArgs, eval_args: trainer_pb2.EvalArgs,
                 custom_config: dict, als_model=None):
        # The Trainer's own __init__ builds its spec; this one builds the wider spec instead.
        spec = RankingTrainerSpec(
            examples=examples, transform_graph=transform_graph, base_model=base_model,
            als_model=als_model, train_args=train_args, eval_args=eval_args, run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super(trainer_component.Trainer, self).__init__(spec=spec)
