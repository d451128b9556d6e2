"""Redis when it is up, the embedded store when it is down, and back by itself.

    ResilientStore(RedisStore.connect(url), EmbeddedStore())

- Events (and onboarding answers) go to both stores: the embedded one is this process's warm
  copy, so that during an outage the users it served still have their recent watches.
- Reads and the cache use Redis while it is up. The first connection or timeout error (at most
  the Redis client's socket timeout, 50 ms by default) marks it down; from then on no request
  touches Redis: features come from the embedded store, the cache misses and stores nothing, and
  events are queued (at most ``max_pending``) for Redis. Each call answered that way counts as a
  fallback (``stats()`` -> /metrics).
- A background thread PINGs Redis every ``probe_interval_s``; once it answers, the queued events
  are replayed in order (so a watch during the outage still invalidates cached pages and reaches
  recent watches) and Redis serves again. Requests never wait for the probe or the replay.

An event whose replay queue is full raises StoreUnavailable (the caller answers 503): events are
never dropped quietly. A replay cut short by Redis failing again resumes at the next probe, and
an event whose reply was lost mid-call may be applied twice (at-least-once). Batch features are
loaded into both stores; a load while Redis is down raises, as the shared copy did not change.

Redis outlives a restart of the server; :class:`ReplayGuard` is the rule that puts the events
logged by earlier runs back (start-up) without recording twice what Redis holds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from serving.state.feature_store import (
    NO_GENERATION,
    BatchFeatures,
    EmbeddedStore,
    FeatureStore,
    RedisStore,
    StoreUnavailable,
    UserFeatures,
)
from serving.state.records import Event, Onboarding

log = logging.getLogger(__name__)
T = TypeVar("T")


class ResilientStore:
    """A FeatureStore over a RedisStore with an EmbeddedStore fallback (see module docstring)."""

    def __init__(self, primary: RedisStore, fallback: EmbeddedStore | None = None,
                 probe_interval_s: float = 1.0, max_pending: int = 100_000):
        self.primary = primary
        self.fallback = fallback or EmbeddedStore(primary.recent_length, primary.session_gap_s)
        self.probe_interval_s, self.max_pending = probe_interval_s, max_pending
        self._lock = threading.Lock()
        self._up = True
        self._pending: deque[Event | Onboarding] = deque()
        self._fallbacks: Counter[str] = Counter()
        self._outages = 0
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    @property
    def redis_up(self) -> bool:
        with self._lock:
            return self._up

    # ------------------------------------------------------------------ outage handling

    def _mark_down(self, error: StoreUnavailable) -> None:
        with self._lock:
            if not self._up:
                return
            self._up = False
            self._outages += 1
            if self._stop.is_set():
                return
            self._prober = threading.Thread(target=self._probe, name="redis-probe", daemon=True)
            self._prober.start()
        log.warning("feature store: Redis is down, serving from the embedded store (%s)", error)

    def _probe(self) -> None:
        """Until Redis answers and the queue is replayed: wait, PING, replay in order."""
        while not self._stop.wait(self.probe_interval_s):
            try:
                self.primary.ping()
                while True:
                    with self._lock:
                        if not self._pending:
                            self._up = True  # under the lock: no event can slip into the queue
                            break
                        event = self._pending[0]
                    self.primary.record_event(event)
                    with self._lock:
                        self._pending.popleft()
            except StoreUnavailable:
                continue
            log.warning("feature store: Redis is back, serving from it again")
            return

    def _read(self, op: str, primary: Callable[[], T], fallback: Callable[[], T]) -> T:
        with self._lock:
            up = self._up
        if up:
            try:
                return primary()
            except StoreUnavailable as e:
                self._mark_down(e)
        with self._lock:
            self._fallbacks[op] += 1
        return fallback()

    # ------------------------------------------------------------------ FeatureStore

    def record_event(self, event: Event | Onboarding) -> None:
        with self._lock:
            if not self._up and len(self._pending) >= self.max_pending:
                raise StoreUnavailable(
                    f"Redis at {self.primary.url} is down and {len(self._pending)} events wait "
                    f"for it (max_pending {self.max_pending}); this event was not recorded. "
                    "Bring Redis back (redis-server) or raise max_pending.")
        self.fallback.record_event(event)
        while True:
            with self._lock:
                if not self._up:  # checked under the lock the prober drains the queue under
                    self._pending.append(event)
                    self._fallbacks["record_event"] += 1
                    return
            try:
                self.primary.record_event(event)
                return
            except StoreUnavailable as e:
                self._mark_down(e)

    def features(self, user_id: int) -> UserFeatures:
        def from_fallback() -> UserFeatures:
            # Not the shared generation: a page computed from these is never cached.
            return dataclasses.replace(self.fallback.features(user_id), generation=NO_GENERATION)

        return self._read("features", lambda: self.primary.features(user_id), from_fallback)

    def load_batch_features(self, version: int, rows: Mapping[int, BatchFeatures],
                            ttl_s: float) -> int:
        self.fallback.load_batch_features(version, rows, ttl_s)
        with self._lock:
            up = self._up
        if not up:
            raise StoreUnavailable(f"Redis at {self.primary.url} is down: batch features "
                                   f"version {version} were loaded into this process only; "
                                   "load them again when Redis is back.")
        try:
            return self.primary.load_batch_features(version, rows, ttl_s)
        except StoreUnavailable as e:
            self._mark_down(e)
            raise

    def batch_version(self) -> int | None:
        return self._read("batch_version", self.primary.batch_version,
                          self.fallback.batch_version)

    def get_cached(self, user_id: int, model_version: int) -> Any | None:
        return self._read("get_cached", lambda: self.primary.get_cached(user_id, model_version),
                          lambda: None)

    def put_cached(self, user_id: int, model_version: int, payload: Any, ttl_s: float,
                   generation: int | None = None) -> bool:
        if generation == NO_GENERATION:
            return False
        return self._read(
            "put_cached",
            lambda: self.primary.put_cached(user_id, model_version, payload, ttl_s, generation),
            lambda: False)

    def stats(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {
                "redis_up": float(self._up), "redis_outages_total": self._outages,
                "fallbacks_total": sum(self._fallbacks.values()),
                "replay_pending": len(self._pending)}
            out.update({f"fallbacks_{op}_total": n for op, n in sorted(self._fallbacks.items())})
        return out

    def close(self) -> None:
        """Stops the probe thread and closes both stores."""
        self._stop.set()
        with self._lock:
            prober = self._prober
        if prober is not None:
            prober.join(timeout=self.probe_interval_s + 1)
        self.primary.close()
        self.fallback.close()


_UNREAD, _UNKNOWN = object(), object()


class ReplayGuard:
    """Records the events put back at start-up (``EventIngest.replay``'s ``record``) into a
    store that may hold them already: Redis outlives a restart of the server.

    Rule: when a user's first event comes up, the store's ``last_event_at`` for them is read,
    once, before any of their events is put back; an event is recorded only if it is later.
    ``last_event_at`` is the latest timestamp the store was given and never goes back, so every
    event the store took has a timestamp at or before it: no event is recorded twice (a watch
    cannot appear twice in the recent list, nor bump the generation twice, nor lengthen the
    session again), while events the store lacks that are later than all it has (accepted
    while Redis was down, with the process stopped before its queue drained; or Redis emptied)
    are recorded. It may miss an event the store never took that is no later than one it did.
    A fresh embedded store knows nobody: every event is recorded.

    ResilientStore: the rule reads Redis; this process's copy (``fallback``, empty at start-up)
    takes every event, so it is whole for an outage. If Redis cannot be read for a user (down
    now: the wrapper answers from its copy), their events go to the copy only, as Redis may hold
    them; so does an event the store refuses (StoreUnavailable). Both are counted
    (``unavailable``, ``error`` says why) for the start-up log.
    """

    def __init__(self, store: FeatureStore):
        self.store = store
        self.local = store.fallback if isinstance(store, ResilientStore) else None
        self.recorded = self.held = self.unavailable = 0
        self.error: str | None = None
        self._since: dict[int, object] = {}  # user -> last_event_at before the replay

    def _watermark(self, user_id: int) -> object:
        since = self._since.get(user_id, _UNREAD)
        if since is _UNREAD:
            try:
                features = self.store.features(user_id)
                since = features.last_event_at
                if features.generation == NO_GENERATION:  # not Redis's: the wrapper's copy
                    since = _UNKNOWN
                    self.error = "Redis could not be read; they are in this process's copy only"
            except StoreUnavailable as e:
                since, self.error = _UNKNOWN, str(e)
            self._since[user_id] = since
        return since

    def record_event(self, event: Event) -> None:
        since = self._watermark(event.user_id)
        if since is _UNKNOWN:
            self.unavailable += 1
        elif since is not None and event.timestamp <= since:
            self.held += 1
        else:
            try:
                self.store.record_event(event)  # ResilientStore: its copy too
                self.recorded += 1
                return
            except StoreUnavailable as e:
                self.unavailable, self.error = self.unavailable + 1, str(e)
        if self.local is not None:
            self.local.record_event(event)
