"""The analysis of one online experiment from the logged interactions.

The log (``docs/experiments.md``, "Analysis"): serving writes an ``impression`` row per title
shown, with the ``page_id``, the ``experiment`` id and the ``arm`` (for an interleaving
experiment the team whose list the title came from; ``holdout`` for held-out users). A page in
several experiments (one per layer) names them all joined by ``;``, and its arms likewise. Watches
are ``watch`` rows, their ``page_id`` set when the client knows the page. Older rows have none of
these columns (null).

* **Users.** A user's arm is the arm of their impressions in the experiment. A user with
  impressions in two arms is a bug in assignment or logging: they are left out of every figure
  and listed (:class:`DataIssues`), never silently.
* **What counts.** A user's experiment period runs from their first impression in the experiment
  (not before ``start``) to ``end``; their watches in it count, whatever page they came from.
  The **pre-period** (CUPED's covariate) is their rows before ``start``, or before their first
  exposure when the experiment has no start.
* **Metrics per user**, compared between arms with the user as the unit: the watch-through rate
  (positive watches, ``watch_seconds >= data.min_watch_seconds``, per impression: a ratio with
  the delta method), watch seconds per user and sessions (distinct pages) per user, each against
  the control (the first configured arm), raw and with CUPED.
* **Guardrails** (:mod:`marquee.monitoring.exposure`): catalogue coverage and the Gini of
  exposure, computed on the same number of impressions per arm (a seeded sample of the smallest
  arm's count, so that a bigger arm does not look more diverse by its size), and genre diversity
  per user.
* **Interleaving.** A positive watch is credited to the team of the latest impression of the same
  (user, item) at or before it, or, when the watch names its page, of that page's impression of
  the item; users prefer the team with more credited watches
  (:func:`marquee.experiments.stats.interleaving_preference`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from marquee.config import Config, DataConfig
from marquee.data import contract as c
from marquee.experiments import stats
from marquee.experiments.config import HOLDOUT, KINDS, ExperimentConfig
from marquee.monitoring import exposure

SEPARATOR = c.LABEL_SEPARATOR  # between the experiments (and arms) of a page in many layers
DAY_SECONDS = 86_400
INTERLEAVED = "interleaved"  # the SRM group of an interleaving experiment's non-held-out users

WATCH_THROUGH_RATE = "watch_through_rate"
WATCH_TIME = "watch_seconds_per_user"
SESSIONS = "sessions_per_user"
METRICS = (WATCH_THROUGH_RATE, WATCH_TIME, SESSIONS)
METRIC_LABELS = {WATCH_THROUGH_RATE: "watch-through rate", WATCH_TIME: "watch time per user (s)",
                 SESSIONS: "sessions per user"}
COVERAGE, GINI, GENRE_DIVERSITY = "coverage", "gini", "genre_diversity"


class ExperimentDataError(ValueError):
    """The log cannot be analysed for this experiment (none of its impressions, arms the config
    does not know); the message names the fix."""


@dataclasses.dataclass(frozen=True)
class GuardrailLimits:
    """When a guardrail flags a treatment arm against the control."""

    # Coverage falls by more than this share of the control's (0.05: 40% -> under 38%).
    max_coverage_drop: float = 0.05
    # The Gini of exposure rises by more than this (absolute).
    max_gini_rise: float = 0.02
    # Genre diversity per user is lower with p below this (Welch, per-user entropies).
    diversity_alpha: float = 0.05


@dataclasses.dataclass(frozen=True)
class ArmMetrics:
    """One arm's users and metrics over the experiment period (A/B)."""

    arm: str
    users: int
    impressions: int
    positive_watches: int
    watch_through_rate: float
    watch_seconds_per_user: float
    sessions_per_user: float

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclasses.dataclass(frozen=True)
class TeamMetrics:
    """One team of an interleaving experiment: its titles shown and the watches credited."""

    arm: str
    impressions: int
    credited_watches: int
    credited_watch_seconds: float

    @property
    def watch_through_rate(self) -> float:
        return self.credited_watches / self.impressions if self.impressions else math.nan


