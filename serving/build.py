"""``build_service``: the serving stack of a config, built once (``marquee serve``, the
benchmarks and ``marquee evaluate`` all call it), and the feature store it reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from marquee.config import Config, ServingConfig
from marquee.data import contract as c
from serving.homepage.service import HomepageService
from serving.models.backends import WaitingBackend
from serving.models.errors import MODEL_ERRORS
from serving.models.grpc import GrpcBackend
from serving.models.in_process import InProcessBackend
from serving.models.index_store import IndexStore
from serving.models.query import NoPushedModel
from serving.state.catalogue import load_frames
from serving.state.feature_store import EmbeddedStore, FeatureStore
from serving.state.redis_store import RedisStore
from serving.state.resilient_store import ResilientStore

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
                  frames: tuple | None = None, warm_up: bool = True,
                  now: Callable[[], float] = time.time) -> HomepageService:
    """The serving stack of ``config``: what ``marquee serve``, the benchmarks and
    ``marquee evaluate`` all run, so the evaluated stack is the served one by construction.

    ``data_dir``: the dataset folder (catalogue, users, interactions; ``frames`` instead: the
    ``load_frames`` triple already loaded, e.g. a train split). ``model_base``: the Pusher's
    folder. ``tf_serving``: HOST:PORT of TF Serving (else the models load in-process).
    ``store``: the feature store (default: embedded). The positive-watch rule everywhere is the
    config's ``data.min_watch_seconds``. ``now``: the service's clock (UTC seconds; a closed-loop
    simulation passes its simulated time)."""
    min_watch = config.data.min_watch_seconds
    catalogue, users, interactions = frames or load_frames(data_dir, min_watch)
    indexes = IndexStore(model_base)
    if tf_serving:
        backend = GrpcBackend(tf_serving, model_base)
    else:
        try:
            backend = InProcessBackend(model_base)
        except (NoPushedModel, OSError, ValueError) as e:  # serve the fallback, say why
            log.error("no model loaded from %s (%s); serving popularity until a push loads",
                      model_base, e)
            backend = WaitingBackend(lambda: InProcessBackend(model_base),
                                     f"no model loaded from {model_base}: {e}")
    popularity = indexes.popularity() or users.popularity()
    service = HomepageService(backend, indexes, catalogue, users, config.serving,
                              popularity=popularity, interactions=interactions, store=store or
                              make_store(None, config.serving, min_watch),
                              min_watch_seconds=min_watch, now=now)
    if warm_up:
        try:
            service.warm_up()
        except MODEL_ERRORS as e:  # a backend down now may be up later: the breaker handles it
            log.warning("warm-up failed (%s); requests fall back until the backend answers", e)
    return service
