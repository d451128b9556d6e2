"""Embedding drift between two pushed versions of the two-tower model.

Retraining moves the embedding space even when the metrics hold: norms grow or shrink (the
dot-product scores, and so the blend's retrieval signal, move with them) and titles change
neighbours (so do "more like this" and the item-to-item rows). Per pushed version, against the
previous one in the same model base (``marquee.artifacts``' layout):

- **norms**: the distribution (mean, std, 5th/50th/95th percentiles) of the query tower's
  embedding norms over a fixed set of queries (this run's eval examples) through both versions'
  query towers, and of the candidate embeddings of each version's index;
- **neighbour overlap**: for each title in both versions (a seeded sample of
  ``monitor.neighbour_titles`` on a large catalogue), ``|N_prev ∩ N_cur| / k`` where ``N`` is
  its top-``k`` titles by cosine similarity of the candidate embeddings among the titles both
  versions hold (itself excluded): 1 = the same neighbours, 0 = all new. Cosine, not the dot
  product retrieval scores with, so that a change of norms (reported above) does not count
  twice.

The plain functions take numpy arrays; :func:`version_drift` reads the pushed versions. The
EmbeddingDrift step (``components/embedding_drift``) writes its report to
``embedding_drift.json`` and per-title overlaps to ``neighbour_overlap.csv``;
:func:`read_reports` and :func:`report_lines` give them to ``marquee monitor embeddings`` and
the run summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from marquee.artifacts import CANDIDATE_TOWER, QUERY_TOWER, RETRIEVAL_INDEX, SIGNATURE, versions
from marquee.monitoring.config import MonitorConfig
from marquee.retrieval_index import DATASET_FILE, ITEM_IDS_FILE, SCANN_DIR

REPORT_FILE = "embedding_drift.json"
OVERLAP_FILE = "neighbour_overlap.csv"
COMPONENT = "EmbeddingDrift"
_CHUNK_ROWS = 1024  # titles whose similarities to the whole catalogue are held at once


def norm_summary(embeddings: np.ndarray) -> dict[str, float]:
    """``embeddings [N, dim]`` -> the distribution of the N row norms: count, mean, std, p5,
    p50, p95 (zeros for N = 0)."""
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be [N, dim], got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1)
    if not len(norms):
        return {"count": 0, "mean": 0.0, "std": 0.0, "p5": 0.0, "p50": 0.0, "p95": 0.0}
    p5, p50, p95 = np.percentile(norms, [5, 50, 95])
    return {"count": int(len(norms)), "mean": float(norms.mean()), "std": float(norms.std()),
            "p5": float(p5), "p50": float(p50), "p95": float(p95)}


def top_k_neighbours(embeddings: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """For each of ``rows [M]`` (row indices into ``embeddings [N, dim]``), its ``k`` nearest
    rows by cosine similarity, itself excluded, most similar first -> ``[M, k]`` int64. A
    zero-norm row is dissimilar to everything. ``k`` must be below N."""
    e = np.asarray(embeddings, np.float32)
    rows = np.asarray(rows, np.int64)
    if not 0 < k < len(e):
        raise ValueError(f"k={k} neighbours need between 1 and {len(e) - 1} other titles "
                         f"(the embeddings hold {len(e)})")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    out = np.empty((len(rows), k), np.int64)
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start:start + _CHUNK_ROWS]
        sims = unit[chunk] @ unit.T  # [chunk, N]
        sims[np.arange(len(chunk)), chunk] = -np.inf  # never its own neighbour
        best = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, best, axis=1), axis=1, kind="stable")
        out[start:start + len(chunk)] = np.take_along_axis(best, order, axis=1)
    return out


def neighbour_overlap(previous: np.ndarray, current: np.ndarray, rows: np.ndarray,
                      k: int) -> np.ndarray:
    """``previous`` and ``current`` ``[N, dim_p]`` / ``[N, dim_c]``: the same N titles (row r is
    one title in both) embedded by two versions. For each of ``rows [M]``: the share of its
    top-``k`` neighbours under ``previous`` that are still among them under ``current`` ->
    ``[M]`` in [0, 1]."""
    if len(previous) != len(current):
        raise ValueError(f"previous holds {len(previous)} titles and current {len(current)}; "
                         "pass the rows of the titles both versions hold (align_titles)")
    before = top_k_neighbours(previous, rows, k)
    after = top_k_neighbours(current, rows, k)
    return np.array([len(np.intersect1d(b, a, assume_unique=True)) / k
                     for b, a in zip(before, after, strict=True)], np.float64)


def align_titles(previous_ids: np.ndarray, current_ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item ids both versions hold, ascending, and their rows in each -> (ids [N],
    previous rows [N], current rows [N])."""
    ids, prev_rows, cur_rows = np.intersect1d(np.asarray(previous_ids, np.int64),
                                              np.asarray(current_ids, np.int64),
                                              assume_unique=True, return_indices=True)
    return ids, prev_rows.astype(np.int64), cur_rows.astype(np.int64)


