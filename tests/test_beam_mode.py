"""beam.direct_running_mode auto: in_memory below beam.in_memory_below interactions, worker
processes from there on, and what the local runner counts and says."""

import pandas as pd
import pytest

from marquee.config import BeamConfig, ConfigError, from_dict
from marquee.data import contract as c
from marquee.data.simulate import SimConfig, simulate
from pipeline.local_runner import _interactions, _mode_note
from pipeline.pipeline import NO_PRISM, beam_args


def test_auto_runs_in_memory_below_the_threshold_and_workers_from_it():
    beam = BeamConfig(in_memory_below=1000)
    no_prism = "--allow_unsafe_triggers"  # Beam's DirectRunner without trying Prism first
    assert beam_args(beam, 2, 999) == ["--runner=DirectRunner", "--direct_running_mode=in_memory",
                                       "--direct_num_workers=1", no_prism]
    assert beam_args(beam, 2, 1000) == ["--runner=DirectRunner",
                                        "--direct_running_mode=multi_processing",
                                        "--direct_num_workers=2", no_prism]
    # Not counted (Kubeflow: data_dir is a runtime parameter): worker processes.
    assert beam_args(beam, 0, None)[1:3] == ["--direct_running_mode=multi_processing",
                                             "--direct_num_workers=0"]
    # A mode given is kept whatever the size; in_memory always runs one worker.
    assert beam_args(BeamConfig(direct_running_mode="multi_processing", direct_num_workers=3),
                     2, 10)[1:3] == ["--direct_running_mode=multi_processing",
                                     "--direct_num_workers=3"]
    assert beam_args(BeamConfig(direct_running_mode="in_memory", direct_num_workers=3),
                     2, 10**9)[1:3] == ["--direct_running_mode=in_memory",
                                        "--direct_num_workers=1"]
    # Other runners get no DirectRunner options.
    assert beam_args(BeamConfig(runner="DataflowRunner", extra_args=("--project=p",)), 2, 5) == [
        "--runner=DataflowRunner", "--project=p"]
    assert BeamConfig(in_memory_below=0).running_mode(0) == "multi_processing"


def test_a_bad_mode_or_threshold_says_what_is_accepted():
    with pytest.raises(ConfigError, match="direct_running_mode: expected one of auto, "
                                          "in_memory, multi_threading, multi_processing, got "
                                          "'in-memory'"):
        from_dict({"beam": {"direct_running_mode": "in-memory"}})
    with pytest.raises(ConfigError, match="in_memory_below: expected a number of interactions"):
        from_dict({"beam": {"in_memory_below": -1}})


def test_the_runner_counts_the_interactions_from_the_parquet_footers(tmp_path):
    simulate(tmp_path / "data", SimConfig(users=30, items=20, days=3, seed=2))
    rows = len(pd.read_parquet(tmp_path / "data" / f"{c.INTERACTIONS}.parquet"))
    assert rows > 0 and _interactions(tmp_path / "data") == rows
    assert _interactions(tmp_path / "nowhere") is None  # ContractExampleGen reports it

    config = from_dict({"beam": {"in_memory_below": rows + 1}})
    assert _mode_note(config, rows) == (f", in_memory: {rows:,} interactions < "
                                        f"beam.in_memory_below {rows + 1:,}")
    config = from_dict({"beam": {"in_memory_below": rows}})
    assert _mode_note(config, rows) == (f", multi_processing: {rows:,} interactions >= "
                                        f"beam.in_memory_below {rows:,}")
    assert _mode_note(from_dict({}), None) == (", multi_processing: beam.direct_running_mode "
                                               "auto, interactions not counted")


def _prism_asked(args: list[str], monkeypatch) -> list[str]:
    """Runs a small pipeline with the options ``args``, Beam's Prism runner replaced by one
    that records being asked and fails (as the real one does where it cannot download its
    binary); returns the record."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability import prism_runner
    from apache_beam.testing.util import assert_that, equal_to

    asked: list[str] = []

    def refuse(self, pipeline, options):
        asked.append("prism")
        raise RuntimeError("no prism binary here")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        doubled = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: 2 * x)
        assert_that(doubled, equal_to([2, 4, 6]))
    return asked


def test_the_direct_runner_runs_pipelines_without_offering_them_to_prism(monkeypatch):
    args = beam_args(BeamConfig(), 2, 10)
    assert _prism_asked(args, monkeypatch) == []
    # Without the option Beam tries Prism first (and falls back when it fails).
    assert _prism_asked([a for a in args if a != NO_PRISM], monkeypatch) == ["prism"]
