"""`marquee monitor report`: exposure per day worked by hand, alerts and exit codes, sections
whose input is missing, bad input.

The log (:func:`_log`): titles 1-4 of genres {Drama}, {Comedy}, {Drama, Comedy}, {Horror};
1-3 in the catalogue long before, 4 added as day 1 begins. Experiment exp1, arms control and
treatment::

    day 0  page A  user 1  control    titles 1, 2   (user 1 then watches 2 for 600 s)
           page B  user 2  treatment  titles 1, 3
    day 1  page C  user 1  control    titles 1, 4
           page D  user 2  treatment  titles 1, 2

Day 0, catalogue 1-3 (4 is not added yet): impressions 2, 1, 1 -> coverage 3/3; Gini of the
sorted counts (1, 1, 2): sum (2i - n - 1) x_i / (n sum x) = (-2 + 0 + 4) / (3 * 4) = 1/6.
Intra-list diversity: A {Drama} vs {Comedy} 1, B {Drama} vs {Drama, Comedy} 1 - 1/2: 0.75.
Genre entropy: user 1 Drama 1, Comedy 1 -> 1 bit; user 2 Drama 1.5, Comedy 0.5 -> H(3/4, 1/4)
= 0.8113 bits; mean 0.9056. Novelty: no watch before, all three tie at rank 2 -> 2. New: 0.

Day 1, catalogue 1-4: impressions 2, 1, 0, 1 -> coverage 3/4; Gini of (0, 1, 1, 2): (-3 * 0
- 1 + 1 + 3 * 2) / (4 * 4) = 0.375; Lorenz curve x = 0, 1/4, 1/2, 3/4, 1, y = 0, 0, 1/4, 1/2,
1. Diversity 1 (no genre shared on C or D), 1 bit per user. Novelty: title 2 was watched once
before, rank 1; 1, 3, 4 tie at ranks 2-4 -> 3; shown 1, 4, 1, 2: (3 + 3 + 3 + 1) / 4 = 2.5.
New titles (added < 7 days before): title 4, 1 of 4. Arms: control 1, 4 and treatment 1, 2,
each 2 of 4 titles.

Whole log, catalogue 1-4: impressions 4, 2, 1, 1 -> coverage 1; Gini of (1, 1, 2, 4): (-3 - 1
+ 2 + 12) / (4 * 8) = 0.3125; Lorenz y = 0, 1/8, 2/8, 4/8, 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from marquee.config import ConfigError, from_dict
from marquee.data import contract as c
from marquee.monitoring.cli import monitor
from marquee.monitoring.config import MonitorConfig
from marquee.monitoring.exposure_log import ALL, log_exposure, read_catalogue
from marquee.monitoring.report import (
    DRIFT,
    EMBEDDINGS,
    EXPOSURE,
    SKEW,
    ReportInputError,
    monitor_report,
)

DAY = 86_400
D0 = 19_700  # 2023-12-09
T0 = D0 * DAY
AFTER = T0 + 10 * DAY  # both days have ended
GENRES = {1: ["Drama"], 2: ["Comedy"], 3: ["Drama", "Comedy"], 4: ["Horror"]}
PAGES = [("A", 1, T0 + 3600, [1, 2], "control"), ("B", 2, T0 + 7200, [1, 3], "treatment"),
         ("C", 1, T0 + DAY + 3600, [1, 4], "control"),
         ("D", 2, T0 + DAY + 7200, [1, 2], "treatment")]


def _items(root: Path) -> None:
    c.write_table(root, c.ITEMS, {
        c.ITEM_ID: list(GENRES), c.TITLE: ["One", "Two", "Three", "Four"],
        c.GENRES: list(GENRES.values()), c.CAST: [[]] * 4, c.DIRECTOR: [None] * 4,
        c.RELEASE_YEAR: [2000] * 4, c.DURATION_SECONDS: [5400] * 4,
        c.ADDED_AT: [T0 - 100 * DAY] * 3 + [T0 + DAY], c.MATURITY_RATING: ["PG"] * 4})


def _row(user: int, item: int, ts: int, event: str = c.EVENT_IMPRESSION, position: int = 1,
         seconds: float = 0.0, **labels) -> dict:
    return {c.USER_ID: user, c.ITEM_ID: item, c.TIMESTAMP: ts, c.EVENT: event,
            c.POSITION: position, c.WATCH_SECONDS: seconds, c.DEVICE: "tv", c.RATING: None,
            **{k: labels.get(k) for k in c.EXPOSURE_COLUMNS}}


def _rows() -> list[dict]:
    rows = [_row(user, item, ts, position=k + 1, page_id=page, experiment="exp1", arm=arm)
            for page, user, ts, items, arm in PAGES for k, item in enumerate(items)]
    rows.append(_row(1, 2, T0 + 3700, c.EVENT_WATCH, 2, 600.0, page_id="A"))
    return rows


def _write(root: Path, rows: list[dict], name: str = "part-x1.parquet") -> Path:
    with c.TableWriter(root / c.INTERACTIONS / name, c.INTERACTIONS,
                       include=c.EXPOSURE_COLUMNS) as w:
        w.write(pd.DataFrame(rows))
    return root


@pytest.fixture
def log(tmp_path) -> Path:
    """A log folder served with --event-log DIR --data DIR: the titles beside the log."""
    root = tmp_path / "log"
    _items(root)
    return _write(root, _rows())


def _exposure(root: Path, now: float = AFTER):
    return log_exposure(root, read_catalogue([root]), new_days=7, min_watch_seconds=120,
                        now=now)


def _config(tmp_path: Path, **monitor) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"monitor": monitor}))
    return str(path)


# ----------------------------------------------------------------------------- exposure


def test_the_figures_of_each_day_by_hand(log):
    found = _exposure(log)
    day0, day1 = found.day(D0), found.day(D0 + 1)
    assert (day0.impressions, day0.users, day0.pages, day0.titles) == (4, 2, 2, 3)
    assert day0.coverage == 1.0 and day0.gini == pytest.approx(1 / 6)
    assert day0.intra_list_diversity == pytest.approx(0.75)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert day0.genre_diversity == pytest.approx((1 + h) / 2)
    assert day0.novelty == 2.0 and day0.new_title_share == 0.0
    assert (day1.titles, day1.titles_shown, day1.coverage) == (4, 3, 0.75)
    assert day1.gini == pytest.approx(0.375)
    assert day1.intra_list_diversity == 1.0 and day1.genre_diversity == pytest.approx(1.0)
    assert day1.novelty == pytest.approx(2.5) and day1.new_title_share == 0.25
    assert day0.date == "2023-12-09" and day1.complete
    assert (found.rows, found.impressions, found.positive_watches, found.rejected) == (9, 8, 1, 0)


def test_lorenz_curves_of_the_window_and_of_the_last_day_by_hand(log):
    found = _exposure(log)
    x, y = found.lorenz()
    assert x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert y.tolist() == [0.0, 0.125, 0.25, 0.5, 1.0]
    assert found.window() == (1.0, pytest.approx(0.3125))
    assert found.last_day == D0 + 1
    _, y = found.lorenz(last_day=True)
    assert y.tolist() == [0.0, 0.0, 0.25, 0.5, 1.0]


def test_two_arms_are_compared_day_by_day(log):
    found = _exposure(log)
    assert found.groups == (ALL, "exp1/control", "exp1/treatment")
    control, treatment = found.of("exp1/control"), found.of("exp1/treatment")
    assert [d.coverage for d in control] == pytest.approx([2 / 3, 0.5])
    assert [d.coverage for d in treatment] == pytest.approx([2 / 3, 0.5])
    assert [d.intra_list_diversity for d in control] == [1.0, 1.0]
    assert [d.intra_list_diversity for d in treatment] == [0.5, 1.0]
    assert [d.new_title_share for d in control] == [0.0, 0.5]  # title 4 was control's
    # control over both days: titles 1, 2, 1, 4 -> counts 2, 1, 0, 1 -> coverage 3/4
    assert found.window("exp1/control")[0] == 0.75


def test_the_figures_do_not_depend_on_how_the_log_is_cut_into_parts(tmp_path, log):
    rows = _rows()
    shuffled = tmp_path / "shuffled"
    _items(shuffled)
    order = np.random.default_rng(0).permutation(len(rows))
    for k, part in enumerate(np.array_split(order, 3)):
        _write(shuffled, [rows[i] for i in part], f"part-x{k}.parquet")
    assert _exposure(shuffled).days == _exposure(log).days


def test_rows_without_a_page_id_are_paged_by_user_and_timestamp(tmp_path):
    root = tmp_path / "sim"
    _items(root)
    # a simulated log: no exposure columns; user 1 sees 1, 2 and later 1, 3: two pages
    pd.DataFrame([{k: v for k, v in _row(1, item, ts).items() if k not in c.EXPOSURE_COLUMNS}
                  for ts, items in ((T0 + 60, [1, 2]), (T0 + 120, [1, 3])) for item in items]
                 ).to_parquet(root / "interactions.parquet")
    found = _exposure(root)
    (day,) = found.days
    assert (day.pages, found.without_page) == (2, 4)
    assert day.intra_list_diversity == pytest.approx(0.75)  # pages (1, 2) and (1, 3)


def test_a_day_in_progress_is_shown_but_the_alerts_look_at_the_last_complete_one(tmp_path, log):
    # at noon of day 1, day 1 (coverage 0.75) is running: day 0 (coverage 1) is checked
    config = from_dict({"monitor": {"alert_min_coverage": 0.8}})
    report = monitor_report(None, log, tmp_path / "out", config, now=T0 + DAY + DAY // 2)
    assert report.exposure.last_day == D0 and not report.exposure.day(D0 + 1).complete
    assert report.alerts == ()
    text = report.path.read_text()
    assert "2023-12-10 (in progress)" in text and "Checked on 2023-12-09" in text


# ----------------------------------------------------------------------------- the command


def test_low_coverage_on_the_last_day_alerts_and_exits_1(tmp_path, log):
    out = tmp_path / "out"
    result = CliRunner().invoke(monitor, ["report", "--log", str(log), "--out", str(out),
                                          "--config", _config(tmp_path, alert_min_coverage=0.8)])
    assert result.exit_code == 1, result.output
    assert ("ALERT exposure: coverage on 2023-12-10 (all impressions): 75.0%, expected >= "
            "80.0% (monitor.alert_min_coverage)") in result.output
    text = (out / "report.md").read_text()
    assert text.startswith("# Monitoring report\n\n**1 alert(s)**")
    assert "| exposure | coverage on 2023-12-10 (all impressions) | >= 80.0%" in text
    assert "check the candidate sources" in text  # what to do
    for plot in ("coverage_gini.png", "diversity.png", "lorenz.png"):
        assert (out / plot).stat().st_size > 0


def test_no_alert_exits_0_and_says_so(tmp_path, log):
    out = tmp_path / "out"
    result = CliRunner().invoke(monitor, ["report", "--log", str(log), "--out", str(out),
                                          "--config", _config(tmp_path, alert_min_coverage=0.7,
                                                              alert_max_gini=0.375)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "no alerts"
    text = (out / "report.md").read_text()
    assert "**No alerts.**" in text
    assert "coverage >= 70.0%, Gini of exposure <= 0.375" in text  # 0.375 is not above 0.375
    assert "| 2023-12-10 | exp1/control | 2 | 1 | 50.0% |" in text  # the arms, side by side


def test_sections_without_their_input_say_why(tmp_path):
    root = tmp_path / "log"
    _items(root)
    _write(root, [_row(1, 2, T0 + 60, c.EVENT_WATCH, 1, 600.0)])  # watches, no impression
    report = monitor_report(None, root, tmp_path / "out", from_dict({}), now=AFTER)
    assert report.alerts == ()
    for key in (DRIFT, SKEW, EMBEDDINGS):
        assert report.section(key).missing == "no --run given"
    assert "no impressions" in report.section(EXPOSURE).missing
    assert ("Not available (why: in the section): drift between runs, train/serve skew, "
            "exposure and diversity per day, embedding drift per pushed version.") in (
        report.path.read_text())


def test_a_run_folder_without_outputs_leaves_its_sections_out(tmp_path, log):
    run = tmp_path / "run"
    (run / "tfx").mkdir(parents=True)
    report = monitor_report(run, log, tmp_path / "out", from_dict({}), now=AFTER)
    assert "no DistributionValidator output" in report.section(DRIFT).missing
    assert "no training statistics" in report.section(SKEW).missing
    assert "0 pushed version(s)" in report.section(EMBEDDINGS).missing
    assert not report.section(EXPOSURE).missing and report.alerts == ()


def _anomalies(path: Path, device: float, hour: float) -> None:
    """DistributionValidator's SchemaDiff.pb: device (L-infinity, threshold 0.1) and hour (JS
    divergence, threshold 0.05) measured at these distances."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    proto = anomalies_pb2.Anomalies()
    for feature, kind, value, threshold in (
            ("device", anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY, device, 0.1),
            ("hour", anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE, hour,
             0.05)):
        info = proto.drift_skew_info.add()
        info.path.step.append(feature)
        info.drift_measurements.add(type=kind, value=value, threshold=threshold)
    reason = proto.anomaly_info["device"].reason.add()
    reason.type = anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH
    reason.description = "The Linfty distance ... The feature value with maximum difference is: tv"
    path.mkdir(parents=True)
    (path / "SchemaDiff.pb").write_bytes(proto.SerializeToString())