def compare_embeddings(previous_ids: np.ndarray, previous_items: np.ndarray,
                       current_ids: np.ndarray, current_items: np.ndarray,
                       previous_queries: np.ndarray, current_queries: np.ndarray,
                       monitor: MonitorConfig, titles: Mapping[int, str] | None = None,
                       ) -> tuple[dict, list[tuple[int, float]]]:
    """The drift report of two versions from their embeddings: items ``[N_p, d_p]`` /
    ``[N_c, d_c]`` with their item ids, and the same queries through each query tower. Returns
    (report, [(item id, overlap)] for every title compared)."""
    ids, prev_rows, cur_rows = align_titles(previous_ids, current_ids)
    report = {
        "query_norms": {"previous": norm_summary(previous_queries),
                        "current": norm_summary(current_queries)},
        "candidate_norms": {"previous": norm_summary(previous_items),
                            "current": norm_summary(current_items)},
        "titles": {"previous": int(len(previous_ids)), "current": int(len(current_ids)),
                   "both": int(len(ids))},
    }
    k = min(monitor.neighbour_k, len(ids) - 1)
    if k < 1:
        report["neighbours"] = {"k": 0, "compared": 0,
                                "reason": f"{len(ids)} title(s) in both versions: no neighbours"}
        return report, []
    rng = np.random.default_rng(monitor.seed)
    sample = (np.arange(len(ids)) if len(ids) <= monitor.neighbour_titles
              else np.sort(rng.choice(len(ids), monitor.neighbour_titles, replace=False)))
    overlap = neighbour_overlap(np.asarray(previous_items)[prev_rows],
                                np.asarray(current_items)[cur_rows], sample, k)
    p10, p50 = np.percentile(overlap, [10, 50])
    order = np.argsort(overlap, kind="stable")[:monitor.moved_titles]
    report["neighbours"] = {
        "k": int(k), "compared": int(len(sample)), "mean_overlap": float(overlap.mean()),
        "p10_overlap": float(p10), "p50_overlap": float(p50),
        "unchanged_share": float((overlap == 1.0).mean()),
        "moved_most": [{"item_id": int(ids[sample[i]]), "overlap": float(overlap[i]),
                        **({"title": titles[int(ids[sample[i]])]}
                           if titles and int(ids[sample[i]]) in titles else {})}
                       for i in order.tolist()],
    }
    per_title = [(int(ids[s]), float(o)) for s, o in zip(sample.tolist(), overlap.tolist(),
                                                          strict=True)]
    return report, per_title


# ----------------------------------------------------------------------------- pushed versions


def complete_versions(base: str) -> list[int]:
    """Versions in the model base ``base`` holding both towers and the retrieval index."""
    have = [set(versions(os.path.join(base, m)))
            for m in (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX)]
    return sorted(set.intersection(*have))


def previous_version(base: str, version: int) -> int | None:
    earlier = [v for v in complete_versions(base) if v < version]
    return earlier[-1] if earlier else None


def _load_npy(path: str) -> np.ndarray:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as fh:
        return np.load(fh, allow_pickle=False)


