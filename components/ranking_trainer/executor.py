"""RankingTrainer executor: TFX's GenericExecutor, with the ALS model's URI added to the
``custom_config`` ``run_fn`` reads (``trainer.ranking.ALS_MODEL_KEY``)."""

from __future__ import annotations

from tfx.components.trainer import executor as trainer_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils

from trainer.ranking import ALS_MODEL_KEY

ALS_MODEL = "als_model"  # the component's input
CUSTOM_CONFIG = standard_component_specs.CUSTOM_CONFIG_KEY


class Executor(trainer_executor.GenericExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        als = input_dict.get(ALS_MODEL) or []
        if als:
            custom = json_utils.loads(exec_properties.get(CUSTOM_CONFIG) or "null") or {}
            custom[ALS_MODEL_KEY] = artifact_utils.get_single_instance(als).uri
            exec_properties = {**exec_properties, CUSTOM_CONFIG: json_utils.dumps(custom)}
        super().Do(input_dict, output_dict, exec_properties)