def _embedding_report(path: Path, version: int, previous: int, overlap: float) -> None:
    norms = {"count": 10, "mean": 1.0, "std": 0.0, "p5": 1.0, "p50": 1.0, "p95": 1.0}
    path.mkdir(parents=True)
    (path / "embedding_drift.json").write_text(json.dumps({
        "version": version, "previous_version": previous, "model_base": "serving",
        "query_norms": {"previous": norms, "current": norms},
        "candidate_norms": {"previous": norms, "current": {**norms, "mean": 1.5}},
        "titles": {"previous": 4, "current": 4, "both": 4},
        "neighbours": {"k": 2, "compared": 4, "mean_overlap": overlap, "p10_overlap": 0.0,
                       "p50_overlap": overlap, "unchanged_share": 0.25, "moved_most": []}}))


def test_drift_breaches_and_embedding_drift_from_the_run_alert(tmp_path, log):
    run = tmp_path / "run"
    _anomalies(run / "tfx" / "DistributionValidator" / "anomalies" / "5"
               / "SplitPair-train_train", device=0.2, hour=0.01)
    (run / "tfx" / "ExampleValidator" / "anomalies" / "4" / "Split-train").mkdir(parents=True)
    for version, previous, overlap in ((200, 100, 0.8), (300, 200, 0.4)):
        _embedding_report(run / "tfx" / "EmbeddingDrift" / "report" / str(version), version,
                          previous, overlap)
    config = from_dict({"monitor": {"alert_min_neighbour_overlap": 0.5}})
    report = monitor_report(run, log, tmp_path / "out", config, now=AFTER)
    drift = report.section(DRIFT)
    assert drift.lines[0] == "1 of 2 features past their thresholds"
    assert "| device | L-infinity | 0.2000 | 0.1 | **past the threshold** |" in drift.lines
    assert "| hour | Jensen-Shannon | 0.0100 | 0.05 | ok |" in drift.lines
    assert "Schema anomalies (ExampleValidator, ExampleValidator/anomalies/4" in "\n".join(
        drift.lines)
    assert report.section(EMBEDDINGS).lines[0] == ("2 version(s) compared; latest 300: mean "
                                                   "neighbour overlap 0.400")
    assert [(a.section, a.check, a.expected, a.measured) for a in report.alerts] == [
        (DRIFT, "train split: device", "L-infinity <= 0.1", "0.2000"),
        (EMBEDDINGS, "mean neighbour overlap of version 300",
         ">= 0.5 (monitor.alert_min_neighbour_overlap)", "0.400")]
    assert "drift_policy warn" in report.alerts[0].action
    assert {p.name for p in report.figures} == {
        "drift.png", "coverage_gini.png", "diversity.png", "lorenz.png", "embedding_drift.png"}
    assert all(p.stat().st_size > 0 for p in report.figures)


