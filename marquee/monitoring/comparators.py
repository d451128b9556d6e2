"""The curated schema's distribution comparators, and TFDV's measurements against them.

``pipeline/schema/schema.pbtxt`` gives a feature a ``drift_comparator`` (this run's training
data against the last accepted run's) and/or a ``skew_comparator`` (training data against what
serving logged): ``infinity_norm`` for categorical features (the largest change in the share of
any one value), ``jensen_shannon_divergence`` for numeric ones (base-2 JS divergence of the two
histograms, in [0, 1]). Each carries its threshold; a distance *above* it is a breach, as in
TFDV. ``MonitorConfig`` may replace the thresholds of one measure for every feature
(:func:`with_thresholds`).

TFDV does the measuring (``tfdv.validate_statistics`` with ``previous_statistics`` or
``serving_statistics``); :func:`compare` turns its ``drift_skew_info`` into one
:class:`Comparison` per compared feature, breached or not.
"""

from __future__ import annotations

import dataclasses
import math

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

DRIFT = "drift"
SKEW = "skew"
_FIELD = {DRIFT: "drift_comparator", SKEW: "skew_comparator"}
LINF = "L-infinity"
JSD = "Jensen-Shannon"
_MEASURES = {"infinity_norm": LINF, "jensen_shannon_divergence": JSD}
_MEASUREMENT_TYPES = {anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: LINF,
                      anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: JSD}
# TFDV's reasons for a comparison that breached or could not be made (STATS_NOT_AVAILABLE is
# how DistributionValidator names a configured feature it could not compare).
COMPARISON_ANOMALIES = frozenset({
    anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_CONTROL_DATA_MISSING,
    anomalies_pb2.AnomalyInfo.COMPARATOR_TREATMENT_DATA_MISSING,
    anomalies_pb2.AnomalyInfo.STATS_NOT_AVAILABLE,
})


@dataclasses.dataclass(frozen=True)
class Comparator:
    feature: str
    measure: str  # LINF or JSD
    threshold: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One feature compared: ``value`` is the distance (None when TFDV could not compare, e.g.
    one side has no statistics of the feature; that counts as a breach), ``detail`` TFDV's
    description of a breach ('' when within bounds)."""

    feature: str
    measure: str
    value: float | None
    threshold: float
    detail: str = ""

    @property
    def breached(self) -> bool:
        return self.value is None or self.value > self.threshold

    def line(self) -> str:
        """'feature 'device': L-infinity 0.2000 > 0.1 (...)', for logs and reports."""
        if self.value is None:
            return f"feature '{self.feature}': not compared ({self.detail or 'no statistics'})"
        op = ">" if self.breached else "<="
        text = f"feature '{self.feature}': {self.measure} {self.value:.4f} {op} {self.threshold:g}"
        return text + (f" ({self.detail})" if self.detail else "")


def comparators(schema: schema_pb2.Schema, kind: str) -> dict[str, Comparator]:
    """Feature name -> its ``kind`` (DRIFT or SKEW) comparator in ``schema``, in schema order."""
    out = {}
    for feature in schema.feature:
        if not feature.HasField(_FIELD[kind]):
            continue
        comparator = getattr(feature, _FIELD[kind])
        for field, measure in _MEASURES.items():
            if comparator.HasField(field):
                out[feature.name] = Comparator(feature.name, measure,
                                               getattr(comparator, field).threshold)
    return out


def with_thresholds(schema: schema_pb2.Schema, kind: str, linf: float | None,
                    jsd: float | None) -> schema_pb2.Schema:
    """A copy of ``schema`` whose ``kind`` comparators of each measure take the given threshold
    (None keeps each feature's own)."""
    for name, value in (("linf", linf), ("jsd", jsd)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"a {kind} {name} threshold must be a number >= 0, got {value!r}")
    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    for feature in out.feature:
        if not feature.HasField(_FIELD[kind]):
            continue
        comparator = getattr(feature, _FIELD[kind])
        for field, value in (("infinity_norm", linf), ("jensen_shannon_divergence", jsd)):
            if value is not None and comparator.HasField(field):
                getattr(comparator, field).threshold = value
    return out


def measurements(anomalies: anomalies_pb2.Anomalies, kind: str,
                 schema: schema_pb2.Schema | None = None) -> list[Comparison]:
    """One Comparison per feature TFDV compared (``drift_skew_info`` holds every measured
    distance of a comparison, ``anomaly_info`` the breaches' descriptions) and per feature it
    names as not comparable, by name; with ``schema``, one per ``kind`` comparator of it
    instead (one not measured is a breach), in schema order."""
    measured: dict[str, tuple[str, float, float]] = {}
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for m in info.drift_measurements if kind == DRIFT else info.skew_measurements:
            if m.type in _MEASUREMENT_TYPES:
                measured[feature] = (_MEASUREMENT_TYPES[m.type], m.value, m.threshold)
    details = {}
    for feature, info in anomalies.anomaly_info.items():
        reasons = [r.description for r in info.reason if r.type in COMPARISON_ANOMALIES]
        if reasons:
            details[feature] = "; ".join(reasons)
    expected = comparators(schema, kind) if schema is not None else {}
    order = list(expected) if schema is not None else sorted(set(measured) | set(details))
    out = []
    for feature in order:
        if feature in measured:
            measure, value, threshold = measured[feature]
            breached = value > threshold
            out.append(Comparison(feature, measure, float(value), float(threshold),
                                  details.get(feature, "") if breached else ""))
        else:
            comp = expected.get(feature)
            out.append(Comparison(feature, comp.measure if comp else "", None,
                                  comp.threshold if comp else math.nan,
                                  details.get(feature, "")))
    return out


def compare(statistics: statistics_pb2.DatasetFeatureStatisticsList,
            schema: schema_pb2.Schema, *,
            previous: statistics_pb2.DatasetFeatureStatisticsList | None = None,
            serving: statistics_pb2.DatasetFeatureStatisticsList | None = None,
            ) -> list[Comparison]:
    """Drift (``previous`` given: ``statistics`` is the current data) or skew (``serving``
    given: ``statistics`` is the training data) of every feature with such a comparator in
    ``schema``; each statistics list holds one dataset."""
    import tensorflow_data_validation as tfdv

    if (previous is None) == (serving is None):
        raise ValueError("compare takes either previous (drift) or serving (skew) statistics")
    anomalies = tfdv.validate_statistics(statistics, schema, previous_statistics=previous,
                                         serving_statistics=serving)
    return measurements(anomalies, DRIFT if previous is not None else SKEW, schema)
