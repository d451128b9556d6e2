"""The simulated users as an audience: they browse pages a real serving stack returns.

``Audience.of(config)`` rebuilds the hidden state of the dataset ``simulate(out, config)`` writes
(the same users, titles, tastes, activity and viewing hours; :mod:`marquee.data.simulate`)
without simulating or writing the log, for a closed loop after the logged period:

    audience = Audience.of(config)
    users, times = audience.sessions(day=0)          # who comes when on the first day after it
    rows = audience.respond(users, pages, times)     # pages: what the stack served each session

``respond`` is the simulator's own watch model (:func:`marquee.data.simulate._watch`: position
bias, affinity, abandonment, device completion, ratings), so a page watched here is watched at
the rate the logged pages were. The audience keeps no memory between calls: not re-showing a
watched title is the page's job (the logging policy and the served stack's ``exclude_watched``
step both do it).

Determinism: ``sessions`` draws from ``(config.seed, day, seed)``, ``respond`` from
``(config.seed, seed)``; the same arguments give the same arrays. Memory: per user its factors
and genre taste (float32) and five scalars, ~170 bytes (17 MB for 100K users), plus the catalogue.
"""

from __future__ import annotations

import numpy as np

from marquee.data import contract as c
from marquee.data import simulate as sim
from marquee.data.simulate import DAY, SimConfig


