"""The homepage HTTP API (standard library server, one thread per request).

    GET /v1/users/{user_id}/homepage[?k=50]  -> the homepage as JSON (never a 5xx for a model
                                                failure: the fallback answers, marked)
    POST /v1/events                           -> one interaction (JSON object, docs/data.md):
                                                 200 recorded and logged, 400 invalid (every
                                                 problem listed), 503 store or log failed (why)
    POST /v1/users/{user_id}/onboarding       -> the quiz answer {"genres": [3 genres]}: 200
                                                 stored and logged; the next homepage uses it
    POST /v1/items                            -> a new title (an items row, docs/data.md;
                                                 added_at defaults to now): 200 logged, in the
                                                 catalogue and retrievable; 409 id taken
    POST /v1/users                            -> a signup (a users row, docs/data.md; signup_at
                                                 defaults to now): 200 logged and known, so its
                                                 events are accepted and its profile served;
                                                 409 id taken
    The POST routes need ``marquee serve --event-log DIR`` (else 503): what they accept is
    appended to DIR (interactions/, items/, users/, onboarding.jsonl) for the next pipeline run;
    a title or user that could not be logged is a 503 and is not added.
    GET /healthz                              -> backend, breakers, model version
    GET /metrics                              -> Prometheus text: requests, fallbacks, latency,
                                                 cache hits, events and writes (by outcome),
                                                 feature store

Bad input (a non-integer user id or k) is a 400 that says what was expected and what arrived.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np

from serving.homepage.service import HomepageService
from serving.ingest.events import EventIngest, EventLogError, InvalidEvent
from serving.ingest.onboarding import OnboardingIngest
from serving.ingest.signup import SignupIngest
from serving.state.feature_store import FeatureStore, StoreUnavailable

log = logging.getLogger(__name__)
HOMEPAGE = re.compile(r"^/v1/users/([^/]+)/homepage/?$")
ONBOARDING = re.compile(r"^/v1/users/([^/]+)/onboarding/?$")
EVENTS = "/v1/events"
ITEMS = "/v1/items"
USERS = "/v1/users"
WRITE_ROUTES = ("onboarding", "items", "users")  # counted as marquee_<route>_total
MAX_EVENT_BYTES = 64 * 1024


class Metrics:
    """Counters and a latency reservoir, rendered in Prometheus' text format."""

    def __init__(self, window: int = 10_000, store: FeatureStore | None = None):
        self._lock = threading.Lock()
        self.store = store
        self.cache_hits = 0
        self.events = {"accepted": 0, "invalid": 0, "unavailable": 0}
        self.writes = {(route, outcome): 0 for route in WRITE_ROUTES
                       for outcome in ("accepted", "invalid", "unavailable")}
        self.requests = 0
        self.fallbacks: dict[str, int] = {}
        self.degraded = 0
        self.errors = 0
        self._latency: list[float] = []
        self._window = window

    def observe(self, page, ms: float) -> None:
        with self._lock:
            self.requests += 1
            self.cache_hits += page.cached
            if page.fallback:
                key = (page.reason or "unknown").split(":")[0]
                self.fallbacks[key] = self.fallbacks.get(key, 0) + 1
            if page.degraded:
                self.degraded += 1
            self._latency.append(ms)
            del self._latency[: -self._window]

    def count_event(self, outcome: str, route: str = "events") -> None:
        with self._lock:
            if route == "events":
                self.events[outcome] += 1
            else:
                self.writes[(route, outcome)] += 1

    def render(self) -> str:
        store = self.store.stats() if self.store is not None else {}
        with self._lock:
            lines = ["# TYPE marquee_homepage_requests_total counter",
                     f"marquee_homepage_requests_total {self.requests}",
                     "# TYPE marquee_homepage_fallbacks_total counter"]
            lines += [f'marquee_homepage_fallbacks_total{{reason="{k}"}} {v}'
                      for k, v in sorted(self.fallbacks.items())]
            lines += ["# TYPE marquee_homepage_degraded_total counter",
                      f"marquee_homepage_degraded_total {self.degraded}",
                      "# TYPE marquee_http_errors_total counter",
                      f"marquee_http_errors_total {self.errors}",
                      "# TYPE marquee_homepage_cache_hits_total counter",
                      f"marquee_homepage_cache_hits_total {self.cache_hits}",
                      "# TYPE marquee_events_total counter"]
            lines += [f'marquee_events_total{{outcome="{k}"}} {v}'
                      for k, v in sorted(self.events.items())]
            for route in WRITE_ROUTES:
                lines.append(f"# TYPE marquee_{route}_total counter")
                lines += [f'marquee_{route}_total{{outcome="{o}"}} {v}'
                          for (r, o), v in sorted(self.writes.items()) if r == route]
            lines += [f"marquee_feature_store_{k} {v:g}" for k, v in sorted(store.items())]
            lines.append("# TYPE marquee_homepage_latency_ms summary")
            if self._latency:
                for q in (0.5, 0.9, 0.99):
                    v = float(np.quantile(self._latency, q))
                    lines.append(f'marquee_homepage_latency_ms{{quantile="{q}"}} {v:.3f}')
            return "\n".join(lines) + "\n"


