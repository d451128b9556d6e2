"""ModelPusher: pushes towers + index, and the ranker, into the versioned serving layout, each
only when blessed. Artifact URIs and ``serving_dir`` may be local or remote (``gs://...``)."""

from __future__ import annotations

import json
import os

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import path_utils

from components.model_pusher import push_lib
from components.scann_indexer.component import ScannIndex
from components.scann_indexer.executor import BLESSED
from marquee import io
from marquee.io import runtime_or_str
from trainer.retrieval import METADATA_FILE


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        index = artifact_utils.get_single_instance(input_dict["index"])
        pushed = artifact_utils.get_single_instance(output_dict["pushed_model"])
        serving_dir = path_utils.serving_model_path(model.uri)
        run = json.loads(io.read_text(os.path.join(serving_dir, METADATA_FILE)))["training_run"]
        ranker_dir, ranker_blessed = None, False
        if input_dict.get("ranking_model"):
            ranking = artifact_utils.get_single_instance(input_dict["ranking_model"])
            verdict = artifact_utils.get_single_instance(input_dict["ranking_blessing"])
            ranker_dir = os.path.join(path_utils.serving_model_path(ranking.uri), push_lib.RANKER)
            ranker_blessed = bool(verdict.get_int_custom_property(BLESSED))
        als_dir = (artifact_utils.get_single_instance(input_dict["als_model"]).uri
                   if input_dict.get("als_model") else None)
        result = push_lib.push(serving_dir, index.uri,
                               bool(index.get_int_custom_property(BLESSED)),
                               exec_properties["serving_dir"], run,
                               ranker_dir=ranker_dir, ranker_blessed=ranker_blessed,
                               als_dir=als_dir)
        pushed.set_int_custom_property("pushed", int(result.pushed))
        if result.version is not None:
            pushed.set_int_custom_property("pushed_version", result.version)
        io.write_text(os.path.join(pushed.uri, "push.json"),
                      json.dumps({**vars(result), "training_run": run}, indent=2))
        print(f"ModelPusher: {result.reason}")


class ModelPusherSpec(ComponentSpec):
    PARAMETERS = {"serving_dir": ExecutionParameter(type=str)}
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "index": ChannelParameter(type=ScannIndex),
        "ranking_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        "ranking_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        "als_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}


class ModelPusher(base_component.BaseComponent):
    SPEC_CLASS = ModelPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, index, serving_dir: str, ranking_model=None,
                 ranking_blessing=None, als_model=None):
        super().__init__(spec=ModelPusherSpec(
            model=model, index=index, serving_dir=runtime_or_str(serving_dir),
            ranking_model=ranking_model, ranking_blessing=ranking_blessing, als_model=als_model,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel)))
