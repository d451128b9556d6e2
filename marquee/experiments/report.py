"""Writes one experiment's analysis for people: ``OUT/report.md`` and PNG plots.

The report opens with the decision (which arm wins on the primary metric, whether that is
significant, whether a guardrail or the sample ratio flags), then the tables: the primary metric,
every metric per arm, raw and CUPED differences, guardrails, the sample ratio, the data issues.
Plots (matplotlib's Agg canvas, no display and no global backend switch): ``lift.png`` (the
primary metric's cumulative lift per day with its interval), ``arms.png`` (metrics per arm),
``srm.png`` (users per arm against the configured shares) and, for interleaving,
``preference.png``.

The decision uses the CUPED estimate (unbiased, with the smaller interval) and, with several
treatment arms, the Bonferroni level ``alpha / arms``.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from marquee.experiments import stats
from marquee.experiments.analyze import (
    METRIC_LABELS,
    METRICS,
    WATCH_THROUGH_RATE,
    ExperimentResult,
)

REPORT_FILE = "report.md"
LIFT_PLOT, ARMS_PLOT, SRM_PLOT, PREFERENCE_PLOT = (
    "lift.png", "arms.png", "srm.png", "preference.png")


def _pct(value: float, signed: bool = True) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def _num(metric: str, value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    sign = "+" if signed else ""
    return f"{value:{sign}.4f}" if metric == WATCH_THROUGH_RATE else f"{value:{sign},.2f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _date(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _primary_line(result: ExperimentResult) -> str:
    metric = result.primary_metric
    label = METRIC_LABELS[metric]
    rows = [m for m in result.comparisons if m.metric == metric]
    if not rows:
        return (f"**No comparison**: the control or every treatment arm has fewer than 2 users, "
                f"so nothing can be said about {label} yet.")
    alpha = result.alpha / len(rows)
    corrected = f" (Bonferroni level {alpha:.3g} for {len(rows)} arms)" if len(rows) > 1 else ""
    winners = [m for m in rows if m.cuped.p_value < alpha and m.cuped.difference > 0]
    losers = [m for m in rows if m.cuped.p_value < alpha and m.cuped.difference < 0]

    def cite(m) -> str:
        a = m.cuped
        return (f"{_pct(a.relative)} vs {result.control} ({a.level:.0%} CI "
                f"{_pct(a.relative_ci_low)} to {_pct(a.relative_ci_high)}, p = {_p(a.p_value)})")

    if winners:
        best = max(winners, key=lambda m: m.cuped.relative)
        line = f"**{best.arm} wins** on {label}: {cite(best)}, significant{corrected}."
        if losers:
            line += " Worse: " + "; ".join(f"{m.arm} {cite(m)}" for m in losers) + "."
        return line
    if losers:
        return (f"**No arm beats {result.control}** on {label}; significantly worse: "
                + "; ".join(f"{m.arm} {cite(m)}" for m in losers) + f"{corrected}.")
    best = max(rows, key=lambda m: m.cuped.difference)
    mde = stats.detectable_relative_effect(best.cuped, alpha)
    return (f"**No significant difference** on {label}: the best arm, {best.arm}, is at "
            f"{cite(best)}{corrected}. With these users the test could detect about "
            f"{_pct(mde, signed=False)} (80% power).")


def _preference_line(result: ExperimentResult) -> str:
    pref = result.preference
    a, b = (t.arm for t in result.teams)
    if pref is None or pref.prefer_a + pref.prefer_b == 0:
        return "**No preference yet**: no user has more watches credited to one team."
    share = (f"{pref.share_a:.1%} of the {pref.prefer_a + pref.prefer_b:,} users with a "
             f"preference chose {a} ({pref.level:.0%} CI {pref.share_ci_low:.1%} to "
             f"{pref.share_ci_high:.1%}, p = {_p(pref.p_value)})")
    if pref.p_value < result.alpha:
        winner = a if pref.share_a > 0.5 else b
        return f"**Users prefer {winner}**: {share}."
    return f"**No significant preference** between {a} and {b}: {share}."


def decision(result: ExperimentResult) -> str:
    """The report's first paragraph, in plain words."""
    lines = [_preference_line(result) if result.preference is not None
             else _primary_line(result)]
    if result.guardrail_flags:
        lines.append("**Guardrails flag**: " + "; ".join(
            f"{f.arm}: {f.reason}" for f in result.guardrail_flags) + ".")
    elif result.guardrails:
        lines.append("Guardrails (coverage, Gini of exposure, genre diversity): no flags.")
    srm = result.srm
    if srm.flagged:
        lines.append(
            f"**Sample ratio mismatch** (p = {_p(srm.p_value)} < {srm.threshold:g}): the users "
            "per arm do not match the configured shares, so assignment or logging is broken; "
            "do not trust the differences until the cause is found.")
    else:
        lines.append(f"Sample ratio: users per arm match the configured shares "
                     f"(p = {_p(srm.p_value)}).")
    if result.issues.users_in_several_arms:
        lines.append(f"**{len(result.issues.users_in_several_arms)} user(s) were in two arms** "
                     "(see Data issues).")
    return " ".join(lines)