def make_handler(service: HomepageService, metrics: Metrics, ingest: EventIngest | None = None,
                 onboarding_ingest: OnboardingIngest | None = None,
                 signup: SignupIngest | None = None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # access log through logging, not stderr spam
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body, content_type="application/json") -> None:
            data = (json.dumps(body) if content_type == "application/json" else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _bad(self, message: str) -> None:
            with metrics._lock:
                metrics.errors += 1
            self._send(400, {"error": message})

        def do_GET(self):  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            if url.path == "/healthz":
                return self._send(200, {
                    "status": "ok", "backend": service.backend.name,
                    "query_breaker": service.query_breaker.state,
                    "rank_breaker": service.rank_breaker.state})
            if url.path == "/metrics":
                return self._send(200, metrics.render(), "text/plain; version=0.0.4")
            m = HOMEPAGE.match(url.path)
            if not m:
                return self._send(404, {"error": f"no route {url.path}; try "
                                                 "/v1/users/{user_id}/homepage"})
            raw_user = m.group(1)
            if not re.fullmatch(r"-?\d+", raw_user):
                return self._bad(f"user id must be an integer, got {raw_user!r}")
            query = parse_qs(url.query)
            raw_k = query.get("k", [str(service.config.k)])[0]
            if not raw_k.isdigit() or not 1 <= int(raw_k) <= 500:
                return self._bad(f"k must be an integer between 1 and 500, got {raw_k!r}")
            page = service.homepage(int(raw_user), int(raw_k))
            metrics.observe(page, page.timings_ms.get("total", 0.0))
            return self._send(200, page.to_dict())

        def _read_json(self):
            """The request body as JSON; raises ValueError saying what was wrong."""
            raw_length = self.headers.get("Content-Length", "")
            if not raw_length.isdigit() or not 0 < int(raw_length) <= MAX_EVENT_BYTES:
                raise ValueError(f"expected one JSON object of 1..{MAX_EVENT_BYTES} bytes "
                                 f"(Content-Length), got {raw_length!r}")
            try:
                return json.loads(self.rfile.read(int(raw_length)))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"the body is not JSON: {e}") from e

        def do_POST(self):  # noqa: N802 (http.server's naming)
            path = urlparse(self.path).path.rstrip("/")
            onboarding = ONBOARDING.match(path + "/")
            if path == EVENTS:
                route = "events"
            elif path == ITEMS:
                route = "items"
            elif path == USERS:
                route = "users"
            elif onboarding:
                route = "onboarding"
                if not re.fullmatch(r"-?\d+", onboarding.group(1)):
                    return self._bad(f"user id must be an integer, got {onboarding.group(1)!r}")
            else:
                return self._send(404, {"error": f"no route POST {self.path}; try {EVENTS}, "
                                                 f"{ITEMS}, {USERS} or "
                                                 "/v1/users/{user_id}/onboarding"})
            logged = {"events": ingest is not None, "items": service.fresh.items_log is not None,
                      "users": signup is not None and signup.log is not None,
                      "onboarding": onboarding_ingest is not None
                      and onboarding_ingest.log is not None}
            if not logged[route]:  # what is accepted must also be kept for the next run
                metrics.count_event("unavailable", route)
                return self._send(503, {"error": f"this server does not accept {route}: start "
                                                 "`marquee serve` with --event-log DIR"})
            try:
                body = self._read_json()
            except ValueError as e:
                metrics.count_event("invalid", route)
                return self._bad(str(e))
            try:
                if route == "events":
                    accepted = {"event": ingest.accept(body).to_row()}
                elif route == "items":
                    row = service.fresh.add(body).iloc[0]
                    accepted = {"item": json.loads(row.to_json())}
                elif route == "users":
                    accepted = {"user": signup.accept(body)}
                else:
                    accepted = {"onboarding": onboarding_ingest.accept(
                        int(onboarding.group(1)), body).to_json()}
            except InvalidEvent as e:
                metrics.count_event("invalid", route)
                status = 409 if e.duplicate else 400
                return self._send(status, {"error": str(e), "problems": e.problems})
            except (StoreUnavailable, EventLogError) as e:
                log.error("%s not recorded: %s", route, e)
                metrics.count_event("unavailable", route)
                return self._send(503, {"error": str(e)})
            metrics.count_event("accepted", route)
            return self._send(200, {"status": "accepted", **accepted})

    return Handler


class ApiServer:
    """The HTTP server on a port (0 = any free one), started in a background thread."""

    def __init__(self, service: HomepageService, port: int = 8080, host: str = "0.0.0.0",
                 ingest: EventIngest | None = None, onboarding: OnboardingIngest | None = None,
                 signup: SignupIngest | None = None):
        """``ingest``, ``signup``: the events and signup paths (``serving.build.attach_logs``);
        without one its route answers 503, as do titles without an items log. Onboarding
        answers go through ``onboarding`` (default: to the store, not logged, so 503)."""
        self.metrics = Metrics(store=service.store)
        onboarding = onboarding or OnboardingIngest(service.store, service.catalogue,
                                                    service.config.onboarding_genres)
        self.httpd = ThreadingHTTPServer(
            (host, port), make_handler(service, self.metrics, ingest, onboarding, signup))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
