"""The offline evaluation protocol: one split, one candidate rule, five metrics.

Everything here is fixed so that figures compare with work outside the project (MovieLens 100K
numbers in papers use the same rules):

* **Positives.** Every ``watch`` interaction is one implicit positive, whatever its
  ``watch_seconds`` (MovieLens: every rating, since the importer maps each rating to a watch).
  Impressions are ignored everywhere.
* **Split (leave last out by time).** Per user, positives are sorted by ``(timestamp, item_id)``
  (so ties in time are broken by item id); the last ``n_test = max(1, floor(share * n + 0.5))``
  go to test and the rest to train. The rounding is *half up*, not Python's ``round`` (banker's
  rounding): with share 0.1, n = 15 gives 2 and n = 25 gives 3. A user with n == 1 has the one
  positive in test and nothing in train; such users are kept and count in every metric (only
  non-personal methods can serve them).
* **Candidates.** The catalogue is the sorted set of items present in train. A user's candidates
  are the catalogue items they have no positive for in train.
* **Relevance.** A user's relevant items are the distinct items of their test positives. Items
  that can never be recommended still count in ``|test|``: a test item outside the train
  catalogue, and a test item the user already has in train (a re-watch; MovieLens has none).
* **Metrics**, per user then averaged over all users of the split (every user has a test item):

  - ``recall@K = hits@K / min(K, |test|)``
  - ``ndcg@K = DCG@K / IDCG@K`` with binary relevance, ``DCG = sum_r rel_r / log2(r + 1)`` over
    ranks r = 1..K and IDCG the DCG of ``min(K, |test|)`` hits at the top
  - ``hr@K`` = share of users with at least one hit in the top K
  - ``coverage@K`` = share of catalogue items in at least one user's top K
  - ``gini@K`` = Gini coefficient of the exposure counts of *all* catalogue items over the
    top-K lists (an item never shown counts 0). With counts sorted ascending
    ``x_1 <= ... <= x_n``: ``G = sum_i (2i - n - 1) x_i / (n sum_i x_i)``; 0 for uniform
    exposure, ``(n - 1) / n`` when a single item takes all of it.

* **Tuning** uses :func:`validation_split`, carved from train with the same per-user rule; the
  test split is never used for a choice.

Keys are ``<metric>@<K>`` (``recall@20``); :func:`marquee.evaluation.peers.evaluate_peers`
prefixes the model name (``ease.recall@20``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from marquee.data import contract as c

DEFAULT_SHARE = 0.1
DEFAULT_KS = (10, 20, 50, 100)
# The padding a recommender puts at the end of a row when a user has fewer than k candidates.
NO_ITEM = np.iinfo(np.int64).min
METRICS = ("recall", "ndcg", "hr", "coverage", "gini")


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare DataFrames, which raises
class Split:
    """A leave-last-out split of the positives.

    Attributes:
      train: positive rows ``[n_train, contract interaction columns]``, sorted by
        ``(user_id, timestamp, item_id)``.
      test: positive rows ``[n_test, ...]``, same columns and order; every user of ``users`` has
        at least one.
      catalogue: ``[n_items]`` int64, the sorted distinct item ids of ``train``.
      users: ``[n_users]`` int64, the sorted distinct user ids with at least one positive (some
        may have no train rows).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    catalogue: np.ndarray
    users: np.ndarray


def n_test_positives(n: np.ndarray | int, share: float = DEFAULT_SHARE) -> np.ndarray:
    """``max(1, floor(share * n + 0.5))`` for positives per user ``n`` ``[U]`` -> ``[U]``.

    Half-up rounding, not Python's banker's ``round``: n = 25 gives 0.1 * 25 = 2.5 -> 3 (``round``
    would give 2); n = 15 gives 1.5 -> 2; n = 1..14 give 1.
    """
    n = np.asarray(n, dtype=np.int64)
    return np.maximum(1, np.floor(share * n + 0.5).astype(np.int64))


