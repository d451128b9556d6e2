"""EmbeddingDrift executor: finds the version just pushed and the one before it, embeds this
run's eval queries with both query towers, and calls ``marquee.monitoring.embedding_drift``."""

from __future__ import annotations

import json
import os

from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from components.contract_example_gen.example_lib import CATALOGUE, EVAL, TRAIN
from marquee import io
from marquee.artifacts import CANDIDATE_TOWER
from marquee.config import Config
from marquee.monitoring import embedding_drift as ed
from trainer import features as f
from trainer import raw_inputs

PUSH_FILE = "push.json"  # what ModelPusher wrote into its output artifact


def pushed_base(push: dict) -> tuple[str, int] | None:
    """(model base, version) of a push that included the towers; None otherwise (nothing
    pushed, or only a ranker)."""
    tower = push.get("paths", {}).get(CANDIDATE_TOWER)
    if not push.get("pushed") or tower is None:
        return None
    return os.path.dirname(os.path.dirname(tower.rstrip("/"))), int(push["version"])


def drift_report(push: dict, examples_uri: str, config: Config
                 ) -> tuple[dict, list[tuple[int, float]]]:
    where = pushed_base(push)
    if where is None:
        return {"version": None, "reason": "no towers pushed by this run: nothing compared"}, []
    base, version = where
    monitor = config.monitor
    queries = raw_inputs.read_examples([os.path.join(examples_uri, f"Split-{EVAL}", "*")],
                                       limit=monitor.embedding_queries)
    if not queries:  # no eval split (tiny data): the train split's first examples
        queries = raw_inputs.read_examples(
            [os.path.join(examples_uri, f"Split-{TRAIN}", "*")], limit=monitor.embedding_queries)
    inputs = raw_inputs.parse_examples(queries, f.QUERY_FEATURES)
    catalogue = raw_inputs.columns([os.path.join(examples_uri, f"Split-{CATALOGUE}", "*")],
                                   [f.ITEM_ID, f.TITLE])
    titles = {int(i): t.decode() for i, t in zip(catalogue[f.ITEM_ID].tolist(),
                                                  catalogue[f.TITLE].tolist(), strict=True)}
    return ed.version_drift(base, version, inputs, monitor, titles)


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        pushed = artifact_utils.get_single_instance(input_dict["pushed_model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        out = artifact_utils.get_single_instance(output_dict["report"])
        push = json.loads(io.read_text(os.path.join(pushed.uri, PUSH_FILE)))
        report, per_title = drift_report(push, examples.uri,
                                         Config.from_json(exec_properties["config_json"]))
        io.write_text(os.path.join(out.uri, ed.REPORT_FILE), json.dumps(report, indent=2))
        io.write_text(os.path.join(out.uri, ed.OVERLAP_FILE),
                      "item_id,overlap\n" + "".join(f"{i},{o:.4f}\n" for i, o in per_title))
        if "neighbours" in report and report["neighbours"]["k"]:
            out.set_float_custom_property("mean_overlap", report["neighbours"]["mean_overlap"])
        print("EmbeddingDrift: " + "; ".join(ed.report_lines(report)))
