"""Drift and embedding drift through the real pipeline: three runs into one run folder
(TFX's LocalDagRunner, shared pipeline root and metadata; slow: ~5 minutes).

1. the simulated data, policy warn: no baseline yet, nothing compared; pushes version 1;
2. the same events with every device set to "tv", policy stop: stopped at the AnomalyGate, which
   names device and nothing else (every other feature's statistics are identical: distance 0);
3. the same shifted data, policy warn: compared with run 1's data (the stopped run never became
   the baseline), the breach is named in the summary, the run goes on and pushes version 2, and
   EmbeddingDrift compares version 2 with version 1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from marquee.cli import main
from marquee.config import BeamConfig
from marquee.data import contract as c
from marquee.monitoring.cli import monitor
from marquee.monitoring.config import MonitorConfig
from marquee.monitoring.drift import read_drift
from marquee.monitoring.embedding_drift import read_reports
from pipeline.local_runner import run_dirs, run_local

from .conftest import E2E_CONFIG

# The default Beam mode (auto: in_memory on data this small); the e2e fixture runs workers.
CONFIG = dataclasses.replace(E2E_CONFIG, beam=BeamConfig())

pytestmark = pytest.mark.slow

SIM = {"users": 150, "items": 200, "days": 20, "seed": 1}


@dataclasses.dataclass
class Runs:
    root: Path
    first: str  # summaries of runs 1 and 3
    stopped: Result  # run 2, through the CLI
    stopped_summary: str
    third: str

    def outputs(self, component: str, output: str) -> list[Path]:
        d = run_dirs(self.root)["pipeline_root"] / component / output
        return sorted((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    from marquee.data.simulate import SimConfig, simulate

    tmp = tmp_path_factory.mktemp("drift")
    simulate(tmp / "data", SimConfig(**SIM))
    shifted = tmp / "shifted"
    shutil.copytree(tmp / "data", shifted)
    inter = pd.read_parquet(shifted / "interactions.parquet")
    assert (inter[c.DEVICE] != "tv").mean() > 0.3  # the shift is large
    inter[c.DEVICE] = "tv"
    inter.to_parquet(shifted / "interactions.parquet")
    root = tmp / "run"
    first = run_local(tmp / "data", root, CONFIG)
    config = tmp / "stop.yaml"  # JSON is YAML
    config.write_text(dataclasses.replace(
        CONFIG, monitor=MonitorConfig(drift_policy="stop")).to_json())
    stopped = CliRunner().invoke(main, ["pipeline", "run", "--data", str(shifted), "--root",
                                        str(root), "--config", str(config)])
    stopped_summary = run_dirs(root)["summary"].read_text()
    third = run_local(shifted, root, CONFIG)  # policy warn, the default
    return Runs(root, first, stopped, stopped_summary, third)


def test_the_first_run_compares_nothing_and_publishes_its_data_as_the_baseline(runs):
    assert "no baseline yet" in runs.first
    assert "pushed als, candidate_tower" in runs.first
    assert "the first pushed version: nothing to compare with" in runs.first


def test_a_shifted_feature_stops_the_run_under_stop_and_an_unchanged_one_does_not(runs):
    r = runs.stopped
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.stderr
    assert "DistributionValidator found drift" in r.stderr
    named = [line.strip() for line in r.stderr.splitlines() if ": feature '" in line]
    assert len(named) == 1 and named[0].startswith("train: feature 'device': L-infinity ")
    # the stopped run's own comparison: device moved, every other feature is exactly where it was
    (split,) = read_drift(str(runs.outputs("DistributionValidator", "anomalies")[1]))
    found = {x.feature: x for x in split.comparisons}
    assert len(found) == 11
    assert found["device"].breached and found["device"].value > 0.3
    for name, x in found.items():
        if name != "device":
            assert x.value == pytest.approx(0.0, abs=1e-9) and not x.breached, name
    # its summary lists what it did, not the first run's push in the same folder
    summary = runs.stopped_summary
    assert "## Stopped" in summary and "DriftFound" in summary and "1 of 11 features" in summary
    assert "## Push" not in summary and "## Embedding drift" not in summary


def test_the_stopped_run_never_became_the_baseline_and_warn_lets_the_shift_through(runs):
    # runs 1 and 3 passed the gate; run 2 left no baseline behind
    baselines = runs.outputs("AnomalyGate", "baseline_statistics")
    assert len(baselines) == 2
    # run 3 was compared with run 1's data (were it run 2's, device would not have moved)
    (split,) = read_drift(str(runs.outputs("DistributionValidator", "anomalies")[2]))
    assert [x.feature for x in split.breaches] == ["device"]
    assert "## Drift" in runs.third
    assert "- train: 1 of 11 features past their threshold" in runs.third
    assert "## Stopped" not in runs.third and "pushed als, candidate_tower" in runs.third


def test_embedding_drift_compares_the_second_push_with_the_first(runs):
    reports = read_reports(str(run_dirs(runs.root)["pipeline_root"]))
    first, second = reports
    assert first["previous_version"] is None
    assert second["previous_version"] == first["version"] < second["version"]
    n = second["neighbours"]
    assert n["k"] == 10 and n["compared"] == 200  # every title of the catalogue
    assert 0.0 <= n["p10_overlap"] <= n["mean_overlap"] <= 1.0
    for name in ("query_norms", "candidate_norms"):
        for version in ("previous", "current"):
            assert second[name][version]["mean"] > 0, (name, version)
    assert second["query_norms"]["current"]["count"] > 0
    per_title = (runs.outputs("EmbeddingDrift", "report")[-1] / "neighbour_overlap.csv")
    assert len(per_title.read_text().splitlines()) == 1 + 200
    assert "## Embedding drift" in runs.third
    assert f"version {second['version']} against {first['version']}" in runs.third
    result = CliRunner().invoke(monitor, ["embeddings", str(runs.root), "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.output.splitlines()] == reports
