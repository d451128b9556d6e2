"""Hard negatives for the ranker: items the retrieval model itself puts near the top.

At serving the ranker orders the retrieval stage's candidates, which are all plausible for the
user; random catalogue items are easy negatives, so a ranker trained on them mostly learns
popularity and orders plausible candidates worse than the retrieval score does. Here, for each
positive ranking example, ``k`` negatives are drawn uniformly from the retrieval model's top
``n`` items for that example's query (same user, history and moment), skipping items the user
ever watched and items not yet in the catalogue at that moment.

Inputs are the dense raw inputs of :func:`trainer.ranking.load_split` (scalars ``[B]``, padded
lists ``[B, L]``) and the catalogue split in the same form; the new rows copy the positive's
query features and timestamp, take the item's candidate features from the catalogue, carry the
towers' dot product as ``retrieval_score``, watch seconds 0 and position 0 (unknown).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainer import features as f
from trainer.retrieval import HISTORY_PAD, LIST_PAD


def top_n(query_emb: np.ndarray, item_emb: np.ndarray, n: int,
          batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``n`` items by dot product per query.

    Args:
      query_emb: ``[P, D]``; item_emb: ``[I, D]``.
    Returns:
      (item indices ``[P, min(n, I)]`` int64, scores ``[P, min(n, I)]`` float32), best first;
      ties broken by the lower item index.
    """
    n = min(n, item_emb.shape[0])
    idx = np.zeros((query_emb.shape[0], n), np.int64)
    top = np.zeros((query_emb.shape[0], n), np.float32)
    for start in range(0, query_emb.shape[0], batch_size):
        s = query_emb[start:start + batch_size] @ item_emb.T  # [b, I]
        # a stable sort of -s keeps the lower index first among equal scores
        order = np.argsort(-s, axis=1, kind="stable")[:, :n]
        idx[start:start + batch_size] = order
        top[start:start + batch_size] = np.take_along_axis(s, order, axis=1)
    return idx, top


def sample_negatives(top_items: np.ndarray, excluded: Sequence[set[int]], k: int,
                     seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``k`` distinct columns of ``top_items`` whose item is not in the row's
    ``excluded`` set, uniformly without replacement (fewer when fewer are allowed).

    Args:
      top_items: ``[P, N]`` item ids.
      excluded: ``P`` sets of item ids never to pick for that row.
      k: negatives per row.
      seeds: ``[P, S]`` int64, each row's own random seed (e.g. config seed, user, item,
        timestamp), so a row's draw does not depend on the other rows or their order.
    Returns:
      (rows ``[M]``, columns ``[M]``) into ``top_items``, rows ascending.
    """
    if k < 0:
        raise ValueError(f"negatives per positive must be >= 0, got {k}")
    rows, cols = [], []
    for p in range(top_items.shape[0]):
        allowed = [j for j, item in enumerate(top_items[p].tolist()) if item not in excluded[p]]
        if not allowed or k == 0:
            continue
        rng = np.random.default_rng([int(s) & 0x7FFFFFFF for s in seeds[p]])
        pick = rng.choice(len(allowed), size=min(k, len(allowed)), replace=False)
        rows.extend([p] * len(pick))
        cols.extend(allowed[j] for j in sorted(pick.tolist()))
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


def _pad_to(a: np.ndarray, width: int) -> np.ndarray:
    if a.ndim < 2 or a.shape[1] >= width:
        return a
    pad = HISTORY_PAD if a.dtype.kind in "iu" else LIST_PAD.encode()
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad)


def concat_rows(a: dict, b: dict) -> dict:
    """Row-wise concatenation of two dense input dicts with the same keys; padded lists are
    widened to the wider of the two."""
    out = {}
    for k in a:
        x, y = a[k], b[k]
        if x.ndim == 2:
            w = max(x.shape[1], y.shape[1])
            x, y = _pad_to(x, w), _pad_to(y, w)
        out[k] = np.concatenate([x, y])
    return out


def watched_by_user(user_ids: np.ndarray, item_ids: np.ndarray,
                    watch_seconds: np.ndarray) -> dict[int, set[int]]:
    """{user: items with a watch (watch seconds > 0)} over ranking examples; sampled negatives
    carry 0 seconds and are not watches."""
    out: dict[int, set[int]] = {}
    for u, i, w in zip(user_ids.tolist(), item_ids.tolist(), watch_seconds.tolist(),
                       strict=True):
        if w > 0:
            out.setdefault(int(u), set()).add(int(i))
    return out


def retrieval_negative_rows(data: dict, positives: np.ndarray, catalogue: dict,
                            query_emb: np.ndarray, item_emb: np.ndarray,
                            watched: dict[int, set[int]], k: int, n: int,
                            seed: int, score_key: str) -> dict:
    """The negative rows (see the module docstring) for the rows ``positives`` of ``data``.

    Args:
      data: dense raw inputs ``[B, ...]``.
      positives: ``[P]`` row indices of ``data``.
      catalogue: dense raw inputs of the catalogue ``[I, ...]`` (``timestamp`` = added at).
      query_emb: ``[P, D]`` query-tower embeddings of those rows; item_emb: ``[I, D]``.
      watched: every item each user ever watched (never a negative).
      k, n: negatives per positive, drawn from the top ``n``.
      seed: the config seed; score_key: where the dot product goes.
    """
    idx, scores = top_n(query_emb, item_emb, n)
    cat_items = catalogue[f.ITEM_ID][idx]  # [P, n]
    users = data[f.USER_ID][positives]
    ts = data[f.TIMESTAMP][positives]
    added = catalogue[f.TIMESTAMP]
    excluded = []
    for p in range(len(positives)):
        not_yet = cat_items[p][added[idx[p]] > ts[p]]
        excluded.append(watched.get(int(users[p]), set()) | set(not_yet.tolist()))
    seeds = np.stack([np.full(len(positives), seed), users, data[f.ITEM_ID][positives], ts], 1)
    rows, cols = sample_negatives(cat_items, excluded, k, seeds)
    src = positives[rows]
    item_rows = idx[rows, cols]
    out = {}
    for key, v in data.items():
        if key in f.CANDIDATE_FEATURES:
            out[key] = catalogue[key][item_rows]
        elif key == score_key:
            out[key] = scores[rows, cols].astype(np.float32)
        elif key == f.WATCH_SECONDS:
            out[key] = np.zeros(len(rows), v.dtype)
        elif key == f.POSITION:
            out[key] = np.zeros(len(rows), v.dtype)
        else:  # query features and the timestamp: the positive's
            out[key] = v[src]
    return out
