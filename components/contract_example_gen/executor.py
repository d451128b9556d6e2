"""Executor: validates the dataset, then runs ``example_lib.build_examples`` on Beam."""

from __future__ import annotations

import json
import os

import apache_beam as beam
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.contract_example_gen import example_lib
from marquee.config import Config
from marquee.data.validate import TooManyRejects, validate_dataset

COUNTS_FILE = "counts.json"


def write_examples(
    pipeline: beam.Pipeline, data_dir: str, config: Config, output_uri: str
) -> dict:
    """Validates ``data_dir`` and writes gzipped TFRecords per split under ``output_uri``.

    Returns the cutoff and the rejects path. Raises TooManyRejects (listing the worst reasons)
    when a table's rejected share is over ``config.data.max_bad_share``.
    """
    rejects = os.path.join(output_uri, "rejects.csv")
    report = validate_dataset(data_dir, config.data.max_bad_share, rejects)
    if not report.ok:
        raise TooManyRejects(report)
    cutoff = example_lib.time_cutoff(data_dir, config.data)
    outputs = example_lib.build_examples(pipeline, data_dir, config, cutoff)
    for split, pcoll in outputs.items():
        _ = pcoll | f"Write{split}" >> beam.io.WriteToTFRecord(
            os.path.join(output_uri, f"Split-{split}", "data_tfrecord"),
            file_name_suffix=".gz")
        _ = (pcoll | f"Count{split}" >> beam.combiners.Count.Globally()
             | f"WriteCount{split}" >> beam.io.WriteToText(
                 os.path.join(output_uri, "_counts", split), shard_name_template=""))
    return {"eval_cutoff": cutoff, "rejects": rejects,
            "rejected": {t: r.rejected for t, r in report.tables.items()}}


def read_counts(output_uri: str) -> dict[str, int]:
    out = {}
    for split in example_lib.SPLITS:
        path = os.path.join(output_uri, "_counts", split)
        with open(path) as fh:
            out[split] = int(fh.read().strip() or 0)
    return out


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        examples.split_names = artifact_utils.encode_split_names(list(example_lib.SPLITS))
        config = Config.from_json(exec_properties["config_json"])
        with self._make_beam_pipeline() as p:
            info = write_examples(p, exec_properties["data_dir"], config, examples.uri)
        counts = read_counts(examples.uri)
        info["counts"] = counts
        with open(os.path.join(examples.uri, COUNTS_FILE), "w") as fh:
            json.dump(info, fh, indent=2)
        examples.set_int_custom_property("eval_cutoff", info["eval_cutoff"])
        for split, n in counts.items():
            examples.set_int_custom_property(f"{split}_examples", n)
