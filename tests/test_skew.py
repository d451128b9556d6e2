"""Train/serve skew: a serving log turned into examples, its statistics against training's.

Hand-checkable: the training rows are 8 positive watches, all on a tv, by two users (US, DE)
in turn of two titles in turn. A serving log with the same users and titles in the same mix but
half its rows on the web moves device's tv share from 1.0 to 0.5: L-infinity 0.5; country,
genres, release year... move by 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from tfx.utils import io_utils

from marquee.config import Config
from marquee.data import contract as c
from marquee.monitoring.cli import monitor
from marquee.monitoring.config import MonitorConfig
from marquee.monitoring.skew import (
    IMPRESSION,
    WATCH,
    SkewInputError,
    find_skew,
    serving_log,
    skew_report,
    statistics_of,
    training_statistics,
)
from pipeline.pipeline import SCHEMA_FILE

T0 = 1_700_000_000  # a Tuesday, 22:13 UTC
CONFIG = dataclasses.replace(Config(), monitor=MonitorConfig(skew_linf_threshold=0.1,
                                                             skew_jsd_threshold=0.1))
SCHEMA = io_utils.SchemaReader().read(SCHEMA_FILE)


def _dataset(root: Path) -> Path:
    c.write_table(root, c.USERS, {
        c.USER_ID: [1, 2], c.SIGNUP_AT: [T0 - 10**6] * 2, c.COUNTRY: ["US", "DE"],
        c.SUBSCRIPTION_TIER: ["basic", "premium"], c.AGE_BUCKET: ["25-34", None],
        c.ONBOARDING_GENRES: [None, None]})
    c.write_table(root, c.ITEMS, {
        c.ITEM_ID: [10, 20], c.TITLE: ["Ten", "Twenty"], c.GENRES: [["drama"], ["comedy"]],
        c.CAST: [[], []], c.DIRECTOR: [None, "D"], c.RELEASE_YEAR: [1999, 2020],
        c.DURATION_SECONDS: [5400, 6000], c.ADDED_AT: [T0 - 10**6] * 2,
        c.MATURITY_RATING: ["PG", "R"]})
    return root


def _log(root: Path, devices: list[str], event: str = c.EVENT_WATCH, extra: dict | None = None,
         part: int = 0) -> Path:
    """One part file of a serving log: a row per device, users 1, 2, 1, ... and titles 10, 20,
    10, ..., a minute apart; watches of 600 s, or impressions at positions 1, 2, ..."""
    n = len(devices)
    rows = pd.DataFrame({
        c.USER_ID: [1 + i % 2 for i in range(n)], c.ITEM_ID: [10 + 10 * (i % 2) for i in range(n)],
        c.TIMESTAMP: [T0 + 60 * i for i in range(n)], c.EVENT: [event] * n,
        c.POSITION: list(range(1, n + 1)),
        c.WATCH_SECONDS: [600.0 if event == c.EVENT_WATCH else 0.0] * n, c.DEVICE: devices,
        c.RATING: [None] * n, **(extra or {})})
    (root / c.INTERACTIONS).mkdir(parents=True, exist_ok=True)
    rows.to_parquet(root / c.INTERACTIONS / f"part-{T0}-{part}.parquet")
    return root


@pytest.fixture
def training(tmp_path) -> tuple[Path, str]:
    """(dataset folder, an ExampleStatistics folder of the training rows' train split)."""
    data = _dataset(tmp_path / "data")
    log = serving_log(_log(tmp_path / "train-log", ["tv"] * 8), data, CONFIG)
    stats_dir = tmp_path / "statistics"
    (stats_dir / "Split-train").mkdir(parents=True)
    (stats_dir / "Split-train" / "FeatureStats.pb").write_bytes(
        statistics_of(log.examples[WATCH]).SerializeToString())
    return data, str(stats_dir)


def test_logged_rows_become_the_pipelines_examples_by_group(tmp_path):
    data = _dataset(tmp_path / "data")
    events = _log(tmp_path / "events", ["tv", "web", "tv"], c.EVENT_IMPRESSION,
                  extra={c.PAGE_ID: ["p1", "p1", "p2"], c.EXPERIMENT: [None, "e", "e"],
                         c.ARM: [None, "a", "b"]})
    _log(events, ["tv", "tv"], part=1)
    short = pd.DataFrame({c.USER_ID: [1, 99], c.ITEM_ID: [10, 10], c.TIMESTAMP: [T0, T0],
                          c.EVENT: [c.EVENT_WATCH] * 2, c.POSITION: [None, None],
                          c.WATCH_SECONDS: [30.0, 600.0], c.DEVICE: ["tv", "tv"],
                          c.RATING: [None, None]})
    short.to_parquet(events / c.INTERACTIONS / f"part-{T0}-2.parquet")
    log = serving_log(events, data, CONFIG)
    assert (len(log.examples[IMPRESSION]), len(log.examples[WATCH])) == (3, 2)
    assert (log.rows, log.sampled, log.short_watches, log.unknown, log.rejected) == (7, 7, 1, 1,
                                                                                     0)
    stats = statistics_of(log.examples[IMPRESSION]).datasets[0]
    features = {".".join(f.path.step): f for f in stats.features}
    assert "page_id" not in features and "arm" not in features  # exposure labels: no features
    devices = {b.label: b.sample_count for b in
               features["device"].string_stats.rank_histogram.buckets}
    assert devices == {"tv": 2, "web": 1}
    assert features["country"].string_stats.unique == 2


def test_a_shifted_device_is_out_of_bounds_and_unchanged_features_are_not(training):
    data, stats_dir = training
    train, _ = training_statistics(statistics_dir=stats_dir)
    serving = serving_log(_log(Path(stats_dir).parent / "serving", ["tv", "web"] * 4), data,
                          CONFIG)
    found = {x.feature: x for x in find_skew(train, statistics_of(serving.examples[WATCH]),
                                             SCHEMA, CONFIG)}
    assert found["device"].value == pytest.approx(0.5) and found["device"].breached
    unchanged = {"country", "subscription_tier", "age_bucket", "genres", "release_year",
                 "duration_seconds"}
    for name in unchanged:
        assert found[name].value == pytest.approx(0.0) and not found[name].breached, name
    assert [x.feature for x in found.values() if x.breached] == ["device"]


def test_the_command_prints_the_features_out_of_bounds_and_exits_1(training, tmp_path):
    data, stats_dir = training
    events = _log(tmp_path / "events", ["tv", "web"] * 4, c.EVENT_IMPRESSION)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.to_json())
    result = CliRunner().invoke(monitor, ["skew", "--events", str(events), "--data", str(data),
                                          "--statistics", stats_dir, "--config", str(config)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "impression: 1 of 8 features out of bounds" in lines
    assert any(line.startswith("  OUT feature 'device': L-infinity 0.5000 > 0.1")
               for line in lines)
    assert "watch: no positive watches in the log, nothing compared" in lines


def test_the_command_exits_0_when_serving_looks_like_training(training, tmp_path):
    data, stats_dir = training
    events = _log(tmp_path / "events", ["tv"] * 4)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.to_json())
    result = CliRunner().invoke(monitor, ["skew", "--events", str(events), "--data", str(data),
                                          "--statistics", stats_dir, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "watch: 0 of 8 features out of bounds" in result.output.splitlines()


def test_a_big_log_is_sampled_down_to_the_configured_rows(training, tmp_path):
    data, _ = training
    events = _log(tmp_path / "events", ["tv"] * 400)
    config = dataclasses.replace(CONFIG, monitor=MonitorConfig(skew_max_rows=100))
    log = serving_log(events, data, config)
    assert log.rows == 400
    assert 60 <= log.sampled <= 140  # Binomial(400, 0.25): mean 100, sd 8.7
    assert len(log.examples[WATCH]) == log.sampled


def test_since_keeps_only_the_later_rows(training, tmp_path):
    data, _ = training
    log = serving_log(_log(tmp_path / "events", ["tv"] * 10), data, CONFIG, since=T0 + 60 * 6)
    assert (log.rows, len(log.examples[WATCH])) == (4, 4)  # minutes 6, 7, 8, 9


def test_missing_inputs_are_named_with_the_fix(training, tmp_path):
    data, stats_dir = training
    with pytest.raises(SkewInputError, match="no training statistics .*marquee pipeline run"):
        training_statistics(run_dir=tmp_path / "data")
    with pytest.raises(SkewInputError, match="no train statistics .*an ExampleStatistics"):
        training_statistics(statistics_dir=str(data))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkewInputError, match="no serving log to compare.*--event-log"):
        skew_report(tmp_path / "empty", data, SCHEMA, CONFIG, statistics_dir=stats_dir)
