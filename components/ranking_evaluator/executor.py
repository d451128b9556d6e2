"""RankingEvaluator executor: scores rank_eval with the candidate and the baseline, blesses.

Every URI may be local or remote (``gs://...``): models and examples are read by TensorFlow,
``metrics.json`` is written through tf.io.gfile."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.contract_example_gen.example_lib import RANK_EVAL, RANK_TRAIN
from components.ranking_evaluator import eval_lib
from marquee import io
from marquee.config import Config
from trainer import als_feature, raw_inputs
from trainer import features as f
from trainer.ranking import P_WATCH, RETRIEVAL_SCORE, WATCH_TIME_SECONDS, labels, load_split

RANKER = "ranker"
METRICS_FILE = "metrics.json"


def predict(ranker_dir: str, data: dict, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(P(watched), log1p(predicted watch seconds)) from a ranking SavedModel."""
    fn = tf.saved_model.load(ranker_dir).signatures["serving_default"]
    keys = [k for k in fn.structured_input_signature[1]]
    missing = sorted(set(keys) - set(data))
    if missing:
        raise ValueError(f"the ranker at {ranker_dir} takes {missing}, which the evaluation rows "
                         "lack; give the RankingEvaluator the run's als_model")
    p, t = [], []
    n = len(data[RETRIEVAL_SCORE])
    for s in range(0, n, batch_size):
        out = fn(**{k: tf.constant(data[k][s:s + batch_size]) for k in keys})
        p.append(out[P_WATCH].numpy())
        t.append(np.log1p(out[WATCH_TIME_SECONDS].numpy()))
    return np.concatenate(p), np.concatenate(t)


def evaluate(ranker_dir: str, baseline_dir: str | None, examples_uri: str, retrieval_dir: str,
             config: Config, als_dir: str | None = None) -> dict:
    """Sliced metrics of the candidate and of the baseline, and the blessing verdict. Both
    rankers get the rows' scores of this run's towers (and ALS model, ``als_dir``) for the pair
    scores they take."""
    split = lambda s: [os.path.join(examples_uri, f"Split-{s}", "*")]  # noqa: E731
    als = als_feature.load_scorer(als_dir, examples_uri) if als_dir else None
    data = load_split(split(RANK_EVAL), retrieval_dir, config.evaluator.max_examples, als)
    if not data:
        raise ValueError("the rank_eval split is empty: nothing to evaluate the ranker on")
    train = raw_inputs.columns(split(RANK_TRAIN), (f.ITEM_ID, f.USER_ID, f.WATCH_SECONDS))
    train_items = train[f.ITEM_ID]
    threshold = config.ranking.min_watch_seconds  # the ranker's own label rule
    train_watched, train_time = labels(train[f.WATCH_SECONDS], threshold)
    y, log_time = labels(data[f.WATCH_SECONDS], threshold)
    slices = {
        "popularity": eval_lib.popularity_slices(data[f.ITEM_ID], train_items, train_watched),
        "user": np.where(np.isin(data[f.USER_ID], train[f.USER_ID]), "returning",
                         "new").astype(object),
    }
    p, t = predict(ranker_dir, data)
    candidate = eval_lib.sliced_metrics(y, p, log_time, t, slices)
    if baseline_dir:
        bp, bt = predict(baseline_dir, data)
        baseline_name = "the last blessed model"
    else:
        bp, bt = eval_lib.PopularityBaseline.fit(train_items, train_watched, train_time).predict(
            data[f.ITEM_ID])
        baseline_name = "the popularity baseline"
    baseline = eval_lib.sliced_metrics(y, bp, log_time, bt, slices)
    blessed, reason = eval_lib.bless(candidate["all"], baseline["all"], baseline_name,
                                     config.evaluator)
    return {"blessed": blessed, "reason": reason, "baseline": baseline_name,
            "candidate_metrics": candidate, "baseline_metrics": baseline}


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        retrieval = artifact_utils.get_single_instance(input_dict["retrieval_model"])
        baselines = input_dict.get("baseline_model") or []
        als = input_dict.get("als_model") or []
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        config = Config.from_json(exec_properties["config_json"])
        baseline_dir = (os.path.join(path_utils.serving_model_path(baselines[0].uri), RANKER)
                        if baselines else None)
        result = evaluate(os.path.join(path_utils.serving_model_path(model.uri), RANKER),
                          baseline_dir, examples.uri, path_utils.serving_model_path(retrieval.uri),
                          config, als[0].uri if als else None)
        io.write_text(os.path.join(blessing.uri, METRICS_FILE), json.dumps(result, indent=2))
        blessing.set_int_custom_property("blessed", int(result["blessed"]))
        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        print(f"RankingEvaluator: {result['reason']}")
