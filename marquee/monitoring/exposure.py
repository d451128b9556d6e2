"""Exposure and diversity of what was shown: the one home of these metrics.

Every function takes what was shown as impression rows (item ids, and where needed users, pages
or timestamps) and the catalogue as the contract's items table, so that experiments
(:mod:`marquee.experiments.analyze`) and monitoring compute them the same way.

* **coverage** = distinct catalogue titles shown / catalogue size.
* **Gini of exposure** over the *whole* catalogue, a title never shown counting 0
  (:func:`marquee.evaluation.protocol.gini`: 0 when every title is shown equally often,
  ``(n - 1) / n`` when one title takes every impression); the **Lorenz curve** it comes from.
* **genre diversity per user**: the Shannon entropy (bits) of the genres of the user's
  impressions. Each impression spreads a weight of 1 equally over its title's genres (a title
  without genres puts it on ``NO_GENRE``), so two titles of genres {Drama} and {Comedy} give
  1 bit, and ``2 ** entropy`` is the effective number of genres the user was shown. Entropy
  rather than a count of distinct genres, which grows with the impressions alone.
* **intra-list diversity** per page: the mean pairwise Jaccard distance of genre sets within a
  ``page_id`` (two titles without genres have distance 0).
* **novelty**: the mean popularity rank of what is shown (1 = the most popular title; ties share
  their mean rank), from given popularity counts; higher is more novel.
* **new-title share**: the share of impressions of titles added within ``days`` before the
  impression.

The array-level forms (:func:`coverage_of_counts`, :func:`is_new`, :func:`list_diversity`,
:func:`popularity_ranks`) are what the table-level functions compute with; the live sliding window
(:mod:`marquee.monitoring.window`) calls them on its counts, so both report the same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from marquee.data import contract as c
from marquee.evaluation.protocol import gini

NO_GENRE = "(no genre)"
DAY_SECONDS = 86_400


def _ids(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or len(a) == 0):
        raise ValueError(f"{name}: expected a 1-d array of integer item ids, got {a.dtype} "
                         f"{a.shape}")
    return a.astype(np.int64)


def _check_known(shown: np.ndarray, known: np.ndarray, what: str, fix: str = "") -> None:
    found = np.isin(shown, known)
    if not found.all():
        missing = np.unique(shown[~found])
        raise ValueError(
            f"{len(missing)} shown item id(s) are not in {what} (e.g. {missing[:5].tolist()}); "
            + (fix or f"pass {what} the impressions refer to"))


def exposure_counts(shown, catalogue) -> np.ndarray:
    """Impressions per catalogue title ``[n_catalogue]`` (in the order of ``catalogue``, zeros
    included) from the item ids shown ``[n_impressions]``. A shown id outside the catalogue
    raises ValueError naming it."""
    shown, catalogue = _ids(shown, "shown"), _ids(catalogue, "catalogue")
    if len(np.unique(catalogue)) != len(catalogue):
        raise ValueError("catalogue: item ids must be unique")
    _check_known(shown, catalogue, "the catalogue")
    order = np.argsort(catalogue)
    pos = np.searchsorted(catalogue, shown, sorter=order)  # rank of the id in sorted catalogue
    out = np.zeros(len(catalogue), dtype=np.int64)
    out[order] = np.bincount(pos, minlength=len(catalogue))
    return out


def coverage_of_counts(counts) -> float:
    """Share of the titles of ``counts`` ``[n_catalogue]`` (impressions per title) shown at
    least once (0 for an empty catalogue)."""
    counts = np.asarray(counts)
    return float(np.mean(counts > 0)) if len(counts) else 0.0


def coverage(shown, catalogue) -> float:
    """Share of catalogue titles shown at least once (0 for an empty catalogue)."""
    return coverage_of_counts(exposure_counts(shown, catalogue))


def exposure_gini(shown, catalogue) -> float:
    """Gini coefficient of impressions over every catalogue title, never-shown ones as 0."""
    return gini(exposure_counts(shown, catalogue))


def lorenz_curve(counts) -> tuple[np.ndarray, np.ndarray]:
    """The Lorenz curve of non-negative counts ``[n]``: ``(x, y)``, each ``[n + 1]``, from
    ``(0, 0)`` to ``(1, 1)``: ``x_k = k / n`` is the share of titles (least exposed first) and
    ``y_k`` their share of the exposure. The Gini is 1 - 2 * the area under it."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if (x < 0).any():
        raise ValueError("counts must be non-negative")
    n, total = len(x), x.sum()
    share = np.arange(n + 1) / n if n else np.array([0.0, 1.0])
    if n == 0 or total == 0:
        return share, share.copy()  # no exposure: the line of equality, Gini 0
    return share, np.concatenate([[0.0], np.cumsum(x) / total])