def summary(result: ExperimentResult) -> str:
    """A few lines for the terminal: the decision and the primary metric per arm."""
    exp = result.experiment
    out = [f"experiment {exp.id} ({exp.kind}), {_date(result.first_timestamp)} .. "
           f"{_date(result.last_timestamp)} UTC", decision(result).replace("**", "")]
    if result.preference is None:
        metric = result.primary_metric
        for arm in result.arms:
            out.append(f"  {arm.arm:<20} {arm.users:>10,} users  {METRIC_LABELS[metric]} "
                       f"{_num(metric, arm.metric(metric))}")
    else:
        for team in result.teams:
            out.append(f"  {team.arm:<20} {team.impressions:>10,} impressions  "
                       f"{team.credited_watches:>8,} credited watches")
    out.extend(f"  issue: {line}" for line in result.issues.lines())
    return "\n".join(out)


# ----------------------------------------------------------------------------- tables


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def _comparison_rows(result: ExperimentResult, metrics) -> list[list[str]]:
    rows = []
    for m in result.comparisons:
        if m.metric not in metrics:
            continue
        raw, adj = m.raw, m.cuped
        rows.append([
            METRIC_LABELS[m.metric], m.arm,
            f"{_num(m.metric, raw.difference, True)} ({_pct(raw.relative)})",
            f"{_pct(raw.relative_ci_low)} to {_pct(raw.relative_ci_high)}", _p(raw.p_value),
            f"{_num(m.metric, adj.difference, True)} ({_pct(adj.relative)})",
            f"{_pct(adj.relative_ci_low)} to {_pct(adj.relative_ci_high)}", _p(adj.p_value),
            f"{m.result.variance_reduction:.0%}"])
    return rows


COMPARISON_HEADER = ["metric", "arm", "vs control", "CI (relative)", "p", "CUPED vs control",
                     "CUPED CI", "CUPED p", "variance saved"]


