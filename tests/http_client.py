"""Tiny HTTP client for the API tests (real requests on loopback, standard library only)."""

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
