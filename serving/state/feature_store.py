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
- ``onboarding_genres``: the latest onboarding quiz answer (a
  :class:`~serving.state.records.Onboarding` passed to ``record_event``);
- batch features (genre affinities, watch count, mean watch seconds) with the version they were
  loaded with (``marquee features load``), gone after their TTL.

The homepage cache holds one JSON payload per (user, model version), stamped with the user's
generation: a watch makes the user's entries stale (an impression does not), and a new model
version never reads the previous version's entries. ``put_cached`` with the generation of the
features the page was computed from stores nothing if a watch arrived meanwhile.

Redis layout (``P`` = prefix, ``{U}`` = user id as a hash tag, so one user's keys share a cluster
slot): ``P:u:{U}:recent`` LIST, ``P:u:{U}:watched`` SET, ``P:u:{U}:state`` HASH (session_length,
last_event_at, last_device, generation, onboarding as JSON), ``P:u:{U}:batch`` HASH (version +
features, JSON values, expiring), ``P:u:{U}:cache:<model version>`` STRING (JSON, expiring),
``P:batch:version`` STRING.
An event is one Lua script (atomic, one round trip); a feature read is one MULTI/EXEC pipeline.
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

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; the message says where and how to fix it."""


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
    recent: deque
    watched: set = dataclasses.field(default_factory=set)
    session_length: int = 0
    last_event_at: int | None = None
    last_device: str | None = None
    generation: int = 0
    onboarding: tuple[str, ...] = ()


class EmbeddedStore:
    """In-process store (the default: nothing to run). Thread-safe (one lock); per process, so
    replicas do not share it. TTLs follow ``clock`` (seconds, injectable for tests); expired
    entries are dropped when read and swept every ``sweep_every`` writes."""

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
                s.onboarding = tuple(event.genres)
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
                    s.recent.appendleft(event.item_id)

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
                user_id, tuple(s.recent), frozenset(s.watched), s.session_length,
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

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- redis

# KEYS: recent, watched, state. ARGV: item, timestamp, is_watch, is_positive, device,
# recent_length, session_gap_s. Mirrors EmbeddedStore.record_event / next_session_length.
_RECORD = """
local ts = tonumber(ARGV[2])
local gap = tonumber(ARGV[7])
local last = tonumber(redis.call('HGET', KEYS[3], 'last_event_at') or '')
local len = tonumber(redis.call('HGET', KEYS[3], 'session_length') or '0')
if last == nil then len = 1
elseif ts >= last then if ts - last <= gap then len = len + 1 else len = 1 end
elseif last - ts <= gap then len = len + 1 end
redis.call('HSET', KEYS[3], 'session_length', len)
if last == nil or ts >= last then
  redis.call('HSET', KEYS[3], 'last_event_at', ARGV[2], 'last_device', ARGV[5])
end
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'generation', 1)
  if ARGV[4] == '1' then
    redis.call('LPUSH', KEYS[1], ARGV[1])
    redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[6]) - 1)
  end
end
return len
"""

# KEYS: cache entry, state. ARGV: payload JSON, ttl ms, expected generation ('' = current).
_PUT_CACHED = """
local gen = tonumber(redis.call('HGET', KEYS[2], 'generation') or '0')
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= gen then return 0 end
redis.call('SET', KEYS[1], '{"generation":' .. gen .. ',"payload":' .. ARGV[1] .. '}',
           'PX', ARGV[2])