@dataclasses.dataclass(frozen=True)
class MetricComparison:
    """A treatment arm against the control on one metric, raw and with CUPED."""

    metric: str
    arm: str
    result: stats.CupedComparison

    @property
    def raw(self) -> stats.Comparison:
        return self.result.raw

    @property
    def cuped(self) -> stats.Comparison:
        return self.result.adjusted


@dataclasses.dataclass(frozen=True)
class Guardrails:
    """One arm's exposure figures: coverage and Gini over ``sampled_impressions`` impressions
    (the same number in every arm), genre diversity as the mean per-user entropy (bits)."""

    arm: str
    coverage: float
    gini: float
    genre_diversity: float
    sampled_impressions: int


@dataclasses.dataclass(frozen=True)
class GuardrailFlag:
    arm: str
    guardrail: str
    control: float
    treatment: float
    reason: str


@dataclasses.dataclass(frozen=True)
class DailyLift:
    """The primary metric's comparison on the data up to the end of ``day`` (0-based from the
    experiment's start), over the users exposed by then."""

    day: int
    day_end: int  # UTC seconds, exclusive
    arm: str
    comparison: stats.Comparison


@dataclasses.dataclass(frozen=True)
class DataIssues:
    """What the log held that the figures leave out; each is listed in the report."""

    users_in_several_arms: tuple[int, ...] = ()
    impressions_without_arm: int = 0
    impressions_outside_window: int = 0
    impressions_without_page: int = 0
    uncredited_watches: int = 0
    rejected_rows: int = 0
    rejects_path: str | None = None
    arms_too_small: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        out = []
        if self.users_in_several_arms:
            ids = ", ".join(str(u) for u in self.users_in_several_arms[:10])
            out.append(f"{len(self.users_in_several_arms)} user(s) had impressions in more than "
                       f"one arm (an assignment or logging bug) and are left out: {ids}"
                       + (", ..." if len(self.users_in_several_arms) > 10 else ""))
        if self.impressions_without_arm:
            out.append(f"{self.impressions_without_arm} impression(s) of the experiment have no "
                       "arm and are left out")
        if self.impressions_outside_window:
            out.append(f"{self.impressions_outside_window} impression(s) of the experiment lie "
                       "outside its [start, end) and are left out")
        if self.impressions_without_page:
            out.append(f"{self.impressions_without_page} impression(s) have no page_id: they "
                       "count in every metric but sessions")
        if self.uncredited_watches:
            out.append(f"{self.uncredited_watches} positive watch(es) of interleaved users match "
                       "no impression of a team and are credited to neither")
        if self.rejected_rows:
            out.append(f"{self.rejected_rows} row(s) broke the data contract and are left out"
                       + (f" (listed in {self.rejects_path})" if self.rejects_path else ""))
        for arm in self.arms_too_small:
            out.append(f"arm {arm} has fewer than 2 users: it is not compared")
        return out


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    """Everything :mod:`marquee.experiments.report` writes about one experiment."""

    experiment: ExperimentConfig
    primary_metric: str
    alpha: float
    min_watch_seconds: float
    first_timestamp: int
    last_timestamp: int
    arms: tuple[ArmMetrics, ...]
    comparisons: tuple[MetricComparison, ...]
    guardrails: tuple[Guardrails, ...]
    guardrail_flags: tuple[GuardrailFlag, ...]
    srm: stats.SampleRatio
    daily: tuple[DailyLift, ...]
    issues: DataIssues
    teams: tuple[TeamMetrics, ...] = ()
    preference: stats.Preference | None = None
    # The user-level aggregates the tests ran on (marquee.experiments.sensitivity resamples
    # them): A/B, per user: arm, impressions, positives, watch_seconds, sessions; interleaving,
    # per interleaved user: wins of each arm (credited positive watches).
    per_user: pd.DataFrame | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def control(self) -> str:
        return self.experiment.arms[0].name

    def comparison(self, metric: str, arm: str) -> MetricComparison | None:
        return next((m for m in self.comparisons if m.metric == metric and m.arm == arm), None)


