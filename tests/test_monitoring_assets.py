"""kubeflow/monitoring/: the alerting rules pass promtool's checker and their unit tests, and every
metric the rules and the Grafana dashboard query is one the real app's /metrics exports (scraped
after serving pages, a fallback and a write) or a gauge of the exposure window."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from marquee.config import ServingConfig
from marquee.experiments.config import ArmConfig, ExperimentConfig
from marquee.monitoring.window import ExposureWindow
from serving.api.metrics import Metrics
from serving.models.errors import ModelUnavailable
from tests import test_homepage
from tests.http_client import get, post, running
from tests.test_api import WATCH
from tests.test_homepage import FULL, FixedModelBackend, make

model_base = test_homepage.model_base  # the tiny model base fixture, shared
MONITORING = Path(__file__).resolve().parents[1] / "kubeflow" / "monitoring"
ALERTS, ALERT_TESTS = MONITORING / "alerts.yml", MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Labels Prometheus' scrape adds (kubeflow/k8s: a pod per replica), not the app.
TARGET_LABELS = {"job", "instance", "pod", "namespace"}
# Grafana's variables, as a query of the dashboard is sent with the defaults.
GRAFANA = {"$__rate_interval": "5m", '"$job"': '".*"'}
METRIC = re.compile(r"\bmarquee_[A-Za-z0-9_]+")  # recording rules are marquee:..., not matched
SELECTOR = re.compile(r"\b(marquee_[A-Za-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool (Debian's prometheus package) checks the rules: apt-get install " \
                  "prometheus (.ci/run does)"
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def exported(model_base, tmp_path_factory) -> dict[str, set[str]]:
    """Metric name -> its label names, from the real app's /metrics (a page in an experiment,
    a write, and a second app whose model fails, for the fallback counters) and the exposure
    window rendered by the server's Metrics as ``marquee serve`` exports it."""
    experiment = ExperimentConfig("blend", (ArmConfig("control", 0.5),
                                            ArmConfig("popular", 0.5,
                                                      serving={"ranker_weight": 0.0})))
    service = make(model_base, experiments=(experiment,))
    texts = []
    with running(service, event_log=tmp_path_factory.mktemp("log")) as api:
        status, body = get(api.port, f"/v1/users/{FULL}/homepage")
        assert status == 200, body
        page = json.loads(body)
        assert page["experiments"] and not page["fallback"], page
        assert post(api.port, "/v1/events", WATCH)[0] == 200
        texts.append(get(api.port, "/metrics")[1])
    only = (dataclasses.replace(ServingConfig().sources[0], deadline_ms=30_000),)
    failing = make(model_base, FixedModelBackend(fail=ModelUnavailable("down")), sources=only)
    with running(failing) as api:
        assert json.loads(get(api.port, f"/v1/users/{FULL}/homepage")[1])["fallback"]
        texts.append(get(api.port, "/metrics")[1])
    window = ExposureWindow(service.catalogue, popularity=service.users.popularity())
    window.observe_items([p["item_id"] for p in page["items"]])
    texts.append(Metrics({"exposure": window.stats}).render()[0].decode())
    names: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def queries() -> dict[str, str]:
    """Where -> PromQL, of every alerting and recording rule and every dashboard query."""
    out = {}
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            out[f"alerts.yml {rule.get('alert') or rule['record']}"] = rule["expr"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"dashboard {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            out[f"dashboard variable {variable['name']}"] = variable["query"]["query"]
    return out


def grafana_defaults(expr: str) -> str:
    for variable, value in GRAFANA.items():
        expr = expr.replace(variable, value)
    return expr


def test_the_alert_rules_pass_promtools_checker():
    check = run("check", "rules", str(ALERTS))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_alert_unit_tests_fire_on_trouble_and_stay_quiet_when_healthy():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {t["alertname"] for test in tests for t in test["alert_rule_test"] if t["exp_alerts"]}
    quiet = {t["alertname"] for test in tests for t in test["alert_rule_test"]
             if not t["exp_alerts"]}
    healthy = sum('job="healthy"' in s["series"] for test in tests for s in test["input_series"])
    assert len(fired) >= 2 and len(quiet) >= 2 and healthy >= 2, (fired, quiet, healthy)
    result = run("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_says_how_long_how_bad_and_what_to_check():
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for:"
            assert rule["labels"]["severity"] in {"warning", "critical"}, name
            assert "check" in rule["annotations"]["description"].lower(), f"{name}: what to check?"
            assert rule["annotations"]["summary"], name


def test_the_dashboard_is_importable_and_every_query_parses(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert dashboard["uid"] and len(ids) == len(set(ids)) and len(panels) >= 12
    for p in panels:
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}, p["title"]
    # promtool parses PromQL only in rule files: every query becomes a recording rule (the
    # job variable's label_values() is Grafana's, not PromQL)
    rules = [{"record": f"dashboard:query_{k}", "expr": grafana_defaults(expr)}
             for k, (where, expr) in enumerate(queries().items()) if "variable" not in where]
    text = yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(text)
    check = run("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr + text


def test_every_queried_metric_and_label_is_exported(exported):
    wanted = {"marquee_http_request_duration_seconds_bucket", "marquee_homepage_total",
              "marquee_homepage_fallbacks_total", "marquee_writes_total", "marquee_wal_failed",
              "marquee_impressions_lost", "marquee_experiment_pages_total",
              "marquee_exposure_coverage", "marquee_exposure_gini"}
    assert wanted <= set(exported), sorted(wanted - set(exported))
    problems, used = [], set()
    for where, expr in queries().items():
        metrics = set(METRIC.findall(expr))
        used |= metrics
        problems += [f"{where}: {m} is not exported" for m in sorted(metrics - set(exported))]
        labels = set().union(TARGET_LABELS, *(exported.get(m, set()) for m in metrics))
        for metric, matchers in SELECTOR.findall(expr):
            problems += [f"{where}: {metric} has no label {label!r}"
                         for label in MATCHER.findall(matchers)
                         if label not in TARGET_LABELS | exported.get(metric, set())]
        for grouping in GROUPING.findall(expr):
            problems += [f"{where}: no metric of the query has label {label!r}"
                         for label in (x.strip() for x in grouping.split(",")) if label
                         and label not in labels]
    assert not problems, "\n".join(problems)
    assert wanted <= used  # the assets query what matters