def _ab_sections(result: ExperimentResult, out: Path) -> list[str]:
    metric = result.primary_metric
    lines = [f"## Primary metric: {METRIC_LABELS[metric]}", ""]
    lines += table(COMPARISON_HEADER, _comparison_rows(result, {metric}))
    if result.daily:
        lines += [f"![cumulative lift]({LIFT_PLOT})", "",
                  "The lift as the days come in, on everyone exposed so far: an early "
                  "interval is wide, and a line that crosses zero late is no result.", ""]
    lines += ["## Metrics per arm", ""]
    lines += table(
        ["arm", "users", "impressions", "positive watches", "watch-through rate",
         "watch time per user (min)", "sessions per user"],
        [[a.arm, f"{a.users:,}", f"{a.impressions:,}", f"{a.positive_watches:,}",
          _num(WATCH_THROUGH_RATE, a.watch_through_rate),
          f"{a.watch_seconds_per_user / 60:,.1f}", f"{a.sessions_per_user:,.2f}"]
         for a in result.arms])
    lines += [f"![metrics per arm]({ARMS_PLOT})", "", "## Every metric against the control", ""]
    lines += table(COMPARISON_HEADER, _comparison_rows(result, set(METRICS)))
    lines += ["CUPED subtracts what each user's behaviour before the experiment predicts; it "
              "keeps the estimate unbiased and narrows the interval by the share in the last "
              "column.", "", "## Guardrails", ""]
    flagged = {(f.arm, f.guardrail) for f in result.guardrail_flags}

    def mark(arm: str, name: str) -> str:
        return " (flag)" if (arm, name) in flagged else ""

    lines += table(
        ["arm", "catalogue coverage", "Gini of exposure", "genre diversity per user (bits)",
         "impressions sampled"],
        [[g.arm, f"{g.coverage:.1%}{mark(g.arm, 'coverage')}",
          f"{g.gini:.3f}{mark(g.arm, 'gini')}",
          f"{g.genre_diversity:.2f}{mark(g.arm, 'genre_diversity')}",
          f"{g.sampled_impressions:,}"] for g in result.guardrails])
    lines += ["Coverage and Gini are computed on the same number of impressions in every arm. "
              "Higher coverage and diversity and a lower Gini mean a wider catalogue is shown.",
              ""]
    _plot_lift(result, out / LIFT_PLOT)
    _plot_arms(result, out / ARMS_PLOT)
    return lines


def _interleaving_sections(result: ExperimentResult, out: Path) -> list[str]:
    pref = result.preference
    lines = ["## Preference", ""]
    a, b = (t.arm for t in result.teams)
    lines += table(
        ["users with a credited watch", f"prefer {a}", f"prefer {b}", "ties",
         f"share preferring {a}", "CI", "p", "Δ_AB", "Δ_AB CI (bootstrap)"],
        [[f"{pref.users:,}", f"{pref.prefer_a:,}", f"{pref.prefer_b:,}", f"{pref.ties:,}",
          _pct(pref.share_a, False), f"{_pct(pref.share_ci_low, False)} to "
          f"{_pct(pref.share_ci_high, False)}", _p(pref.p_value), f"{pref.delta_ab:+.4f}",
          f"{pref.delta_ci_low:+.4f} to {pref.delta_ci_high:+.4f}"]])
    lines += [f"![preference]({PREFERENCE_PLOT})", "",
              f"Each watch is credited to the team ({a} or {b}) that put the title on the page; "
              "a user prefers the team with more credited watches. Δ_AB > 0 means users "
              f"prefer {a}. Guardrails need an A/B test: an interleaved page mixes both teams.",
              "", "## Teams", ""]
    lines += table(["team", "titles shown", "credited watches", "credited watch-through rate",
                     "credited watch time (h)"],
                    [[t.arm, f"{t.impressions:,}", f"{t.credited_watches:,}",
                      _num(WATCH_THROUGH_RATE, t.watch_through_rate),
                      f"{t.credited_watch_seconds / 3600:,.1f}"] for t in result.teams])
    _plot_preference(result, out / PREFERENCE_PLOT)
    return lines


