"""The catalogue and users as serving needs them: raw model inputs by row, genres, popularity.

Built once from a dataset folder (the same contract tables the pipeline read). Item features are
stored as the dense, padded arrays the towers' and ranker's signatures take, so a batch of
candidates is a ``numpy.take`` away.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marquee.artifacts import LIST_PAD
from marquee.data import contract as c
from trainer import features as f

MISSING = f.MISSING_STRING


# Catalogue.add is rare (a title joining the catalogue): one lock serialises every writer.
_ADD_LOCK = threading.Lock()


def _append_rows(old: np.ndarray, new: np.ndarray, pad: str = LIST_PAD) -> np.ndarray:
    """``old`` [N(, L)] + ``new`` [M(, L')] -> [N + M(, max(L, L'))], lists padded with ``pad``."""
    if old.ndim == 1:
        return np.concatenate([old, new.astype(old.dtype)])
    width = max(old.shape[1], new.shape[1])
    out = np.full((len(old) + len(new), width), pad, dtype=object)
    out[:len(old), :old.shape[1]] = old
    out[len(old):, :new.shape[1]] = new
    return out


def _padded(lists: Sequence, pad: str = LIST_PAD) -> np.ndarray:
    width = max(1, max((len(x) for x in lists), default=0))
    out = np.full((len(lists), width), pad, dtype=object)
    for r, values in enumerate(lists):
        out[r, :len(values)] = list(values)
    return out


@dataclasses.dataclass
class Catalogue:
    """Items by row. ``features``: raw candidate inputs, each [num_items] or [num_items, L]."""

    item_ids: np.ndarray
    titles: list[str]
    genres: list[tuple[str, ...]]  # tuples: a re-ranked item carries its row's as is
    added_at: np.ndarray
    maturity: list[str]
    features: dict[str, np.ndarray]
    row: dict[int, int]

    @classmethod
    def from_frame(cls, items: pd.DataFrame) -> Catalogue:
        items = items.sort_values(c.ITEM_ID).reset_index(drop=True)
        lists = {k: [list(v) if v is not None else [] for v in items[k]]
                 for k in (c.GENRES, c.CAST, c.KEYWORDS) if k in items}
        feats = {
            f.ITEM_ID: items[c.ITEM_ID].to_numpy(np.int64),
            f.TITLE: items[c.TITLE].fillna(MISSING).astype(str).to_numpy(object),
            f.DIRECTOR: items[c.DIRECTOR].fillna(MISSING).astype(str).to_numpy(object),
            f.RELEASE_YEAR: items[c.RELEASE_YEAR].fillna(0).to_numpy(np.int64),
            f.DURATION_SECONDS: items[c.DURATION_SECONDS].fillna(0).to_numpy(np.int64),
            f.GENRES: _padded(lists.get(c.GENRES, [[]] * len(items))),
            f.CAST: _padded(lists.get(c.CAST, [[]] * len(items))),
            f.KEYWORDS: _padded(lists.get(c.KEYWORDS, [[]] * len(items))),
        }
        ids = feats[f.ITEM_ID]
        genres = [tuple(g) for g in lists.get(c.GENRES, [[]] * len(items))]
        return cls(ids, feats[f.TITLE].tolist(), genres,
                   items[c.ADDED_AT].to_numpy(np.int64),
                   items[c.MATURITY_RATING].astype(str).tolist(), feats,
                   {int(i): r for r, i in enumerate(ids.tolist())})

    def add(self, items: pd.DataFrame) -> list[int]:
        """Appends titles (validated contract ``items`` rows whose ids the catalogue does not
        hold; ValueError names any it does) and returns their rows.

        Readers take no lock: every structure only grows, lists in place and arrays by one
        swap each, and the id -> row map is published last. So an id found in ``row`` always
        has its row in every array read after that lookup, and rows never move."""
        new = Catalogue.from_frame(items)
        with _ADD_LOCK:
            taken = [i for i in new.item_ids.tolist() if i in self.row]
            if taken:
                raise ValueError(f"item id(s) {taken[:5]} are already in the catalogue; a title "
                                 "is added once (changing one needs a new pipeline run)")
            start = len(self.item_ids)
            self.item_ids = _append_rows(self.item_ids, new.item_ids)
            self.features = {k: _append_rows(v, new.features[k]) for k, v in self.features.items()}
            self.added_at = _append_rows(self.added_at, new.added_at)
            self.titles.extend(new.titles)
            self.genres.extend(new.genres)
            self.maturity.extend(new.maturity)
            rows = list(range(start, start + len(new.item_ids)))
            self.row.update(zip(new.item_ids.tolist(), rows, strict=True))
        return rows

    def holds(self, item_ids: np.ndarray) -> np.ndarray:
        """``[N]`` bool: which of ``item_ids`` the catalogue holds (a source's candidates from an
        index built before titles left it)."""
        ids = item_ids.tolist() if isinstance(item_ids, np.ndarray) else map(int, item_ids)
        return np.fromiter(map(self.row.__contains__, ids), bool, len(item_ids))

    def rows(self, item_ids: Sequence[int]) -> np.ndarray:
        """Row of each known id; unknown ids raise KeyError naming them."""
        row = self.row
        ids = item_ids.tolist() if isinstance(item_ids, np.ndarray) else item_ids
        try:
            return np.fromiter(map(row.__getitem__, ids), np.int64, len(item_ids))
        except KeyError:  # an id not held, or a numpy integer type: say which, or convert
            missing = [i for i in item_ids if int(i) not in row]
            if missing:
                raise KeyError(f"item id(s) not in the catalogue: {missing[:5]}") from None
            return np.array([row[int(i)] for i in item_ids], np.int64)

    def candidate_inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.take(v, rows, axis=0) for k, v in self.features.items()}


@dataclasses.dataclass(frozen=True)
class UserProfile:
    user_id: int
    country: str = "unknown"
    subscription_tier: str = "unknown"
    age_bucket: str = ""
    device: str = "unknown"
    onboarding_genres: tuple[str, ...] = ()
    history: tuple[int, ...] = ()  # positive watches, most recent first
    watched: frozenset = frozenset()  # every item the user watched (to exclude)


class UserStore:
    """In-process profiles and watch histories (the embedded default feature store).

    ``add`` (a signup while serving, ``serving/ingest/signup.py``) may run while requests read:
    readers take no lock. A profile is immutable, is stored under its id by one dict assignment
    (atomic in CPython) and is never replaced or removed, so ``in`` and ``get`` see a user either
    not at all or whole. Writers serialise on a lock, and ``user_ids`` copies the ids under it."""

    def __init__(self, profiles: dict[int, UserProfile],
                 popularity: dict[int, float] | None = None):
        self._profiles = profiles
        self._popularity = popularity or {}
        self._lock = threading.Lock()

    def popularity(self) -> dict[int, float]:
        """Positive watches per item in the loaded data (the fallback's last resort)."""
        return dict(self._popularity)

    @classmethod
    def from_frames(cls, users: pd.DataFrame, interactions: pd.DataFrame,
                    min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS) -> UserStore:
        watches = interactions[interactions[c.EVENT] == c.EVENT_WATCH].sort_values(
            [c.TIMESTAMP, c.ITEM_ID], ascending=False)
        positives = watches[watches[c.WATCH_SECONDS] >= min_watch_seconds]
        hist = positives.groupby(c.USER_ID)[c.ITEM_ID].apply(list).to_dict()
        seen = watches.groupby(c.USER_ID)[c.ITEM_ID].apply(frozenset).to_dict()
        device = watches.groupby(c.USER_ID)[c.DEVICE].first().to_dict()
        profiles = _profiles(users, hist, seen, device)
        counts = positives.groupby(c.ITEM_ID).size()
        return cls(profiles, {int(k): float(v) for k, v in counts.items()})

    def add(self, users: pd.DataFrame) -> list[int]:
        """Adds users (validated contract ``users`` rows whose ids the store does not hold;
        ValueError names any it does, or any repeated in ``users``) without history; returns
        their ids in row order."""
        ids = [int(u) for u in users[c.USER_ID]]
        profiles = _profiles(users)
        with self._lock:
            taken = sorted({u for u in ids if u in self._profiles or ids.count(u) > 1})
            if taken:
                raise ValueError(f"user id(s) {taken[:5]} are already known or repeated; a user "
                                 "is added once (changing one needs a new pipeline run)")
            for uid in ids:
                self._profiles[uid] = profiles[uid]
        return ids

    def get(self, user_id: int) -> UserProfile:
        """The user's profile; an unknown user gets an empty profile (the cold-start path)."""
        return self._profiles.get(int(user_id), UserProfile(user_id=int(user_id)))

    def __contains__(self, user_id: int) -> bool:
        return int(user_id) in self._profiles

    def user_ids(self) -> list[int]:
        with self._lock:
            ids = list(self._profiles)
        return sorted(ids)


def _profiles(users: pd.DataFrame, hist: dict | None = None, seen: dict | None = None,
              device: dict | None = None) -> dict[int, UserProfile]:
    """Profiles of contract ``users`` rows; ``hist``, ``seen``, ``device``: per user id, the
    positive watches (most recent first), every watched item and the latest device."""
    hist, seen, device = hist or {}, seen or {}, device or {}
    profiles = {}
    for u in users.itertuples(index=False):
        uid = int(getattr(u, c.USER_ID))
        age = getattr(u, c.AGE_BUCKET)
        onboarding = getattr(u, c.ONBOARDING_GENRES)
        profiles[uid] = UserProfile(
            user_id=uid, country=str(getattr(u, c.COUNTRY)),
            subscription_tier=str(getattr(u, c.SUBSCRIPTION_TIER)),
            age_bucket="" if age is None or pd.isna(age) else str(age),
            device=str(device.get(uid, "unknown")),
            onboarding_genres=tuple(onboarding) if onboarding is not None else (),
            history=tuple(int(i) for i in hist.get(uid, [])),
            watched=seen.get(uid, frozenset()))
    return profiles


def load_frames(data_dir: str | Path,
                min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS
                ) -> tuple[Catalogue, UserStore, pd.DataFrame]:
    """:func:`load` plus the validated interactions frame (trending and item-to-item sources).
    ``min_watch_seconds``: a watch this long is a positive of the users' histories; pass the
    pipeline's ``data.min_watch_seconds`` (MovieLens: 0), so the query tower sees the history it
    was trained with."""
    from marquee.data.validate import load_dataset

    # The dataset may be mounted read-only in production: rejected rows go to a temp file;
    # over the limit, start-up fails with the validator's summary.
    rejects = Path(tempfile.gettempdir()) / f"marquee-serving-rejects-{os.getpid()}.csv"
    ds = load_dataset(data_dir, rejects_path=rejects)
    return (Catalogue.from_frame(ds.items),
            UserStore.from_frames(ds.users, ds.interactions, min_watch_seconds), ds.interactions)


def load(data_dir: str | Path) -> tuple[Catalogue, UserStore]:
    catalogue, users, _ = load_frames(data_dir)
    return catalogue, users
