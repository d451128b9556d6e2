"""Wires the serving pieces from a dataset folder and a model base: ``marquee serve`` and tests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from marquee.config import Config, ServingConfig
from marquee.data import contract as c
from serving.homepage.service import HomepageService
from serving.ingest.events import REPLAY_PROBLEMS_LOGGED, EventIngest, EventLog, EventValidator
from serving.ingest.onboarding import OnboardingIngest, OnboardingLog
from serving.ingest.signup import SignupIngest
from serving.models.backends import UnavailableBackend
from serving.models.errors import MODEL_ERRORS
from serving.models.grpc import GrpcBackend
from serving.models.in_process import InProcessBackend
from serving.models.index_store import IndexStore
from serving.models.query import NoPushedModel
from serving.state.catalogue import load_frames
from serving.state.feature_store import EmbeddedStore, FeatureStore, RedisStore
from serving.state.resilient_store import ReplayGuard, ResilientStore

log = logging.getLogger(__name__)


def make_store(redis_url: str | None, config: ServingConfig = ServingConfig(),
               min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS) -> FeatureStore:
    """The embedded store, or Redis (checked now: a wrong URL fails here with the fix) with the
    embedded store as its fallback. ``min_watch_seconds``: the config's positive-watch rule."""
    embedded = EmbeddedStore(config.history_length, min_watch_seconds=min_watch_seconds)
    if not redis_url:
        return embedded
    return ResilientStore(RedisStore.connect(redis_url, recent_length=config.history_length,
                                             min_watch_seconds=min_watch_seconds), embedded)


def build_service(config: Config, data_dir: str | Path, model_base: str | Path,
                  tf_serving: str | None = None, store: FeatureStore | None = None,
                  frames: tuple | None = None, warm_up: bool = True) -> HomepageService:
    """The serving stack of ``config``: what ``marquee serve``, the benchmarks and
    ``marquee evaluate`` all run, so the evaluated stack is the served one by construction.

    ``data_dir``: the dataset folder (catalogue, users, interactions; ``frames`` instead: the
    ``load_frames`` triple already loaded, e.g. a train split). ``model_base``: the Pusher's
    folder. ``tf_serving``: HOST:PORT of TF Serving (else the models load in-process).
    ``store``: the feature store (default: embedded). The positive-watch rule everywhere is the
    config's ``data.min_watch_seconds``."""
    min_watch = config.data.min_watch_seconds
    catalogue, users, interactions = frames or load_frames(data_dir, min_watch)
    indexes = IndexStore(model_base)
    if tf_serving:
        backend = GrpcBackend(tf_serving, model_base)
    else:
        try:
            backend = InProcessBackend(model_base)
        except (NoPushedModel, OSError, ValueError) as e:  # serve the fallback, say why
            log.error("no model loaded from %s (%s); serving popularity only", model_base, e)
            backend = UnavailableBackend(f"no model loaded from {model_base}: {e}")
    popularity = indexes.popularity() or users.popularity()
    service = HomepageService(backend, indexes, catalogue, users, config.serving,
                              popularity=popularity, interactions=interactions, store=store or
                              make_store(None, config.serving, min_watch),
                              min_watch_seconds=min_watch)
    if warm_up:
        try:
            service.warm_up()
        except MODEL_ERRORS as e:  # a backend down now may be up later: the breaker handles it
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


def _loaded_with_data(folder: Path, data_dir: str | Path | None) -> bool:
    """Whether ``folder`` (the event log's interactions) is the interactions table the serving
    data was loaded from (``--event-log`` = ``--data``: a dataset folder the next pipeline run
    reads). A remote ``data_dir`` (a URI) is never a local log folder."""
    if data_dir is None or "://" in str(data_dir):
        return False
    return (Path(data_dir) / c.INTERACTIONS).resolve() == folder.resolve()


def _replay_events(service: HomepageService, ingest: EventIngest,
                   data_dir: str | Path | None) -> None:
    """Puts back the events earlier runs logged (``EventIngest.replay``, the store part by
    ``ReplayGuard``'s rule), unless the serving data loaded them; logs what it did."""
    folder = ingest.log.folder
    # A part file its run never closed (it stopped without closing the log) has no footer:
    # unreadable, its rows are lost (the next pipeline run does not read it either).
    unfinished = sorted(folder.glob("*.parquet.inprogress"))
    for path in unfinished:
        log.warning("event log replay: %s was never closed (its run stopped first): not "
                    "readable, its events are lost", path)
    if _loaded_with_data(folder, data_dir):
        log.info("events in %s were loaded with the serving data (--data %s): not put back "
                 "again", folder, data_dir)
        return
    files = sorted(folder.glob("*.parquet"))
    if not files:
        return
    guard = ReplayGuard(service.store)
    report = ingest.replay(files, guard.record_event)
    message = (f"put back {report.events} event(s) logged by earlier runs ({report.files} part "
               f"file(s) in {folder}); feature store: {guard.recorded} recorded, {guard.held} "
               "held already")
    if guard.unavailable:
        message += f", {guard.unavailable} not recorded ({guard.error})"
    skipped = report.skipped_rows + report.skipped_files + len(unfinished)
    if skipped:
        message += (f"; skipped {report.skipped_rows} row(s) that no longer validate and "
                    f"{report.skipped_files + len(unfinished)} unreadable file(s)")
        if report.skipped_rows + report.skipped_files > REPLAY_PROBLEMS_LOGGED:
            message += f" (the first {REPLAY_PROBLEMS_LOGGED} are logged above)"
    (log.warning if skipped or guard.unavailable else log.info)("%s", message)
    if report.events:
        try:  # trending's counts with the watches put back, now rather than at its next refresh
            service.refresh_trending()
        except Exception:  # the refresh thread tries again; start-up goes on
            log.exception("trending refresh after the event log replay failed")


def attach_logs(service: HomepageService, event_log: str | Path,
                data_dir: str | Path | None = None) -> WritePaths:
    """The write paths of ``marquee serve --event-log DIR``: events to ``DIR/interactions/``,
    titles to ``DIR/items/`` and signups to ``DIR/users/`` (one part file each: durable at
    once), quiz answers to ``DIR/onboarding.jsonl``. Titles, users, answers and then events
    logged by earlier runs are put back first.

    ``data_dir``: the folder the service's data was loaded from (``--data``; None: not from a
    folder). The events in ``DIR/interactions/`` are put back through the live path, minus
    the log append (the store as ``ReplayGuard`` allows, then trending), unless that folder is
    the interactions table of ``data_dir`` (``--event-log`` = ``--data``): then the loaded data
    holds every one of them already (no other process writes there), so none is put back."""
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
    _replay_events(service, ingest, data_dir)
    return WritePaths(ingest, onboarding, signup, [events, items, users])


def serve(data_dir: str | Path, model_base: str | Path, tf_serving: str | None, port: int,
          host: str = "0.0.0.0", redis_url: str | None = None,
          event_log: str | Path | None = None, config: Config = Config()) -> None:
    from serving.api.legacy_http import ApiServer

    service = build_service(config, data_dir, model_base, tf_serving,
                            make_store(redis_url, config.serving, config.data.min_watch_seconds))
    writes = (attach_logs(service, event_log, data_dir) if event_log
              else WritePaths(None, None, None, []))
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
