"""``marquee monitor report``: one page that a person reads at a glance, and alerts that a
scheduler acts on.

:func:`monitor_report` writes ``OUT/report.md`` and its PNG plots (:mod:`.plots`)::

    drift       RUN's latest DistributionValidator findings (this run's training data against
                the last data the gate accepted) and ExampleValidator's schema anomalies
    skew        the serving log against RUN's training statistics (:mod:`.skew`)
    exposure    coverage, Gini, diversity, novelty, new titles per UTC day and experiment arm
                of the log's impressions (:mod:`.exposure_log`), Lorenz curves
    embeddings  every pushed version's embedding drift (:mod:`.embedding_drift`)

A section whose input is missing (no ``--run``, a first run without a baseline, a log without
impressions, no pushed version) says so instead of failing. Every alert names what was
expected, what was measured and what to do:

* a drift or skew comparison past its threshold (or not comparable), a schema anomaly;
* on the log's last complete UTC day, all impressions: coverage below
  ``monitor.alert_min_coverage``, Gini above ``alert_max_gini``, intra-list diversity below
  ``alert_min_ild``;
* the latest pushed version's mean neighbour overlap below ``alert_min_neighbour_overlap``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from pathlib import Path

from marquee.config import Config
from marquee.data import contract as c
from marquee.experiments.report import table
from marquee.monitoring import plots
from marquee.monitoring.comparators import Comparison
from marquee.monitoring.exposure_log import (
    ALL,
    LogExposure,
    log_exposure,
    read_catalogue,
)

REPORT_FILE = "report.md"
DRIFT_PLOT, SKEW_PLOT = "drift.png", "skew.png"
COVERAGE_PLOT, DIVERSITY_PLOT, LORENZ_PLOT = "coverage_gini.png", "diversity.png", "lorenz.png"
EMBEDDING_PLOT = "embedding_drift.png"
DRIFT, SKEW, EXPOSURE, EMBEDDINGS = "drift", "skew", "exposure", "embeddings"
SCHEMA = "pipeline/schema/schema.pbtxt"

DRIFT_ACTION = (
    "Compare the feature's histograms in the two runs' statistics (RUN/tfx/StatisticsGen/"
    "statistics/<id>/). If the shift is expected (a season, a launch, a new market), accept it: "
    "the next run with monitor.drift_policy warn makes this data the baseline; or raise the "
    f"feature's drift_comparator threshold in {SCHEMA}. Otherwise find what changed upstream "
    "of the dataset folder.")
NOT_COMPARED_ACTION = (
    "One side has no statistics of the feature: check that the examples still carry it "
    "(components/contract_example_gen/example_lib.py) and that the schema names it.")
SCHEMA_ACTION = (
    "These rows passed the data contract but not the schema, and the run stopped before "
    f"training: if the new values are intended, add them to {SCHEMA}; otherwise tighten the "
    "contract (marquee/data/contract.py) so that `marquee data validate` rejects them.")
SKEW_ACTION = (
    "Serving sees other values of the feature than training did: check what serving sends "
    "(the user and title features it joins, a client's device or clock), or retrain on recent "
    f"data if the audience moved. Thresholds: skew_comparator in {SCHEMA}, or "
    "monitor.skew_linf_threshold / skew_jsd_threshold.")
COVERAGE_ACTION = (
    "Fewer titles reach the pages: check the candidate sources (a source past its deadline "
    "leaves the others; /metrics counts timeouts and fallbacks), their quotas "
    "(serving.sources) and the exploration step (serving.rerank).")
GINI_ACTION = (
    "Impressions concentrate on few titles: check serving.popularity_weight, the trending "
    "source's quota and the exploration step; the per-arm lines show whether one arm does it.")
ILD_ACTION = (
    "Pages hold titles of the same genres: check that the mmr and max_per_genre re-rank steps "
    "are on (serving.rerank) and that the content and trending sources answer.")
OVERLAP_ACTION = (
    "The new version's neighbourhoods moved more than the threshold allows: compare its "
    "offline metrics with the previous version's (RUN/summary.md) and look at the titles "
    "that moved most (`marquee monitor embeddings RUN --json`) before it serves.")


class ReportInputError(ValueError):
    """An input the report cannot use at all; ``option`` names the command-line option."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclasses.dataclass(frozen=True)