def index_embeddings(base: str, version: int) -> tuple[np.ndarray, np.ndarray]:
    """(item ids [N], candidate embeddings [N, dim]) of a pushed version's retrieval index."""
    index_dir = os.path.join(base, RETRIEVAL_INDEX, str(version))
    return (_load_npy(os.path.join(index_dir, ITEM_IDS_FILE)),
            _load_npy(os.path.join(index_dir, SCANN_DIR, DATASET_FILE)))


def query_embeddings(base: str, version: int, inputs: Mapping) -> np.ndarray:
    """``inputs`` (raw query features, ``trainer.raw_inputs.parse_examples``) through a pushed
    version's query tower -> [Q, dim]; inputs its signature does not take are left out."""
    import tensorflow as tf

    from trainer.raw_inputs import embed

    tower = tf.saved_model.load(os.path.join(base, QUERY_TOWER, str(version)))
    signature = tower.signatures[SIGNATURE]
    takes = set(signature.structured_input_signature[1])
    return embed(signature, {k: v for k, v in inputs.items() if k in takes})


def version_drift(base: str, version: int, query_inputs: Mapping, monitor: MonitorConfig,
                  titles: Mapping[int, str] | None = None
                  ) -> tuple[dict, list[tuple[int, float]]]:
    """The report of pushed ``version`` against the previous complete version in ``base``
    (``previous_version`` null and nothing compared when there is none: the first push)."""
    previous = previous_version(base, version)
    head = {"version": int(version), "previous_version": previous, "model_base": base}
    if previous is None:
        return {**head, "reason": "the first pushed version: nothing to compare with"}, []
    prev_ids, prev_items = index_embeddings(base, previous)
    cur_ids, cur_items = index_embeddings(base, version)
    report, per_title = compare_embeddings(
        prev_ids, prev_items, cur_ids, cur_items, query_embeddings(base, previous, query_inputs),
        query_embeddings(base, version, query_inputs), monitor, titles)
    return {**head, **report}, per_title


# ----------------------------------------------------------------------------- reports


def read_reports(pipeline_root: str) -> list[dict]:
    """Every EmbeddingDrift report under a pipeline root of one run folder, by version (the
    reports of runs that pushed nothing are left out)."""
    import tensorflow as tf

    out = []
    for path in tf.io.gfile.glob(os.path.join(pipeline_root, COMPONENT, "report", "*",
                                              REPORT_FILE)):
        with tf.io.gfile.GFile(path) as fh:
            report = json.load(fh)
        if report.get("version") is not None:
            out.append(report)
    return sorted(out, key=lambda r: r["version"])


def report_lines(report: dict) -> list[str]:
    """A report in a few lines for people (the run summary, ``marquee monitor embeddings``)."""
    if report.get("version") is None:
        return [report.get("reason", "no version pushed")]
    head = f"version {report['version']}"
    if report.get("previous_version") is None:
        return [f"{head}: {report.get('reason', 'nothing to compare with')}"]
    lines = [f"{head} against {report['previous_version']}"]
    for name in ("query", "candidate"):
        p, c = report[f"{name}_norms"]["previous"], report[f"{name}_norms"]["current"]
        lines.append(f"{name} norms: mean {p['mean']:.3f} -> {c['mean']:.3f}, p5-p95 "
                     f"{p['p5']:.3f}-{p['p95']:.3f} -> {c['p5']:.3f}-{c['p95']:.3f} "
                     f"({c['count']} {'queries' if name == 'query' else 'titles'})")
    n = report["neighbours"]
    if not n["k"]:
        return lines + [f"neighbours: {n['reason']}"]
    lines.append(f"top-{n['k']} neighbour overlap over {n['compared']} titles: mean "
                 f"{n['mean_overlap']:.3f}, p10 {n['p10_overlap']:.3f}, p50 "
                 f"{n['p50_overlap']:.3f}; unchanged {n['unchanged_share']:.1%}")
    if n["moved_most"]:
        lines.append("moved most: " + ", ".join(
            f"{m.get('title', 'item')} (id {m['item_id']}) {m['overlap']:.2f}"
            for m in n["moved_most"]))
    return lines
