"""The closed loop end to end (slow): the simulator's users browse the real server's pages for
their arm over loopback HTTP, their watches go back through POST /v1/events, and the analysis
reads the impressions the server logged."""

import dataclasses

import pandas as pd
import pytest

from marquee.data import contract as c
from marquee.experiments.analyze import analyze
from marquee.experiments.closed_loop import (
    LoopConfig,
    relaxed_deadlines,
    run_loop,
    sim_config_of,
)
from marquee.experiments.config import ArmConfig, ExperimentConfig
from marquee.experiments.sensitivity import ab_sensitivity, interleaving_sensitivity
from tests.conftest import E2E_CONFIG

ARMS = (ArmConfig("personal", 0.5), ArmConfig("popular", 0.5, serving={
    "ranker_weight": 0.0, "popularity_weight": -1.0}))


@pytest.fixture(scope="module")
def loop(pipeline_run, tmp_path_factory):
    experiments = (ExperimentConfig("ab", ARMS, traffic=0.5),
                   ExperimentConfig("il", ARMS, kind="interleave", traffic=0.5))
    config = dataclasses.replace(E2E_CONFIG, serving=dataclasses.replace(
        E2E_CONFIG.serving, experiments=experiments))
    workdir = tmp_path_factory.mktemp("loop")
    summary = run_loop(sim_config_of(pipeline_run.data), pipeline_run.data,
                       pipeline_run.serving, config, workdir,
                       LoopConfig(days=2, max_sessions_per_day=60))
    return config, summary


@pytest.mark.slow
def test_every_session_is_a_page_and_every_watch_is_logged(loop):
    config, summary = loop
    assert summary.pages == sum(summary.pages_by_day) > 0 and summary.refused == 0
    folder = summary.data_dir / c.INTERACTIONS
    shown = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-x*.parquet"))])
    events = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-w*.parquet"))])
    assert shown[c.PAGE_ID].nunique() == summary.pages  # every user is in one experiment
    assert set(shown[c.EXPERIMENT]) == {"ab", "il"}
    assert (events[c.EVENT] == c.EVENT_WATCH).all() and len(events) == summary.watches_posted
    # each watch names its page, and it was shown on that page to that user
    pairs = set(zip(shown[c.PAGE_ID], shown[c.USER_ID], shown[c.ITEM_ID], strict=True))
    assert all(p in pairs for p in zip(events[c.PAGE_ID], events[c.USER_ID], events[c.ITEM_ID],
                                       strict=True))
    assert (events[c.TIMESTAMP].to_numpy() >= pipeline_run_end(summary)).all()


def pipeline_run_end(summary) -> int:
    """The loop's days follow the simulated period: nothing before its end."""
    return int(pd.read_parquet(summary.data_dir / c.INTERACTIONS /
                               "part-0000000000-0000.parquet")[c.TIMESTAMP].max())


@pytest.mark.slow
def test_the_analysis_reads_both_experiments_of_the_loop(loop):
    config, summary = loop
    ab = analyze(summary.data_dir, config, "ab")
    assert {a.arm for a in ab.arms} == {"personal", "popular"}
    assert sum(a.users for a in ab.arms) == ab.per_user.shape[0] > 0
    assert not ab.srm.flagged and ab.issues.users_in_several_arms == ()
    il = analyze(summary.data_dir, config, "il")
    assert {t.arm for t in il.teams} == {"personal", "popular"}
    assert list(il.per_user.columns) == ["personal", "popular"]
    # resampling runs on them (the figures are the note's, from a bigger loop)
    s = ab_sensitivity(ab.per_user, "personal", "popular", "personal", runs=20)
    assert s.population == min(a.users for a in ab.arms) and set(s.success) and all(
        0 <= v <= 1 for v in s.success.values())
    t = interleaving_sensitivity(il.per_user, "personal", runs=20)
    assert t.population == len(il.per_user)


def test_the_loop_relaxes_every_serving_deadline_and_nothing_else():
    relaxed = relaxed_deadlines(E2E_CONFIG, 10.0)
    s, r = E2E_CONFIG.serving, relaxed.serving
    assert (r.deadline_ms, r.query_deadline_ms, r.rank_deadline_ms) == (
        s.deadline_ms * 10, s.query_deadline_ms * 10, s.rank_deadline_ms * 10)
    assert [x.deadline_ms for x in r.sources] == [x.deadline_ms * 10 for x in s.sources]
    assert dataclasses.replace(r, deadline_ms=s.deadline_ms, query_deadline_ms=s.query_deadline_ms,
                               rank_deadline_ms=s.rank_deadline_ms, sources=s.sources) == s
    assert relaxed.data == E2E_CONFIG.data
    with pytest.raises(ValueError, match="deadline_scale"):
        relaxed_deadlines(E2E_CONFIG, 0)


def test_simulate_refuses_a_config_without_experiments_and_a_dataset_it_did_not_write(tmp_path):
    from click.testing import CliRunner

    from marquee.cli import main

    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    plain = tmp_path / "plain.yaml"
    plain.write_text("serving: {k: 20}\n")
    args = ["experiment", "simulate", "--data", str(tmp_path / "data"), "--models",
            str(tmp_path / "models"), "--workdir", str(tmp_path / "loop"), "--config"]
    result = CliRunner().invoke(main, args + [str(plain)])
    assert result.exit_code == 1 and "serving.experiments is empty" in result.output
    with_arms = tmp_path / "loop.yaml"
    with_arms.write_text("serving:\n  experiments:\n    - id: ab\n      arms:\n"
                         "        - {name: a, share: 0.5}\n        - {name: b, share: 0.5}\n")
    result = CliRunner().invoke(main, args + [str(with_arms)])
    assert result.exit_code == 1 and "_truth/config.json is missing" in result.output
