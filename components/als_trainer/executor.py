"""AlsTrainer executor: reads the train split's positives, fits, saves (``als_lib``)."""

from __future__ import annotations

import dataclasses
import json
import os

from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.als_trainer import als_lib
from marquee import io
from marquee.als import INDEX_DIR, save_als
from marquee.config import Config
from trainer.retrieval import METADATA_FILE


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        towers = artifact_utils.get_single_instance(input_dict["retrieval_model"])
        out = artifact_utils.get_single_instance(output_dict["model"])
        run_config = Config.from_json(exec_properties["config_json"])
        config = run_config.als
        # The towers' run: serving uses the ALS model only beside the towers it was fitted with.
        meta = json.loads(io.read_text(os.path.join(path_utils.serving_model_path(towers.uri),
                                                    METADATA_FILE)))
        positives = als_lib.read_positives(examples.uri)
        model = als_lib.fit(positives, als_lib.catalogue_ids(examples.uri), config,
                            {"training_run": meta["training_run"]})
        # The index first: als.json, written last by save_als, marks the folder complete.
        evaluation = None
        if config.index:
            index_config = dataclasses.replace(
                run_config.index, leaves_to_search_share=config.index_leaves_to_search_share)
            evaluation = als_lib.build_index(model, positives, index_config,
                                             os.path.join(out.uri, INDEX_DIR))
        save_als(model, out.uri)
        out.set_int_custom_property("positives", len(positives))
        print(f"AlsTrainer: {model.factors} factors over {len(model.item_ids):,} titles from "
              f"{len(positives):,} positives in {model.metadata['fit_seconds']:.1f} s")
        if evaluation is not None:
            print(f"AlsTrainer: index over the item factors "
                  f"{'saved' if evaluation.blessed else 'NOT saved (serving scores every title)'}"
                  f": {evaluation.reason}")
