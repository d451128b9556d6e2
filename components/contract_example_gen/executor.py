"""Executor: validates the dataset, then runs ``example_lib.build_examples`` on Beam.

``data_dir`` and the output artifact's URI may be local paths or URIs (``gs://...``): the data
is read through tf.io.gfile (``marquee.data.contract``), the examples are written by Beam's
file sinks, and the files written here go through ``marquee.io``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.contract_example_gen import example_lib
from marquee import io
from marquee.config import Config
from marquee.data.validate import TooManyRejects, ValidationReport, validate_dataset

COUNTS_FILE = "counts.json"
REJECTS_FILE = "rejects.csv"


def validate(data_dir: str, config: Config, output_uri: str) -> ValidationReport:
    """Validates ``data_dir`` and writes ``rejects.csv`` under ``output_uri``.

    The validator writes a local file, so for a remote ``output_uri`` it writes into a
    temporary directory that is then copied. Raises TooManyRejects (listing the worst reasons)
    when a table's rejected share is over ``config.data.max_bad_share``.
    """
    rejects = os.path.join(output_uri, REJECTS_FILE)
    if io.is_remote(output_uri):
        with tempfile.TemporaryDirectory() as tmp:
            report = validate_dataset(data_dir, config.data.max_bad_share,
                                      os.path.join(tmp, REJECTS_FILE))
            tf.io.gfile.makedirs(output_uri)
            tf.io.gfile.copy(str(report.rejects_path), rejects, overwrite=True)
    else:
        report = validate_dataset(data_dir, config.data.max_bad_share, rejects)
    # name the URIs as given (the validator holds them as Paths, which drop a slash of gs://)
    report = dataclasses.replace(report, data_dir=data_dir, rejects_path=rejects)
    if not report.ok:
        raise TooManyRejects(report)
    return report


def write_examples(
    pipeline: beam.Pipeline, data_dir: str, config: Config, output_uri: str
) -> dict:
    """Validates ``data_dir`` and writes gzipped TFRecords per split under ``output_uri``.

    Returns the cutoff and the rejects path. Raises TooManyRejects as ``validate`` does.
    """
    report = validate(data_dir, config, output_uri)
    cutoff = example_lib.time_cutoff(data_dir, config.data)
    outputs = example_lib.build_examples(pipeline, data_dir, config, cutoff)
    for split, pcoll in outputs.items():
        _ = pcoll | f"Write{split}" >> beam.io.WriteToTFRecord(
            os.path.join(output_uri, f"Split-{split}", "data_tfrecord"),
            file_name_suffix=".gz")
        _ = (pcoll | f"Count{split}" >> beam.combiners.Count.Globally()
             | f"WriteCount{split}" >> beam.io.WriteToText(
                 os.path.join(output_uri, "_counts", split), shard_name_template=""))
    return {"eval_cutoff": cutoff, "rejects": str(report.rejects_path),
            "rejected": {t: r.rejected for t, r in report.tables.items()}}


def read_counts(output_uri: str) -> dict[str, int]:
    return {split: int(io.read_text(os.path.join(output_uri, "_counts", split)).strip() or 0)
            for split in example_lib.SPLITS}


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        examples.split_names = artifact_utils.encode_split_names(list(example_lib.SPLITS))
        config = Config.from_json(exec_properties["config_json"])
        with self._make_beam_pipeline() as p:
            info = write_examples(p, exec_properties["data_dir"], config, examples.uri)
        counts = read_counts(examples.uri)
        info["counts"] = counts
        io.write_text(os.path.join(examples.uri, COUNTS_FILE), json.dumps(info, indent=2))
        examples.set_int_custom_property("eval_cutoff", info["eval_cutoff"])
        for split, n in counts.items():
            examples.set_int_custom_property(f"{split}_examples", n)