def write_report(result: ExperimentResult, out_dir: str | Path) -> Path:
    """Writes ``out_dir/report.md`` and its plots (files there are replaced); returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exp = result.experiment
    kind = "A/B test" if result.preference is None else "Interleaving experiment"
    lines = [f"# Experiment {exp.id}", "", decision(result), "",
             f"- {kind} in layer {exp.layer}, arms "
             + ", ".join(f"{a.name} ({a.share:.0%})" for a in exp.arms)
             + (f", holdout {exp.holdout:.0%}" if exp.holdout else "")
             + (f"; control: {result.control}." if result.preference is None else "."),
             f"- Data from {_date(result.first_timestamp)} to {_date(result.last_timestamp)} UTC; "
             f"a positive watch lasts at least {result.min_watch_seconds:g} s; intervals at "
             f"{1 - result.alpha:.0%}.", ""]
    if result.preference is None:
        lines += _ab_sections(result, out)
    else:
        lines += _interleaving_sections(result, out)
    srm = result.srm
    total = sum(srm.observed)
    lines += ["## Sample ratio", ""]
    lines += table(["group", "users", "expected", "share", "configured share"],
                    [[a, f"{o:,}", f"{e:,.0f}", _pct(o / total, False), _pct(e / total, False)]
                     for a, o, e in zip(srm.arms, srm.observed, srm.expected, strict=True)])
    lines += [f"Chi-square {srm.chi2:.2f}, p = {_p(srm.p_value)}: "
              + ("**mismatch**" if srm.flagged else "no mismatch")
              + f" (flagged below {srm.threshold:g}).", "", f"![sample ratio]({SRM_PLOT})", ""]
    _plot_srm(result, out / SRM_PLOT)
    issues = result.issues.lines()
    lines += ["## Data issues", ""] + ([f"- {i}" for i in issues] or ["None."]) + [""]
    lines += ["## How to read this", "", *READING, ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- plots


READING = [
    "- **CI** (confidence interval): the range the true difference lies in, at the stated "
    "level; one that excludes 0 is a significant difference.",
    "- **p**: how often a difference this large would appear by chance if the arms were the "
    "same; below 0.05 counts as significant.",
    "- **CUPED**: the same comparison after removing what each user's activity before the "
    "experiment predicts; same answer on average, narrower interval.",
    "- **Sample ratio**: whether each arm got the share of users it was configured for; a "
    "mismatch means assignment or logging is broken, and no difference can be trusted.",
    "- **Guardrails**: how wide a part of the catalogue is shown (coverage, Gini of exposure, "
    "genre diversity per user), so that a win on the primary metric does not come from "
    "narrowing what people see.",
]


def figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_lift(result: ExperimentResult, path: Path) -> None:
    fig = figure()
    ax = fig.add_subplot()
    for arm in dict.fromkeys(d.arm for d in result.daily):
        days = [d for d in result.daily if d.arm == arm]
        x = [d.day + 1 for d in days]
        ax.plot(x, [100 * d.comparison.relative for d in days], marker="o", label=arm)
        ax.fill_between(x, [100 * d.comparison.relative_ci_low for d in days],
                        [100 * d.comparison.relative_ci_high for d in days], alpha=0.2)
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("day of the experiment")
    ax.set_ylabel(f"{METRIC_LABELS[result.primary_metric]}: % vs {result.control}")
    ax.set_title("Cumulative lift with its interval")
    if result.daily:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _plot_arms(result: ExperimentResult, path: Path) -> None:
    fig = figure(10.0, 3.5)
    names = [a.arm for a in result.arms]
    for k, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), k + 1)
        ax.bar(names, [a.metric(metric) for a in result.arms], color="tab:blue")
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path)


def _plot_srm(result: ExperimentResult, path: Path) -> None:
    fig = figure()
    ax = fig.add_subplot()
    x = range(len(result.srm.arms))
    ax.bar([i - 0.2 for i in x], result.srm.observed, width=0.4, label="users")
    ax.bar([i + 0.2 for i in x], result.srm.expected, width=0.4, label="expected")
    ax.set_xticks(list(x), result.srm.arms)
    ax.set_ylabel("users")
    ax.set_title(f"Users per group (chi-square p = {_p(result.srm.p_value)})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _plot_preference(result: ExperimentResult, path: Path) -> None:
    pref = result.preference
    a, b = (t.arm for t in result.teams)
    fig = figure()
    ax = fig.add_subplot()
    ax.bar([f"prefer {a}", "tie", f"prefer {b}"], [pref.prefer_a, pref.ties, pref.prefer_b])
    ax.set_ylabel("users")
    ax.set_title("Users by the team with more credited watches")
    fig.tight_layout()
    fig.savefig(path)