class Alert:
    section: str  # DRIFT, SKEW, EXPOSURE or EMBEDDINGS
    check: str  # what was checked: "coverage on 2024-01-05 (all impressions)"
    expected: str  # ">= 0.2 (monitor.alert_min_coverage)"
    measured: str
    action: str  # what to do

    def line(self) -> str:
        return f"{self.section}: {self.check}: {self.measured}, expected {self.expected}"


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of the report: its markdown, the plots it wrote (file names in OUT) and,
    when its input was missing, why (``missing``; its lines then say what was found)."""

    key: str
    title: str
    lines: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    missing: str = ""


@dataclasses.dataclass(frozen=True)
class MonitorReport:
    path: Path  # OUT/report.md
    sections: tuple[Section, ...]
    alerts: tuple[Alert, ...]
    exposure: LogExposure | None  # the per-day figures (None without a catalogue)

    @property
    def figures(self) -> list[Path]:
        return [self.path.parent / f for s in self.sections for f in s.figures]

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)

    def summary(self) -> str:
        """A few lines for the terminal: where the report is, each section, every alert."""
        out = [f"monitor report: {self.path} ({len(self.figures)} plots)"]
        out += [f"  {s.key}: not available: {s.missing}" if s.missing
                else f"  {s.key}: {s.lines[0]}" for s in self.sections]
        if not self.alerts:
            return "\n".join(out + ["no alerts"])
        return "\n".join(out + [f"{len(self.alerts)} alert(s):"]
                         + [f"  ALERT {a.line()}" for a in self.alerts])


# ----------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def _when(path: Path) -> str:
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _comparison_rows(found: list[Comparison]) -> list[list[str]]:
    return [[x.feature, x.measure or "n/a", _num(x.value, 4), f"{x.threshold:g}",
             ("**past the threshold**" if x.value is not None else "**not compared**")
             if x.breached else "ok"] for x in found]


COMPARISON_HEADER = ["feature", "measure", "distance", "threshold", "status"]


def _comparison_alerts(section: str, where: str, found: list[Comparison],
                       action: str) -> list[Alert]:
    return [Alert(section, f"{where}: {x.feature}",
                  f"{x.measure or 'distance'} <= {x.threshold:g}",
                  _num(x.value, 4) if x.value is not None else f"not compared ({x.detail})",
                  action if x.value is not None else NOT_COMPARED_ACTION)
            for x in found if x.breached]


# ----------------------------------------------------------------------------- sections


def _drift(pipeline_root: Path | None, out: Path) -> tuple[Section, list[Alert]]:
    title = "Drift between runs"
    if pipeline_root is None:
        return Section(DRIFT, title, missing="no --run given"), []
    from components.anomaly_gate.executor import describe_anomalies
    from marquee.monitoring.drift import read_drift
    from pipeline.local_runner import latest_output

    lines, alerts = [], []
    schema_found = latest_output(pipeline_root, "ExampleValidator", "anomalies")
    if schema_found is not None:
        anomalies = describe_anomalies(str(schema_found))
        lines += [f"Schema anomalies (ExampleValidator, {schema_found.relative_to(pipeline_root)}"
                  f", {_when(schema_found)}): " + (f"**{len(anomalies)}**" if anomalies
                                                   else "none."), ""]
        lines += [f"- {a}" for a in anomalies] + ([""] if anomalies else [])
        alerts += [Alert(DRIFT, f"schema: {a.split(': ', 1)[0]}", f"no anomaly against {SCHEMA}",
                         a.split(": ", 1)[-1], SCHEMA_ACTION) for a in anomalies]
    found_at = latest_output(pipeline_root, "DistributionValidator", "anomalies")
    if found_at is None:
        return Section(DRIFT, title, tuple(lines), missing=(
            f"{pipeline_root} holds no DistributionValidator output (the run stopped before "
            "it, or the folder is from before the drift check)")), alerts
    splits = read_drift(str(found_at))
    if not splits:
        return Section(DRIFT, title, tuple(lines), missing=(
            "no baseline yet: this is the first run in the folder (or no earlier run got past "
            "its AnomalyGate), so DistributionValidator compared nothing; the next run "
            "compares with this one's data")), alerts
    breaches = sum(len(s.breaches) for s in splits)
    head = (f"{breaches} of {sum(len(s.comparisons) for s in splits)} features past their "
            "thresholds")
    lines = [head, "", f"This run's training data against the last data an AnomalyGate "
             f"accepted (DistributionValidator, {found_at.relative_to(pipeline_root)}, "
             f"{_when(found_at)}); thresholds from {SCHEMA} and monitor.drift_*_threshold. "
             "L-infinity: the largest change in one value's share; Jensen-Shannon: base-2 "
             "divergence of the two histograms (0 same, 1 disjoint).", ""] + lines
    for split in splits:
        lines += [f"Split {split.split_pair}:", ""]
        lines += table(COMPARISON_HEADER, _comparison_rows(list(split.comparisons)))
        alerts += _comparison_alerts(DRIFT, f"{split.split_pair} split",
                                     list(split.comparisons), DRIFT_ACTION)
    lines += [f"![drift per feature]({DRIFT_PLOT})", ""]
    plots.comparisons({s.split_pair: s.comparisons for s in splits},
                      "Drift per feature against its threshold", out / DRIFT_PLOT)
    return Section(DRIFT, title, tuple(lines), (DRIFT_PLOT,)), alerts


def _skew(run_dir: Path | None, log_dir: Path, data_dir: Path, config: Config,
          out: Path) -> tuple[Section, list[Alert]]:
    title = "Train/serve skew"
    if run_dir is None:
        return Section(SKEW, title, missing="no --run given"), []
    from tfx.utils import io_utils

    from marquee.monitoring.skew import SkewInputError, skew_report
    from pipeline.pipeline import SCHEMA_FILE

    try:
        report = skew_report(log_dir, data_dir, io_utils.SchemaReader().read(SCHEMA_FILE),
                             config, run_dir=run_dir)
    except SkewInputError as e:
        return Section(SKEW, title, missing=str(e)), []
    details = ["```", *report.lines(), "```", ""]
    if not report.comparisons:
        return Section(SKEW, title, tuple(details), missing=(
            "the log holds no impressions or positive watches of users and titles found in "
            f"{data_dir} or the log itself, so nothing was compared")), []
    out_of_bounds = report.out_of_bounds
    head = "; ".join(f"{g}: {len(out_of_bounds[g])} of {len(cs)} features out of bounds"
                     for g, cs in report.comparisons.items())
    lines = [head, "", "The whole log against the training statistics the served models "
             f"were trained on ({report.statistics_dir}); a group is the log's rows of one "
             "kind turned into the examples the pipeline would build.", ""]
    alerts = []
    for group, found in report.comparisons.items():
        lines += [f"Group {group}:", ""] + table(COMPARISON_HEADER, _comparison_rows(found))
        alerts += _comparison_alerts(SKEW, f"{group} group", found, SKEW_ACTION)
    lines += [f"![skew per feature]({SKEW_PLOT})", ""] + details
    plots.comparisons(report.comparisons, "Train/serve skew per feature against its threshold",
                      out / SKEW_PLOT)
    return Section(SKEW, title, tuple(lines), (SKEW_PLOT,)), alerts


DAY_HEADER = ["day", "group", "impressions", "users", "coverage", "Gini", "intra-list div.",
              "genre div. (bits)", "novelty (rank)", "new titles"]


def _day_row(d, label: str | None = None) -> list[str]:
    return [label or d.date + ("" if d.complete else " (in progress)"), d.group,
            f"{d.impressions:,}", f"{d.users:,}", _pct(d.coverage), _num(d.gini),
            _num(d.intra_list_diversity), _num(d.genre_diversity, 2), _num(d.novelty, 1),
            _pct(d.new_title_share)]


def _exposure_alerts(exposure: LogExposure, config: Config) -> tuple[list[str], list[Alert]]:
    day = exposure.day(exposure.last_day)
    m = config.monitor
    if day is None or not day.complete:
        return ["No complete day in the log yet: the exposure thresholds are checked on the "
                "last complete UTC day, so none was checked."], []
    where = f"on {day.date} (all impressions)"
    checks = [("coverage", day.coverage, m.alert_min_coverage, ">=", "alert_min_coverage",
               COVERAGE_ACTION, _pct),
              ("Gini of exposure", day.gini, m.alert_max_gini, "<=", "alert_max_gini",
               GINI_ACTION, _num),
              ("intra-list diversity", day.intra_list_diversity, m.alert_min_ild, ">=",
               "alert_min_ild", ILD_ACTION, _num)]
    alerts, checked = [], []
    for name, value, limit, op, field, action, fmt in checks:
        if limit is None or math.isnan(value):
            continue
        checked.append(f"{name} {op} {fmt(limit)}")
        if (value < limit) if op == ">=" else (value > limit):
            alerts.append(Alert(EXPOSURE, f"{name} {where}", f"{op} {fmt(limit)} "
                                f"(monitor.{field})", fmt(value), action))
    note = (f"Checked on {day.date}, the last complete day, all impressions: "
            + (", ".join(checked) if checked else "no threshold set") + ".")
    return [note], alerts


def _exposure(exposure: LogExposure | None, missing: str, config: Config,
              out: Path) -> tuple[Section, list[Alert]]:
    title = "Exposure and diversity per day"
    if exposure is None:
        return Section(EXPOSURE, title, missing=missing), []
    counts = (f"{exposure.rows:,} interaction rows read ({exposure.rejected:,} broke the data "
              f"contract and are left out), {exposure.impressions:,} impressions of catalogue "
              f"titles")
    extra = []
    if exposure.unknown_titles:
        extra.append(f"{exposure.unknown_titles:,} impressions of titles in no items table "
                     "are left out (pass the dataset folder as --data)")
    if exposure.without_page:
        extra.append(f"{exposure.without_page:,} impressions have no page_id and are paged by "
                     "user and timestamp")
    if not exposure.days:
        return Section(EXPOSURE, title, (counts + ".",), missing=(
            "the log holds no impressions (rows with event impression) of catalogue titles")), []
    alert_lines, alerts = _exposure_alerts(exposure, config)
    last = exposure.day(exposure.last_day)
    window_coverage, window_gini = exposure.window()
    head = (f"{len(exposure.of(ALL))} days; {last.date}: coverage {_pct(last.coverage)}, Gini "
            f"{_num(last.gini)}, intra-list diversity {_num(last.intra_list_diversity)}")
    first, final = exposure.first_timestamp, exposure.last_timestamp
    lines = [head, "", f"- {counts}" + "".join(f"; {e}" for e in extra) + ".",
             f"- From {_stamp(first)} to {_stamp(final)} UTC; the whole log: coverage "
             f"{_pct(window_coverage)}, Gini {_num(window_gini)}.",
             f"- {alert_lines[0]}", ""]
    groups = [g for g in exposure.groups if g != ALL]
    if groups:
        lines += [f"Per arm on {last.date} and over the whole log ("
                  f"{', '.join(groups)}):", ""]
        rows = [_day_row(d) for g in exposure.groups if (d := exposure.day(last.day, g))]
        for g in exposure.groups:
            cov, gin = exposure.window(g)
            rows.append(["whole log", g, f"{sum(d.impressions for d in exposure.of(g)):,}", "",
                         _pct(cov), _num(gin), "", "", "", ""])
        lines += table(DAY_HEADER, rows)
        lines += ["An arm's coverage is lower than all impressions' by its share of the "
                  "traffic alone; compare arms with each other, not with the thresholds.", ""]
    lines += [f"![coverage and Gini per day]({COVERAGE_PLOT})", "",
              f"![diversity, novelty and new titles per day]({DIVERSITY_PLOT})", "",
              f"![Lorenz curves]({LORENZ_PLOT})", "", "All impressions, per day:", ""]
    lines += table(DAY_HEADER, [_day_row(d) for d in exposure.of(ALL)])
    m = config.monitor
    plots.coverage_and_gini(exposure, m.alert_min_coverage, m.alert_max_gini,
                            out / COVERAGE_PLOT)
    plots.diversity(exposure, m.alert_min_ild, out / DIVERSITY_PLOT)
    plots.lorenz(exposure, last.date, out / LORENZ_PLOT)
    return (Section(EXPOSURE, title, tuple(lines), (COVERAGE_PLOT, DIVERSITY_PLOT, LORENZ_PLOT)),
            alerts)


def _stamp(ts: int | None) -> str:
    if ts is None:
        return "n/a"
    stamp = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M")


def _embeddings(pipeline_root: Path | None, config: Config,
                out: Path) -> tuple[Section, list[Alert]]:
    title = "Embedding drift per pushed version"
    if pipeline_root is None:
        return Section(EMBEDDINGS, title, missing="no --run given"), []
    from marquee.monitoring.embedding_drift import read_reports

    reports = read_reports(str(pipeline_root))
    compared = [r for r in reports if r.get("previous_version") is not None]
    if not compared:
        return Section(EMBEDDINGS, title, missing=(
            f"{len(reports)} pushed version(s) with a report and none compared with an earlier "
            "one (EmbeddingDrift compares a push with the previous complete version; the first "
            "push has none)")), []
    rows = []
    for r in compared:
        q, k, nb = r["query_norms"], r["candidate_norms"], r["neighbours"]
        rows.append([str(r["version"]), str(r["previous_version"]),
                     f"{q['previous']['mean']:.3f} -> {q['current']['mean']:.3f}",
                     f"{k['previous']['mean']:.3f} -> {k['current']['mean']:.3f}",
                     f"{nb['k']}", f"{nb.get('compared', 0):,}",
                     _num(nb.get("mean_overlap")), _num(nb.get("p10_overlap")),
                     _num(nb.get("p50_overlap")),
                     _pct(nb["unchanged_share"]) if "unchanged_share" in nb else "n/a"])
    latest = compared[-1]
    overlap = latest["neighbours"].get("mean_overlap")
    head = (f"{len(compared)} version(s) compared; latest {latest['version']}: mean neighbour "
            f"overlap {_num(overlap)}")
    lines = [head, "", "Each pushed version against the previous one: mean embedding norms "
             "(previous -> current) and the share of each title's top-k neighbours kept "
             "(1 = unchanged, 0 = all new). Two trainings on the same data already move "
             "neighbours: read a value against this history.", ""]
    lines += table(["version", "against", "query norm", "candidate norm", "k", "titles",
                     "mean overlap", "p10", "p50", "unchanged"], rows)
    lines += [f"![embedding drift per version]({EMBEDDING_PLOT})", ""]
    limit = config.monitor.alert_min_neighbour_overlap
    alerts = []
    if limit is not None and overlap is not None and overlap < limit:
        alerts.append(Alert(EMBEDDINGS, f"mean neighbour overlap of version {latest['version']}",
                            f">= {limit:g} (monitor.alert_min_neighbour_overlap)",
                            _num(overlap), OVERLAP_ACTION))
    plots.embedding_drift(compared, limit, out / EMBEDDING_PLOT)
    return Section(EMBEDDINGS, title, tuple(lines), (EMBEDDING_PLOT,)), alerts


# ----------------------------------------------------------------------------- the report


def _check_log(log_dir: Path) -> None:
    if not ((log_dir / c.INTERACTIONS).is_dir() or (log_dir / f"{c.INTERACTIONS}.parquet")
            .is_file()):
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in log_dir.iterdir())
        raise ReportInputError("--log", (
            f"{log_dir}: no contract interactions to report on: expected "
            f"{log_dir}/{c.INTERACTIONS}/part-*.parquet, as `marquee serve --event-log DIR` "
            f"writes them (or a dataset's {c.INTERACTIONS}.parquet), and the folder holds "
            f"{', '.join(held[:12]) or 'nothing'}{', ...' if len(held) > 12 else ''}. Pass the "
            "folder the server logged into."))
    try:
        c.table_files(log_dir, c.INTERACTIONS)
    except c.ContractError as e:
        raise ReportInputError("--log", str(e)) from None


def _pipeline_root(run_dir: Path) -> Path:
    root = run_dir / "tfx"
    if not root.is_dir():
        raise ReportInputError("--run", (
            f"{run_dir}: not a run folder (expected its pipeline root {root}/); pass the "
            "folder of `marquee pipeline run --root RUN_DIR`, or leave --run out for a report "
            "of the log alone"))
    return root


READING = [
    "- **Exit code**: 0 without alerts, 1 with any alert (the list above), 2 for input that "
    "cannot be read.",
    "- **Coverage**: the share of the day's catalogue (titles added before the day ended) "
    "shown at least once. **Gini of exposure**: 0 when every title is shown equally often, "
    "near 1 when a few take every impression; the Lorenz curve is where it comes from (the "
    "further below the diagonal, the more unequal).",
    "- **Intra-list diversity**: the mean over pages of the pairwise Jaccard distance of the "
    "genre sets of the page's titles (0: one genre, 1: no genre shared). **Genre diversity "
    "per user**: the entropy of the genres a user was shown (bits; 2^bits is the effective "
    "number of genres).",
    "- **Novelty**: the mean popularity rank of the titles shown (1 = the most watched before "
    "that day); higher shows less popular titles. **New titles**: the share of impressions of "
    "titles added less than serving.explore_new_days days before.",
]


def monitor_report(run_dir: str | Path | None, log_dir: str | Path, out_dir: str | Path,
                   config: Config, *, data_dir: str | Path | None = None,
                   now: float | None = None) -> MonitorReport:
    """Writes ``out_dir/report.md`` and its plots (module docstring) and returns what it wrote.

    Args:
      run_dir: the pipeline run folder (``marquee pipeline run --root``); None leaves out the
        drift, skew and embedding sections.
      log_dir: the folder serving logged into (``marquee serve --event-log``), holding
        ``interactions/``.
      data_dir: the dataset folder the log's users and titles come from (default ``log_dir``:
        ``marquee serve --event-log DATA --data DATA``); its items are the catalogue with the
        log's own ``items/``, and its watches count in the popularity behind novelty.
      now: UTC seconds; a day not ended by then is in progress (default: the clock).

    Raises:
      ReportInputError: ``log_dir`` holds no contract interactions (no table, no clean row,
        a file that cannot be read as one), or ``run_dir`` is no run folder.
    """
    run = Path(run_dir) if run_dir is not None else None
    log, out = Path(log_dir), Path(out_dir)
    data = Path(data_dir) if data_dir is not None else log
    _check_log(log)
    pipeline_root = _pipeline_root(run) if run is not None else None
    out.mkdir(parents=True, exist_ok=True)
    folders = [data] + ([log] if os.path.realpath(log) != os.path.realpath(data) else [])
    try:
        items = read_catalogue(folders)
        found = log_exposure(log, items, new_days=config.serving.explore_new_days,
                             min_watch_seconds=config.data.min_watch_seconds,
                             history_dir=data, now=now, scratch_dir=out)
    except c.ContractError as e:
        raise ReportInputError("--log", f"{e}") from e
    if found.rows == found.rejected:
        raise ReportInputError("--log", (
            f"{log}: its interactions hold {found.rows:,} row(s), none of which passes the data "
            "contract; `marquee data validate` lists what is wrong with each"))
    exposure, missing = found, ""
    if items.empty:
        exposure, missing = None, (
            f"no items table in {' or '.join(str(f) for f in folders)}: coverage and diversity "
            "need the catalogue; pass the dataset folder as --data")
    built = [_drift(pipeline_root, out), _skew(run, log, data, config, out),
             _exposure(exposure, missing, config, out),
             _embeddings(pipeline_root, config, out)]
    sections = tuple(s for s, _ in built)
    alerts = tuple(a for _, found_alerts in built for a in found_alerts)
    path = out / REPORT_FILE
    path.write_text("\n".join(_markdown(sections, alerts, run, log, data)))
    return MonitorReport(path, sections, alerts, exposure)


def _markdown(sections: tuple[Section, ...], alerts: tuple[Alert, ...], run: Path | None,
              log: Path, data: Path) -> list[str]:
    lines = ["# Monitoring report", ""]
    if alerts:
        lines += [f"**{len(alerts)} alert(s)**: " + "; ".join(a.line() for a in alerts[:5])
                  + ("; ..." if len(alerts) > 5 else "") + ".", ""]
    else:
        lines += ["**No alerts.**", ""]
    lines += [f"- Run: {run or 'none given'}; log: {log}; catalogue and users: {data}.",
              f"- Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
              ""]
    missing = [s.title.lower() for s in sections if s.missing]
    if missing:
        lines += [f"Not available (why: in the section): {', '.join(missing)}.", ""]
    if alerts:
        lines += ["## Alerts", ""]
        lines += table(["section", "check", "expected", "measured", "what to do"],
                        [[a.section, a.check, a.expected, a.measured, a.action]
                         for a in alerts])
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.missing:
            lines += [f"_Not available: {s.missing}._", ""]
        lines += list(s.lines)
    return lines + ["## How to read this", "", *READING, ""]

