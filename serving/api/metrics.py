"""The server's Prometheus metrics, through ``prometheus_client`` (one registry per app).

- ``marquee_http_requests_total{route, method, status}`` and
  ``marquee_http_request_duration_seconds{route}`` (a histogram: aggregatable across replicas,
  unlike a summary's quantiles);
- ``marquee_homepage_total{outcome}`` (personal, cached, degraded, fallback) and
  ``marquee_homepage_fallbacks_total{reason, kind}`` (kind ``model`` or ``internal``: a bug);
- ``marquee_writes_total{route, outcome}`` (accepted, invalid, duplicate, unavailable, denied);
- ``marquee_experiment_pages_total{experiment, arm}``: pages served per arm (a live check of the
  traffic split);
- the feature store's, the write-ahead log's and the impression log's own counters and state
  (``marquee_impressions_logged``, ``..._lost``), read at scrape time;
- ``marquee_exposure_*``: coverage, Gini, new-title share, intra-list diversity and novelty of
  what the pages of the last hour showed (``marquee.monitoring.window``, bounded memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from marquee.monitoring.window import ExposureWindow
from serving.homepage.page import Homepage

# Seconds: from a cache hit (well under a millisecond) to past the 200 ms budget.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
           2.5)


class _Readings:
    """Gauges read when Prometheus scrapes: ``sources`` name -> () -> {key: number}."""

    def __init__(self, sources: Mapping[str, Callable[[], Mapping[str, float]]]):
        self.sources = sources

    def collect(self):
        for prefix, read in self.sources.items():
            for key, value in sorted(read().items()):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue  # text (an error message) is for the log, not a gauge
                yield GaugeMetricFamily(f"marquee_{prefix}_{key}", f"{prefix}: {key}",
                                        value=float(value))


class Metrics:
    def __init__(self, readings: Mapping[str, Callable[[], Mapping[str, float]]] | None = None,
                 exposure: ExposureWindow | None = None):
        """``exposure``: the sliding window of what pages showed (its gauges are a reading)."""
        self.exposure = exposure
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("marquee_http_requests", "HTTP requests by route and status",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("marquee_http_request_duration_seconds",
                                 "HTTP request latency by route", ("route",), buckets=BUCKETS,
                                 registry=r)
        self.homepages = Counter("marquee_homepage", "Homepages by outcome", ("outcome",),
                                 registry=r)
        self.fallbacks = Counter("marquee_homepage_fallbacks",
                                 "Homepages the popularity fallback answered, by reason",
                                 ("reason", "kind"), registry=r)
        self.writes = Counter("marquee_writes", "Write requests by route and outcome",
                              ("route", "outcome"), registry=r)
        self.arm_pages = Counter("marquee_experiment_pages", "Pages served per experiment arm",
                                 ("experiment", "arm"), registry=r)
        if readings:
            r.register(_Readings(readings))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_page(self, page: Homepage) -> None:
        if page.fallback:
            outcome = "fallback"
            reason = (page.reason or "unknown").split(":")[0][:60]
            self.fallbacks.labels(reason, "internal" if page.internal_error else "model").inc()
        elif page.cached:
            outcome = "cached"
        elif page.degraded:
            outcome = "degraded"
        else:
            outcome = "personal"
        self.homepages.labels(outcome).inc()
        for experiment, arm in page.experiments.items():
            self.arm_pages.labels(experiment, arm).inc()
        if self.exposure is not None:
            self.exposure.observe(page)

    def count_write(self, route: str, outcome: str) -> None:
        self.writes.labels(route, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