# ----------------------------------------------------------------------------- reading


def find_experiment(config: Config, experiment_id: str) -> ExperimentConfig:
    """The experiment ``experiment_id`` of ``config.serving.experiments``; ValueError listing
    the configured ids otherwise."""
    for exp in config.serving.experiments:
        if exp.id == experiment_id:
            return exp
    known = ", ".join(e.id for e in config.serving.experiments) or "none"
    raise ExperimentDataError(
        f"no experiment {experiment_id!r} in the config's serving.experiments (configured: "
        f"{known}); pass the config file the experiment was served with.")


def _with_exposure_columns(interactions: pd.DataFrame) -> pd.DataFrame:
    """The interactions with the exposure columns, null where a file had none."""
    missing = [col for col in (c.USER_ID, c.ITEM_ID, c.TIMESTAMP, c.EVENT, c.WATCH_SECONDS)
               if col not in interactions.columns]
    if missing:
        raise ExperimentDataError(
            f"interactions lack column(s) {', '.join(missing)}; pass the contract's "
            "interactions table (marquee.data.validate.load_dataset(dir).interactions)")
    out = interactions
    for col in c.EXPOSURE_COLUMNS:
        if col not in out.columns:
            out = out.assign(**{col: pd.Series(None, index=out.index, dtype=object)})
    return out


def arm_in(experiments: pd.Series, arms: pd.Series, experiment_id: str) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """``(in_experiment [n] bool, arm [n] object)`` per row, from the ``;``-joined experiment and
    arm labels (a page in several layers); the arm is None when a row of the experiment names
    none (or not one per experiment)."""
    e_codes, e_labels = pd.factorize(experiments)  # null: -1
    a_codes, a_labels = pd.factorize(arms)
    pair = e_codes.astype(np.int64) * (len(a_labels) + 1) + (a_codes + 1)
    pairs, codes = np.unique(pair, return_inverse=True)
    inside, arm = np.zeros(len(pairs), dtype=bool), np.full(len(pairs), None, dtype=object)
    for k, p in enumerate(pairs):  # a handful of distinct labels
        e, a = divmod(int(p), len(a_labels) + 1)
        ids = str(e_labels[e]).split(SEPARATOR) if e >= 0 else []
        if experiment_id in ids:
            names = str(a_labels[a - 1]).split(SEPARATOR) if a > 0 else []
            inside[k] = True
            arm[k] = (names[ids.index(experiment_id)] or None) if len(names) == len(ids) else None
    return inside[codes], arm[codes]


def experiments_in(log: pd.DataFrame) -> list[str]:
    labels = log[c.EXPERIMENT].dropna().unique()
    return sorted({e for text in labels for e in str(text).split(SEPARATOR) if e})


def _per_user(imps: pd.DataFrame, watches: pd.DataFrame, users: pd.Index,
              min_watch: float) -> pd.DataFrame:
    """``[users, (impressions, positives, watch_seconds, sessions)]`` float, 0 where none;
    sessions are distinct non-null page ids."""
    out = pd.DataFrame(index=users)
    out["impressions"] = imps.groupby(c.USER_ID).size().reindex(users, fill_value=0)
    positive = (watches[c.WATCH_SECONDS] >= min_watch).astype(np.int64)
    out["positives"] = positive.groupby(watches[c.USER_ID]).sum().reindex(users, fill_value=0)
    out["watch_seconds"] = watches.groupby(c.USER_ID)[c.WATCH_SECONDS].sum().reindex(
        users, fill_value=0.0)
    paged = imps[imps[c.PAGE_ID].notna()]
    out["sessions"] = paged.groupby(c.USER_ID)[c.PAGE_ID].nunique().reindex(users, fill_value=0)
    return out.astype(np.float64)


