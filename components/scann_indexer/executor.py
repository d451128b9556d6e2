"""ScannIndexer executor: loads the exported towers, embeds, and calls ``index_lib``."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.contract_example_gen.example_lib import CATALOGUE, EVAL
from components.scann_indexer import index_lib
from marquee.config import Config
from trainer import features as f
from trainer import raw_inputs
from trainer.retrieval import METADATA_FILE

BLESSED = "blessed"


def index_model(serving_dir: str, examples_uri: str, config: Config, out_dir: str):
    """Embeds the catalogue, up to ``eval_queries`` eval queries and (``tune_leaves``) up to
    ``tune_queries`` more through the exported SavedModels; builds the index, tunes its leaves
    searched on the extra queries, evaluates it on the first ones and saves it to ``out_dir``.

    Returns the IndexEvaluation. The index records the training run of the towers it was built
    with, so serving can refuse a query tower from another run.
    """
    with tf.io.gfile.GFile(os.path.join(serving_dir, METADATA_FILE)) as fh:
        meta = json.load(fh)
    candidate = tf.saved_model.load(os.path.join(serving_dir, "candidate_tower"))
    query = tf.saved_model.load(os.path.join(serving_dir, "query_tower"))

    catalogue = raw_inputs.read_examples([os.path.join(examples_uri, f"Split-{CATALOGUE}", "*")])
    cat_inputs = raw_inputs.parse_examples(catalogue, f.CANDIDATE_FEATURES)
    item_emb = raw_inputs.embed(candidate.signatures["serving_default"], cat_inputs)
    item_ids = cat_inputs[f.ITEM_ID].numpy().astype(np.int64)

    cfg = config.index
    wanted = cfg.eval_queries + (cfg.tune_queries if cfg.tune_leaves else 0)
    held_out = raw_inputs.read_examples(
        [os.path.join(examples_uri, f"Split-{EVAL}", "*")], limit=wanted)
    if held_out:
        queries = raw_inputs.embed(query.signatures["serving_default"],
                                   raw_inputs.parse_examples(held_out, f.QUERY_FEATURES))
    else:  # no eval split (tiny data): query with the items themselves
        rng = np.random.default_rng(cfg.seed)
        queries = item_emb[rng.choice(len(item_emb), min(wanted, len(item_emb)), replace=False)]
    # The first eval_queries evaluate the index; the rest, if any, tune its leaves searched.
    queries = queries.astype(np.float32)
    tune = queries[cfg.eval_queries:] if len(queries) > cfg.eval_queries else None
    searcher, evaluation = index_lib.build_and_evaluate(
        item_emb.astype(np.float32), item_ids, queries[:cfg.eval_queries], cfg,
        tune_queries=tune)
    index_lib.save_index(searcher, item_ids, evaluation, out_dir,
                         {"training_run": meta["training_run"],
                          "embedding_dim": int(item_emb.shape[1]),
                          # train positives per item: serving's popularity fallback
                          "popularity": meta.get("popularity", {})})
    return evaluation


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        index = artifact_utils.get_single_instance(output_dict["index"])
        config = Config.from_json(exec_properties["config_json"])
        evaluation = index_model(path_utils.serving_model_path(model.uri), examples.uri,
                                 config, index.uri)
        index.set_int_custom_property(BLESSED, int(evaluation.blessed))
        index.set_float_custom_property("recall", evaluation.recall)
        index.set_float_custom_property("latency_ms_p50", evaluation.latency_ms_p50)
        print(f"ScannIndexer: {evaluation.reason}")
