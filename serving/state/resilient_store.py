"""Redis when it is up, the embedded store when it is down or emptied, and back by itself.

    ResilientStore(RedisStore.connect(url), EmbeddedStore())

- Events (and onboarding answers) go to both stores: the embedded one is this process's warm
  copy, so that during an outage the users it served still have their recent watches.
- Reads and the cache use Redis while it is up. The first connection or timeout error (at most
  the Redis client's socket timeout, 50 ms by default) marks it down; from then on no request
  touches Redis: features come from the embedded store, the cache misses and stores nothing, and
  events are queued (at most ``max_pending``) for Redis. Each call answered that way counts as a
  fallback (``stats()`` -> /metrics).
- A background thread checks Redis every ``probe_interval_s`` (one round trip: the sentinel and
  the batch version, see below). Once a down Redis answers with its data, the queued events are
  replayed in order (so a watch during the outage still invalidates cached pages and reaches
  recent watches) and Redis serves again. Requests never wait for the probe or the replay.

An event whose replay queue is full raises StoreUnavailable (the caller answers 503): events are
never dropped quietly. A replay cut short by Redis failing again resumes at the next probe, and
an event whose reply was lost mid-call may be applied twice (at-least-once). Batch features are
loaded into both stores; a load while Redis is down raises, as the shared copy did not change.

Redis that lost its data (restarted without persistence, a new pod, FLUSHALL): the first store
to see a Redis sets the sentinel ``P:epoch`` to an id of its own (SET NX; later ones adopt it).
The sentinel missing, or changed, while Redis answers means Redis lost everything since it was
set. It is checked by the probe (every ``probe_interval_s``, and first thing after a
reconnect) and by every feature read (the same MULTI; then that read and all after it are
answered from the copy, as for an outage). On detection:

1. reads go to the copy (``redis_up`` 0, ``redis_reseeding`` 1: no request sees the emptied
   Redis); events go to Redis and the copy as usual; the replay queue is dropped, as every
   event in it is in the copy;
2. every user of the copy is merged into Redis as state (``EmbeddedStore.snapshot`` ->
   ``RedisStore.merge_users``), then the batch features it holds, with the time they have left;
3. the sentinel is claimed again (SET NX), and Redis serves.

Why state and not a replay of events: the copy keeps state (no event list), and merging state
is idempotent where replaying is not. An event recorded into the emptied Redis before the loss
was seen is also in the copy: replayed, it would count twice (twice in the recent watches, the
session one longer); merged, the same (item, timestamp) counts once and the watched set is a
union (the rule of :class:`~serving.state.feature_store.UserSnapshot`). A re-seed cut short by
Redis failing again runs again from the start at the next probe (the sentinel is set last),
which changes nothing but the generation. An event of a user is recorded into both stores under
a per-user lock that the re-seed holds while it snapshots and merges that user, so an event is
either in the snapshot or recorded after the merge, never both.

What a re-seed cannot put back, logged in its WARNING line and counted in ``stats()``: pages
cached in Redis (recomputed on the next request); batch features this process did not load
(``marquee features load`` from another process: ``reseed_batch_lost_version`` is the version
Redis held, until a load puts one back); users whose events reached Redis through other
replicas only (they re-seed them, see below) or before this process started, unless start-up
put them back from the event log.

Several replicas: each detects the loss (the sentinel gone, or changed by the replica that
re-seeded first), and merges what its copy holds; merging commutes up to ties, so a user whose
events went through two replicas ends with the union of their watched sets, both recent lists
merged by timestamp, the later onboarding answer and a generation above both. The first to
finish claims the sentinel, the others adopt it; a replica whose read sees the sentinel change
serves from its copy until its own merge is done. A replica that died takes its copy with it.

Redis outlives a restart of the server; :class:`ReplayGuard` is the rule that puts the events
logged by earlier runs back (start-up) without recording twice what Redis holds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from serving.state.feature_store import (
    NO_GENERATION,
    BatchFeatures,
    EmbeddedStore,
    FeatureStore,
    RedisDataLost,
    StoreUnavailable,
    UserFeatures,
)
from serving.state.records import Event, Onboarding
from serving.state.redis_store import RedisStore

log = logging.getLogger(__name__)
T = TypeVar("T")

_USER_LOCKS = 64  # stripes of the per-user lock that orders an event against a re-seed
_RESEED_CHUNK = 500  # users snapshot and merged per round trip (under their stripe's lock)


def _new_epoch() -> str:
    """An id for the sentinel, naming the process that set it (for whoever reads Redis)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class ResilientStore:
    """A FeatureStore over a RedisStore with an EmbeddedStore fallback (see module docstring).

    Claims (or adopts) the Redis sentinel when built; a Redis down then is handled as an
    outage, and its sentinel is claimed at the first probe that reaches it.
    """

    def __init__(self, primary: RedisStore, fallback: EmbeddedStore | None = None,
                 probe_interval_s: float = 1.0, max_pending: int = 100_000):
        self.primary = primary
        self.fallback = fallback or EmbeddedStore(primary.recent_length, primary.session_gap_s,
                                                  min_watch_seconds=primary.min_watch_seconds)
        self.probe_interval_s, self.max_pending = probe_interval_s, max_pending
        self._lock = threading.Lock()
        self._user_locks = tuple(threading.Lock() for _ in range(_USER_LOCKS))
        self._up = True  # Redis answers: events go to it (else they queue)
        self._reseeding = False  # Redis lost its data: reads from the copy until re-seeded
        self._pending: deque[Event | Onboarding] = deque()
        self._fallbacks: Counter[str] = Counter()
        self._outages = self._reseeds = self._reseeded_users = self._reseeded_rows = 0
        self._probe_errors = 0
        self._seen_batch_version: int | None = None  # Redis's, at the latest probe
        self._batch_lost: int | None = None
        self._stop, self._wake = threading.Event(), threading.Event()
        try:
            self.primary.claim_epoch(_new_epoch())
        except StoreUnavailable as e:
            self._mark_down(e)
        self._prober = threading.Thread(target=self._probe, name="redis-probe", daemon=True)
        self._prober.start()

    @property
    def redis_up(self) -> bool:
        """Whether reads are answered from Redis (up, and not being re-seeded)."""
        with self._lock:
            return self._up and not self._reseeding

    # ------------------------------------------------------------------ outages and re-seeds

    def _mark_down(self, error: StoreUnavailable) -> None:
        with self._lock:
            if not self._up:
                return
            self._up = False
            self._outages += 1
        log.warning("feature store: Redis is down, serving from the embedded store (%s)", error)

    def _mark_lost(self) -> None:
        """A read saw the sentinel change: reads go to the copy, the probe checks now."""
        with self._lock:
            self._reseeding = True
        self._wake.set()

    def _probe(self) -> None:
        last_error = None
        while True:
            self._wake.wait(self.probe_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._check()
            except StoreUnavailable as e:
                self._mark_down(e)
            except Exception as e:  # e.g. READONLY, OOM: the thread must outlive it
                with self._lock:
                    self._probe_errors += 1
                if repr(e) != last_error:  # once per kind, not every probe
                    log.exception("feature store: the Redis probe failed; it tries again "
                                  "every %s s", self.probe_interval_s)
                last_error = repr(e)
            else:
                last_error = None

    def _check(self) -> None:
        """One probe: the sentinel decides between a re-seed and (after an outage) a replay."""
        epoch, batch_version = self.primary.read_epoch()
        if self.primary.epoch is None and epoch is not None:
            self.primary.epoch = epoch  # down since start-up: first sight of this Redis
        if epoch is None or epoch != self.primary.epoch:
            self._reseed(epoch)
            return
        with self._lock:
            self._seen_batch_version = batch_version
            if self._batch_lost is not None and (batch_version or 0) >= self._batch_lost:
                self._batch_lost = None  # a load put batch features back
            self._reseeding = False  # a read that saw a change that is not there (or no more)
            if self._up:
                return
        while True:  # back after an outage, with its data: replay the queue in order
            with self._lock:
                if not self._pending:
                    self._up = True  # under the lock: no event can slip into the queue
                    break
                event = self._pending[0]
            self.primary.record_event(event)
            with self._lock:
                self._pending.popleft()
        log.warning("feature store: Redis is back, serving from it again")

    def _reseed(self, found: str | None) -> None:
        """Merges the copy into Redis (the module docstring's steps 1-3)."""
        started = time.monotonic()
        with self._lock:
            self._reseeding = True
            self._pending.clear()  # all in the copy, merged below as state
            self._up = True  # Redis answers: events go to it again, merged with the copy
            seen = self._seen_batch_version
        by_stripe: defaultdict[int, list[int]] = defaultdict(list)
        for user_id in self.fallback.user_ids():
            by_stripe[user_id % _USER_LOCKS].append(user_id)
        users = 0
        for stripe, ids in by_stripe.items():
            for n in range(0, len(ids), _RESEED_CHUNK):
                with self._user_locks[stripe]:
                    snaps = [self.fallback.snapshot(u) for u in ids[n:n + _RESEED_CHUNK]]
                    users += self.primary.merge_users([x for x in snaps if x is not None])
        batch = self.fallback.export_batch()
        rows = self.primary.merge_batch(batch)
        epoch = self.primary.claim_epoch(_new_epoch())
        lost = seen if seen is not None and (batch.version is None or batch.version < seen) \
            else None
        with self._lock:
            self._reseeding = False
            self._reseeds += 1
            self._reseeded_users += users
            self._reseeded_rows += rows
            self._batch_lost = lost
        cause = (f"its sentinel {self.primary.epoch_key} was gone" if found is None else
                 f"its sentinel {self.primary.epoch_key} changed to {found!r}: another replica "
                 "re-seeded it first, or started after the loss")
        batch_note = (f"batch features version {batch.version}" if batch.version is not None
                      else "no batch features")
        if lost is not None:
            batch_note += (f"; batch features version {lost} (loaded by another process) are "
                           "gone and were not re-seeded: run `marquee features load` again")
        log.warning("feature store: Redis at %s lost its data (%s); re-seeded %d user(s) and %d "
                    "batch feature row(s) (%s) from this process's copy in %.2f s; cached "
                    "pages are gone; sentinel now %r", self.primary.url, cause, users, rows,
                    batch_note, time.monotonic() - started, epoch)

    def _read(self, op: str, primary: Callable[[], T], fallback: Callable[[], T]) -> T:
        with self._lock:
            serving = self._up and not self._reseeding
        if serving:
            try:
                return primary()
            except RedisDataLost:
                self._mark_lost()
            except StoreUnavailable as e:
                self._mark_down(e)
        with self._lock:
            self._fallbacks[op] += 1
        return fallback()

    # ------------------------------------------------------------------ FeatureStore

    def record_event(self, event: Event | Onboarding) -> None:
        # The user's lock: a re-seed snapshots and merges a user under it (module docstring).
        with self._user_locks[int(event.user_id) % _USER_LOCKS]:
            with self._lock:
                if not self._up and len(self._pending) >= self.max_pending:
                    raise StoreUnavailable(
                        f"Redis at {self.primary.url} is down and {len(self._pending)} events "
                        f"wait for it (max_pending {self.max_pending}); this event was not "
                        "recorded. Bring Redis back (redis-server) or raise max_pending.")
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
        """Outages and fallbacks; re-seeds: ``redis_reseeds_total`` (completed),
        ``reseeded_users_total`` and ``reseeded_batch_rows_total`` (merged, over all re-seeds),
        ``redis_reseeding`` (1 while one runs), ``reseed_batch_lost_version`` (the batch
        version the latest re-seed could not put back, 0 if none; back to 0 once Redis holds
        that version or a later one), ``redis_batch_version`` (Redis's at the latest probe, 0 if
        none); ``probe_errors_total`` (probes that failed other than by Redis being unreachable,
        each kind logged once); ``embedded_users`` (the copy's size, see EmbeddedStore for what
        bounds it)."""
        embedded = self.fallback.stats()["embedded_users"]
        with self._lock:
            out: dict[str, float] = {
                "redis_up": float(self._up and not self._reseeding),
                "redis_outages_total": self._outages,
                "fallbacks_total": sum(self._fallbacks.values()),
                "replay_pending": len(self._pending),
                "redis_reseeding": float(self._reseeding),
                "redis_reseeds_total": self._reseeds,
                "reseeded_users_total": self._reseeded_users,
                "reseeded_batch_rows_total": self._reseeded_rows,
                "reseed_batch_lost_version": self._batch_lost or 0,
                "redis_batch_version": self._seen_batch_version or 0,
                "probe_errors_total": self._probe_errors,
                "embedded_users": embedded}
            out.update({f"fallbacks_{op}_total": n for op, n in sorted(self._fallbacks.items())})
        return out

    def close(self) -> None:
        """Stops the probe thread and closes both stores."""
        self._stop.set()
        self._wake.set()
        self._prober.join(timeout=5)
        self.primary.close()
        self.fallback.close()


_UNREAD, _UNKNOWN = object(), object()


class ReplayGuard:
    """Records the events put back at start-up (``serving.ingest.wiring.replay``'s ``apply``) into a
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