def leave_last_out(interactions: pd.DataFrame, share: float = DEFAULT_SHARE) -> Split:
    """Splits the ``watch`` rows of ``interactions`` per user by time (see the module docstring).

    Args:
      interactions: contract interactions ``[rows, columns]`` (``load_dataset(dir).interactions``);
        needs at least the user, item, timestamp and event columns. Impressions are dropped.
      share: share of each user's positives that go to test, rounded half up, at least one.

    Returns:
      A :class:`Split`. Raises ValueError when there is no watch at all or ``share`` is outside
      (0, 1).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share!r}; the protocol uses 0.1.")
    missing = [col for col in (c.USER_ID, c.ITEM_ID, c.TIMESTAMP, c.EVENT)
               if col not in interactions.columns]
    if missing:
        raise ValueError(
            f"interactions lack column(s) {', '.join(missing)}; pass the contract's "
            "interactions table (marquee.data.validate.load_dataset(dir).interactions).")
    positives = interactions[interactions[c.EVENT] == c.EVENT_WATCH]
    if positives.empty:
        raise ValueError(
            f"no '{c.EVENT_WATCH}' interactions to evaluate on: every {c.EVENT_WATCH} row is a "
            "positive and impressions are ignored.")
    users = positives[c.USER_ID].to_numpy(np.int64)
    items = positives[c.ITEM_ID].to_numpy(np.int64)
    times = positives[c.TIMESTAMP].to_numpy(np.int64)
    # lexsort: last key is primary. Stable, so exact duplicates keep their input order.
    order = np.lexsort((items, times, users))
    users = users[order]
    user_ids, first, counts = np.unique(users, return_index=True, return_counts=True)
    rank = np.arange(len(users)) - np.repeat(first, counts)  # 0-based position in the user
    n_train = counts - n_test_positives(counts, share)
    is_test = rank >= np.repeat(n_train, counts)
    rows = positives.iloc[order].reset_index(drop=True)
    train = rows[~is_test].reset_index(drop=True)
    test = rows[is_test].reset_index(drop=True)
    catalogue = np.unique(train[c.ITEM_ID].to_numpy(np.int64))
    return Split(train=train, test=test, catalogue=catalogue, users=user_ids)


def validation_split(split: Split, share: float = DEFAULT_SHARE) -> Split:
    """The tuning split: :func:`leave_last_out` applied to ``split.train`` (test is never seen).

    Users with a single train positive have it in validation-test and none in validation-train;
    users without train rows (n == 1 overall) are not in it.
    """
    return leave_last_out(split.train, share)


class _Pairs:
    """Sorted (user, item) keys for fast membership tests, over given user and item id arrays."""

    def __init__(self, users: np.ndarray, items: np.ndarray):
        self.users = users  # sorted distinct
        self.items = items  # sorted distinct
        self.n_items = len(items)

    def keys(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        u = np.searchsorted(self.users, user_ids)
        i = np.searchsorted(self.items, item_ids)
        return u.astype(np.int64) * self.n_items + i


def _in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Elementwise ``values in sorted_values`` for a sorted 1-d array."""
    if len(sorted_values) == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[pos] == values


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts ``[n]`` (formula in the module docstring)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    total = x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


def _check_rows(recs: np.ndarray, batch: np.ndarray, max_k: int) -> np.ndarray:
    recs = np.asarray(recs)
    if recs.shape != (len(batch), max_k) or not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(
            f"recommend() must return integer item ids of shape [batch, max_k] = "
            f"[{len(batch)}, {max_k}], got {recs.dtype} {recs.shape}. Pad a row with "
            "protocol.NO_ITEM when a user has fewer than max_k candidates.")
    recs = recs.astype(np.int64)
    pad = recs == NO_ITEM
    if (pad[:, :-1] & ~pad[:, 1:]).any():
        row = int(np.nonzero((pad[:, :-1] & ~pad[:, 1:]).any(axis=1))[0][0])
        raise ValueError(
            f"user {batch[row]}: NO_ITEM padding must only end a row, got {recs[row].tolist()}")
    ranked = np.sort(recs, axis=1)
    dup = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] != NO_ITEM)
    if dup.any():
        row, col = (int(v[0]) for v in np.nonzero(dup))
        raise ValueError(
            f"user {batch[row]}: item {ranked[row, col + 1]} is recommended twice; a ranking "
            "lists each item once.")
    return recs


