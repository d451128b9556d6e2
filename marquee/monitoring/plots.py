"""The plots of ``marquee monitor report`` (matplotlib's Agg canvas: no display, no global
backend switch). Each function draws one PNG from the figures it is given and writes it to
``path``."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.dates as mdates

from marquee.experiments.report import figure
from marquee.monitoring.comparators import Comparison
from marquee.monitoring.exposure_log import ALL, DAY_SECONDS, LogExposure

_BREACH, _FINE, _THRESHOLD = "tab:red", "tab:blue", "black"


def comparisons(groups: Mapping[str, Sequence[Comparison]], title: str, path: Path) -> None:
    """One panel per group (a split, a log group): a bar per feature of its distance, red when
    past the threshold, the threshold a black tick on the bar's row; a feature that could not
    be compared is named as such."""
    groups = {g: list(cs) for g, cs in groups.items() if cs}
    rows = max((len(cs) for cs in groups.values()), default=1)
    fig = figure(6.0 * max(len(groups), 1), max(2.5, 1.2 + 0.35 * rows))
    for k, (group, found) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        y = list(range(len(found)))[::-1]
        values = [x.value if x.value is not None else 0.0 for x in found]
        ax.barh(y, values, color=[_BREACH if x.breached else _FINE for x in found])
        ax.scatter([x.threshold for x in found], y, marker="|", s=250, color=_THRESHOLD,
                   label="threshold", zorder=3)
        for row, x in zip(y, found, strict=True):
            if x.value is None:
                ax.text(0.0, row, " not compared", va="center", color=_BREACH, fontsize=8)
        ax.set_yticks(y, [f"{x.feature} ({'L∞' if x.measure.startswith('L') else 'JS'})"
                          for x in found])
        ax.set_xlabel("distance")
        ax.set_title(group, fontsize=10)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def _dates(days: Sequence[int]) -> list[datetime.datetime]:
    return [datetime.datetime.fromtimestamp(d * DAY_SECONDS, datetime.timezone.utc)
            for d in days]


def _day_axis(ax, exposure: LogExposure) -> None:
    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    running = [d.day for d in exposure.of(ALL) if not d.complete]
    for start in _dates(running):  # a day still in progress: shaded, not alerted on
        ax.axvspan(start, start + datetime.timedelta(days=1), color="0.9", zorder=0)


def _trends(exposure: LogExposure, panels: Sequence[tuple[str, str, float | None]],
            path: Path) -> None:
    columns = min(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    fig = figure(5.0 * columns, 3.5 * rows)
    for k, (name, label, threshold) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, k + 1)
        for group in exposure.groups:
            days = exposure.of(group)
            ax.plot(_dates([d.day for d in days]), [getattr(d, name) for d in days],
                    marker="o", markersize=3, label=group,
                    linewidth=2.0 if group == ALL else 1.2)
        if threshold is not None:
            ax.axhline(threshold, color=_BREACH, linestyle="--", linewidth=1,
                       label="alert threshold")
        _day_axis(ax, exposure)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def coverage_and_gini(exposure: LogExposure, min_coverage: float | None,
                      max_gini: float | None, path: Path) -> None:
    """Coverage and the Gini of exposure per day, a line per group, the alert thresholds."""
    _trends(exposure, [("coverage", "catalogue coverage", min_coverage),
                       ("gini", "Gini of exposure", max_gini)], path)


def diversity(exposure: LogExposure, min_ild: float | None, path: Path) -> None:
    """Intra-list diversity, genre diversity per user, novelty and new-title share per day."""
    _trends(exposure, [("intra_list_diversity", "intra-list diversity (Jaccard)", min_ild),
                       ("genre_diversity", "genre diversity per user (bits)", None),
                       ("novelty", "novelty (mean popularity rank shown)", None),
                       ("new_title_share", "share of impressions of new titles", None)], path)


def lorenz(exposure: LogExposure, last_day: str, path: Path) -> None:
    """The Lorenz curves of the window and of the last day, a curve per group, against the
    line of equality (Gini 0)."""
    fig = figure(10.0, 4.5)
    for k, (on_last_day, title) in enumerate(((False, "the whole log"), (True, last_day))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="equality")
        counts = exposure.last_day_counts if on_last_day else exposure.window_counts
        for group in exposure.groups:
            if group in counts:
                x, y = exposure.lorenz(group, last_day=on_last_day)
                ax.plot(x, y, label=group, linewidth=2.0 if group == ALL else 1.2)
        ax.set_xlabel("share of titles, least shown first")
        ax.set_ylabel("share of impressions")
        ax.set_title(f"Lorenz curve: {title}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def embedding_drift(reports: Sequence[dict], min_overlap: float | None, path: Path) -> None:
    """Per pushed version (against the one before it): the top-k neighbour overlap (mean,
    p10, p50) and the mean query and candidate norms of both versions."""
    compared = [r for r in reports if r.get("previous_version") is not None]
    names = [str(r["version"]) for r in compared]
    fig = figure(10.0, 3.8)
    ax = fig.add_subplot(1, 2, 1)
    with_k = [(n, r["neighbours"]) for n, r in zip(names, compared, strict=True)
              if r["neighbours"].get("k")]
    for key, label in (("mean_overlap", "mean"), ("p10_overlap", "p10"),
                       ("p50_overlap", "p50")):
        ax.plot([n for n, _ in with_k], [nb[key] for _, nb in with_k], marker="o", label=label)
    if min_overlap is not None:
        ax.axhline(min_overlap, color=_BREACH, linestyle="--", linewidth=1,
                   label="alert threshold")
    ax.set_ylim(0, 1.05)
    ax.set_title("top-k neighbour overlap with the previous version", fontsize=10)
    ax.set_xlabel("pushed version")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    for tower in ("query", "candidate"):
        for side, style in (("previous", ":"), ("current", "-")):
            ax.plot(names, [r[f"{tower}_norms"][side]["mean"] for r in compared],
                    linestyle=style, marker="o", label=f"{tower} ({side})")
    ax.set_title("mean embedding norm", fontsize=10)
    ax.set_xlabel("pushed version")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
