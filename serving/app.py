"""Wires the serving pieces from a dataset folder and a model base: ``marquee serve`` and tests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from marquee.config import Config, ServingConfig
from marquee.data import contract as c
from serving.backends import GrpcBackend, IndexStore, InProcessBackend
from serving.catalogue import load_frames
from serving.cold_start import OnboardingIngest, OnboardingLog
from serving.events import EventIngest, EventLog, EventValidator
from serving.feature_store import EmbeddedStore, FeatureStore, RedisStore
from serving.homepage import HomepageService
from serving.resilient_store import ResilientStore
from serving.signup import SignupIngest

log = logging.getLogger(__name__)


class UnavailableBackend:
    """Stands in when no model can be loaded at start-up: every call fails, so every request is
    answered by the popularity fallback (with this reason) instead of the server not starting."""

    name = "unavailable"

    def __init__(self, reason: str):
        self.reason = reason

    def query_embeddings(self, inputs, timeout_s):
        raise RuntimeError(self.reason)

    def rank(self, inputs, timeout_s):
        raise RuntimeError(self.reason)

    def candidate_embeddings(self, inputs, version, timeout_s):
        raise RuntimeError(self.reason)

    def has_ranker(self) -> bool:
        return False


def make_store(redis_url: str | None, config: ServingConfig = ServingConfig()) -> FeatureStore:
    """The embedded store, or Redis (checked now: a wrong URL fails here with the fix) with the
    embedded store as its fallback."""
    embedded = EmbeddedStore(config.history_length)
    if not redis_url:
        return embedded
    return ResilientStore(RedisStore.connect(redis_url, recent_length=config.history_length),
                          embedded)


def build_service(data_dir: str | Path, model_base: str | Path, tf_serving: str | None = None,
                  config: ServingConfig = ServingConfig(),
                  store: FeatureStore | None = None,
                  min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS) -> HomepageService:
    """``min_watch_seconds``: the pipeline's ``data.min_watch_seconds`` (what a positive watch
    is in the users' histories and the co-watch sources)."""
    catalogue, users, interactions = load_frames(data_dir, min_watch_seconds)
    indexes = IndexStore(model_base)
    if tf_serving:
        backend = GrpcBackend(tf_serving, model_base)
    else:
        try:
            backend = InProcessBackend(model_base)
        except Exception as e:  # no push yet or a broken one: serve the fallback, say why
            log.error("no model loaded from %s (%s); serving popularity only", model_base, e)
            backend = UnavailableBackend(f"no model loaded from {model_base}: {e}")
    popularity = indexes.popularity() or users.popularity()
    service = HomepageService(backend, indexes, catalogue, users, config, popularity=popularity,
                              interactions=interactions, store=store,
                              min_watch_seconds=min_watch_seconds)
    try:
        service.warm_up()
    except Exception as e:  # a backend that is down now may be up later: the breaker handles it
        log.warning("warm-up failed (%s); requests fall back until the backend answers", e)
    return service


class WritePaths(NamedTuple):
    """What ``marquee serve --event-log DIR`` accepts through (None: the route answers 503),
    and the logs to close on exit."""

    ingest: EventIngest | None
    onboarding: OnboardingIngest | None
    signup: SignupIngest | None
    logs: list[EventLog]


def _logged(folder: Path) -> pd.DataFrame | None:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]) if files else None


def attach_logs(service: HomepageService, event_log: str | Path) -> WritePaths:
    """The write paths of ``marquee serve --event-log DIR``: events to ``DIR/interactions/``,
    titles to ``DIR/items/`` and signups to ``DIR/users/`` (one part file each: durable at
    once), quiz answers to ``DIR/onboarding.jsonl``. Titles, users and answers logged by an
    earlier run are put back first."""
    event_log = Path(event_log)
    events = EventLog(event_log)
    items = EventLog(event_log, flush_rows=1, rows_per_file=1, table=c.ITEMS)
    logged = _logged(event_log / c.ITEMS)
    if logged is not None:
        n = service.fresh.replay(logged)
        log.info("put back %d title(s) added by earlier runs (%s)", n, items.folder)
    service.fresh.items_log = items
    users = EventLog(event_log, flush_rows=1, rows_per_file=1, table=c.USERS)
    signup = SignupIngest(service.users, service.store, service.catalogue, users)
    logged = _logged(users.folder)
    if logged is not None:
        n = signup.replay(logged)
        log.info("put back %d user(s) signed up in earlier runs (%s)", n, users.folder)
    onboarding = OnboardingIngest(service.store, service.catalogue,
                                  service.config.onboarding_genres, OnboardingLog(event_log))
    n = onboarding.replay()
    if n:
        log.info("put back %d onboarding answer(s) from %s", n, onboarding.log.path)
    ingest = EventIngest(EventValidator(service.users, service.catalogue.row), service.store,
                         events, on_accept=service.observe)
    return WritePaths(ingest, onboarding, signup, [events, items, users])


def serve(data_dir: str | Path, model_base: str | Path, tf_serving: str | None, port: int,
          host: str = "0.0.0.0", redis_url: str | None = None,
          event_log: str | Path | None = None, config: Config = Config()) -> None:
    from serving.api import ApiServer

    service = build_service(data_dir, model_base, tf_serving, config.serving,
                            make_store(redis_url, config.serving),
                            config.data.min_watch_seconds)
    writes = attach_logs(service, event_log) if event_log else WritePaths(None, None, None, [])
    service.start_refresh()
    server = ApiServer(service, port, host, ingest=writes.ingest, onboarding=writes.onboarding,
                       signup=writes.signup)
    log.info("homepage API on %s:%d (backend %s, features %s, events %s)", host, server.port,
             service.backend.name, redis_url or "embedded", event_log or "not accepted")
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        service.stop()
        for x in writes.logs:
            x.close()
        service.store.close()