# ----------------------------------------------------------------------------- bad input


def _invoke(log: Path, out: Path, *extra: str):
    return CliRunner().invoke(monitor, ["report", "--log", str(log), "--out", str(out), *extra])


def test_a_log_without_interactions_is_a_usage_error_naming_what_was_expected(tmp_path):
    folder = tmp_path / "not-a-log"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    result = _invoke(folder, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "Invalid value for --log" in result.output
    assert "interactions/part-*.parquet" in result.output and "notes.txt" in result.output
    assert "marquee serve --event-log DIR" in result.output


def test_a_part_missing_a_column_or_holding_no_clean_row_is_a_usage_error(tmp_path):
    broken = tmp_path / "broken"
    (broken / c.INTERACTIONS).mkdir(parents=True)
    pd.DataFrame({c.USER_ID: [1], c.ITEM_ID: [1]}).to_parquet(
        broken / c.INTERACTIONS / "part-x1.parquet")
    result = _invoke(broken, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "part-x1.parquet" in result.output and "missing column(s) timestamp" in result.output

    rejected = tmp_path / "rejected"
    _items(rejected)
    _write(rejected, [_row(1, 1, T0, seconds=5.0)])  # watch seconds on an impression
    result = _invoke(rejected, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "none of which passes the data contract" in result.output


def test_a_folder_that_is_no_run_is_a_usage_error(tmp_path, log):
    with pytest.raises(ReportInputError, match="not a run folder") as e:
        monitor_report(tmp_path, log, tmp_path / "out", from_dict({}))
    assert e.value.option == "--run"


def test_alert_thresholds_are_checked_where_the_config_is_read(tmp_path, log):
    with pytest.raises(ValueError, match=r"monitor.alert_min_coverage: expected a number in "
                                         r"\[0, 1\] or null"):
        MonitorConfig(alert_min_coverage=1.5)
    with pytest.raises(ConfigError, match="alert_max_gini"):
        from_dict({"monitor": {"alert_max_gini": -0.1}})
    assert from_dict({"monitor": {"alert_min_ild": None}}).monitor.alert_min_ild is None
    result = _invoke(log, tmp_path / "out", "--config", _config(tmp_path, alert_max_gini=2))
    assert result.exit_code == 2 and "Invalid value for --config" in result.output


# ----------------------------------------------------------------------------- release_year


def test_an_unknown_release_year_stays_out_of_the_statistics():
    """The known false alarm: a title of unknown year used to be written as year 0, which
    stretched one side's histogram over 0-2024 (JS divergence 0.34 for one such title in
    2,000) and, when both sides held one, hid a 15-year shift (0.005 < 0.05)."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils

    from components.contract_example_gen.example_lib import candidate_features
    from marquee.monitoring.comparators import compare
    from marquee.monitoring.skew import statistics_of
    from pipeline.pipeline import SCHEMA_FILE

    schema = schema_pb2.Schema()  # the curated schema's release_year alone
    schema.feature.add().CopyFrom(next(f for f in io_utils.SchemaReader().read(
        SCHEMA_FILE).feature if f.name == c.RELEASE_YEAR))

    def examples(years):
        return [tf.train.Example(features=tf.train.Features(feature=candidate_features(
            {c.ITEM_ID: 1, c.RELEASE_YEAR: y}))).SerializeToString() for y in years]

    assert c.RELEASE_YEAR not in candidate_features({c.ITEM_ID: 1, c.RELEASE_YEAR: None})
    years = np.random.default_rng(0).integers(1930, 2010, 2000).tolist()
    (same,) = compare(statistics_of(examples(years)), schema,
                      serving=statistics_of(examples(years[:-1] + [None])))
    assert same.value < 0.01 and not same.breached
    (shifted,) = compare(statistics_of(examples(years[:-1] + [None])), schema,
                         serving=statistics_of(examples([y + 15 for y in years[:-1]] + [None])))
    assert shifted.breached and shifted.value > 0.05


# ----------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_the_report_of_a_real_pipeline_run(pipeline_run, tmp_path):
    from tests.conftest import E2E_CONFIG

    run = pipeline_run.tmp / "run"
    report = monitor_report(run, pipeline_run.data, tmp_path / "out", E2E_CONFIG)
    assert "no baseline yet" in report.section(DRIFT).missing  # the folder's first run
    skew = report.section(SKEW)
    assert not skew.missing and "release_year" in "\n".join(skew.lines)
    exposure = report.section(EXPOSURE)
    assert not exposure.missing and len(report.exposure.of(ALL)) >= 20
    assert "none compared with an earlier one" in report.section(EMBEDDINGS).missing
    assert (tmp_path / "out" / "skew.png").stat().st_size > 0
    assert all(a.section == SKEW for a in report.alerts), [a.line() for a in report.alerts]
