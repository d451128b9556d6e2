"""``marquee serve``: the stack built once from config, then the app on uvicorn.

uvicorn answers SIGTERM and SIGINT alike (how every service manager stops a process, and
Ctrl-C): it stops accepting connections, lets the requests in flight finish within
``serving.limits.shutdown_grace_seconds``, then runs the app's shutdown, which drains and closes
the write-ahead log. Bounds on every client: request head and body sizes, a body read timeout, a
deadline for a connection's request head (a client sending nothing, or a byte at a time, is cut
off), the keep-alive idle time; no ``Server`` header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from marquee.config import Config, LimitsConfig
from serving.api.app import create_app
from serving.api.security import Tokens
from serving.build import build_service, make_store
from serving.homepage.experiments import front
from serving.ingest.wiring import Writes, no_writes, open_writes

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """What ``marquee serve``'s flags choose (the rest is the config)."""

    data_dir: str | Path
    model_base: str | Path
    tf_serving: str | None = None
    port: int = 8080
    host: str = "127.0.0.1"
    redis_url: str | None = None
    event_log: str | Path | None = None
    replica_id: str = "0"
    insecure_dev: bool = False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head: a connection that
    has not sent a whole request line and headers within ``head_timeout_s`` of opening (or of
    its last response) is closed. uvicorn's keep-alive timer restarts on every byte, so a client
    trickling bytes would otherwise hold the connection forever."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._head_timer = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _head_expired(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection from %s: no request head in %.0f s", self.client,
                     self.head_timeout_s)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)


def uvicorn_config(app, host: str, port: int, limits: LimitsConfig) -> uvicorn.Config:
    protocol = type("BoundedH11Protocol", (GuardedH11Protocol,),
                    {"head_timeout_s": limits.read_timeout_seconds})
    return uvicorn.Config(
        app, host=host, port=port, http=protocol, lifespan="on", log_level="warning",
        access_log=False, server_header=False, timeout_keep_alive=int(limits.keep_alive_seconds),
        timeout_graceful_shutdown=int(limits.shutdown_grace_seconds),
        h11_max_incomplete_event_size=limits.max_header_bytes, limit_concurrency=1000)


def tokens_for(config: Config, insecure_dev: bool) -> Tokens:
    return Tokens.insecure_dev() if insecure_dev else Tokens.load(config.serving.auth)


def serve(options: ServeOptions, config: Config = Config()) -> None:
    """Builds the stack, opens the write path (replaying what earlier runs logged) and serves
    until SIGTERM or SIGINT."""
    tokens = tokens_for(config, options.insecure_dev)  # bad token files fail before loading
    service = front(build_service(config, options.data_dir, options.model_base,
                                  options.tf_serving, make_store(options.redis_url,
                                                                 config.serving,
                                                                 config.data.min_watch_seconds)))
    if service.assigner is not None and not options.event_log:
        service.log_impressions(None)  # raises: experiments need the impression log
    writes: Writes = (open_writes(service, options.event_log, options.replica_id,
                                  options.data_dir) if options.event_log else no_writes(service))
    service.start_refresh()
    # What start-up built (a 500K-title catalogue: millions of objects) lives until exit: out of
    # the garbage collector's sight, so its full collections stop traversing it on requests.
    gc.collect()
    gc.freeze()
    app = create_app(service, writes, tokens, config.serving.limits)
    log.info("homepage API on http://%s:%d (backend %s, features %s, writes %s, docs /docs)",
             options.host, options.port, service.backend.name, options.redis_url or "embedded",
             f"durable in {options.event_log} as replica {options.replica_id}"
             if options.event_log else "off (no --event-log)")
    if config.serving.experiments:
        log.info("experiments: %s; impressions logged in %s",
                 ", ".join(f"{e.id} ({e.kind}: {', '.join(a.name for a in e.arms)})"
                           for e in config.serving.experiments), options.event_log)
    uvicorn.Server(uvicorn_config(app, options.host, options.port,
                                  config.serving.limits)).run()


class ApiServer:
    """The app on a loopback port in a background thread (tests and benchmarks; port 0: any
    free one). ``stop`` shuts down as ``marquee serve`` does on SIGTERM."""

    def __init__(self, app, port: int = 0, host: str = "127.0.0.1",
                 limits: LimitsConfig = LimitsConfig()):
        self.server = uvicorn.Server(uvicorn_config(app, host, port, limits))
        self.host, self._thread = host, None

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self.server.run, daemon=True, name="api-server")
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the API server did not start (see the log)")
            self._thread.join(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
