"""The analysis of an experiment on small hand-built logs (every figure worked out in comments),
the report, and ``marquee experiment`` through click's CliRunner."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from marquee.data import contract as c
from marquee.experiments import stats
from marquee.experiments.analyze import (
    SESSIONS,
    WATCH_THROUGH_RATE,
    WATCH_TIME,
    ExperimentDataError,
    analyze_experiment,
)
from marquee.experiments.cli import experiment as experiment_cli
from marquee.experiments.config import ArmConfig, ExperimentConfig
from marquee.experiments.report import REPORT_FILE, decision, write_report

T0 = 1_800_000_000  # the experiment's start
DAY = 86_400
AB = ExperimentConfig("exp", (ArmConfig("control", 0.5), ArmConfig("treat", 0.5)),
                      start=T0, end=T0 + 3 * DAY)


def items_frame() -> pd.DataFrame:
    return pd.DataFrame({
        c.ITEM_ID: [1, 2, 3, 4, 5, 6],
        c.GENRES: [["Drama"], ["Comedy"], ["Drama"], ["Action"], ["Comedy"], ["Drama"]],
        c.ADDED_AT: 0,
    })


def page(user, page_id, ts, items, arm, experiment="exp"):
    """Impression rows of one page; ``arm`` is one name, or one team per title."""
    arms = arm if isinstance(arm, list) else [arm] * len(items)
    return [dict(user_id=user, item_id=i, timestamp=ts, event=c.EVENT_IMPRESSION,
                 watch_seconds=0.0, position=k + 1, page_id=page_id, experiment=experiment,
                 arm=a) for k, (i, a) in enumerate(zip(items, arms, strict=True))]


def watch(user, item, ts, seconds, page_id=None):
    return [dict(user_id=user, item_id=item, timestamp=ts, event=c.EVENT_WATCH,
                 watch_seconds=float(seconds), position=None, page_id=page_id, experiment=None,
                 arm=None)]


def frame(*parts) -> pd.DataFrame:
    rows = [r for p in parts for r in p]
    df = pd.DataFrame(rows)
    return df.assign(device="tv", rating=None)


def ab_log() -> pd.DataFrame:
    """The A/B log of the tests (min watch 120 s):

    u1 control: pre-period 2 impressions + 1 positive watch (600 s); page p1 (items 1, 2),
       watches 1 (600 s, positive) and 2 (30 s)   -> 2 imps, 1 pos, 630 s, 1 session
    u2 control: pages p2 (1, 3, 4) on day 1 and p3 (5) on day 2, watch 3 (200 s)
                                                  -> 4 imps, 1 pos, 200 s, 2 sessions
    u3 treat: pre-period 4 impressions + 2 positive watches (600 s each); a watch at T0 + 10,
       before their first exposure (not counted); page p4 (2, 3), watches 2 (300 s) and
       3 (150 s)                                  -> 2 imps, 2 pos, 450 s, 1 session
    u4 treat: page p5 (4, 5, 6, 1), watch 5 (150 s); a watch after the end (not counted)
                                                  -> 4 imps, 1 pos, 150 s, 1 session
    u5: impressions in both arms (a bug: reported, left out)
    u6: one impression of the experiment before its start (reported, left out)
    u7: a page outside any experiment
    """
    return frame(
        page(1, "p0", T0 - 1000, [3, 4], None, experiment=None), watch(1, 3, T0 - 900, 600),
        page(1, "p1", T0 + 100, [1, 2], "control"),
        watch(1, 1, T0 + 200, 600), watch(1, 2, T0 + 300, 30),
        page(2, "p2", T0 + DAY + 10, [1, 3, 4], "control"), watch(2, 3, T0 + DAY + 50, 200),
        page(2, "p3", T0 + 2 * DAY, [5], "control"),
        page(3, "p00", T0 - 6000, [1, 2, 5, 6], None, experiment=None),
        watch(3, 1, T0 - 5000, 600), watch(3, 2, T0 - 5000, 600), watch(3, 1, T0 + 10, 600),
        page(3, "p4", T0 + 50, [2, 3], "treat"),
        watch(3, 2, T0 + 60, 300), watch(3, 3, T0 + 70, 150),
        page(4, "p5", T0 + 100, [4, 5, 6, 1], "treat"), watch(4, 5, T0 + 500, 150),
        watch(4, 4, T0 + 3 * DAY + 5, 600),
        page(5, "p6", T0 + 10, [1], "control"), page(5, "p7", T0 + 20, [2], "treat"),
        watch(5, 1, T0 + 30, 600),
        page(6, "p8", T0 - 10, [1], "control"),
        page(7, "p9", T0 + 10, [1, 2], None, experiment=None), watch(7, 1, T0 + 20, 600),
    )


def test_per_arm_metrics_by_hand():
    result = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    control, treat = result.arms
    assert (control.arm, control.users, control.impressions, control.positive_watches) == (
        "control", 2, 6, 2)
    assert (treat.arm, treat.users, treat.impressions, treat.positive_watches) == (
        "treat", 2, 6, 3)
    assert control.watch_through_rate == pytest.approx(2 / 6)
    assert treat.watch_through_rate == pytest.approx(3 / 6)
    assert control.watch_seconds_per_user == pytest.approx((630 + 200) / 2)
    assert treat.watch_seconds_per_user == pytest.approx((450 + 150) / 2)
    assert (control.sessions_per_user, treat.sessions_per_user) == (1.5, 1.0)
    # the differences are the stats module's on the per-user aggregates above
    wtr = result.comparison(WATCH_THROUGH_RATE, "treat")
    assert wtr.raw.difference == pytest.approx(1 / 2 - 1 / 3)
    assert wtr.raw == stats.ratio_difference([1, 1], [2, 4], [2, 1], [2, 4])
    assert result.comparison(WATCH_TIME, "treat").raw == stats.mean_difference([630, 200],
                                                                              [450, 150])
    assert result.comparison(SESSIONS, "treat").raw == stats.mean_difference([1, 2], [1, 1])


def test_a_user_in_two_arms_is_reported_and_left_out():
    result = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    assert result.issues.users_in_several_arms == (5,)
    assert sum(a.users for a in result.arms) == 4  # u1..u4
    assert result.issues.impressions_outside_window == 1  # u6
    lines = " ".join(result.issues.lines())
    assert "1 user(s) had impressions in more than one arm" in lines and ": 5" in lines


def test_cuped_uses_the_pre_period_before_the_start():
    # pre-period per user: u1 2 imps, 1 pos, 600 s; u2 nothing; u3 4 imps, 2 pos, 1,200 s; u4
    # nothing (u3's watch at T0 + 10 is after the start: neither period).
    # watch time: control y 630, 200 / x 600, 0 (cross 2 * 300 * 215 = 129,000, sq 180,000);
    # treat y 450, 150 / x 1200, 0 (cross 2 * 600 * 150 = 180,000, sq 720,000)
    # -> theta = 309,000 / 900,000 = 0.343333
    result = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    time = result.comparison(WATCH_TIME, "treat").result
    assert time.theta == pytest.approx(309_000 / 900_000)
    assert time == stats.cuped_mean_difference([630, 200], [600, 0], [450, 150], [1200, 0])
    wtr = result.comparison(WATCH_THROUGH_RATE, "treat").result
    assert wtr == stats.cuped_ratio_difference([1, 1], [2, 4], [1, 0], [2, 0],
                                               [2, 1], [2, 4], [2, 0], [4, 0])


def test_without_a_start_the_pre_period_ends_at_the_first_exposure():
    # u3's watch at T0 + 10 now falls before their first exposure (T0 + 50): pre-period, 1,800 s
    open_ended = ExperimentConfig("exp", AB.arms, end=T0 + 3 * DAY)
    result = analyze_experiment(ab_log(), items_frame(), open_ended, min_watch_seconds=120)
    # u6's impression before T0 is now in the window: u6 is a control user without watches
    assert result.issues.impressions_outside_window == 0
    assert result.arms[0].users == 3
    time = result.comparison(WATCH_TIME, "treat").result
    assert time == stats.cuped_mean_difference([630, 200, 0], [600, 0, 0], [450, 150],
                                               [1800, 0])


def test_guardrails_by_hand():
    # 6 impressions in each arm, so the equal-size sample is all of them.
    # control shows 1, 2, 1, 3, 4, 5: coverage 5/6; counts sorted 0,1,1,1,1,2:
    #   Gini = (-3 - 1 + 1 + 3 + 5 * 2) / (6 * 6) = 10/36. treat shows 2, 3, 4, 5, 6, 1: 6/6, 0.
    # genres: u1 Drama, Comedy (1 bit); u2 Drama 2, Action, Comedy (1.5 bits); u3 Comedy, Drama
    #   (1 bit); u4 Action, Comedy, Drama 2 (1.5 bits) -> 1.25 in each arm
    result = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    control, treat = result.guardrails
    assert (control.coverage, treat.coverage) == pytest.approx((5 / 6, 1.0))
    assert (control.gini, treat.gini) == pytest.approx((10 / 36, 0.0))
    assert (control.genre_diversity, treat.genre_diversity) == pytest.approx((1.25, 1.25))
    assert control.sampled_impressions == treat.sampled_impressions == 6
    assert result.guardrail_flags == ()


def test_a_treatment_that_narrows_the_catalogue_is_flagged():
    # treat shows item 1 only: coverage 1/6 against the control's 5/6, Gini 5/6 against 10/36
    log = frame(page(1, "a", T0 + 1, [1, 2, 3], "control"), page(2, "b", T0 + 1, [4, 5, 1],
                                                                 "control"),
                page(3, "c", T0 + 1, [1, 1, 1], "treat"), page(4, "d", T0 + 1, [1, 1, 1],
                                                               "treat"))
    result = analyze_experiment(log, items_frame(), AB)
    flagged = {(f.arm, f.guardrail) for f in result.guardrail_flags}
    assert flagged >= {("treat", "coverage"), ("treat", "gini")}
    assert "**Guardrails flag**" in decision(result)


def test_cumulative_lift_ends_at_the_overall_comparison():
    # day 0 has one control user (u1; u2 arrives on day 1): no comparison. Day 1: control
    # 5 impressions, 2 positives (0.4); day 2: 6 and 2 (1/3), the overall figure
    result = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    assert [d.day for d in result.daily] == [1, 2]
    assert result.daily[0].comparison.control == pytest.approx(0.4)
    assert result.daily[-1].comparison == result.comparison(WATCH_THROUGH_RATE, "treat").raw
    assert result.daily[-1].day_end == T0 + 3 * DAY


def _many_users(n_control: int, n_treat: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for u in range(n_control + n_treat):
        arm = "control" if u < n_control else "treat"
        parts.append(page(u, f"p{u}", T0 + u, [1 + u % 6, 1 + (u + 1) % 6], arm))
        if rng.random() < 0.3:
            parts.append(watch(u, 1 + u % 6, T0 + u + 5, 600))
    return frame(*parts)


def test_sample_ratio_mismatch_is_flagged():
    # 300 vs 200 users against 50/50: chi2 = 2 * 50^2 / 250 = 20, p = 7.7e-6
    result = analyze_experiment(_many_users(300, 200), items_frame(), AB)
    assert result.srm.observed == (300, 200)
    assert result.srm.chi2 == pytest.approx(20.0)
    assert result.srm.flagged
    assert "**Sample ratio mismatch**" in decision(result)
    balanced = analyze_experiment(_many_users(250, 250), items_frame(), AB)
    assert not balanced.srm.flagged and "Sample ratio: users per arm match" in decision(balanced)


def test_the_holdout_counts_in_the_sample_ratio():
    config = ExperimentConfig("exp", AB.arms, start=T0, holdout=0.2)
    log = pd.concat([_many_users(200, 200), frame(*[page(1000 + u, f"h{u}", T0 + 1, [1],
                                                         "holdout") for u in range(100)])])
    result = analyze_experiment(log, items_frame(), config)
    assert result.srm.arms == ("control", "treat", "holdout")
    assert result.srm.expected == pytest.approx((200.0, 200.0, 100.0))  # 0.5 * 0.8, 0.2 of 500
    assert [a.arm for a in result.arms] == ["control", "treat", "holdout"]
    assert {m.arm for m in result.comparisons} == {"treat"}  # the holdout is not compared


INTERLEAVE = ExperimentConfig("il", (ArmConfig("ranker", 0.5), ArmConfig("retrieval", 0.5)),
                              kind="interleave", start=T0, holdout=0.25)


def interleaving_log() -> pd.DataFrame:
    """v1: page q1 = 1 (ranker), 2 (retrieval), 3 (ranker); watches 1 and 3 (600 s) -> ranker 2;
    watch 2 (10 s) is no positive.
    v2: q2 = 1 (retrieval), 2 (ranker) at T0 + 10; q3 = 1 (ranker), 4 (retrieval) at T0 + 100.
    Watch 1 at T0 + 50 -> latest impression q2: retrieval; watch 1 at T0 + 150 -> q3: ranker;
    watch 1 at T0 + 200 naming page q2 -> retrieval. -> retrieval 2, ranker 1.
    v3: q4 = 5 (ranker), 6 (retrieval); watches 5 and 6 -> a tie; watch 2, never shown to v3:
    credited to neither.
    v4: held out (page q5, arm holdout), watch 1: no team.
    v5: a held-out page and an interleaved one (a bug: reported, left out)."""
    return frame(
        page(1, "q1", T0 + 10, [1, 2, 3], ["ranker", "retrieval", "ranker"], "il"),
        watch(1, 1, T0 + 20, 600), watch(1, 3, T0 + 30, 600), watch(1, 2, T0 + 40, 10),
        page(2, "q2", T0 + 10, [1, 2], ["retrieval", "ranker"], "il"),
        page(2, "q3", T0 + 100, [1, 4], ["ranker", "retrieval"], "il"),
        watch(2, 1, T0 + 50, 600), watch(2, 1, T0 + 150, 600), watch(2, 1, T0 + 200, 600, "q2"),
        page(3, "q4", T0 + 10, [5, 6], ["ranker", "retrieval"], "il"),
        watch(3, 5, T0 + 20, 600), watch(3, 6, T0 + 30, 600), watch(3, 2, T0 + 40, 600),
        page(4, "q5", T0 + 10, [1, 2], "holdout", "il"), watch(4, 1, T0 + 20, 600),
        page(5, "q6", T0 + 10, [1], "holdout", "il"), page(5, "q7", T0 + 20, [2], ["ranker"], "il"),
        watch(5, 2, T0 + 30, 600),
    )


def test_interleaving_credits_watches_to_teams():
    result = analyze_experiment(interleaving_log(), items_frame(), INTERLEAVE)
    ranker, retrieval = result.teams
    assert (ranker.impressions, ranker.credited_watches) == (5, 4)  # v1 2, v2 1, v3 1
    assert (retrieval.impressions, retrieval.credited_watches) == (4, 3)  # v2 2, v3 1
    pref = result.preference
    assert (pref.users, pref.prefer_a, pref.prefer_b, pref.ties) == (3, 1, 1, 1)
    assert pref.share_a == 0.5 and pref.p_value == 1.0 and pref.delta_ab == 0.0
    assert result.issues.uncredited_watches == 1  # v3's watch of title 2
    assert result.issues.users_in_several_arms == (5,)
    # 3 interleaved users and 1 held out against 75/25
    assert result.srm.arms == ("interleaved", "holdout")
    assert result.srm.observed == (3, 1) and not result.srm.flagged
    assert "No significant preference" in decision(result)


def test_pages_in_several_layers_name_each_experiment_and_arm():
    # a page in "other" and "exp" carries "other;exp" and "x;control"
    log = ab_log()
    joined = log[c.EXPERIMENT] == "exp"
    log.loc[joined, c.ARM] = "x;" + log.loc[joined, c.ARM]
    log.loc[joined, c.EXPERIMENT] = "other;exp"
    result = analyze_experiment(log, items_frame(), AB, min_watch_seconds=120)
    reference = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    assert result.arms == reference.arms


def test_errors_name_the_fix():
    with pytest.raises(ExperimentDataError, match=r"no impressions of experiment 'nope'.*"
                       r"experiments it holds: exp"):
        analyze_experiment(ab_log(), items_frame(), ExperimentConfig("nope", AB.arms))
    log = ab_log()
    log.loc[log[c.ARM] == "treat", c.ARM] = "treatment-typo"
    with pytest.raises(ExperimentDataError, match="treatment-typo that its config does not have"):
        analyze_experiment(log, items_frame(), AB)
    with pytest.raises(ExperimentDataError, match="not one of"):
        analyze_experiment(ab_log(), items_frame(), AB, primary="clicks")


def test_logs_without_the_exposure_columns_say_so():
    old = ab_log().drop(columns=list(c.EXPOSURE_COLUMNS))
    with pytest.raises(ExperimentDataError, match="experiments it holds: none"):
        analyze_experiment(old, items_frame(), AB)


# ----------------------------------------------------------------------------- report and CLI


def test_report_files_are_written(tmp_path):
    result = analyze_experiment(ab_log(), items_frame(), AB, min_watch_seconds=120)
    path = write_report(result, tmp_path)
    text = path.read_text()
    first = text.split("\n\n")[1]
    assert first.startswith("**No significant difference** on watch-through rate")
    assert "## Guardrails" in text and "## Sample ratio" in text and "## Data issues" in text
    assert "more than one arm" in text
    for name in ("lift.png", "arms.png", "srm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    il = write_report(analyze_experiment(interleaving_log(), items_frame(), INTERLEAVE),
                      tmp_path / "il")
    assert "## Preference" in il.read_text()
    assert (tmp_path / "il" / "preference.png").stat().st_size > 0


def write_dataset(root: Path, log: pd.DataFrame) -> Path:
    data = root / "data"
    items = items_frame()
    n = len(items)
    c.write_table(data, c.ITEMS, {
        c.ITEM_ID: items[c.ITEM_ID], c.TITLE: [f"t{i}" for i in items[c.ITEM_ID]],
        c.GENRES: items[c.GENRES], c.CAST: [[]] * n, c.DIRECTOR: [None] * n,
        c.RELEASE_YEAR: [2000] * n, c.DURATION_SECONDS: [5400] * n, c.ADDED_AT: [0] * n,
        c.MATURITY_RATING: ["PG"] * n})
    users = sorted(log[c.USER_ID].unique())
    c.write_table(data, c.USERS, {
        c.USER_ID: users, c.SIGNUP_AT: [0] * len(users), c.COUNTRY: ["US"] * len(users),
        c.SUBSCRIPTION_TIER: ["basic"] * len(users), c.AGE_BUCKET: [None] * len(users),
        c.ONBOARDING_GENRES: [None] * len(users)})
    log.astype({c.POSITION: "Int32"}).to_parquet(data / "interactions.parquet", index=False)
    return data


def write_config(root: Path) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"min_watch_seconds": 120}, "serving": {
        "experiments": [{"id": "exp", "start": T0, "end": T0 + 3 * DAY,
                         "arms": [{"name": "control", "share": 0.5},
                                  {"name": "treat", "share": 0.5}]},
                        {"id": "later", "arms": [{"name": "a", "share": 0.5},
                                                 {"name": "b", "share": 0.5}]}]}}))
    return path


def test_cli_analyze_writes_the_report(tmp_path):
    data, config = write_dataset(tmp_path, ab_log()), write_config(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(experiment_cli, ["analyze", "--data", str(data), "--config",
                                                 str(config), "--experiment", "exp", "--out",
                                                 str(out)])
    assert result.exit_code == 0, result.output
    assert "experiment exp (ab)" in result.output
    assert "control" in result.output and "report:" in result.output
    assert (out / REPORT_FILE).exists() and (out / "lift.png").exists()
    # the same numbers as on the frames: the reader keeps the exposure columns
    assert "| control | 2 | 6 | 2 | 0.3333" in (out / REPORT_FILE).read_text()


def test_cli_errors_name_the_fix(tmp_path):
    data, config = write_dataset(tmp_path, ab_log()), write_config(tmp_path)
    run = CliRunner().invoke
    unknown = run(experiment_cli, ["analyze", "--data", str(data), "--config", str(config),
                                   "--experiment", "typo", "--out", str(tmp_path / "o")])
    assert unknown.exit_code == 1
    assert "no experiment 'typo'" in unknown.output and "configured: exp, later" in unknown.output
    silent = run(experiment_cli, ["analyze", "--data", str(data), "--config", str(config),
                                  "--experiment", "later", "--out", str(tmp_path / "o")])
    assert silent.exit_code == 1 and "no impressions of experiment 'later'" in silent.output


def test_cli_plan():
    result = CliRunner().invoke(experiment_cli, ["plan", "--baseline", "0.25", "--mde", "0.01"])
    assert result.exit_code == 0, result.output
    assert "470,933" in result.output and "941,866" in result.output
    bad = CliRunner().invoke(experiment_cli, ["plan", "--baseline", "1.5", "--mde", "0.01"])
    assert bad.exit_code == 2 and "--baseline" in bad.output
