"""The Redis feature store: every replica's shared online features and page cache.

Each write is one Lua script (atomic per user); keys are ``<prefix>:u:<user>:...``. The store
raises StoreUnavailable (with the fix) when Redis does not answer; ``ResilientStore`` wraps it
with this process's embedded copy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from marquee.artifacts import is_positive_watch
from marquee.data import contract as c
from serving.state.feature_store import (
    RECENT_LENGTH,
    SESSION_GAP_SECONDS,
    BatchFeatures,
    BatchSnapshot,
    RedisDataLost,
    StoreUnavailable,
    UserFeatures,
    UserSnapshot,
    _dumps,
    _ttl_ms,
)
from serving.state.records import Event, Onboarding

# KEYS: recent, watched, state, recent_at. ARGV: item, timestamp, is_watch, is_positive, device,
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
    redis.call('LPUSH', KEYS[4], ARGV[2])
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
  end
end
return len
"""

# KEYS: state. ARGV: genres JSON, timestamp. The later answer by timestamp (a tie: this one).
_ANSWER = """
local at = tonumber(redis.call('HGET', KEYS[1], 'onboarding_at') or '')
if at == nil or tonumber(ARGV[2]) >= at then
  redis.call('HSET', KEYS[1], 'onboarding', ARGV[1], 'onboarding_at', ARGV[2])
end
return redis.call('HINCRBY', KEYS[1], 'generation', 1)
"""

# KEYS: recent, recent_at, watched, state. ARGV: recent_length, a UserSnapshot as JSON (ids and
# timestamps as strings; a field that is None is left out). The merge rule of UserSnapshot.
_MERGE_USER = """
local cap = tonumber(ARGV[1])
local s = cjson.decode(ARGV[2])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local stamps = redis.call('LRANGE', KEYS[2], 0, -1)
local theirs, ours = {}, {}
for i, item in ipairs(items) do
  local at = stamps[i] or '0'  -- a list written before recent_at existed: oldest
  theirs[i] = {item, tonumber(at), at}
end
for i, p in ipairs(s.recent) do ours[i] = {p[1], tonumber(p[2]), p[2]} end
for _, p in ipairs(ours) do  -- an event both hold: once
  for i, q in ipairs(theirs) do
    if q[1] == p[1] and q[2] == p[2] then table.remove(theirs, i) break end
  end
end
local merged, i, j = {}, 1, 1
while #merged < cap and (ours[i] or theirs[j]) do
  if theirs[j] == nil or (ours[i] and ours[i][2] > theirs[j][2]) then
    merged[#merged + 1] = ours[i]; i = i + 1
  else
    merged[#merged + 1] = theirs[j]; j = j + 1
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
for _, p in ipairs(merged) do
  redis.call('RPUSH', KEYS[1], p[1])
  redis.call('RPUSH', KEYS[2], p[3])
end
for k = 1, #s.watched, 1000 do
  redis.call('SADD', KEYS[3], unpack(s.watched, k, math.min(k + 999, #s.watched)))
end
local st = redis.call('HMGET', KEYS[4], 'last_event_at', 'session_length', 'generation',
                      'onboarding', 'onboarding_at')
if s.last_event_at then
  local last, mine = tonumber(st[1]), tonumber(s.last_event_at)
  if last == nil or mine > last then
    redis.call('HSET', KEYS[4], 'last_event_at', s.last_event_at, 'last_device', s.last_device,
               'session_length', s.session_length)
  elseif mine == last then
    redis.call('HSET', KEYS[4], 'session_length',
               math.max(tonumber(s.session_length), tonumber(st[2]) or 0))
  end
end
if s.onboarding_at and (not st[4] or tonumber(st[5]) == nil
                        or tonumber(s.onboarding_at) > tonumber(st[5])) then
  redis.call('HSET', KEYS[4], 'onboarding', s.onboarding, 'onboarding_at', s.onboarding_at)
end
redis.call('HSET', KEYS[4], 'generation',
           math.max(tonumber(st[3]) or 0, tonumber(s.generation)) + 1)
return 1
"""

# KEYS: a batch row (HASH) or the batch version (STRING). ARGV: version, ttl ms, the row's
# field/value pairs (none: the version key). Written unless Redis holds the same or a later one.
_MERGE_BATCH = """
local held
if #ARGV > 2 then held = redis.call('HGET', KEYS[1], 'version')
else held = redis.call('GET', KEYS[1]) end
if held and tonumber(held) >= tonumber(ARGV[1]) then return 0 end
if #ARGV > 2 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""

# KEYS: cache entry, state. ARGV: payload JSON, ttl ms, expected generation ('' = current).
_PUT_CACHED = """
local gen = tonumber(redis.call('HGET', KEYS[2], 'generation') or '0')
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= gen then return 0 end
redis.call('SET', KEYS[1], '{"generation":' .. gen .. ',"payload":' .. ARGV[1] .. '}',
           'PX', ARGV[2])
