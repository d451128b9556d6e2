"""Executor: validates the dataset and builds its examples in one Beam pipeline.

``data_dir`` and the output artifact's URI may be local paths or URIs (``gs://...``): the data
is read through tf.io.gfile (``marquee.data.contract``), the examples are written by Beam's
file sinks, and the files written here go through ``marquee.io``.
"""

from __future__ import annotations

import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.contract_example_gen import example_lib, validate_lib
from marquee import io
from marquee.config import Config
from marquee.data.validate import TooManyRejects, ValidationReport

COUNTS_FILE = "counts.json"
STATS_FILE = "_validation/stats.jsonl"
# packed events waiting for their user shard during the run (deleted by check_rejects)
SPILL_DIR = "_spill"


def write_examples(
    pipeline: beam.Pipeline, data_dir: str, config: Config, output_uri: str
) -> dict:
    """Adds the validation and the examples to ``pipeline``: gzipped TFRecords per split,
    rejected rows as CSV shards under ``rejects/``, the counts in ``_validation/``.

    The file-level checks (tables, columns, rows) run now and raise ContractError; the row
    checks run with the pipeline: call :func:`check_rejects` after it. Returns the cutoff, the
    rejects folder and the tables' plans.
    """
    plans = validate_lib.plan_tables(data_dir)
    cutoff = example_lib.time_cutoff(data_dir, config.data)
    spill = os.path.join(output_uri, SPILL_DIR)
    tf.io.gfile.makedirs(spill)
    outputs = example_lib.build_examples(pipeline, plans, config, cutoff, spill_dir=spill)
    for split in example_lib.SPLITS:
        pcoll = outputs[split]
        _ = pcoll | f"Write{split}" >> beam.io.WriteToTFRecord(
            os.path.join(output_uri, f"Split-{split}", "data_tfrecord"),
            file_name_suffix=".gz")
        _ = (pcoll | f"Count{split}" >> beam.combiners.Count.Globally()
             | f"WriteCount{split}" >> beam.io.WriteToText(
                 os.path.join(output_uri, "_counts", split), shard_name_template=""))
    rejects = os.path.join(output_uri, validate_lib.REJECTS_DIR)
    _ = (validate_lib.rejects_lines(outputs[validate_lib.REJECTS])
         | "WriteRejects" >> beam.io.WriteToText(
             os.path.join(rejects, "rejects"), file_name_suffix=".csv",
             header=validate_lib.REJECTS_HEADER))
    _ = outputs[validate_lib.STATS] | "WriteStats" >> beam.io.WriteToText(
        os.path.join(output_uri, STATS_FILE), shard_name_template="")
    return {"eval_cutoff": cutoff, "rejects": rejects + "/", "plans": plans}


def check_rejects(info: dict, data_dir: str, config: Config, output_uri: str
                  ) -> ValidationReport:
    """After the pipeline: the validation report from its counts. Raises TooManyRejects
    (listing the worst reasons) when a table's rejected share is over
    ``config.data.max_bad_share``. Deletes the run's spill files first."""
    spill = os.path.join(output_uri, SPILL_DIR)
    if tf.io.gfile.exists(spill):
        tf.io.gfile.rmtree(spill)
    lines = io.read_text(os.path.join(output_uri, STATS_FILE)).splitlines()
    report = validate_lib.report_from_stats(lines, info["plans"], data_dir, info["rejects"],
                                            config.data.max_bad_share)
    if not report.ok:
        raise TooManyRejects(report)
    return report


def read_counts(output_uri: str) -> dict[str, int]:
    return {split: int(io.read_text(os.path.join(output_uri, "_counts", split)).strip() or 0)
            for split in example_lib.SPLITS}


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        examples.split_names = artifact_utils.encode_split_names(list(example_lib.SPLITS))
        config = Config.from_json(exec_properties["config_json"])
        data_dir = exec_properties["data_dir"]
        with self._make_beam_pipeline() as p:
            plan = write_examples(p, data_dir, config, examples.uri)
        report = check_rejects(plan, data_dir, config, examples.uri)
        counts = read_counts(examples.uri)
        info = {"eval_cutoff": plan["eval_cutoff"], "rejects": plan["rejects"],
                "rows": {t: r.rows for t, r in report.tables.items()},
                "rejected": {t: r.rejected for t, r in report.tables.items()},
                "counts": counts}
        io.write_text(os.path.join(examples.uri, COUNTS_FILE), json.dumps(info, indent=2))
        examples.set_int_custom_property("eval_cutoff", info["eval_cutoff"])
        for split, n in counts.items():
            examples.set_int_custom_property(f"{split}_examples", n)