def _compare(metric: str, exp_c: pd.DataFrame, pre_c: pd.DataFrame, exp_t: pd.DataFrame,
             pre_t: pd.DataFrame, level: float) -> stats.CupedComparison:
    if metric == WATCH_THROUGH_RATE:
        return stats.cuped_ratio_difference(
            exp_c["positives"], exp_c["impressions"], pre_c["positives"], pre_c["impressions"],
            exp_t["positives"], exp_t["impressions"], pre_t["positives"], pre_t["impressions"],
            level)
    column = {WATCH_TIME: "watch_seconds", SESSIONS: "sessions"}[metric]
    return stats.cuped_mean_difference(exp_c[column], pre_c[column], exp_t[column],
                                       pre_t[column], level)


def _primary(metric: str, c_rows: pd.DataFrame, t_rows: pd.DataFrame,
             level: float) -> stats.Comparison:
    if metric == WATCH_THROUGH_RATE:
        return stats.ratio_difference(c_rows["positives"], c_rows["impressions"],
                                      t_rows["positives"], t_rows["impressions"], level)
    column = {WATCH_TIME: "watch_seconds", SESSIONS: "sessions"}[metric]
    return stats.mean_difference(c_rows[column], t_rows[column], level)


def _credit(watches: pd.DataFrame, team_imps: pd.DataFrame) -> np.ndarray:
    """The team credited with each watch ``[n_watches]`` (None: no matching impression): the
    impression of the watch's page and item when the watch names a page, else the latest
    impression of the same (user, item) at or before it."""
    team = np.full(len(watches), None, dtype=object)
    # one integer per (user, item) pair seen in either frame
    users = pd.factorize(np.concatenate([watches[c.USER_ID], team_imps[c.USER_ID]]))[0]
    items = pd.factorize(np.concatenate([watches[c.ITEM_ID], team_imps[c.ITEM_ID]]))[0]
    pair = users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    rows = watches.assign(_pair=pair[:len(watches)], _row=np.arange(len(watches)))
    shown = team_imps.assign(_pair=pair[len(watches):]).sort_values(c.TIMESTAMP, kind="stable")
    paged = rows[rows[c.PAGE_ID].notna()]
    if len(paged):
        keys = ["_pair", c.PAGE_ID]
        pages = shown[shown[c.PAGE_ID].isin(paged[c.PAGE_ID].unique())]
        pages = pages.drop_duplicates(keys, keep="last")[keys + ["_arm"]]
        hit = paged[keys + ["_row"]].merge(pages, on=keys, how="left")
        team[hit["_row"].to_numpy()] = hit["_arm"].to_numpy()
    timed = rows[rows[c.PAGE_ID].isna()]
    if len(timed):
        left = timed[[c.TIMESTAMP, "_pair", "_row"]].sort_values(c.TIMESTAMP, kind="stable")
        hit = pd.merge_asof(left, shown[[c.TIMESTAMP, "_pair", "_arm"]], on=c.TIMESTAMP,
                            by="_pair", direction="backward")
        team[hit["_row"].to_numpy()] = hit["_arm"].to_numpy()
    team[pd.isna(team)] = None
    return team


def _guardrails(imps: pd.DataFrame, groups: pd.Series, arms: list[str], items: pd.DataFrame,
                seed: int) -> tuple[list[Guardrails], pd.Series]:
    """Guardrails per arm with impressions, and the per-user genre entropies."""
    entropy = exposure.genre_entropy_per_user(imps[[c.USER_ID, c.ITEM_ID]], items)
    shown = {a: imps.loc[imps["_arm"] == a, c.ITEM_ID].to_numpy(np.int64) for a in arms}
    shown = {a: ids for a, ids in shown.items() if len(ids)}
    if not shown:
        return [], entropy
    n = min(len(ids) for ids in shown.values())
    rng = np.random.default_rng(seed)
    catalogue = items[c.ITEM_ID].to_numpy(np.int64)
    out = []
    for a, ids in shown.items():
        sample = ids[rng.choice(len(ids), size=n, replace=False)]
        users = groups.index[groups.to_numpy() == a]
        out.append(Guardrails(a, exposure.coverage(sample, catalogue),
                              exposure.exposure_gini(sample, catalogue),
                              float(entropy.reindex(users).mean()), n))
    return out, entropy


