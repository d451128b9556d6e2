"""An anomaly stops the real pipeline at the AnomalyGate, before Transform (slow: ~45 s).

`marquee pipeline run`, as users meet it, on tiny simulated data through TFX's LocalDagRunner.

Which anomaly: the contract validator in ContractExampleGen drops every row the checked-in schema
would flag (its devices, tiers, age buckets and ranges mirror pipeline/schema/schema.pbtxt), so a
bad row never reaches ExampleValidator. What does reach it is drift between the two: a device the
contract accepts and the schema does not list, as when the contract gains a device and nobody
updates the curated schema. Here the schema is the checked-in one minus ``tablet``, a device the
simulator logs.
"""

import collections
import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

import pipeline.pipeline as pipeline_factory
from components.contract_example_gen.example_lib import EVAL, TRAIN, USER_SPLITS, time_cutoff
from marquee.cli import main
from marquee.data import contract as c
from pipeline.local_runner import component_seconds, run_dirs
from trainer import features as f
from trainer.raw_inputs import parse_examples, read_examples

from .conftest import E2E_CONFIG as CONFIG

pytestmark = pytest.mark.slow

DROPPED = "tablet"  # the device the schema under test does not list
# ~500 interactions; with this seed 5 of the 37 train positives are on a tablet, none of eval's.
SIM = {"users": 30, "items": 40, "days": 5, "seed": 1, "truth_users": 0}


@dataclasses.dataclass
class StoppedRun:
    data: Path
    root: Path
    result: Result

    def examples(self, split: str) -> Path:
        (uri,) = (run_dirs(self.root)["pipeline_root"] / "ContractExampleGen" / "examples").glob(
            f"*/Split-{split}")
        return uri

    def devices(self, split: str) -> list[str]:
        """The device of every example ContractExampleGen wrote to ``split``."""
        serialized = read_examples([str(self.examples(split) / "*.gz")])
        if not serialized:
            return []
        return [d.decode() for d in parse_examples(serialized, [f.DEVICE])[f.DEVICE].numpy()]


def _schema_without(device: str, out: Path) -> str:
    schema = schema_pb2.Schema()
    text_format.Parse(Path(pipeline_factory.SCHEMA_FILE).read_text(), schema)
    (domain,) = [d for d in schema.string_domain if d.name == c.DEVICE]
    kept = [v for v in domain.value if v != device]
    assert len(kept) == len(domain.value) - 1, f"{device} is not in the checked-in schema"
    del domain.value[:]
    domain.value.extend(kept)
    out.write_text(text_format.MessageToString(schema))
    return str(out)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> StoppedRun:
    from marquee.data.simulate import SimConfig, simulate

    tmp = tmp_path_factory.mktemp("anomaly")
    simulate(tmp / "data", SimConfig(**SIM))
    config = tmp / "config.yaml"  # E2E_CONFIG for --config (JSON is YAML)
    config.write_text(CONFIG.to_json())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_factory, "SCHEMA_FILE", _schema_without(DROPPED, tmp / "schema.pbtxt"))
        result = CliRunner().invoke(main, ["pipeline", "run", "--data", str(tmp / "data"),
                                           "--root", str(tmp / "run"), "--config", str(config)])
    return StoppedRun(tmp / "data", tmp / "run", result)


def test_the_run_exits_1_naming_the_feature_the_value_and_the_fix(stopped):
    r = stopped.result
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.stderr
    assert ("Error: ExampleValidator found anomalies against pipeline/schema/schema.pbtxt; the "
            "run stops before training:") in r.stderr
    assert "add them to pipeline/schema/schema.pbtxt" in r.stderr
    # One line per validated split that has a tablet example; TFDV gives the tablet share of
    # the split's examples, floored to a percent (5 of 37 train examples = 13.5% -> "~13%").
    assert DROPPED in stopped.devices(TRAIN)  # the data does carry the anomaly
    expected = []
    for split in USER_SPLITS:
        devices = stopped.devices(split)
        if DROPPED in devices:
            share = math.floor(100 * devices.count(DROPPED) / len(devices))
            expected.append(f"{split}: feature 'device': Unexpected string values: Examples "
                            f"contain values missing from the schema: {DROPPED} (~{share}%).")
    got = [line.strip() for line in r.stderr.splitlines() if ": feature '" in line]
    assert sorted(got) == sorted(expected)


def test_nothing_after_the_gate_ran(stopped):
    dirs = run_dirs(stopped.root)
    ran = set(component_seconds(dirs["metadata"]))
    assert {"ContractExampleGen", "StatisticsGen", "ExampleValidator", "DistributionValidator",
            "AnomalyGate"} <= ran
    after = {"Transform", "Trainer", "ScannIndexer", "AlsTrainer", "RankingTrainer",
             "RankingEvaluator", "ModelPusher", "EmbeddingDrift"}
    assert not ran & after
    outputs = {p.name for p in dirs["pipeline_root"].iterdir()}
    assert "ExampleValidator" in outputs
    assert not outputs & after
    # a stopped gate leaves no drift baseline for the next run (TFX removes its output folder)
    assert not list((dirs["pipeline_root"] / "AnomalyGate" / "baseline_statistics").iterdir())
    assert not dirs["serving"].exists()  # nothing pushed
    summary = dirs["summary"].read_text()  # the run folder says where and why it stopped
    assert "## Stopped" in summary and "AnomaliesFound" in summary
    assert "feature 'device'" in summary and "## Push" not in summary
    assert "- AnomalyGate:" in summary  # the timings name the steps that ran
    assert "## Drift" in summary and "no baseline yet" in summary  # the first run of the folder


def test_the_stopping_rows_passed_the_contract(stopped):
    """The examples are the simulated rows, none rejected: only the schema stopped them."""
    (counts,) = stopped.examples(TRAIN).parent.glob("counts.json")
    assert json.loads(counts.read_text())["rejected"] == {c.USERS: 0, c.ITEMS: 0,
                                                          c.INTERACTIONS: 0}
    inter = pd.read_parquet(stopped.data / "interactions.parquet")
    pos = inter[(inter[c.EVENT] == c.EVENT_WATCH)
                & (inter[c.WATCH_SECONDS] >= CONFIG.data.min_watch_seconds)]
    cutoff = time_cutoff(stopped.data, CONFIG.data)
    for split, rows in ((TRAIN, pos[pos[c.TIMESTAMP] < cutoff]),
                        (EVAL, pos[pos[c.TIMESTAMP] >= cutoff])):
        assert collections.Counter(stopped.devices(split)) == collections.Counter(rows[c.DEVICE])