return 1
"""

_BATCH_CHUNK = 1000  # users per pipeline round trip when loading (or merging)


class RedisStore:
    """The store on Redis (shared by every serving replica; survives their restarts).

    Build it with :meth:`connect`. Connection and timeout errors raise StoreUnavailable at once:
    redis-py's retries are off, so a call blocks for at most the socket timeout (50 ms by
    default); ResilientStore turns that into a fallback.

    ``epoch``: the sentinel value (``P:epoch``) this client expects, set by :meth:`claim_epoch`
    (None: not checked). While set, :meth:`features` reads the sentinel in the same MULTI and
    raises :class:`RedisDataLost` if it changed, so no read is answered from an emptied Redis.
    """

    def __init__(self, client: redis.Redis, url: str = "redis", prefix: str = "marquee",
                 recent_length: int = RECENT_LENGTH, session_gap_s: int = SESSION_GAP_SECONDS,
                 min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS):
        if recent_length < 1:
            raise ValueError(f"recent_length must be at least 1, got {recent_length}")
        self.client, self.url, self.prefix = client, url, prefix
        self.recent_length, self.session_gap_s = recent_length, session_gap_s
        self.min_watch_seconds = min_watch_seconds  # the config's data.min_watch_seconds
        self.epoch: str | None = None
        self._record = client.register_script(_RECORD)
        self._answer = client.register_script(_ANSWER)
        self._put = client.register_script(_PUT_CACHED)
        self._merge_user = client.register_script(_MERGE_USER)
        self._merge_batch = client.register_script(_MERGE_BATCH)

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

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}:epoch"

    def claim_epoch(self, candidate: str) -> str:
        """Sets the sentinel to ``candidate`` unless one is set (SET NX: the first to claim
        keeps it) and adopts the one now set as ``epoch``, which it returns."""
        def claim():
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.epoch_key, candidate, nx=True)
            pipe.get(self.epoch_key)
            return pipe.execute()[1]

        self.epoch = self._run(claim)
        return self.epoch

    def read_epoch(self) -> tuple[str | None, int | None]:
        """The sentinel (None: gone) and the batch version (None: none), in one round trip."""
        def read():
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.epoch_key)
            pipe.get(f"{self.prefix}:batch:version")
            return pipe.execute()

        epoch, version = self._run(read)
        return epoch, None if version is None else int(json.loads(version))

    def record_event(self, event: Event | Onboarding) -> None:
        u = event.user_id
        if isinstance(event, Onboarding):
            self._run(lambda: self._answer(keys=[self._key(u, "state")], args=[
                json.dumps(list(event.genres)), int(event.timestamp)]))
            return
        self._run(lambda: self._record(
            keys=[self._key(u, "recent"), self._key(u, "watched"), self._key(u, "state"),
                  self._key(u, "recent_at")],
            args=[event.item_id, event.timestamp, int(event.is_watch), int(bool(is_positive_watch(
                      event.event, event.watch_seconds, self.min_watch_seconds))),
                  event.device, self.recent_length, self.session_gap_s]))

    def features(self, user_id: int) -> UserFeatures:
        user_id, expected = int(user_id), self.epoch

        def read():
            pipe = self.client.pipeline(transaction=True)  # one consistent snapshot
            pipe.lrange(self._key(user_id, "recent"), 0, -1)
            pipe.smembers(self._key(user_id, "watched"))
            pipe.hgetall(self._key(user_id, "state"))
            pipe.hgetall(self._key(user_id, "batch"))
            if expected is not None:
                pipe.get(self.epoch_key)
            return pipe.execute()

        recent, watched, state, batch, *epoch = self._run(read)
        if epoch and epoch[0] != expected:
            raise RedisDataLost(
                f"Redis at {self.url} lost its data: its sentinel {self.epoch_key} is "
                f"{epoch[0]!r}, not {expected!r} (restarted without persistence, or flushed). "
                "ResilientStore answers from its copy and re-seeds it; enable persistence "
                "(appendonly yes) to keep the data across restarts.")
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

    def merge_users(self, snapshots: list[UserSnapshot]) -> int:
        """Merges each user's state into what Redis holds for them (the rule of
        :class:`UserSnapshot`), one script per user, pipelined. Returns users merged."""
        def merge():
            pipe = self.client.pipeline(transaction=False)
            for n, s in enumerate(snapshots, 1):
                u = s.user_id
                snap = {"recent": [[str(i), str(t)] for i, t in s.recent],
                        "watched": [str(i) for i in sorted(s.watched)],
                        "session_length": s.session_length, "generation": s.generation}
                if s.last_event_at is not None:
                    snap.update(last_event_at=str(s.last_event_at), last_device=s.last_device)
                if s.onboarding_at is not None:
                    snap.update(onboarding=json.dumps(list(s.onboarding)),
                                onboarding_at=str(s.onboarding_at))
                self._merge_user(
                    keys=[self._key(u, "recent"), self._key(u, "recent_at"),
                          self._key(u, "watched"), self._key(u, "state")],
                    args=[self.recent_length, json.dumps(snap)], client=pipe)
                if n % _BATCH_CHUNK == 0:
                    pipe.execute()
            pipe.execute()

        self._run(merge)
        return len(snapshots)

    def merge_batch(self, batch: BatchSnapshot) -> int:
        """Writes each batch row (and the batch version) with the time it has left, unless
        Redis holds the same or a later version of it. Returns the rows written."""
        def merge():
            pipe, written = self.client.pipeline(transaction=False), 0
            for n, (user_id, (version, ttl_s, row)) in enumerate(batch.rows.items(), 1):
                if ttl_s <= 0:
                    continue
                fields = {k: json.dumps(v) for k, v in dataclasses.asdict(row).items()}
                fields["version"] = json.dumps(int(version))
                self._merge_batch(keys=[self._key(user_id, "batch")], args=[
                    int(version), _ttl_ms(ttl_s), *(x for kv in fields.items() for x in kv)],
                    client=pipe)
                if n % _BATCH_CHUNK == 0:
                    written += sum(pipe.execute())
            if batch.version is not None and batch.version_ttl_s > 0:
                self._merge_batch(keys=[f"{self.prefix}:batch:version"],
                                  args=[int(batch.version), _ttl_ms(batch.version_ttl_s)],
                                  client=pipe)
                written += sum(pipe.execute()[:-1])
            else:
                written += sum(pipe.execute())
            return written

        return self._run(merge)

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.client.close()
