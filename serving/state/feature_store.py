"""Real-time user features and the homepage cache: one interface, embedded and Redis stores.

What a store keeps per user (all updated by :meth:`FeatureStore.record_event`, read back together
by :meth:`FeatureStore.features`):

- ``recent_watches``: the last ``recent_length`` positive watches (``watch_seconds`` >= the
  contract's ``WATCHED_THRESHOLD_SECONDS``), most recent first in arrival order, repeats kept (the
  same rule as the training examples' ``history``);
- ``watched``: every item with a watch event, of any length (excluded from the homepage);
- ``session_length``: events in the current session. An event at most ``session_gap_s`` (30 min)
  after the user's latest event continues the session, a later one starts a new session of 1. A
  late event (older than the latest) counts in the session if within the gap, else changes nothing;
- ``last_device`` and ``last_event_at``: of the latest event by timestamp;
- ``generation``: bumped by every watch and quiz answer (what the user should see changed); 0
  for a new user;
- ``onboarding_genres``: the latest onboarding quiz answer by timestamp (a
  :class:`~serving.state.records.Onboarding` passed to ``record_event``; of two with one
  timestamp, the one recorded last);
- batch features (genre affinities, watch count, mean watch seconds) with the version they were
  loaded with (``marquee features load``), gone after their TTL.

The homepage cache holds one JSON payload per (user, model version), stamped with the user's
generation: a watch makes the user's entries stale (an impression does not), and a new model
version never reads the previous version's entries. ``put_cached`` with the generation of the
features the page was computed from stores nothing if a watch arrived meanwhile.

Redis layout (``P`` = prefix, ``{U}`` = user id as a hash tag, so one user's keys share a cluster
slot): ``P:u:{U}:recent`` LIST, ``P:u:{U}:recent_at`` LIST (the timestamps of ``recent``, index
by index, so that two copies of a user merge by time), ``P:u:{U}:watched`` SET,
``P:u:{U}:state`` HASH (session_length, last_event_at, last_device, generation, onboarding as
JSON, onboarding_at), ``P:u:{U}:batch`` HASH (version + features, JSON values, expiring),
``P:u:{U}:cache:<model version>`` STRING (JSON, expiring), ``P:batch:version`` STRING,
``P:epoch`` STRING (the sentinel: set once by the first ResilientStore to see this Redis, never
expiring; gone = Redis lost its data, see ``resilient_store``).
An event is one Lua script (atomic, one round trip); a feature read is one MULTI/EXEC pipeline.

Re-seeding (``ResilientStore`` after Redis lost its data): :meth:`EmbeddedStore.snapshot` and
:meth:`EmbeddedStore.export_batch` give a process's copy, :meth:`RedisStore.merge_users` and
:meth:`RedisStore.merge_batch` merge it into Redis (see :class:`UserSnapshot` for the rule).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from marquee.artifacts import is_positive_watch
from marquee.data import contract as c
from serving.state.records import Event, Onboarding

SESSION_GAP_SECONDS = 30 * 60
RECENT_LENGTH = 20
# The generation of features that did not come from the shared store (ResilientStore's fallback):
# a page computed from them is never cached.
NO_GENERATION = -1


@dataclasses.dataclass(frozen=True)
class BatchFeatures:
    """Per-user features computed offline (``marquee.features_load``).

    genre_affinity: share of the user's positive watches that have each genre, in (0, 1]; a title
      with two genres counts for both, so the shares may sum to more than 1.
    """

    genre_affinity: Mapping[str, float]
    watch_count: int
    mean_watch_seconds: float


@dataclasses.dataclass(frozen=True)
class UserFeatures:
    """Everything a store knows about a user, read in one call (see the module docstring)."""

    user_id: int
    recent_watches: tuple[int, ...] = ()
    watched: frozenset[int] = frozenset()
    session_length: int = 0
    last_device: str | None = None
    last_event_at: int | None = None
    generation: int = 0
    batch: BatchFeatures | None = None
    batch_version: int | None = None
    onboarding_genres: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class UserSnapshot:
    """One user's online state as a store holds it, to re-seed Redis from (``merge_users``).

    recent: ``(item_id, timestamp)`` of the recent positive watches, most recent first in
      arrival order (as ``UserFeatures.recent_watches``), at most ``recent_length``.
    onboarding_at: the timestamp of ``onboarding`` (the answer); None: never answered.

    Merging a snapshot into what Redis holds for the user (nothing, after a restart; or what
    another replica merged, or events recorded since) gives: ``watched`` the union; ``recent``
    the two lists merged by timestamp (each list's own order kept, Redis's first on a tie), an
    entry both hold (same item and timestamp: the same event) once, capped at
    ``recent_length``; ``last_event_at``, ``last_device`` and ``session_length`` of the copy
    with the later last event (a tie: the longer session; two replicas that each saw part of
    one session give the longer part, not the sum); the answer with the later ``onboarding_at``
    (a tie: Redis's); ``generation`` one more than the larger of the two, so a page cached
    from either is stale. Merging the same snapshot twice changes nothing but ``generation``.
    """

    user_id: int
    recent: tuple[tuple[int, int], ...] = ()
    watched: frozenset[int] = frozenset()
    session_length: int = 0
    last_event_at: int | None = None
    last_device: str | None = None
    generation: int = 0
    onboarding: tuple[str, ...] = ()
    onboarding_at: int | None = None


@dataclasses.dataclass(frozen=True)
class BatchSnapshot:
    """The batch features a store holds, with the time each has left (``merge_batch``).

    version: the store's batch version (``batch_version()``), None if none or expired.
    rows: user id -> ``(version, ttl_s, row)``; rows of an older load not in the latest keep
      their own version.
    """

    version: int | None
    version_ttl_s: float
    rows: Mapping[int, tuple[int, float, BatchFeatures]]


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; the message says where and how to fix it."""


class RedisDataLost(StoreUnavailable):
    """Redis answers but its sentinel (``P:epoch``) is not the one this client expects: it was
    restarted without persistence or flushed, so what it holds now is not the users' state.
    Raised by :meth:`RedisStore.features` once ``RedisStore.epoch`` is set (ResilientStore sets
    it, answers from its copy and re-seeds Redis)."""


class FeatureStore(Protocol):
    """What serving needs from a feature store. Implementations: EmbeddedStore, RedisStore,
    ResilientStore (serving/state/resilient_store.py); ``tests/test_feature_store.py`` runs
    one contract test suite on each. Every method may raise StoreUnavailable; none blocks for
    long."""

    def record_event(self, event: Event | Onboarding) -> None:
        """Updates the user's online features; visible to the next ``features`` call."""

    def features(self, user_id: int) -> UserFeatures:
        """The user's features; an unknown user gets empty ones (generation 0)."""

    def load_batch_features(self, version: int, rows: Mapping[int, BatchFeatures],
                            ttl_s: float) -> int:
        """Replaces the batch features of the users in ``rows`` (others keep theirs until they
        expire); each row and the store's batch version expire after ``ttl_s``. Returns rows."""

    def batch_version(self) -> int | None:
        """The version of the latest load, None if none or expired."""

    def get_cached(self, user_id: int, model_version: int) -> Any | None:
        """The payload cached for (user, model version), None on a miss, expiry or staleness."""

    def put_cached(self, user_id: int, model_version: int, payload: Any, ttl_s: float,
                   generation: int | None = None) -> bool:
        """Caches a JSON-serialisable payload for ``ttl_s`` seconds. ``generation``: that of the
        features the payload was computed from; if the user's generation moved on since (a
        watch arrived), nothing is stored. None stamps the current one. Returns whether stored."""

    def stats(self) -> dict[str, float]:
        """Numbers for /metrics (``marquee_feature_store_<name>``)."""

    def close(self) -> None:
        """Releases connections or threads."""


def _ttl_ms(ttl_s: float) -> int:
    if not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    return max(1, round(ttl_s * 1000))


def _dumps(payload: Any) -> str:
    """Strict JSON (no NaN), compact: the one serialisation of cached payloads."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def next_session_length(length: int, last_event_at: int | None, timestamp: int,
                        gap_s: int) -> int:
    """The session rule of the module docstring (the Redis script implements the same)."""
    if last_event_at is None:
        return 1
    if timestamp >= last_event_at:
        return length + 1 if timestamp - last_event_at <= gap_s else 1
    return length + 1 if last_event_at - timestamp <= gap_s else length


# ----------------------------------------------------------------------------- embedded


@dataclasses.dataclass
class _UserState:
    recent: deque  # (item_id, timestamp), most recent first
    watched: set = dataclasses.field(default_factory=set)
    session_length: int = 0
    last_event_at: int | None = None
    last_device: str | None = None
    generation: int = 0
    onboarding: tuple[str, ...] = ()
    onboarding_at: int | None = None


class EmbeddedStore:
    """In-process store (the default: nothing to run). Thread-safe (one lock); per process, so
    replicas do not share it. TTLs follow ``clock`` (seconds, injectable for tests); expired
    entries are dropped when read and swept every ``sweep_every`` writes.

    What bounds it: one entry per user with an event or answer since start-up (users are never
    dropped: bounded by the number of users); per user, ``recent`` by ``recent_length`` and the
    answer by one, but ``watched`` not at all (every title the user watched, so at most the
    catalogue; a heavy user over years of events is the large case). Cache entries and batch
    rows go when they expire (swept), so they are bounded by what one TTL brings.
    """

    def __init__(self, recent_length: int = RECENT_LENGTH,
                 session_gap_s: int = SESSION_GAP_SECONDS,
                 clock: Callable[[], float] = time.monotonic, sweep_every: int = 4096,
                 min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS):
        if recent_length < 1:
            raise ValueError(f"recent_length must be at least 1, got {recent_length}")
        self.recent_length, self.session_gap_s = recent_length, session_gap_s
        self.min_watch_seconds = min_watch_seconds  # the config's data.min_watch_seconds
        self._clock, self._sweep_every = clock, sweep_every
        self._lock = threading.Lock()
        self._users: dict[int, _UserState] = {}
        self._batch: dict[int, tuple[float, int, BatchFeatures]] = {}  # expires, version, row
        self._batch_version: tuple[float, int] | None = None
        self._cache: dict[tuple[int, int], tuple[float, int, str]] = {}  # expires, gen, JSON
        self._writes = 0

    def record_event(self, event: Event | Onboarding) -> None:
        with self._lock:
            s = self._users.get(event.user_id)
            if s is None:
                s = self._users[event.user_id] = _UserState(deque(maxlen=self.recent_length))
            if isinstance(event, Onboarding):
                if s.onboarding_at is None or event.timestamp >= s.onboarding_at:
                    s.onboarding, s.onboarding_at = tuple(event.genres), event.timestamp
                s.generation += 1
                return
            s.session_length = next_session_length(s.session_length, s.last_event_at,
                                                   event.timestamp, self.session_gap_s)
            if s.last_event_at is None or event.timestamp >= s.last_event_at:
                s.last_event_at, s.last_device = event.timestamp, event.device
            if event.is_watch:
                s.watched.add(event.item_id)
                s.generation += 1
                if is_positive_watch(event.event, event.watch_seconds, self.min_watch_seconds):
                    s.recent.appendleft((event.item_id, event.timestamp))

    def features(self, user_id: int) -> UserFeatures:
        user_id = int(user_id)
        with self._lock:
            now = self._clock()
            batch = self._batch.get(user_id)
            if batch is not None and batch[0] <= now:
                del self._batch[user_id]
                batch = None
            s = self._users.get(user_id)
            base = UserFeatures(user_id) if s is None else UserFeatures(
                user_id, tuple(i for i, _ in s.recent), frozenset(s.watched), s.session_length,
                s.last_device, s.last_event_at, s.generation, onboarding_genres=s.onboarding)
        if batch is None:
            return base
        return dataclasses.replace(base, batch=batch[2], batch_version=batch[1])

    def load_batch_features(self, version: int, rows: Mapping[int, BatchFeatures],
                            ttl_s: float) -> int:
        expires = self._clock() + _ttl_ms(ttl_s) / 1000
        copied = {int(u): (expires, int(version), dataclasses.replace(
            r, genre_affinity=dict(r.genre_affinity))) for u, r in rows.items()}
        with self._lock:
            self._batch.update(copied)
            self._batch_version = (expires, int(version))
            self._sweep(force=True)
        return len(copied)

    def batch_version(self) -> int | None:
        with self._lock:
            v = self._batch_version
            return v[1] if v is not None and v[0] > self._clock() else None

    def get_cached(self, user_id: int, model_version: int) -> Any | None:
        key = (int(user_id), int(model_version))
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            s = self._users.get(key[0])
            if entry[0] <= self._clock() or entry[1] != (s.generation if s else 0):
                del self._cache[key]
                return None
        return json.loads(entry[2])

    def put_cached(self, user_id: int, model_version: int, payload: Any, ttl_s: float,
                   generation: int | None = None) -> bool:
        ms, text = _ttl_ms(ttl_s), _dumps(payload)
        with self._lock:
            s = self._users.get(int(user_id))
            current = s.generation if s else 0
            if generation is not None and generation != current:
                return False
            self._cache[(int(user_id), int(model_version))] = (
                self._clock() + ms / 1000, current, text)
            self._writes += 1
            self._sweep()
        return True

    def _sweep(self, force: bool = False) -> None:
        if not force and self._writes % self._sweep_every:
            return
        now = self._clock()
        for table in (self._cache, self._batch):
            for key in [k for k, v in table.items() if v[0] <= now]:
                del table[key]

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"embedded_users": len(self._users), "embedded_cache_entries": len(self._cache)}

    def user_ids(self) -> list[int]:
        """Every user this store holds online state for (an event or an answer)."""
        with self._lock:
            return list(self._users)

    def snapshot(self, user_id: int) -> UserSnapshot | None:
        """The user's online state (None: none), consistent as of one moment."""
        with self._lock:
            s = self._users.get(int(user_id))
            if s is None:
                return None
            return UserSnapshot(int(user_id), tuple(s.recent), frozenset(s.watched),
                                s.session_length, s.last_event_at, s.last_device, s.generation,
                                s.onboarding, s.onboarding_at)

    def export_batch(self) -> BatchSnapshot:
        """The unexpired batch features and the batch version, with the time each has left."""
        with self._lock:
            now = self._clock()
            v = self._batch_version
            live = v is not None and v[0] > now
            return BatchSnapshot(
                v[1] if live else None, v[0] - now if live else 0.0,
                {u: (version, expires - now, row)
                 for u, (expires, version, row) in self._batch.items() if expires > now})

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- redis