def _flags(guardrails: list[Guardrails], entropy: pd.Series, groups: pd.Series, control: str,
           treatments: list[str], limits: GuardrailLimits, level: float) -> list[GuardrailFlag]:
    by_arm = {g.arm: g for g in guardrails}
    if control not in by_arm:
        return []
    ctrl = by_arm[control]
    flags = []
    for arm in treatments:
        if arm not in by_arm:
            continue
        g = by_arm[arm]
        if g.coverage < ctrl.coverage * (1.0 - limits.max_coverage_drop):
            flags.append(GuardrailFlag(
                arm, COVERAGE, ctrl.coverage, g.coverage,
                f"coverage fell from {ctrl.coverage:.1%} to {g.coverage:.1%}, more than "
                f"{limits.max_coverage_drop:.0%} of the control's"))
        if g.gini > ctrl.gini + limits.max_gini_rise:
            flags.append(GuardrailFlag(
                arm, GINI, ctrl.gini, g.gini,
                f"the Gini of exposure rose from {ctrl.gini:.3f} to {g.gini:.3f}, more than "
                f"{limits.max_gini_rise:g}"))
        e_c = entropy.reindex(groups.index[groups.to_numpy() == control]).to_numpy()
        e_t = entropy.reindex(groups.index[groups.to_numpy() == arm]).to_numpy()
        if len(e_c) >= 2 and len(e_t) >= 2:
            diff = stats.mean_difference(e_c, e_t, level)
            if diff.difference < 0 and diff.p_value < limits.diversity_alpha:
                flags.append(GuardrailFlag(
                    arm, GENRE_DIVERSITY, ctrl.genre_diversity, g.genre_diversity,
                    f"genre diversity per user fell from {ctrl.genre_diversity:.2f} to "
                    f"{g.genre_diversity:.2f} bits (p = {diff.p_value:.2g})"))
    return flags