def evaluate_rankings(
    split: Split,
    recommend: Callable[[np.ndarray], np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    extra_recall_ks: Sequence[int] = (),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Scores one recommender on ``split.test`` with the protocol's metrics.

    Args:
      split: from :func:`leave_last_out`.
      recommend: ``recommend(user_ids [B] int64) -> item ids [B, max_k]`` ranked best first,
        ``max_k = max(ks + extra_recall_ks)``. Rows hold only candidates (catalogue items the
        user has no train positive for), each once; a row ends in ``NO_ITEM`` padding when the
        user has fewer than ``max_k`` candidates. Anything else raises ValueError naming the user
        and item: the protocol enforces the candidate rule instead of trusting it.
      ks: cut-offs for every metric (``recall``, ``ndcg``, ``hr``, ``coverage``, ``gini``).
      extra_recall_ks: cut-offs for recall only (e.g. ``(1000,)`` for Recall@1000).
      batch_size: users per ``recommend`` call.

    Returns:
      ``{"<metric>@<K>": value}`` averaged over ``split.users``.
    """
    ks = sorted({int(k) for k in ks})
    extra = sorted({int(k) for k in extra_recall_ks} - set(ks))
    if not ks or min(ks + extra) < 1:
        raise ValueError(f"cut-offs must be positive integers, got ks={ks}, extra={extra}")
    max_k = max(ks + extra)
    users, catalogue = split.users, split.catalogue
    test_items = split.test[c.ITEM_ID].to_numpy(np.int64)
    pairs = _Pairs(users, np.union1d(catalogue, test_items))
    train_keys = np.unique(pairs.keys(split.train[c.USER_ID].to_numpy(np.int64),
                                      split.train[c.ITEM_ID].to_numpy(np.int64)))
    test_keys = np.unique(pairs.keys(split.test[c.USER_ID].to_numpy(np.int64), test_items))
    n_relevant = np.bincount(test_keys // pairs.n_items, minlength=len(users))

    all_ks = ks + extra
    hits_at = {k: np.zeros(len(users)) for k in all_ks}
    dcg_at = {k: np.zeros(len(users)) for k in ks}
    exposure_at = {k: np.zeros(len(catalogue), dtype=np.int64) for k in ks}
    discount = 1.0 / np.log2(np.arange(2, max_k + 2))

    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        recs = _check_rows(recommend(batch), batch, max_k)
        real = recs != NO_ITEM
        in_catalogue = _in_sorted(recs, catalogue) & real
        if (real & ~in_catalogue).any():
            row, col = (int(v[0]) for v in np.nonzero(real & ~in_catalogue))
            raise ValueError(
                f"user {batch[row]}: item {recs[row, col]} at rank {col + 1} is not in the "
                "catalogue (items with a train positive); only catalogue items are candidates.")
        keys = pairs.keys(np.repeat(batch, max_k).reshape(recs.shape), np.where(real, recs, 0))
        seen = _in_sorted(keys, train_keys) & real
        if seen.any():
            row, col = (int(v[0]) for v in np.nonzero(seen))
            raise ValueError(
                f"user {batch[row]}: item {recs[row, col]} at rank {col + 1} is one of the user's "
                "train items; recommenders must exclude them (candidates are unseen items).")
        hit = _in_sorted(keys, test_keys) & real
        cum_hits = np.cumsum(hit, axis=1)
        cum_dcg = np.cumsum(hit * discount, axis=1)
        rows = slice(start, start + len(batch))
        for k in all_ks:
            hits_at[k][rows] = cum_hits[:, k - 1]
        for k in ks:
            dcg_at[k][rows] = cum_dcg[:, k - 1]
            codes = np.searchsorted(catalogue, recs[:, :k][real[:, :k]])
            exposure_at[k] += np.bincount(codes, minlength=len(catalogue))

    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    out: dict[str, float] = {}
    for k in ks:
        denom = np.minimum(k, n_relevant)
        out[f"recall@{k}"] = float(np.mean(hits_at[k] / denom))
        out[f"ndcg@{k}"] = float(np.mean(dcg_at[k] / ideal[denom]))
        out[f"hr@{k}"] = float(np.mean(hits_at[k] > 0))
        out[f"coverage@{k}"] = float(np.mean(exposure_at[k] > 0)) if len(catalogue) else 0.0
        out[f"gini@{k}"] = gini(exposure_at[k])
    for k in extra:
        out[f"recall@{k}"] = float(np.mean(hits_at[k] / np.minimum(k, n_relevant)))
    return out
