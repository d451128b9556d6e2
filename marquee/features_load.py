"""Batch user features for the online store: ``marquee features load RUN_DIR --data DIR``.

From the positive watches (``marquee.artifacts.is_positive_watch`` with the config's
``data.min_watch_seconds``, as serving and the pipeline count them) of a dataset in the contract,
per user: the share of those watches whose title has each genre, their count and their
mean watch seconds. They are loaded under the version of the run's latest pushed query tower
(``RUN_DIR/serving/query_tower/<version>``), so serving can tell which model they were made for,
with a TTL, so a loader that stops running makes them expire instead of going stale forever.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from marquee.artifacts import QUERY_TOWER, is_positive_watch, versions
from marquee.data import contract as c
from serving.state.feature_store import BatchFeatures, FeatureStore

DEFAULT_TTL_HOURS = 2.0


class NoPushedVersion(FileNotFoundError):
    """The run has no pushed query tower to version the features by."""


def latest_pushed_version(run_dir: str | Path) -> int:
    """The highest integer version under ``RUN_DIR/serving/query_tower/``."""
    towers = Path(run_dir) / "serving" / QUERY_TOWER
    found = versions(towers)
    if not found:
        raise NoPushedVersion(
            f"{towers}: no pushed version. Batch features are versioned by the model they are "
            f"made for; run `marquee pipeline run --data DIR --root {run_dir}` first (the "
            "pusher pushes only when the index is blessed; RUN_DIR/summary.md says why not).")
    return found[-1]


def compute_batch_features(interactions: pd.DataFrame, items: pd.DataFrame,
                           min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS
                           ) -> dict[int, BatchFeatures]:
    """Per user with at least one positive watch: genre shares, count, mean watch seconds.

    A title with several genres counts once for each; a title not in ``items`` counts in the
    count and the mean but gives no genre.
    """
    positive = is_positive_watch(interactions[c.EVENT], interactions[c.WATCH_SECONDS],
                                 min_watch_seconds)
    watches = interactions.loc[positive, [c.USER_ID, c.ITEM_ID, c.WATCH_SECONDS]]
    watches = watches.reset_index(drop=True)
    totals = watches.groupby(c.USER_ID)[c.WATCH_SECONDS].agg(["size", "mean"])
    genre_of = items.set_index(c.ITEM_ID)[c.GENRES]
    per_genre = watches[[c.USER_ID]].assign(
        watch=watches.index, **{c.GENRES: watches[c.ITEM_ID].map(genre_of)})
    per_genre = per_genre.explode(c.GENRES).dropna(subset=[c.GENRES])
    per_genre = per_genre.drop_duplicates(["watch", c.GENRES])  # a genre listed twice counts once
    counts = per_genre.groupby([c.USER_ID, c.GENRES]).size()
    users = counts.index.get_level_values(0)
    share = counts.to_numpy() / totals["size"].reindex(users).to_numpy()
    shares: dict[int, dict[str, float]] = {}
    for user, genre, value in zip(users.tolist(), counts.index.get_level_values(1).tolist(),
                                  share.tolist(), strict=True):
        shares.setdefault(int(user), {})[str(genre)] = value
    return {int(user): BatchFeatures(shares.get(int(user), {}), int(n), float(mean))
            for user, n, mean in zip(totals.index.tolist(), totals["size"].tolist(),
                                     totals["mean"].tolist(), strict=True)}


@dataclasses.dataclass(frozen=True)
class LoadSummary:
    version: int
    users: int
    positive_watches: int
    ttl_s: float

    def __str__(self) -> str:
        return (f"loaded batch features of {self.users:,} users ({self.positive_watches:,} "
                f"positive watches) as version {self.version}; they expire in "
                f"{self.ttl_s / 3600:g} h")


def load_features(run_dir: str | Path, data_dir: str | Path, store: FeatureStore,
                  ttl_s: float = DEFAULT_TTL_HOURS * 3600,
                  min_watch_seconds: float = c.WATCHED_THRESHOLD_SECONDS) -> LoadSummary:
    """Validates ``data_dir`` (rejects go to ``RUN_DIR/features_rejects.csv``), computes the
    batch features and loads them into ``store`` under the latest pushed version."""
    from marquee.data.validate import load_dataset

    version = latest_pushed_version(run_dir)  # before the slow part: fail fast
    ds = load_dataset(data_dir, rejects_path=Path(run_dir) / "features_rejects.csv")
    rows = compute_batch_features(ds.interactions, ds.items, min_watch_seconds)
    users = store.load_batch_features(version, rows, ttl_s)
    return LoadSummary(version, users, sum(r.watch_count for r in rows.values()), ttl_s)