def _daily(imps: pd.DataFrame, counted: pd.DataFrame, groups: pd.Series, first: pd.Series,
           t0: int, control: str, treatments: list[str], metric: str, min_watch: float,
           level: float) -> list[DailyLift]:
    """Cumulative comparisons of ``metric`` at the end of each day since ``t0``."""
    last = int(max(imps[c.TIMESTAMP].max(), counted[c.TIMESTAMP].max()
                   if len(counted) else imps[c.TIMESTAMP].max()))
    days = (last - t0) // DAY_SECONDS + 1
    # per (user, day) sums; a page counts on the day of its first impression
    imp_day = (imps[c.TIMESTAMP] - t0) // DAY_SECONDS
    pages = imps[imps[c.PAGE_ID].notna()].groupby([c.USER_ID, c.PAGE_ID])[c.TIMESTAMP].min()
    parts = [
        pd.DataFrame({"u": imps[c.USER_ID], "d": imp_day, "impressions": 1.0}),
        pd.DataFrame({"u": counted[c.USER_ID], "d": (counted[c.TIMESTAMP] - t0) // DAY_SECONDS,
                      "positives": (counted[c.WATCH_SECONDS] >= min_watch).astype(float),
                      "watch_seconds": counted[c.WATCH_SECONDS].astype(float)}),
        pd.DataFrame({"u": pages.index.get_level_values(0),
                      "d": (pages.to_numpy() - t0) // DAY_SECONDS, "sessions": 1.0}),
    ]
    daily = pd.concat(parts, ignore_index=True).fillna(0.0).groupby(["u", "d"]).sum()
    columns = ["impressions", "positives", "watch_seconds", "sessions"]
    daily = daily.reindex(columns=columns, fill_value=0.0).reset_index()
    first_day = (first - t0) // DAY_SECONDS
    out = []
    for d in range(int(days)):
        exposed = first_day.index[first_day.to_numpy() <= d]
        sums = daily[daily["d"] <= d].groupby("u")[columns].sum().reindex(exposed,
                                                                           fill_value=0.0)
        arm_of = groups.reindex(sums.index).to_numpy()
        ctrl = sums[arm_of == control]
        for arm in treatments:
            treat = sums[arm_of == arm]
            if len(ctrl) >= 2 and len(treat) >= 2:
                out.append(DailyLift(d, t0 + (d + 1) * DAY_SECONDS, arm,
                                     _primary(metric, ctrl, treat, level)))
    return out


# ----------------------------------------------------------------------------- analysis


def _check_primary(primary: str) -> None:
    if primary not in METRICS:
        raise ExperimentDataError(
            f"primary metric {primary!r} is not one of {', '.join(METRICS)}")

def _impressions(log: pd.DataFrame, experiment: ExperimentConfig
                 ) -> tuple[pd.DataFrame, int, int]:
    """The experiment's impressions in its window with an arm (column ``_arm``), and how many
    lay outside the window and how many named no arm."""
    is_imp = (log[c.EVENT] == c.EVENT_IMPRESSION).to_numpy()
    inside, arm = arm_in(log.loc[is_imp, c.EXPERIMENT], log.loc[is_imp, c.ARM], experiment.id)
    imps = log[is_imp][inside].assign(_arm=arm[inside])
    if imps.empty:
        found = ", ".join(experiments_in(log)) or "none"
        raise ExperimentDataError(
            f"no impressions of experiment {experiment.id!r} in the log (experiments it holds: "
            f"{found}). Serve with the experiment in serving.experiments and --event-log DIR, "
            "then pass that DIR as --data.")
    start = experiment.start if experiment.start is not None else -math.inf
    end = experiment.end if experiment.end is not None else math.inf
    in_window = ((imps[c.TIMESTAMP] >= start) & (imps[c.TIMESTAMP] < end)).to_numpy()
    has_arm = imps["_arm"].notna().to_numpy()
    outside, without_arm = int((~in_window).sum()), int((in_window & ~has_arm).sum())
    imps = imps[in_window & has_arm]
    names = [a.name for a in experiment.arms]
    unknown = sorted(set(imps["_arm"]) - set(names) - {HOLDOUT})
    if unknown:
        raise ExperimentDataError(
            f"impressions of {experiment.id} name arm(s) {', '.join(unknown)} that its config "
            f"does not have (arms: {', '.join(names)}, and {HOLDOUT}); pass the config the "
            "experiment was served with.")
    if imps.empty:
        raise ExperimentDataError(
            f"all impressions of {experiment.id} lie outside its [start, end) ({outside}) or name "
            f"no arm ({without_arm}); check the experiment's start and end in the config.")
    return imps, outside, without_arm


def _sample_ratio(groups: pd.Series, experiment: ExperimentConfig,
                  with_holdout: bool) -> stats.SampleRatio:
    """Users per group against the configured shares: each arm's share of the non-held-out
    users (A/B), or all of them as one interleaved group, and the holdout."""
    kept = 1.0 - experiment.holdout
    if experiment.kind == "ab":
        shares = {a.name: a.share * kept for a in experiment.arms}
    else:
        shares = {INTERLEAVED: kept}
    if with_holdout:
        shares[HOLDOUT] = experiment.holdout
    return stats.sample_ratio_mismatch({a: int((groups == a).sum()) for a in shares}, shares)


def analyze_experiment(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    experiment: ExperimentConfig,
    min_watch_seconds: float = DataConfig.min_watch_seconds,
    primary: str = WATCH_THROUGH_RATE,
    alpha: float = 0.05,
    limits: GuardrailLimits | None = None,
    seed: int = 0,
    rejected_rows: int = 0,
    rejects_path: str | None = None,
) -> ExperimentResult:
    """Analyses ``experiment`` on the contract's ``interactions`` (with the exposure columns)
    and ``items`` tables (module docstring for the rules).

    Args:
      primary: the metric of the decision, one of :data:`METRICS`.
      alpha: significance level; intervals are at ``1 - alpha``.
      limits: when guardrails flag (default :class:`GuardrailLimits`).
      seed: for the guardrails' equal-size samples and the interleaving bootstrap.
      rejected_rows, rejects_path: what the reader left out, listed in the issues.

    Raises:
      ExperimentDataError: no impressions of the experiment, arms the config does not have, a
        config that cannot be analysed (shares not summing to 1, interleaving of other than two
        arms, an unknown primary metric).
    """
    limits = limits or GuardrailLimits()
    level = 1.0 - alpha
    names = [a.name for a in experiment.arms]
    ab = experiment.kind == "ab"
    if experiment.kind not in KINDS:
        raise ExperimentDataError(
            f"experiment {experiment.id}: kind {experiment.kind!r} is not one of {KINDS}")
    _check_primary(primary)
    if not ab and len(names) != 2:
        raise ExperimentDataError(
            f"experiment {experiment.id}: interleaving compares two arms, the config has "
            f"{len(names)} ({', '.join(names)})")
    if len(names) < 2 or abs(sum(a.share for a in experiment.arms) - 1.0) > 1e-6:
        raise ExperimentDataError(
            f"experiment {experiment.id}: expected at least two arms whose shares sum to 1, got "
            f"{ {a.name: a.share for a in experiment.arms} }; fix serving.experiments")

    log = _with_exposure_columns(interactions)
    imps, outside, without_arm = _impressions(log, experiment)
    start = experiment.start if experiment.start is not None else -math.inf
    end = experiment.end if experiment.end is not None else math.inf

    # users and their arms (interleaving: interleaved or held out)
    group = imps["_arm"] if ab else imps["_arm"].where(imps["_arm"] == HOLDOUT, INTERLEAVED)
    per_user = group.groupby(imps[c.USER_ID])
    several = per_user.nunique()
    several = several.index[several.to_numpy() > 1]
    keep = ~imps[c.USER_ID].isin(several).to_numpy()
    imps, group = imps[keep], group[keep]
    groups = group.groupby(imps[c.USER_ID]).first().sort_index()
    users = groups.index
    first = imps.groupby(c.USER_ID)[c.TIMESTAMP].min().reindex(users)

    # the experiment period's watches and the pre-period
    mine = log[log[c.USER_ID].isin(users).to_numpy()]
    user_first = first.reindex(mine[c.USER_ID]).to_numpy()
    is_watch = (mine[c.EVENT] == c.EVENT_WATCH).to_numpy()
    ts = mine[c.TIMESTAMP].to_numpy()
    counted = mine[is_watch & (ts >= np.maximum(user_first, start)) & (ts < end)]
    cut = user_first if experiment.start is None else np.full(len(mine), experiment.start)
    pre = mine[ts < cut]
    pre_watch = pre[pre[c.EVENT] == c.EVENT_WATCH]
    pre_imps = pre[pre[c.EVENT] == c.EVENT_IMPRESSION]

    order = names + ([HOLDOUT] if experiment.holdout > 0 or (groups == HOLDOUT).any() else [])
    srm = _sample_ratio(groups, experiment, HOLDOUT in order)

    issues = dict(users_in_several_arms=tuple(int(u) for u in several),
                  impressions_without_arm=without_arm, impressions_outside_window=outside,
                  impressions_without_page=int(imps[c.PAGE_ID].isna().sum()),
                  rejected_rows=rejected_rows, rejects_path=rejects_path)
    span = (int(imps[c.TIMESTAMP].min()),
            int(max(imps[c.TIMESTAMP].max(), counted[c.TIMESTAMP].max() if len(counted) else 0)))
    common = dict(experiment=experiment, primary_metric=primary, alpha=alpha,
                  min_watch_seconds=min_watch_seconds, first_timestamp=span[0],
                  last_timestamp=span[1], srm=srm)
    if not ab:
        return _interleaving(imps, counted, groups, names, min_watch_seconds, level, seed,
                             issues, common)

    exp_sums = _per_user(imps, counted, users, min_watch_seconds)
    pre_sums = _per_user(pre_imps, pre_watch, users, min_watch_seconds)
    arms, by_arm = [], {}
    for a in order:
        rows = exp_sums[groups.to_numpy() == a]
        by_arm[a] = rows
        total_imps = rows["impressions"].sum()
        arms.append(ArmMetrics(
            a, len(rows), int(total_imps), int(rows["positives"].sum()),
            float(rows["positives"].sum() / total_imps) if total_imps else math.nan,
            float(rows["watch_seconds"].mean()) if len(rows) else math.nan,
            float(rows["sessions"].mean()) if len(rows) else math.nan))
    too_small = tuple(a for a in order if len(by_arm[a]) < 2)
    control, treatments = names[0], [a for a in names[1:] if a not in too_small]
    if control in too_small:
        treatments = []
    comparisons = [
        MetricComparison(m, a, _compare(m, by_arm[control], pre_sums.loc[by_arm[control].index],
                                        by_arm[a], pre_sums.loc[by_arm[a].index], level))
        for a in treatments for m in METRICS]
    guardrails, entropy = _guardrails(imps, groups, order, items, seed)
    flags = _flags(guardrails, entropy, groups, control, names[1:], limits, level)
    t0 = int(experiment.start) if experiment.start is not None else int(first.min())
    daily = _daily(imps, counted, groups, first, t0, control, treatments, primary,
                   min_watch_seconds, level)
    return ExperimentResult(
        **common, arms=tuple(arms), comparisons=tuple(comparisons),
        guardrails=tuple(guardrails), guardrail_flags=tuple(flags), daily=tuple(daily),
        issues=DataIssues(**issues, arms_too_small=too_small),
        per_user=exp_sums.assign(arm=groups.reindex(exp_sums.index)))


def _interleaving(imps, counted, groups, names, min_watch, level, seed, issues,
                  common) -> ExperimentResult:
    interleaved = groups.index[groups.to_numpy() == INTERLEAVED]
    team_imps = imps[imps["_arm"].isin(names).to_numpy()
                     & imps[c.USER_ID].isin(interleaved).to_numpy()]
    positive = counted[(counted[c.WATCH_SECONDS] >= min_watch).to_numpy()
                       & counted[c.USER_ID].isin(interleaved).to_numpy()]
    team = _credit(positive, team_imps)
    wins = {a: pd.Series(team == a, index=positive.index).groupby(
        positive[c.USER_ID]).sum().reindex(interleaved, fill_value=0).to_numpy()
        for a in names}
    preference = stats.interleaving_preference(wins[names[0]], wins[names[1]], level,
                                               seed=seed)
    teams = tuple(TeamMetrics(
        a, int((team_imps["_arm"] == a).sum()), int((team == a).sum()),
        float(positive[c.WATCH_SECONDS].to_numpy()[team == a].sum())) for a in names)
    issues["uncredited_watches"] = int(pd.isna(team).sum())
    per_user = pd.DataFrame({a: wins[a] for a in names}, index=interleaved)
    return ExperimentResult(**common, arms=(), comparisons=(), guardrails=(),
                            guardrail_flags=(), daily=(), issues=DataIssues(**issues),
                            teams=teams, preference=preference, per_user=per_user)


def analyze(
    data_dir: str | Path,
    config: Config,
    experiment_id: str,
    rejects_path: str | Path | None = None,
    primary: str = WATCH_THROUGH_RATE,
    alpha: float = 0.05,
) -> ExperimentResult:
    """Reads and validates the dataset ``data_dir`` (rows that break the contract go to the
    rejects file and are counted in the issues) and analyses ``experiment_id`` of ``config``."""
    from marquee.data.validate import load_dataset

    experiment = find_experiment(config, experiment_id)
    _check_primary(primary)
    data = load_dataset(data_dir, config.data.max_bad_share, rejects_path)
    rejected = sum(t.rejected for t in data.report.tables.values())
    return analyze_experiment(
        data.interactions, data.items, experiment, config.data.min_watch_seconds, primary,
        alpha, rejected_rows=rejected, rejects_path=str(data.report.rejects_path))