return 1
"""

_BATCH_CHUNK = 1000  # users per pipeline round trip when loading


class RedisStore:
    """The store on Redis (shared by every serving replica; survives their restarts).

    Build it with :meth:`connect`. Connection and timeout errors raise StoreUnavailable at once:
    redis-py's retries are off, so a call blocks for at most the socket timeout (50 ms by
    default); ResilientStore turns that into a fallback.
    """

    def __init__(self, client: redis.Redis, url: str = "redis", prefix: str = "marquee",
                 recent_length: int = RECENT_LENGTH, session_gap_s: int = SESSION_GAP_SECONDS,
                 min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS):
        if recent_length < 1:
            raise ValueError(f"recent_length must be at least 1, got {recent_length}")
        self.client, self.url, self.prefix = client, url, prefix
        self.recent_length, self.session_gap_s = recent_length, session_gap_s
        self.min_watch_seconds = min_watch_seconds  # the config's data.min_watch_seconds
        self._record = client.register_script(_RECORD)
        self._put = client.register_script(_PUT_CACHED)

    @classmethod
    def connect(cls, url: str, timeout_s: float = 0.05, check: bool = True,
                **kwargs) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://HOST:PORT/DB``). ``check``: PING now, so a
        wrong URL fails at start-up with the fix instead of at the first request."""
        try:
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0), decode_responses=True)
        except ValueError as e:
            raise ValueError(f"--redis {url!r} is not a Redis URL ({e}); expected "
                             "redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0") from e
        store = cls(client, url, **kwargs)
        if check:
            store.ping()
        return store

    def _unavailable(self, e: Exception) -> StoreUnavailable:
        return StoreUnavailable(
            f"Redis at {self.url} is unreachable ({type(e).__name__}: {e}). Start it "
            "(`redis-server --port 6379`; Debian/Ubuntu: `apt-get install redis-server`) or fix "
            "the --redis URL (`marquee serve` without --redis uses the embedded store).")

    def _run(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise self._unavailable(e) from e

    def _key(self, user_id: int, part: str) -> str:
        return f"{self.prefix}:u:{{{int(user_id)}}}:{part}"

    def ping(self) -> None:
        self._run(self.client.ping)

    def record_event(self, event: Event | Onboarding) -> None:
        u = event.user_id
        if isinstance(event, Onboarding):
            def answer():
                pipe = self.client.pipeline(transaction=True)
                pipe.hset(self._key(u, "state"), "onboarding", json.dumps(list(event.genres)))
                pipe.hincrby(self._key(u, "state"), "generation", 1)
                return pipe.execute()
            self._run(answer)
            return
        self._run(lambda: self._record(
            keys=[self._key(u, "recent"), self._key(u, "watched"), self._key(u, "state")],
            args=[event.item_id, event.timestamp, int(event.is_watch), int(bool(is_positive_watch(
                      event.event, event.watch_seconds, self.min_watch_seconds))),
                  event.device, self.recent_length, self.session_gap_s]))

    def features(self, user_id: int) -> UserFeatures:
        user_id = int(user_id)

        def read():
            pipe = self.client.pipeline(transaction=True)  # one consistent snapshot
            pipe.lrange(self._key(user_id, "recent"), 0, -1)
            pipe.smembers(self._key(user_id, "watched"))
            pipe.hgetall(self._key(user_id, "state"))
            pipe.hgetall(self._key(user_id, "batch"))
            return pipe.execute()

        recent, watched, state, batch = self._run(read)
        last_at = state.get("last_event_at")
        out = UserFeatures(
            user_id, tuple(int(i) for i in recent), frozenset(int(i) for i in watched),
            int(state.get("session_length", 0)), state.get("last_device"),
            None if last_at is None else int(last_at), int(state.get("generation", 0)),
            onboarding_genres=tuple(json.loads(state.get("onboarding", "[]"))))
        if not batch:
            return out
        values = {k: json.loads(v) for k, v in batch.items()}
        return dataclasses.replace(out, batch_version=int(values.pop("version")),
                                   batch=BatchFeatures(**values))

    def load_batch_features(self, version: int, rows: Mapping[int, BatchFeatures],
                            ttl_s: float) -> int:
        ms = _ttl_ms(ttl_s)

        def load():
            pipe = self.client.pipeline(transaction=False)
            for n, (user_id, row) in enumerate(rows.items(), 1):
                key = self._key(user_id, "batch")
                fields = {k: json.dumps(v) for k, v in dataclasses.asdict(row).items()}
                fields["version"] = json.dumps(int(version))
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, ms)
                if n % _BATCH_CHUNK == 0:
                    pipe.execute()
            # The version key last: it names a load only once all its rows are in.
            pipe.set(f"{self.prefix}:batch:version", json.dumps(int(version)), px=ms)
            pipe.execute()

        self._run(load)
        return len(rows)

    def batch_version(self) -> int | None:
        raw = self._run(lambda: self.client.get(f"{self.prefix}:batch:version"))
        return None if raw is None else int(json.loads(raw))

    def get_cached(self, user_id: int, model_version: int) -> Any | None:
        def read():
            # GET before HGET: a watch in between makes a miss, never a stale hit.
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._key(user_id, f"cache:{int(model_version)}"))
            pipe.hget(self._key(user_id, "state"), "generation")
            return pipe.execute()

        raw, generation = self._run(read)
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry["payload"] if entry["generation"] == int(generation or 0) else None

    def put_cached(self, user_id: int, model_version: int, payload: Any, ttl_s: float,
                   generation: int | None = None) -> bool:
        ms, text = _ttl_ms(ttl_s), _dumps(payload)
        stored = self._run(lambda: self._put(
            keys=[self._key(user_id, f"cache:{int(model_version)}"),
                  self._key(user_id, "state")],
            args=[text, ms, "" if generation is None else int(generation)]))
        return bool(stored)

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.client.close()
