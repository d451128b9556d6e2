"""Experiments in serving: each arm a real stack built from its config override, the page says
which experiment and arm served it, interleaved pages carry teams, and every page served is in
the impression log (a real write-ahead log, compacted into contract parts)."""

import dataclasses

import pandas as pd
import pytest

from marquee.config import ServingConfig
from marquee.data import contract as c
from marquee.experiments.assignment import Assigner, ExperimentError
from marquee.experiments.config import ArmConfig, ExperimentConfig
from serving.homepage.experiments import Homepages
from serving.ingest.exposures import ExposureLog, impression_rows, page_record
from serving.ingest.wal import WriteAheadLog
from serving.ingest.wiring import log_sinks
from tests import test_homepage
from tests.test_homepage import FULL, GENEROUS, NOW, make

model_base = test_homepage.model_base  # the tiny model base fixture, shared

# Arm "popular" ranks by popularity alone (no ranker, no retrieval weight in the blend).
POPULAR = {"ranker_weight": 0.0, "popularity_weight": -1.0}


def ab(**kw) -> ExperimentConfig:
    return ExperimentConfig(id="blend", arms=(ArmConfig("control", 0.5),
                                              ArmConfig("popular", 0.5, serving=POPULAR)), **kw)


def front(model_base, experiments, exposures=None, **changes) -> Homepages:
    return Homepages(make(model_base, experiments=tuple(experiments), **changes), exposures,
                     now=lambda: NOW)


def user_in(assigner: Assigner, experiment: str, arm: str) -> int:
    return next(u for u in range(1000, 100_000)
                if (experiment, arm) in {(a.experiment, a.arm) for a in assigner.assign(u, NOW)})


def test_each_arm_is_its_own_stack_and_the_page_names_it(model_base):
    pages = front(model_base, [ab()])
    assert len(pages.stacks) == 3  # outside the experiment, control, popular
    # FULL's arm, and the page of the other arm's stack for the same user, differ as configured
    arm = pages.assigner.assign(FULL, NOW)[0].arm
    page = pages.homepage(FULL)
    assert page.experiments == {"blend": arm} and page.page_id and not page.fallback
    stacks = {name: pages.stacks[frozenset({("blend", name)})] for name in ("control", "popular")}
    popular = stacks["popular"].config
    assert popular.ranker_weight == 0.0 == popular.cache_ttl_seconds
    assert stacks["control"].config.ranker_weight == ServingConfig().ranker_weight
    own = stacks[arm].homepage(FULL)
    assert [p.item_id for p in page.items] == [p.item_id for p in own.items]
    other = stacks["control" if arm == "popular" else "popular"].homepage(FULL)
    assert [p.item_id for p in other.items] != [p.item_id for p in page.items]
    # the arms share the base's state rather than copying it
    assert stacks["popular"].store is pages.base.store and stacks["popular"].fresh is pages.fresh
    assert pages.homepage(FULL).page_id != page.page_id  # one id per page served


def test_outside_the_window_and_held_out_users_get_the_base_stack(model_base):
    pages = front(model_base, [ab(start=NOW + 10)])
    assert pages.homepage(FULL).experiments == {}
    held = front(model_base, [ab(holdout=0.999999)])
    assert held.homepage(FULL).experiments == {"blend": "holdout"}


def test_a_bad_arm_override_fails_at_start_up_naming_the_arm(model_base):
    bad = ExperimentConfig("e", (ArmConfig("a", 0.5), ArmConfig("b", 0.5,
                                                                serving={"ranker_wieght": 0})))
    with pytest.raises(ExperimentError, match=r"serving.experiments\[e\].arms\[b\].serving.*"
                                              r"ranker_wieght.*valid ones"):
        front(model_base, [bad])
    clash = ExperimentConfig("f", (ArmConfig("x", 1.0, serving={"ranker_weight": 0.5}),),
                             layer="other")
    with pytest.raises(ExperimentError, match="ranker_weight is also set by"):
        front(model_base, [ab(), clash])


def test_experiments_need_the_impression_log(model_base):
    pages = front(model_base, [ab()])
    with pytest.raises(ExperimentError, match="--event-log"):
        pages.log_impressions(None)