def _genre_lists(items: pd.DataFrame) -> pd.Series:
    """Each title's genres as a list, indexed by item id."""
    missing = [col for col in (c.ITEM_ID, c.GENRES) if col not in items.columns]
    if missing:
        raise ValueError(f"items lack column(s) {', '.join(missing)}; pass the contract's items "
                         "table")
    return pd.Series([list(g) if g is not None else [] for g in items[c.GENRES]],
                     index=items[c.ITEM_ID].to_numpy(np.int64))


def _genres_of(item_ids: np.ndarray, items: pd.DataFrame) -> pd.Series:
    genres = _genre_lists(items)
    _check_known(item_ids, genres.index.to_numpy(), "the items table")
    return genres.reindex(item_ids).reset_index(drop=True)


def genre_entropy_per_user(impressions: pd.DataFrame, items: pd.DataFrame) -> pd.Series:
    """Genre entropy in bits per user (module docstring) over ``impressions`` (columns user_id,
    item_id): a Series indexed by user_id, sorted."""
    genres = _genre_lists(items)
    _check_known(impressions[c.ITEM_ID].to_numpy(np.int64), genres.index.to_numpy(),
                 "the items table")
    genres = genres.map(lambda g: g or [NO_GENRE])
    counts = genres.map(len).to_numpy()
    codes, _ = pd.factorize(np.concatenate(genres.to_list()) if len(genres) else np.array([]))
    weights = pd.DataFrame({c.ITEM_ID: np.repeat(genres.index.to_numpy(), counts),
                            "genre": codes, "weight": np.repeat(1.0 / counts, counts)})
    shown = impressions.groupby([c.USER_ID, c.ITEM_ID]).size().rename("n").reset_index()
    mass = shown.merge(weights, on=c.ITEM_ID)
    mass = (mass["n"] * mass["weight"]).groupby([mass[c.USER_ID], mass["genre"]]).sum()
    p = mass / mass.groupby(level=0).transform("sum")
    entropy = -(p * np.log2(p)).groupby(level=0).sum()
    entropy.index.name = c.USER_ID
    return entropy.rename("genre_entropy").sort_index()


def _genre_matrix(genres) -> np.ndarray:
    """One-hot genre sets ``[n_titles, n_genres]`` (at least one column) of genre lists."""
    vocabulary = {g: k for k, g in enumerate(sorted({g for gs in genres for g in gs}))}
    matrix = np.zeros((len(genres), max(len(vocabulary), 1)), dtype=np.float64)
    matrix[[r for r, gs in enumerate(genres) for _ in gs],
           [vocabulary[g] for gs in genres for g in gs]] = 1.0
    return matrix


def _mean_jaccard_distance(m: np.ndarray) -> float:
    """Mean pairwise Jaccard distance of the rows of a one-hot ``m`` ``[k, n_genres]``; nan
    when ``k < 2``."""
    k = len(m)
    if k < 2:
        return float("nan")
    inter = m @ m.T
    sizes = m.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    similarity = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    # symmetric with a zero diagonal: the mean over pairs is the sum over k * (k - 1) cells
    return float((1.0 - similarity).sum() / (k * (k - 1)))


