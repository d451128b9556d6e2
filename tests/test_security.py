"""serving/api/security.py: token loading, the access matrix, the rate limiter, and the FastAPI
glue through a real uvicorn server on 127.0.0.1."""

import contextlib
import hashlib
import logging
import math
import threading
import time
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI

from marquee.config import AuthConfig, TokenConfig
from serving.api import security
from serving.api.security import (
    Forbidden,
    Principal,
    RateLimited,
    RateLimiter,
    Tokens,
    Unauthorized,
    WritesDisabled,
    access,
    install_handlers,
    retry_after,
)

EVENTS = "events-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdef"
SECRETS = (EVENTS, ADMIN, READ, WRONG)
ENVIRON = {"MARQUEE_EVENTS_TOKEN": EVENTS, "MARQUEE_ADMIN_TOKEN": ADMIN, "MARQUEE_READ_TOKEN": READ}


def client_id(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def load(environ=ENVIRON, require_read_token=True, tokens=None) -> Tokens:
    auth = AuthConfig(require_read_token=require_read_token)
    if tokens is not None:
        auth = AuthConfig(tokens=tokens, require_read_token=require_read_token)
    return Tokens.load(auth, environ)


# ----------------------------------------------------------------------------- load


def test_env_var_is_stripped_and_used():
    tokens = load({"MARQUEE_EVENTS_TOKEN": f"  {EVENTS}\n"})
    assert tokens.check(f"Bearer {EVENTS}", "events") == Principal("events", client_id(EVENTS))
    assert not tokens.insecure


@pytest.mark.parametrize("environ", [{}, {"MARQUEE_EVENTS_TOKEN": "  "}], ids=["unset", "blank"])
def test_missing_env_var_means_no_token_for_that_scope(environ):
    tokens = load({**environ, "MARQUEE_READ_TOKEN": READ})
    with pytest.raises(WritesDisabled):
        tokens.check(f"Bearer {EVENTS}", "events")
    assert tokens.check(f"Bearer {READ}", "read").scope == "read"


def test_file_first_line_is_the_token(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text(f"  {ADMIN}  \nnot-the-token-0123456789\n")
    tokens = load({}, tokens=(TokenConfig("admin", file=str(path)),))
    assert tokens.check(f"Bearer {ADMIN}", "admin") == Principal("admin", client_id(ADMIN))
    with pytest.raises(Unauthorized):
        tokens.check("Bearer not-the-token-0123456789", "admin")


def test_env_and_file_of_one_entry_are_both_accepted(tmp_path):
    path = tmp_path / "events.token"
    path.write_text(EVENTS + "\n")
    tokens = load({"NEW": ADMIN}, tokens=(TokenConfig("events", env="NEW", file=str(path)),))
    assert tokens.check(f"Bearer {EVENTS}", "events").scope == "events"
    assert tokens.check(f"Bearer {ADMIN}", "events").scope == "events"


@pytest.mark.parametrize("content", [None, "", "\n  \n" + EVENTS], ids=["none", "empty", "blank"])
def test_named_file_missing_or_empty_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "events.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as e:
        load({}, tokens=(TokenConfig("events", env="MARQUEE_EVENTS_TOKEN", file=str(path)),))
    assert str(path) in str(e.value)
    assert "first line" in str(e.value) and "secrets.token_urlsafe" in str(e.value)
    assert EVENTS not in str(e.value)


@pytest.mark.parametrize("value", ["abc123", "fifteen-chars-x", "has space 0123456789", "é" * 20])
def test_short_or_unsendable_token_is_an_error(value):
    with pytest.raises(ValueError) as e:
        load({"MARQUEE_EVENTS_TOKEN": value})
    assert "MARQUEE_EVENTS_TOKEN" in str(e.value)
    assert "secrets.token_urlsafe(32)" in str(e.value)
    assert value not in str(e.value)


def test_sixteen_characters_is_enough():
    assert load({"MARQUEE_EVENTS_TOKEN": "x" * 16}).check("Bearer " + "x" * 16, "events")


def test_same_token_for_two_scopes_is_an_error():
    with pytest.raises(ValueError) as e:
        load({"MARQUEE_EVENTS_TOKEN": EVENTS, "MARQUEE_ADMIN_TOKEN": EVENTS})
    message = str(e.value)
    assert "events" in message and "admin" in message and "MARQUEE_ADMIN_TOKEN" in message
    assert EVENTS not in message


def test_unknown_scope_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'write'; valid: admin, events, read"):
        load({"X": EVENTS}, tokens=(TokenConfig("write", env="X"),))


def test_entry_with_no_source_is_an_error():
    with pytest.raises(ValueError, match=r"serving.auth.tokens\[0\] \(scope events\)"):
        load({}, tokens=(TokenConfig("events"),))


# ----------------------------------------------------------------------------- check

NONE, BASIC, BARE = None, "Basic dXNlcjpwYXNzd29yZA==", EVENTS
# route scope, require_read_token, Authorization header, outcome: the exception, or the scope
# of the principal (reads open: "read", anonymous).
MATRIX = [
    ("events", True, NONE, Unauthorized),
    ("events", True, BASIC, Unauthorized),
    ("events", True, f"Bearer {WRONG}", Unauthorized),
    ("events", True, f"Bearer {READ}", Forbidden),  # lower scope
    ("events", True, f"Bearer {EVENTS}", "events"),
    ("events", True, f"Bearer {ADMIN}", "admin"),
    ("admin", True, NONE, Unauthorized),
    ("admin", True, BASIC, Unauthorized),
    ("admin", True, f"Bearer {WRONG}", Unauthorized),
    ("admin", True, f"Bearer {READ}", Forbidden),
    ("admin", True, f"Bearer {EVENTS}", Forbidden),  # lower scope
    ("admin", True, f"Bearer {ADMIN}", "admin"),
    ("read", True, NONE, Unauthorized),
    ("read", True, BASIC, Unauthorized),
    ("read", True, f"Bearer {WRONG}", Unauthorized),
    ("read", True, f"Bearer {READ}", "read"),
    ("read", True, f"Bearer {EVENTS}", "events"),
    ("read", True, f"Bearer {ADMIN}", "admin"),
    ("read", False, NONE, "read"),
    ("read", False, BASIC, "read"),
    ("read", False, f"Bearer {WRONG}", "read"),
    ("read", False, f"Bearer {READ}", "read"),
    ("read", False, f"Bearer {ADMIN}", "read"),
]
STATUS = {Unauthorized: 401, Forbidden: 403, WritesDisabled: 503, RateLimited: 429}


@pytest.mark.parametrize("scope,require_read,header,outcome", MATRIX)
def test_check_matrix(scope, require_read, header, outcome):
    tokens = load(require_read_token=require_read)
    if isinstance(outcome, str):
        open_read = scope == "read" and not require_read
        expected = "anonymous:10.0.0.7" if open_read else client_id(header.split()[-1])
        assert tokens.check(header, scope, "10.0.0.7") == Principal(outcome, expected)
        return
    with pytest.raises(outcome) as e:
        tokens.check(header, scope, "10.0.0.7")
    assert e.value.status == STATUS[outcome]
    assert not any(secret in e.value.message for secret in SECRETS)
    assert not any(secret in value for secret in SECRETS for value in e.value.headers.values())
    if outcome is Unauthorized:
        assert e.value.headers == {"WWW-Authenticate": f'Bearer realm="marquee", scope="{scope}"'}


@pytest.mark.parametrize("header,says", [
    (None, "got no Authorization header"),
    (BASIC, "expected `Authorization: Bearer <token>`, got a `Basic` header"),
    (BARE, "got a header that is not `<scheme> <token>`"),  # a bare token is not echoed
    (f"{EVENTS} {EVENTS}", "got a header that is not `<scheme> <token>`"),
    ("Bearer", "got `Bearer` with no token"),
    (f"Bearer {WRONG}", "send the token from env MARQUEE_EVENTS_TOKEN or env MARQUEE_ADMIN_TOKEN"),
    ("Bearer " + "é" * 30, "got one the server does not hold"),  # non-ASCII: no TypeError
])
def test_unauthorized_says_what_was_expected_and_what_arrived(header, says):
    with pytest.raises(Unauthorized) as e:
        load().check(header, "events")
    assert says in e.value.message
    assert EVENTS not in e.value.message and WRONG not in e.value.message


def test_scheme_is_case_insensitive():
    assert load().check(f"bearer  {EVENTS} ", "events").scope == "events"


def test_forbidden_names_the_scope_held_and_the_scope_needed():
    with pytest.raises(Forbidden) as e:
        load().check(f"Bearer {EVENTS}", "admin")
    assert f"needs scope admin; the token {client_id(EVENTS)} has scope events" in e.value.message
    assert 'error="insufficient_scope"' in e.value.headers["WWW-Authenticate"]


def test_writes_disabled_when_no_token_could_grant_the_scope():
    read_only = load({"MARQUEE_READ_TOKEN": READ})
    with pytest.raises(WritesDisabled) as e:
        read_only.check(f"Bearer {READ}", "events")
    assert e.value.status == 503
    assert "set MARQUEE_EVENTS_TOKEN or MARQUEE_ADMIN_TOKEN or serving.auth.tokens" in str(e.value)
    assert "marquee serve --insecure-dev" in e.value.message
    events_only = load({"MARQUEE_EVENTS_TOKEN": EVENTS})
    with pytest.raises(WritesDisabled, match="set MARQUEE_ADMIN_TOKEN or serving.auth.tokens"):
        events_only.check(f"Bearer {EVENTS}", "admin")
    with pytest.raises(WritesDisabled):
        load({}).check(None, "read")  # reads need a token and none is configured


def test_admin_token_alone_enables_events_routes():
    admin_only = load({"MARQUEE_ADMIN_TOKEN": ADMIN})
    assert admin_only.check(f"Bearer {ADMIN}", "events").scope == "admin"
    with pytest.raises(Unauthorized):  # not 503: a token that grants events exists
        admin_only.check(None, "events")


def test_insecure_dev_lets_everything_through():
    tokens = Tokens.insecure_dev()
    assert tokens.insecure is True
    for scope in ("events", "admin", "read"):
        assert tokens.check(None, scope, "1.2.3.4") == Principal("admin", "anonymous:1.2.3.4")


def test_unknown_route_scope_is_a_programming_error():
    with pytest.raises(ValueError, match="valid: admin, events, read"):
        load().check(f"Bearer {ADMIN}", "write")
    with pytest.raises(ValueError):
        access("write")


@pytest.mark.parametrize("header", [f"Bearer {EVENTS}", f"Bearer {READ}", f"Bearer {WRONG}"])
def test_every_configured_token_is_compared_in_constant_time(monkeypatch, header):
    calls = []
    original = security.hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    tokens = load()  # 3 tokens; EVENTS is the first: a match must not stop the loop
    with contextlib.suppress(Forbidden, Unauthorized):
        tokens.check(header, "events")
    assert len(calls) == 3


def test_denials_are_logged_without_the_token(caplog):
    caplog.set_level(logging.INFO, logger="serving.api.security")
    with pytest.raises(Unauthorized):
        load().check(f"Bearer {WRONG}", "events", "10.0.0.7")
    [record] = caplog.records
    text = record.getMessage()
    assert record.levelno == logging.INFO
    assert "route scope events" in text and "10.0.0.7" in text and client_id(WRONG) in text
    assert "matches" in text or "does not hold" in text
    assert not any(secret in text for secret in SECRETS)


# ----------------------------------------------------------------------------- RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_rate():
    clock = FakeClock()
    limiter = RateLimiter(1.0, 3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("a") == pytest.approx(1.0)  # empty bucket, 1 token/s
    clock.now = 0.5
    assert limiter.acquire("a") == pytest.approx(0.5)  # half a token back; refusals take none
    clock.now = 1.0
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == pytest.approx(1.0)
    assert limiter.acquire("b") is None  # keys are independent


def test_bucket_refills_to_burst_not_beyond():
    clock = FakeClock()
    limiter = RateLimiter(4.0, 3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("a") == pytest.approx(0.25)  # (1 - 0) / 4 per second
    clock.now = 100.0
    assert [limiter.acquire("a") for _ in range(4)] == [None, None, None, pytest.approx(0.25)]


def test_least_recently_used_client_is_forgotten():
    limiter = RateLimiter(1.0, 1, clock=FakeClock(), max_clients=2)
    assert limiter.acquire("a") is None
    assert limiter.acquire("b") is None
    assert limiter.acquire("a") is not None  # a is limited, and now the most recent
    assert limiter.acquire("c") is None  # evicts b, not a
    assert len(limiter) == 2
    assert limiter.acquire("a") is not None  # still remembered
    assert limiter.acquire("b") is None  # forgotten, so a full bucket again
    assert len(limiter) == 2


class SlowKey(str):
    """Hashing yields the GIL, so without the lock another thread runs between the bucket's read
    (``pop``) and its write."""

    def __hash__(self):
        time.sleep(0.0001)
        return str.__hash__(self)


def test_limiter_is_thread_safe():
    limiter = RateLimiter(1e-9, 200, clock=FakeClock())
    allowed = []

    def hammer():
        allowed.extend(1 for _ in range(100) if limiter.acquire(SlowKey("k")) is None)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 200  # of 800 attempts, exactly the burst


@pytest.mark.parametrize("kwargs", [
    {"rate_per_second": 0, "burst": 1}, {"rate_per_second": -1, "burst": 1},
    {"rate_per_second": math.nan, "burst": 1}, {"rate_per_second": math.inf, "burst": 1},
    {"rate_per_second": 1, "burst": 0}, {"rate_per_second": 1, "burst": 1.5},
    {"rate_per_second": 1, "burst": True}, {"rate_per_second": 1, "burst": 1, "max_clients": 0},
])
def test_limiter_arguments_are_validated(kwargs):
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


@pytest.mark.parametrize("seconds,header", [
    (0.0001, 1), (0.5, 1), (1.0, 1), (1.0 + 1e-12, 1), (1.2, 2), (2.0, 2), (59.01, 60),
])
def test_retry_after_rounds_up_to_whole_seconds(seconds, header):
    assert retry_after(seconds) == header


# ----------------------------------------------------------------------------- through uvicorn


def make_app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.post("/events")
    def post_event(principal: Annotated[Principal, Depends(access("events"))]):
        return {"scope": principal.scope, "client": principal.client_id}

    @app.get("/home")
    def home(principal: Annotated[Principal, Depends(access("read"))]):
        return {"scope": principal.scope, "client": principal.client_id}

    @app.post("/items", dependencies=[Depends(access("admin"))])
    def post_item():
        return {"ok": True}

    return app


@pytest.fixture(scope="module")
def server():
    app = make_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
    assert not thread.is_alive()


@pytest.fixture
def http(server):
    app, url = server
    app.state.tokens = load()
    app.state.limiter = None
    with httpx.Client(base_url=url, timeout=5) as client:
        yield app, client


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_http_401_with_challenge(http):
    _, client = http
    response = client.post("/events")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="marquee", scope="events"'
    assert "got no Authorization header" in response.json()["error"]
    response = client.post("/events", headers={"Authorization": BASIC})
    assert response.status_code == 401 and "got a `Basic` header" in response.json()["error"]


def test_http_403_and_200(http):
    _, client = http
    response = client.post("/items", headers=bearer(EVENTS))
    assert response.status_code == 403 and "needs scope admin" in response.json()["error"]
    assert EVENTS not in response.text
    response = client.post("/events", headers=bearer(EVENTS))
    assert response.status_code == 200
    assert response.json() == {"scope": "events", "client": client_id(EVENTS)}
    assert client.post("/items", headers=bearer(ADMIN)).json() == {"ok": True}
    assert client.get("/home", headers=bearer(READ)).json()["scope"] == "read"
    assert client.get("/home").status_code == 401  # require_read_token is on


def test_http_429_with_retry_after(http):
    app, client = http
    app.state.limiter = RateLimiter(1.0, 2, clock=FakeClock())
    assert [client.post("/events", headers=bearer(EVENTS)).status_code for _ in range(2)] == [
        200, 200]
    response = client.post("/events", headers=bearer(EVENTS))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert "more than 1 writes per second (burst 2)" in response.json()["error"]
    assert client.post("/events", headers=bearer(ADMIN)).status_code == 200  # its own bucket
    assert {client.get("/home", headers=bearer(EVENTS)).status_code for _ in range(5)} == {200}


def test_http_503_when_no_token_is_configured(http):
    app, client = http
    app.state.tokens = load({}, require_read_token=False)
    response = client.post("/events", headers=bearer(EVENTS))
    assert response.status_code == 503
    assert "MARQUEE_EVENTS_TOKEN" in response.json()["error"]
    assert client.get("/home").json() == {"scope": "read", "client": "anonymous:127.0.0.1"}


def test_http_insecure_dev(http):
    app, client = http
    app.state.tokens = Tokens.insecure_dev()
    assert client.post("/items").json() == {"ok": True}