def test_an_interleaved_page_merges_both_arms_with_teams(model_base):
    inter = ExperimentConfig("il", ab().arms, kind="interleave")
    pages = front(model_base, [inter])
    page = pages.homepage(FULL)
    assert page.experiments == {"il": "interleaved"}
    a = pages.stacks[frozenset({("il", "control")})].homepage(FULL)
    b = pages.stacks[frozenset({("il", "popular")})].homepage(FULL)
    lists = {"control": [p.item_id for p in a.items], "popular": [p.item_id for p in b.items]}
    assert lists["control"] != lists["popular"]
    ids = [p.item_id for p in page.items]
    assert len(ids) == len(set(ids)) == len(a.items)
    for team, ranking in lists.items():  # each team's titles come from its list, in its order
        mine = [p.item_id for p in page.items if p.team == team]
        assert mine and set(mine) <= set(ranking) and mine == sorted(mine, key=ranking.index)
    teams = [p.team for p in page.items]
    assert abs(teams.count("control") - teams.count("popular")) <= 1


def test_every_page_served_is_logged_as_impression_rows(model_base, tmp_path):
    wal = WriteAheadLog(tmp_path, "r1")
    pages = front(model_base, [ab(), ExperimentConfig(
        "il", (ArmConfig("plain", 0.5), ArmConfig("i2i", 0.5, serving={
            "item_to_item_weight": 1.0})), kind="interleave", layer="il")])
    exposures = ExposureLog(wal, pages.users)
    pages.log_impressions(exposures)
    served = [pages.homepage(FULL), pages.homepage(FULL, k=3), pages.homepage(999_999)]
    assert exposures.stats() == {"logged": 2, "lost": 0, "unknown_user": 1, "empty": 0}
    assert wal.compact(log_sinks(tmp_path, "r1"), seal=True) == 2
    wal.close()
    [part] = (tmp_path / c.INTERACTIONS).glob("part-x*-rr1.parquet")
    rows = pd.read_parquet(part)
    first, second = served[0], served[1]
    assert len(rows) == len(first.items) + 3
    assert rows[c.PAGE_ID].tolist() == [first.page_id] * len(first.items) + [second.page_id] * 3
    assert rows[c.POSITION].tolist() == list(range(1, len(first.items) + 1)) + [1, 2, 3]
    assert rows[c.ITEM_ID].tolist()[:len(first.items)] == [p.item_id for p in first.items]
    assert (rows[c.EVENT] == c.EVENT_IMPRESSION).all() and (rows[c.WATCH_SECONDS] == 0).all()
    assert (rows[c.TIMESTAMP] == NOW).all() and (rows[c.USER_ID] == FULL).all()
    # both layers on every row; the interleaving layer's arm is the title's team
    ab_arm = first.experiments["blend"]
    assert set(rows[c.EXPERIMENT]) == {"blend;il"}
    assert rows[c.ARM].tolist()[:len(first.items)] == [f"{ab_arm};{p.team}" for p in first.items]
    # the part is a valid contract part the pipeline reads like any other
    from marquee.data.validate import check_frame
    _, reasons = check_frame(c.INTERACTIONS, rows, check_refs=False)
    assert not any(reasons)


def test_a_page_outside_experiments_logs_null_experiment_and_arm(model_base):
    page = make(model_base).homepage(FULL)
    page = dataclasses.replace(page, page_id="p1")
    [row, *_] = impression_rows([page_record(page, NOW, "tv")])
    assert row[c.EXPERIMENT] is None and row[c.ARM] is None and row[c.PAGE_ID] == "p1"
    assert row[c.DEVICE] == "tv" and row[c.POSITION] == 1


def test_a_log_that_cannot_take_the_page_still_answers_it(model_base, tmp_path):
    wal = WriteAheadLog(tmp_path, "r1")
    pages = front(model_base, [ab()])
    exposures = ExposureLog(wal, pages.users)
    pages.log_impressions(exposures)
    wal.close()  # appends now fail: the page is served, the loss counted
    page = pages.homepage(FULL)
    assert page.items and exposures.stats()["lost"] == 1


def test_generous_deadlines_are_kept_by_the_arms(model_base):
    pages = front(model_base, [ab()])
    for stack in pages.stacks.values():
        assert stack.config.deadline_ms == GENEROUS["deadline_ms"]
