"""Experiment assignment and interleaving: deterministic, sticky across processes, shares as
configured, layers exclusive, and the merge rules worked by hand."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from marquee.config import ConfigError, from_dict
from marquee.experiments.assignment import (
    Assigner,
    ExperimentError,
    arm_of,
    expected_shares,
    unit_hash,
)
from marquee.experiments.config import ArmConfig, ExperimentConfig
from marquee.experiments.interleave import balanced, credit, team_draft
from marquee.experiments.stats import sample_ratio_mismatch


def ab(id="exp", shares=(0.5, 0.5), **kw) -> ExperimentConfig:
    arms = tuple(ArmConfig(f"arm{n}", s) for n, s in enumerate(shares))
    return ExperimentConfig(id=id, arms=arms, **kw)


def test_the_hash_is_sha256_of_salt_and_id_as_a_fraction():
    digest = hashlib.sha256(b"salt:42").digest()
    assert unit_hash("salt", 42) == int.from_bytes(digest[:8], "big") / 2**64
    assert 0 <= unit_hash("x", 0) < 1 and unit_hash("a", 1) != unit_hash("b", 1)


def test_arm_of_cuts_the_unit_interval_by_holdout_then_shares():
    arms = (ArmConfig("a", 0.25), ArmConfig("b", 0.75))
    # holdout 0.2: [0, 0.2) holdout; the rest [0.2, 1) maps to x = (u - 0.2) / 0.8
    assert arm_of(arms, 0.19, 0.2) == "holdout"
    assert arm_of(arms, 0.2, 0.2) == "a"  # x = 0
    assert arm_of(arms, 0.39, 0.2) == "a"  # x = 0.2375 < 0.25
    assert arm_of(arms, 0.41, 0.2) == "b"  # x = 0.2625
    assert arm_of(arms, 0.999, 0.2) == "b"


def test_the_same_user_gets_the_same_arm_in_another_process():
    experiments = [ab(salt="s1", holdout=0.1), ab("other", (0.2, 0.3, 0.5), layer="two")]
    ids = list(range(0, 5000, 7))
    here = [[(a.experiment, a.arm) for a in Assigner(experiments).assign(u, 0)] for u in ids]
    code = (
        "import json, sys\n"
        "from marquee.config import from_dict\n"
        "from marquee.experiments.assignment import Assigner\n"
        "cfg = from_dict(json.loads(sys.argv[1]))\n"
        f"print(json.dumps([[[a.experiment, a.arm] for a in Assigner(cfg.serving.experiments)"
        f".assign(u, 0)] for u in {ids}]))\n")
    raw = {"serving": {"experiments": [
        {"id": "exp", "salt": "s1", "holdout": 0.1,
         "arms": [{"name": "arm0", "share": 0.5}, {"name": "arm1", "share": 0.5}]},
        {"id": "other", "layer": "two", "arms": [
            {"name": "arm0", "share": 0.2}, {"name": "arm1", "share": 0.3},
            {"name": "arm2", "share": 0.5}]}]}}
    assert from_dict(raw).serving.experiments == tuple(experiments)  # the YAML form
    out = subprocess.run([sys.executable, "-c", code, json.dumps(raw)], capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == [[list(p) for p in row] for row in here]


def test_shares_match_the_config_over_a_million_ids_and_srm_sees_a_skewed_split():
    n = 1_000_000
    e = ab(shares=(0.2, 0.3, 0.5), holdout=0.1)
    assigner = Assigner([e])
    counts: dict[str, int] = {}
    for u in range(n):
        arm = assigner.assign(u, 0)[0].arm
        counts[arm] = counts.get(arm, 0) + 1
    shares = expected_shares(e)  # holdout 0.1, arms 0.18, 0.27, 0.45
    assert shares == pytest.approx({"arm0": 0.18, "arm1": 0.27, "arm2": 0.45, "holdout": 0.1})
    for arm, share in shares.items():  # within 4 binomial standard deviations
        assert abs(counts[arm] - n * share) < 4 * np.sqrt(n * share * (1 - share)), (arm, counts)
    assert not sample_ratio_mismatch(counts, shares).flagged
    # An assignment that drifted to 50.5 / 49.5 against a configured 50 / 50 is flagged.
    skewed = Assigner([ab(shares=(0.505, 0.495))])
    split = {"arm0": 0, "arm1": 0}
    for u in range(n):
        split[skewed.assign(u, 0)[0].arm] += 1
    assert sample_ratio_mismatch(split, {"arm0": 0.5, "arm1": 0.5}).flagged


def test_experiments_of_a_layer_never_share_a_user_and_layers_are_independent():
    first, second = ab("first", traffic=0.3), ab("second", traffic=0.5)
    other = ab("other", layer="other")
    assigner = Assigner([first, second, other])
    seen = {"first": 0, "second": 0, "other": 0, "first+other": 0}
    n = 40_000
    for u in range(n):
        names = [a.experiment for a in assigner.assign(u, 0)]
        assert not {"first", "second"} <= set(names)
        for name in names:
            seen[name] += 1
        seen["first+other"] += {"first", "other"} <= set(names)
    assert abs(seen["first"] / n - 0.3) < 0.01 and abs(seen["second"] / n - 0.5) < 0.01
    assert seen["other"] == n  # its layer has only it, at full traffic
    assert abs(seen["first+other"] / n - 0.3) < 0.01  # independent of the other layer


def test_an_experiment_serves_only_inside_its_window():
    assigner = Assigner([ab(start=100, end=200)])
    assert assigner.assign(1, 99) == () and assigner.assign(1, 200) == ()
    assert assigner.assign(1, 100) == assigner.assign(1, 199) != ()


@pytest.mark.parametrize("experiments, fragment", [
    ([ab(shares=(0.5, 0.4))], "arm shares must sum to 1, got 0.9"),
    ([ab(), ab()], "experiment id 'exp' is listed twice"),
    ([ab("a", traffic=0.6), ab("b", traffic=0.6)], "traffic sums to 1.2, more than 1"),
    ([ab(kind="interleave", shares=(0.2, 0.3, 0.5))], "exactly two arms, got 3"),
    ([ExperimentConfig("e", (ArmConfig("holdout", 1.0),))], "reserved for held-out users"),
    ([ab(kind="abc")], "kind must be one of ab, interleave, got 'abc'"),
    ([ab("a;b")], "without ';'"),
    ([ab(start=5, end=5)], "start 5 is not before end 5"),
    ([ab("i1", kind="interleave"), ab("i2", kind="interleave", layer="x")],
     "put them all in one layer"),
])
def test_a_bad_experiment_config_names_the_problem(experiments, fragment):
    with pytest.raises(ExperimentError, match="serving.experiments") as info:
        Assigner(experiments)
    assert fragment in str(info.value)


def test_an_unknown_experiment_key_in_the_config_file_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown setting.*valid ones are"):
        from_dict({"serving": {"experiments": [{"id": "e", "arms": [], "shares": 1}]}})


# ----------------------------------------------------------------------------- interleaving


def test_team_draft_of_disjoint_lists_takes_one_of_each_per_round():
    a, b = [1, 2, 3], [4, 5, 6]
    for seed in range(20):
        out = team_draft(a, b, 6, seed)
        # each round the two captains pick once: {1,4}, then {2,5}, then {3,6}, order by coin
        assert [set(x for x, _ in out[r:r + 2]) for r in (0, 2, 4)] == [{1, 4}, {2, 5}, {3, 6}]
        assert all(team == (0 if item in a else 1) for item, team in out)


def test_team_draft_keeps_the_teams_balanced_and_each_in_its_own_order():
    rng = np.random.default_rng(0)
    for seed in range(200):
        a = list(rng.permutation(30)[:12])
        b = list(rng.permutation(30)[:12])
        out = team_draft(a, b, 10, seed)
        items = [x for x, _ in out]
        assert len(items) == len(set(items)) == 10
        for n in range(1, len(out) + 1):  # every prefix: team sizes differ by at most one
            teams = [t for _, t in out[:n]]
            assert abs(teams.count(0) - teams.count(1)) <= 1
        for team, ranking in ((0, a), (1, b)):
            picked = [x for x, t in out if t == team]
            assert picked == sorted(picked, key=ranking.index)  # in that list's order
        assert team_draft(a, b, 10, seed) == out  # deterministic per seed


def test_interleaving_identical_lists_gives_the_list():
    a = [5, 3, 9, 1]
    assert [x for x, _ in team_draft(a, a, 4, 7)] == a
    assert [x for x, _ in balanced(a, a, 4, 7)] == a


def test_balanced_interleaving_worked_by_hand():
    a, b = [1, 2, 3], [4, 1, 5]
    # A first: 1(A); B behind: 4(B); equal: 2(A); B's 1 is shown, skipped; equal: 3(A); 5(B)
    # B first: 4(B); A behind: 1(A); equal: B's 1 shown, skipped... then 2(A), 5(B), 3(A)
    outs = {tuple(balanced(a, b, 6, seed)) for seed in range(20)}
    assert outs == {((1, 0), (4, 1), (2, 0), (3, 0), (5, 1)),
                    ((4, 1), (1, 0), (2, 0), (5, 1), (3, 0))}


def test_a_watch_is_credited_to_the_team_of_the_title():
    shown = {10: 0, 11: 1, 12: 0}
    assert credit(shown, [10, 12, 11, 99]) == (2, 1)  # 99 was not on the page
