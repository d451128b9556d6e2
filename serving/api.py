"""The homepage HTTP API (standard library server, one thread per request).

    GET /v1/users/{user_id}/homepage[?k=50]  -> the homepage as JSON (never a 5xx for a model
                                                failure: the fallback answers, marked)
    GET /healthz                              -> backend, breakers, model version
    GET /metrics                              -> Prometheus text: requests, fallbacks, latency

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

from serving.homepage import HomepageService

log = logging.getLogger(__name__)
HOMEPAGE = re.compile(r"^/v1/users/([^/]+)/homepage/?$")


class Metrics:
    """Counters and a latency reservoir, rendered in Prometheus' text format."""

    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.requests = 0
        self.fallbacks: dict[str, int] = {}
        self.degraded = 0
        self.errors = 0
        self._latency: list[float] = []
        self._window = window

    def observe(self, page, ms: float) -> None:
        with self._lock:
            self.requests += 1
            if page.fallback:
                key = (page.reason or "unknown").split(":")[0]
                self.fallbacks[key] = self.fallbacks.get(key, 0) + 1
            if page.degraded:
                self.degraded += 1
            self._latency.append(ms)
            del self._latency[: -self._window]

    def render(self) -> str:
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
                      "# TYPE marquee_homepage_latency_ms summary"]
            if self._latency:
                for q in (0.5, 0.9, 0.99):
                    v = float(np.quantile(self._latency, q))
                    lines.append(f'marquee_homepage_latency_ms{{quantile="{q}"}} {v:.3f}')
            return "\n".join(lines) + "\n"


def make_handler(service: HomepageService, metrics: Metrics):
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

    return Handler


class ApiServer:
    """The HTTP server on a port (0 = any free one), started in a background thread."""

    def __init__(self, service: HomepageService, port: int = 8080, host: str = "0.0.0.0"):
        self.metrics = Metrics()
        self.httpd = ThreadingHTTPServer((host, port), make_handler(service, self.metrics))
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
