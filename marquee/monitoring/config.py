"""Monitoring settings (``monitor:`` in the config file).

Which features are compared, and by what, is the curated schema's (``drift_comparator`` and
``skew_comparator`` in ``pipeline/schema/schema.pbtxt``, each with its threshold); these settings
choose what a breach does, may replace the schema's thresholds of one measure at once, and set
when ``marquee monitor report`` alerts on exposure (``alert_*``)::

    monitor:
      drift_policy: stop          # a breach stops the run at the AnomalyGate
      drift_jsd_threshold: 0.2    # every numeric feature's drift threshold
"""

from __future__ import annotations

import dataclasses
import math

DRIFT_POLICIES = ("warn", "stop")


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    # What a drift breach (this run's training data against the last accepted run's) does at
    # the AnomalyGate: "warn" names it in the log and RUN_DIR/summary.md and the run goes on
    # (this data becomes the next run's baseline); "stop" fails the run before Transform, and
    # the baseline stays the last accepted data. Consecutive spans of a live service move a
    # little every day (seasons, launches), so the default only warns.
    drift_policy: str = "warn"
    # Thresholds replacing the schema's per-feature ones for every drift comparator of a
    # measure; null keeps the schema's. L-infinity (categorical features): the largest change in
    # the share of one value, 0.1 = ten points. Jensen-Shannon (numeric features): base-2 JS
    # divergence of the two histograms, 0 (same) to 1 (disjoint).
    drift_linf_threshold: float | None = None
    drift_jsd_threshold: float | None = None
    # The same for the train/serve skew comparators (`marquee monitor skew`).
    skew_linf_threshold: float | None = None
    skew_jsd_threshold: float | None = None
    # Serving-log rows `marquee monitor skew` computes its statistics over; a bigger log is
    # sampled uniformly (seeded) down to this many (distances move by ~1/sqrt(rows)).
    skew_max_rows: int = 500_000
    # Embedding drift between pushed versions (the EmbeddingDrift step after ModelPusher):
    # neighbours per title compared (top-k by cosine of the candidate-tower embeddings)...
    neighbour_k: int = 10
    # ...for this many titles (a seeded sample when the catalogue holds more), each against
    # every title of both versions.
    neighbour_titles: int = 5000
    # Titles listed as having moved the most (lowest neighbour overlap).
    moved_titles: int = 10
    # Eval examples embedded by both versions' query towers for the query-norm distributions.
    embedding_queries: int = 1000
    seed: int = 0
    # `marquee monitor report` alerts (and exits 1) when the exposure of all impressions on the
    # log's last complete UTC day crosses one of these (a day still in progress is reported,
    # not alerted on; per-arm figures are reported only: an arm's share of the traffic lowers
    # its coverage by itself, and `marquee experiment analyze` compares arms on equal samples).
    # null turns a check off. Catalogue coverage of the day's impressions below...
    alert_min_coverage: float | None = 0.2
    # ...the Gini of exposure over the day's catalogue above...
    alert_max_gini: float | None = 0.95
    # ...the mean intra-list diversity of the day's pages (mean pairwise Jaccard distance of
    # the genre sets of a page's titles, 0-1) below.
    alert_min_ild: float | None = 0.3
    # The latest pushed version's mean top-k neighbour overlap with the version before it
    # below this alerts too; null (default): embedding drift is reported only, since two
    # trainings on the same data already move neighbours (read the normal from the history).
    alert_min_neighbour_overlap: float | None = None

    def __post_init__(self) -> None:
        if self.drift_policy not in DRIFT_POLICIES:
            raise ValueError(f"monitor.drift_policy: expected one of {', '.join(DRIFT_POLICIES)}, "
                             f"got {self.drift_policy!r}")
        for name in ("drift_linf_threshold", "drift_jsd_threshold", "skew_linf_threshold",
                     "skew_jsd_threshold"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"monitor.{name}: expected a number >= 0 or null (the schema's "
                                 f"thresholds), got {value!r}")
        for name in ("skew_max_rows", "neighbour_k", "neighbour_titles", "embedding_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"monitor.{name}: expected an integer >= 1, got "
                                 f"{getattr(self, name)!r}")
        for name in ("alert_min_coverage", "alert_max_gini", "alert_min_ild",
                     "alert_min_neighbour_overlap"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"monitor.{name}: expected a number in [0, 1] or null (no "
                                 f"alert), got {value!r}")
        if self.moved_titles < 0:
            raise ValueError(f"monitor.moved_titles: expected an integer >= 0, got "
                             f"{self.moved_titles!r}")