class Audience:
    """The simulated users of one :class:`~marquee.data.simulate.SimConfig` (see the module
    docstring). Build it with :meth:`of`."""

    def __init__(self, config: SimConfig, catalogue: sim._Catalogue, users: sim._Users):
        self.config = config
        self._cat = catalogue
        self._users = users
        self.user_ids = np.arange(1, len(users.signup_at) + 1, dtype=np.int64)  # [users]
        self.item_ids = np.arange(1, len(catalogue.added_at) + 1, dtype=np.int64)  # [items]

    @classmethod
    def of(cls, config: SimConfig) -> Audience:
        """The users and titles of the dataset ``simulate(out, config)`` writes, chunk by chunk
        as the simulator draws them (only the state a session and a watch need is kept)."""
        cat, _ = sim._make_catalogue(config, columns=False)
        parts = []
        for chunk in range(-(-config.users // config.chunk_users)):
            lo = chunk * config.chunk_users
            hi = min(config.users, lo + config.chunk_users)
            users, _ = sim._make_users(config, chunk, lo, hi, columns=False)
            parts.append(users)
        users = sim._Users(
            signup_at=np.concatenate([u.signup_at for u in parts]),
            embed=np.concatenate([u.embed for u in parts], axis=1),
            genre_cdf=None,  # only the logging policy reads it
            rate=np.concatenate([u.rate for u in parts]),
            device=np.concatenate([u.device for u in parts]).astype(np.int8),
            hour=np.concatenate([u.hour for u in parts]),
        )
        return cls(config, cat, users)

    def sessions(self, day: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The sessions of closed-loop day ``day`` (0 = the first day from ``config.end``).

        Each user signed up by the end of the day comes a Poisson number of times at their own
        activity rate (pro rata on their signup day), near their own viewing hour, as in the log.

        Returns:
          ``(user_ids [s] int64, timestamps [s] int64 UTC seconds)``, sorted by time (ties by
          user id), every timestamp inside the day.
        """
        if isinstance(day, bool) or not isinstance(day, (int, np.integer)) or day < 0:
            raise ValueError(f"day: expected an integer >= 0 (0 = the first day after the logged "
                             f"period), got {day!r}")
        users = self._users
        start = self.config.end + int(day) * DAY
        rng = sim._rng(self.config.seed, sim._STREAM_AUDIENCE, int(day), _seed(seed))
        present = np.clip((start + DAY - np.maximum(users.signup_at, start)) / DAY, 0.0, 1.0)
        user = np.repeat(np.arange(len(present)), rng.poisson(users.rate * present))
        t = sim._session_times(users, user, np.full(len(user), float(start)), rng)
        t = np.minimum(t, start + DAY - 1).astype(np.int64)
        order = np.lexsort((user, t))
        return self.user_ids[user[order]], t[order]

    def respond(self, user_ids: np.ndarray, pages: list[np.ndarray], timestamps: np.ndarray,
                devices: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """What each session's user watches of the page shown to them.

        Args:
          user_ids: ``[s]`` the user of each session.
          pages: ``s`` arrays of item ids in position order (position 1 first); may be empty.
          timestamps: ``[s]`` UTC seconds each page was shown.
          devices: ``[s]`` contract device names, or None to draw them as the log does (mostly
            the user's preferred device).
          seed: the draw; the same arguments and seed give the same rows.

        Returns:
          The watch rows as contract ``interactions`` columns, each ``[w]``, in session order then
          position: ``user_id``, ``item_id``, ``timestamp`` (the page's time plus the delay to
          press play, always later), ``event`` (``watch``), ``position`` (1-based, int32),
          ``watch_seconds``, ``device`` and ``rating`` (float64, NaN = none: write it through a
          pandas DataFrame, which turns NaN into null).
        """
        users, timestamps, pages = self._check_sessions(user_ids, pages, timestamps)
        lengths = np.array([len(p) for p in pages], np.int64)
        items = (np.concatenate(pages) if len(pages) else np.empty(0, np.int64)) - 1
        session = np.repeat(np.arange(len(users)), lengths)
        position = (np.arange(len(items)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1)
        rng = sim._rng(self.config.seed, sim._STREAM_RESPOND, _seed(seed))
        if devices is None:
            device = sim._session_devices(self._users, users, rng)
        else:
            device = self._device_index(devices, len(users))
        u = users[session]
        affinity = sim._affinity(self._users.embed, self._cat.embed, u, items)
        w = sim._watch(self.config, self._cat, affinity, items, position, device[session], rng)
        at = w.shown
        return {
            c.USER_ID: self.user_ids[u[at]],
            c.ITEM_ID: items[at] + 1,
            c.TIMESTAMP: timestamps[session[at]] + w.delay,
            c.EVENT: np.full(len(at), c.EVENT_WATCH, dtype=object),
            c.POSITION: position[at].astype(np.int32),
            c.WATCH_SECONDS: w.seconds,
            c.DEVICE: np.array(c.DEVICES, dtype=object)[device[session[at]]],
            c.RATING: w.rating,
        }

    def affinity(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """The ground-truth affinity ``[n]`` float32 of user ``user_ids[k]`` for title
        ``item_ids[k]`` (both ``[n]``), as ``_truth/affinities.parquet`` holds it."""
        users = self._rows(user_ids, self.user_ids, "user_ids", "user")
        items = self._rows(item_ids, self.item_ids, "item_ids", "title")
        if users.shape != items.shape:
            raise ValueError(f"user_ids and item_ids must pair up: got {len(users)} user ids and "
                             f"{len(items)} item ids")
        return sim._affinity(self._users.embed, self._cat.embed, users, items)

    # ------------------------------------------------------------------------ checks

    def _check_sessions(self, user_ids, pages, timestamps):
        users = self._rows(user_ids, self.user_ids, "user_ids", "user")
        timestamps = np.asarray(timestamps)
        if len(pages) != len(users) or timestamps.shape != users.shape:
            raise ValueError(
                f"one page and one timestamp per session: got {len(users)} user ids, "
                f"{len(pages)} pages and {timestamps.size} timestamps")
        if not np.issubdtype(timestamps.dtype, np.integer):
            raise ValueError(f"timestamps must be integer UTC seconds, got {timestamps.dtype}")
        rows = [self._rows(p, self.item_ids, f"pages[{k}]", "title") + 1
                for k, p in enumerate(pages)]
        return users, timestamps.astype(np.int64), rows

    @staticmethod
    def _rows(ids, known: np.ndarray, name: str, what: str) -> np.ndarray:
        """Rows (id - 1) of ids [n] from 1..len(known); anything else is a ValueError."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"{name}: expected a 1-d array of integer {what} ids, got "
                             f"{ids.dtype} of shape {ids.shape}")
        ids = ids.astype(np.int64)
        bad = ids[(ids < 1) | (ids > len(known))]
        if len(bad):
            raise ValueError(
                f"{name}: {len(bad)} {what} id(s) unknown to the simulated "
                f"{'catalogue' if what == 'title' else 'users'} (ids 1..{len(known)}), e.g. "
                f"{bad[:5].tolist()}; pass ids of the dataset simulate() wrote with this "
                "SimConfig.")
        return ids - 1

    @staticmethod
    def _device_index(devices, n: int) -> np.ndarray:
        devices = np.asarray(devices, dtype=object)
        if devices.shape != (n,):
            raise ValueError(f"devices: expected one device per session ({n}), got shape "
                             f"{devices.shape}")
        index = {d: k for k, d in enumerate(c.DEVICES)}
        unknown = sorted({str(d) for d in devices.tolist() if d not in index})
        if unknown:
            raise ValueError(f"devices: {unknown} are not contract devices; expected one of "
                             f"{', '.join(c.DEVICES)}")
        return np.array([index[d] for d in devices.tolist()], np.int64)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    return int(seed)