def list_diversity(genres) -> float:
    """Intra-list diversity of one page: the mean pairwise Jaccard distance of its titles'
    genre sets (``genres``: one list of genres per title, in any order); nan for fewer than two
    titles. :func:`intra_list_diversity` gives each page of an impressions table this value."""
    return _mean_jaccard_distance(_genre_matrix([list(g) for g in genres]))


def intra_list_diversity(
    impressions: pd.DataFrame, items: pd.DataFrame, page_column: str = "page_id"
) -> pd.Series:
    """Mean pairwise Jaccard distance ``1 - |G_i & G_j| / |G_i | G_j|`` of the genre sets of the
    titles of each page (rows grouped by ``page_column``): a Series indexed by page, sorted.
    Pages with fewer than two titles have no pair and get nan; rows without a page raise."""
    if page_column not in impressions.columns or impressions[page_column].isna().any():
        raise ValueError(
            f"intra-list diversity needs a {page_column} on every impression; "
            f"{impressions[page_column].isna().sum() if page_column in impressions else 'all'} "
            "row(s) lack one (older logs have none: leave those rows out first)")
    matrix = _genre_matrix(_genres_of(impressions[c.ITEM_ID].to_numpy(np.int64), items))
    pages = impressions[page_column].to_numpy()
    out = {page: _mean_jaccard_distance(matrix[rows.to_numpy()])
           for page, rows in pd.Series(np.arange(len(pages))).groupby(pages)}
    result = pd.Series(out, dtype=np.float64, name="intra_list_diversity").sort_index()
    result.index.name = page_column
    return result


def novelty(shown, popularity: pd.Series) -> float:
    """Mean popularity rank of the shown item ids ``[n_impressions]``; ``popularity`` maps every
    catalogue item id to its count (e.g. positive watches in a training period). Rank 1 is the
    most popular title, ties share their mean rank; nan when nothing was shown."""
    shown = _ids(shown, "shown")
    if not popularity.index.is_unique:
        raise ValueError("popularity: item ids (its index) must be unique")
    ranks = pd.Series(popularity_ranks(popularity.to_numpy()), index=popularity.index)
    _check_known(shown, ranks.index.to_numpy(), "the popularity counts",
                 "give a count, 0 if none, for every catalogue title")
    return float(ranks.reindex(shown).mean()) if len(shown) else float("nan")


def popularity_ranks(counts) -> np.ndarray:
    """Popularity rank of each title of ``counts`` ``[n]`` (1 = the most popular; ties share
    their mean rank), as float64 ``[n]``: the ranks :func:`novelty` averages."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"counts: expected a 1-d array of popularity counts, got {counts.shape}")
    return pd.Series(counts).rank(ascending=False, method="average").to_numpy(np.float64)


def new_title_share(impressions: pd.DataFrame, items: pd.DataFrame, days: float) -> float:
    """Share of ``impressions`` (columns item_id, timestamp) whose title was added to the
    catalogue less than ``days`` before the impression (``added_at > timestamp - days``; a
    title shown before its ``added_at`` counts as new). nan when there are no impressions."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days!r}")
    ids = impressions[c.ITEM_ID].to_numpy(np.int64)
    added = pd.Series(items[c.ADDED_AT].to_numpy(np.int64),
                      index=items[c.ITEM_ID].to_numpy(np.int64))
    _check_known(ids, added.index.to_numpy(), "the items table")
    if len(ids) == 0:
        return float("nan")
    new = is_new(added.reindex(ids).to_numpy(), impressions[c.TIMESTAMP].to_numpy(np.int64), days)
    return float(np.mean(new))


def is_new(added_at, timestamps, days: float) -> np.ndarray:
    """Whether each impression's title is new (:func:`new_title_share`'s rule: added less than
    ``days`` before the impression, ``timestamp - added_at < days * 86400``): bool, the
    broadcast shape of ``added_at`` and ``timestamps`` (epoch seconds)."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days!r}")
    age = np.asarray(timestamps, dtype=np.int64) - np.asarray(added_at, dtype=np.int64)
    return age < days * DAY_SECONDS
