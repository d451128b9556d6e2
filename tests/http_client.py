"""Tiny HTTP client for the API tests (real requests on loopback, standard library only)."""

import contextlib
import json
import urllib.error
import urllib.request


def get(port: int, path: str, timeout: float = 30) -> tuple[int, str]:
    """GET -> (status, body text), error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(port: int, path: str, body, timeout: float = 30) -> tuple[int, dict]:
    """POST ``body`` as JSON -> (status, JSON answer), error statuses included."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def running(service, event_log=None, tokens=None, data_dir=None, replica_id="0",
            limits=None):
    """The real app over ``service`` on a loopback port (uvicorn in a thread), with the write
    path of ``marquee serve --event-log event_log`` (None: writes answer 503) and ``tokens``
    (default: the --insecure-dev tokens). Yields the ApiServer (``.port``, ``.writes``); the log
    is closed after the server stops."""
    from marquee.config import LimitsConfig
    from serving.api.app import create_app
    from serving.api.security import Tokens
    from serving.api.server import ApiServer
    from serving.ingest.wiring import no_writes, open_writes

    limits = limits or LimitsConfig()
    writes = (open_writes(service, event_log, replica_id, data_dir) if event_log is not None
              else no_writes(service))
    app = create_app(service, writes, tokens or Tokens.insecure_dev(), limits,
                     close_on_shutdown=False)
    try:
        with ApiServer(app, limits=limits) as api:
            api.writes = writes
            yield api
    finally:
        writes.close()
