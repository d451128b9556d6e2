"""The ScaNN retrieval index: build, evaluate against exact search, bless, save and load.

The ScannIndexer executor calls ``build_and_evaluate`` and ``save_index``; serving calls
``load_index`` and ``RetrievalIndex.search``. Everything here takes plain numpy arrays and an
``IndexConfig``.

- Build: ScaNN tree (k-means partitioning) + asymmetric hashing + exact float32 re-scoring of the
  best ``reorder`` candidates (at least twice the neighbours asked), dot-product similarity.
  The number of leaves scales with the catalogue up to ``max_leaves`` (``plan_index``). A
  catalogue too small to train a tree falls back to ScaNN's exact brute-force scoring.
- Evaluate: recall@k of ScaNN against exact dot-product search (``brute_force_top_k``) and the
  latency of single-query searches re-scoring what serving's ``RetrievalIndex.search`` does, on
  held-out queries; ``bless`` is the release rule.
- Save / load: ``out_dir/scann/`` (ScaNN's serialized assets), ``out_dir/item_ids.npy``
  (row -> item id) and ``out_dir/index.json`` (metadata, evaluation, searcher parameters;
  written last, so its presence marks a complete index). ScaNN's ``scann_assets.pbtxt`` records
  *absolute* asset paths, which break as soon as the Pusher copies the folder; ``save_index``
  stores bare file names instead and ``load_index`` resolves them against wherever the folder is
  now. Remote URIs (``gs://...``) go through ``tf.io.gfile`` via a local temporary copy.
"""

from __future__ import annotations

import marquee  # noqa: F401  (TF_USE_LEGACY_KERAS before scann imports TensorFlow)

# isort: split
import dataclasses
import importlib.metadata
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from marquee import io
from marquee.config import IndexConfig
from marquee.retrieval_index import (  # noqa: F401  (re-exported: load with what saves)
    ASSETS_FILE,
    DATASET_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    ITEM_IDS_FILE,
    SCANN_CONFIG_FILE,
    SCANN_DIR,
    RetrievalIndex,
    _check_item_ids,
    _check_k,
    _check_matrix,
    _searcher_params,
    load_index,
    rescored,
    scann,  # the one guarded import of ScaNN, with its install hint
    scann_assets_pb2,
    scann_pb2,
)

# The anisotropic threshold ScaNN recommends for dot-product (maximum inner product) search.
ANISOTROPIC_QUANTIZATION_THRESHOLD = 0.2
# Untimed searches before latency is measured (first calls pay for page faults and caches).
WARMUP_QUERIES = 20
# Scores held at once by brute_force_top_k (float64: 16M entries = 128 MB).
_CHUNK_SCORES = 1 << 24

_RESERVED_METADATA_KEYS = ("evaluation",)


@dataclasses.dataclass(frozen=True)
class IndexEvaluation:
    recall: float  # mean recall@k of ScaNN vs exact dot-product search on the eval queries
    latency_ms_p50: float  # median single-query search latency
    latency_ms_p99: float
    num_items: int
    num_queries: int
    k: int
    num_leaves: int  # 0 when brute force was used (tiny catalogue)
    blessed: bool
    reason: str  # why blessed or not, naming the thresholds and the figures
    leaves_to_search: int = 0  # leaves a search visits (tuned, or the plan's); 0 brute force

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class IndexPlan:
    """ScaNN parameters for one catalogue size (see ``plan_index``)."""

    num_items: int
    k: int  # num_neighbors clipped to the catalogue
    brute_force: bool
    num_leaves: int  # 0 for brute force
    leaves_to_search: int  # 0 for brute force
    reorder: int  # candidates re-scored exactly; 0 for brute force (scores are already exact)


def plan_index(num_items: int, config: IndexConfig) -> IndexPlan:
    """The searcher for a catalogue of ``num_items``.

    num_leaves = max(1, round(num_items / items_per_leaf)),
    leaves_to_search = max(1, ceil(num_leaves * leaves_to_search_share)),
    reorder = min(reorder, num_items), k = min(num_neighbors, num_items).
    num_leaves is capped at ``max_leaves`` (500,000 items at the defaults: 2,000 leaves of 250,
    400 searched).
    Below ``config.brute_force_below`` items or 2 leaves: brute force.
    """
    _check_config(config)
    if num_items < 1:
        raise ValueError("the catalogue is empty: an index needs at least one item embedding")
    k = min(config.num_neighbors, num_items)
    num_leaves = min(config.max_leaves, max(1, round(num_items / config.items_per_leaf)))
    if num_items < config.brute_force_below or num_leaves < 2:
        return IndexPlan(num_items, k, True, 0, 0, 0)
    # round() first: 50 * 0.14 is 7.000000000000001 in floating point and must search 7, not 8.
    leaves = max(1, math.ceil(round(num_leaves * config.leaves_to_search_share, 9)))
    return IndexPlan(
        num_items, k, False, num_leaves, min(leaves, num_leaves), min(config.reorder, num_items)
    )


def build_searcher(item_embeddings: np.ndarray, config: IndexConfig):
    """Trains a ScaNN searcher over ``item_embeddings`` [num_items, dim] (dot product).

    Returns a ``scann.scann_ops_pybind.ScannSearcher`` whose row ``i`` is item row ``i``. The
    build is deterministic for a given ``config.seed``: the tree uses k-means++ initialisation,
    because with ScaNN's random initialisation two builds differed even with a fixed seed.
    """
    items = _check_matrix("item_embeddings", item_embeddings)
    plan = plan_index(len(items), config)
    builder = scann.scann_ops_pybind.builder(items, plan.k, "dot_product")
    if plan.brute_force:
        builder = builder.score_brute_force()
    else:
        builder = (
            builder.tree(
                num_leaves=plan.num_leaves,
                num_leaves_to_search=plan.leaves_to_search,
                training_sample_size=len(items),
                random_init=False,
            )
            .score_ah(
                config.dims_per_block,
                anisotropic_quantization_threshold=ANISOTROPIC_QUANTIZATION_THRESHOLD,
                training_sample_size=len(items),
            )
            .reorder(plan.reorder)
        )
    scann_config = text_format.Parse(builder.create_config(), scann_pb2.ScannConfig())
    if scann_config.HasField("partitioning"):
        scann_config.partitioning.clustering_seed = config.seed
    if scann_config.HasField("hash"):
        scann_config.hash.asymmetric_hash.clustering_seed = config.seed
        scann_config.hash.asymmetric_hash.sampling_seed = config.seed
    return scann.scann_ops_pybind.create_searcher(items, text_format.MessageToString(scann_config))


def brute_force_top_k(queries: np.ndarray, item_embeddings: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k by dot product: [num_queries, dim] x [num_items, dim] -> [num_queries, k].

    Returns item row indices (int64), best first; equal scores are ordered by lower row index, and
    the k-th place goes to the lowest tied rows. Scores are computed in float64. ``k`` larger than
    the catalogue is clipped to ``num_items``.
    """
    q = _check_matrix("queries", queries)
    items = _check_matrix("item_embeddings", item_embeddings)
    _check_same_dim(q, items)
    k = _check_k(k, len(items))
    items64 = items.astype(np.float64)
    out = np.empty((len(q), k), dtype=np.int64)
    rows = max(1, _CHUNK_SCORES // len(items))
    for start in range(0, len(q), rows):
        scores = q[start : start + rows].astype(np.float64) @ items64.T
        out[start : start + rows] = _top_k_rows(scores, k)
    return out


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    n = scores.shape[1]
    kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # k-th largest per row
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))  # exactly k per row
    idx = np.nonzero(chosen)[1].reshape(len(scores), k)  # ascending row index within each row
    order = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def bless(recall: float, latency_ms_p50: float, config: IndexConfig) -> tuple[bool, str]:
    """The release rule: recall >= min_recall and p50 latency <= max_latency_ms.

    Returns (blessed, a sentence naming both figures and both thresholds).
    """
    if not (math.isfinite(recall) and 0.0 <= recall <= 1.0):
        raise ValueError(f"recall must be in [0, 1], got {recall!r}")
    if not (math.isfinite(latency_ms_p50) and latency_ms_p50 >= 0.0):
        raise ValueError(f"latency_ms_p50 must be a finite number >= 0, got {latency_ms_p50!r}")
    recall_ok = recall >= config.min_recall
    latency_ok = latency_ms_p50 <= config.max_latency_ms
    figures = (
        f"recall {recall:.4f} {'>=' if recall_ok else '<'} min_recall {config.min_recall:g} and "
        f"p50 latency {latency_ms_p50:.3g} ms {'<=' if latency_ok else '>'} "
        f"max_latency_ms {config.max_latency_ms:g}"
    )
    if recall_ok and latency_ok:
        return True, f"Blessed: {figures}."
    hints = []
    if not recall_ok:
        hints.append("to raise recall, search more (index.leaves_to_search_share, index.reorder)")
    if not latency_ok:
        hints.append("to cut latency, search less (lower leaves_to_search_share or reorder)")
    return False, f"Not blessed: {figures}; {' and '.join(hints)}."


def evaluate_searcher(
    searcher, queries: np.ndarray, item_embeddings: np.ndarray, config: IndexConfig
) -> IndexEvaluation:
    """Recall@k and single-query latency of ``searcher`` on up to ``eval_queries`` queries.

    ``queries`` [num_queries, dim]; ``item_embeddings`` [num_items, dim] are the rows the searcher
    was built on. Recall is |ScaNN top-k ∩ exact top-k| / k averaged over queries, with
    k = min(num_neighbors, num_items). Each query is one ``searcher.search`` re-scoring what
    ``RetrievalIndex.search`` (serving's call) re-scores; it does not search every leaf again
    when the leaves visited hold fewer than k items, as serving does, so a tree searching too
    few leaves shows as low recall. Latency times each call after ``WARMUP_QUERIES`` untimed
    ones.
    """
    items = _check_matrix("item_embeddings", item_embeddings)
    q = _check_matrix("queries", queries)
    _check_same_dim(q, items)
    if searcher.size() != len(items):
        raise ValueError(
            f"the searcher holds {searcher.size()} items but item_embeddings has {len(items)} "
            "rows; evaluate with the embeddings the searcher was built from"
        )
    plan = plan_index(len(items), config)
    params = _searcher_params(searcher)
    q = q[: config.eval_queries]
    k = plan.k
    pre = rescored(k, params["reorder"], len(items))
    exact = brute_force_top_k(q, items, k)
    for row in q[:WARMUP_QUERIES]:
        searcher.search(row, final_num_neighbors=k, pre_reorder_num_neighbors=pre)
    latency_s = np.empty(len(q))
    hits = np.empty(len(q), dtype=np.int64)
    for i, row in enumerate(q):
        start = time.perf_counter()
        found, _ = searcher.search(row, final_num_neighbors=k, pre_reorder_num_neighbors=pre)
        latency_s[i] = time.perf_counter() - start
        hits[i] = np.intersect1d(found.astype(np.int64), exact[i]).size
    recall = float(hits.sum() / (len(q) * k))
    p50, p99 = (float(v) for v in np.percentile(latency_s * 1000.0, [50, 99]))
    blessed, reason = bless(recall, p50, config)
    if params["brute_force"]:
        reason += (
            " Searched by brute force (exact): a tree needs at least "
            f"{config.brute_force_below} items (index.brute_force_below) and 2 leaves of "
            f"items_per_leaf={config.items_per_leaf}; the catalogue has "
            f"{len(items)}."
        )
    return IndexEvaluation(
        recall=recall,
        latency_ms_p50=p50,
        latency_ms_p99=p99,
        num_items=len(items),
        num_queries=len(q),
        k=k,
        num_leaves=params["num_leaves"],
        blessed=blessed,
        reason=reason,
        leaves_to_search=params["leaves_to_search"],
    )


@dataclasses.dataclass(frozen=True)
class LeafTuning:
    """What ``tune_leaves_to_search`` chose and the recall it measured there."""

    leaves_to_search: int
    planned: int  # the plan's leaves_to_search: the most a search may visit
    recall: dict[int, float]  # k -> recall@k on the tuning queries at ``leaves_to_search``
    goal: float  # min_recall + tune_margin
    num_queries: int

    def sentence(self) -> str:
        figures = (", ".join(f"recall@{k} {r:.4f}" for k, r in sorted(self.recall.items()))
                   + f" on {self.num_queries} held-out tuning queries")
        if all(r >= self.goal for r in self.recall.values()):
            return (f"Leaves searched tuned to {self.leaves_to_search} of the plan's "
                    f"{self.planned} ({figures}; goal {self.goal:g}).")
        return (f"Leaves searched: the plan's {self.planned}; the tuning goal {self.goal:g} "
                f"is not reached even there ({figures}).")


def tune_leaves_to_search(searcher, queries: np.ndarray, item_embeddings: np.ndarray,
                          config: IndexConfig) -> LeafTuning | None:
    """The fewest leaves a search may visit, at most the plan's ``leaves_to_search``, whose
    recall on ``queries`` [n, dim] reaches ``min_recall + tune_margin`` at ``num_neighbors`` and
    at ``tune_k`` (each clipped to the catalogue), with the re-scoring serving does. Recall grows
    with the leaves visited, so this is a binary search: about log2(planned) recall passes.
    None for a brute-force index or without queries (nothing to tune).
    """
    items = _check_matrix("item_embeddings", item_embeddings)
    plan = plan_index(len(items), config)
    if plan.brute_force or len(queries) == 0:
        return None
    q = _check_matrix("queries", queries)
    _check_same_dim(q, items)
    ks = sorted({plan.k, min(config.tune_k, len(items))})
    exact = brute_force_top_k(q, items, ks[-1])  # best first: top-k is its first k columns

    def recall(leaves: int) -> dict[int, float]:
        out = {}
        for k in ks:
            pre = rescored(k, plan.reorder, len(items))
            hits = 0
            for i, row in enumerate(q):
                found, _ = searcher.search(row, final_num_neighbors=k,
                                           pre_reorder_num_neighbors=pre, leaves_to_search=leaves)
                hits += np.intersect1d(np.asarray(found, np.int64), exact[i, :k]).size
            out[k] = hits / (len(q) * k)
        return out

    goal = min(1.0, config.min_recall + config.tune_margin)
    passes = lambda r: all(v >= goal for v in r.values())  # noqa: E731
    best, best_recall = plan.leaves_to_search, recall(plan.leaves_to_search)
    lo, hi = 1, plan.leaves_to_search
    if passes(best_recall):
        while lo < hi:
            mid = (lo + hi) // 2
            r = recall(mid)
            if passes(r):
                hi, best, best_recall = mid, mid, r
            else:
                lo = mid + 1
    return LeafTuning(best, plan.leaves_to_search, best_recall, goal, len(q))


def tuned(searcher, tune_queries: np.ndarray | None, item_embeddings: np.ndarray,
          config: IndexConfig):
    """(searcher, LeafTuning or None): with ``config.tune_leaves`` and ``tune_queries``, the
    searcher visiting the leaves ``tune_leaves_to_search`` finds (a copy when that differs from
    the plan); otherwise ``searcher`` as it is."""
    if not config.tune_leaves or tune_queries is None:
        return searcher, None
    tuning = tune_leaves_to_search(searcher, tune_queries, item_embeddings, config)
    if tuning is not None and tuning.leaves_to_search != tuning.planned:
        searcher = with_leaves_to_search(searcher, tuning.leaves_to_search)
    return searcher, tuning


def with_leaves_to_search(searcher, leaves: int):
    """A copy of a tree ``searcher`` that visits ``leaves`` leaves by default (ScaNN's
    ``max_spill_centers``): serialized, its config changed, loaded again. The copy saves and
    loads like any searcher, so serving searches the tuned number without knowing of it."""
    with tempfile.TemporaryDirectory() as tmp:
        searcher.serialize(tmp)
        path = Path(tmp, SCANN_CONFIG_FILE)
        config = scann_pb2.ScannConfig()
        config.ParseFromString(path.read_bytes())
        if not config.HasField("partitioning"):
            raise ValueError("with_leaves_to_search needs a tree searcher; this one is brute force")
        config.partitioning.query_spilling.max_spill_centers = int(leaves)
        path.write_bytes(config.SerializeToString())
        return scann.scann_ops_pybind.load_searcher(tmp, assets_backcompat_shim=False)


def build_and_evaluate(
    item_embeddings: np.ndarray,
    item_ids: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
    out_dir: str | os.PathLike | None = None,
    tune_queries: np.ndarray | None = None,
):
    """Builds the searcher, evaluates it and, given ``out_dir``, saves it there.

    ``item_embeddings`` [num_items, dim], ``item_ids`` [num_items] (row -> item id),
    ``queries`` [num_queries, dim]. With ``tune_queries`` [n, dim] (held out, not ``queries``)
    and ``config.tune_leaves``, the searcher visits the fewest leaves
    ``tune_leaves_to_search`` finds, and the evaluation's reason says so. Returns (searcher,
    IndexEvaluation).
    """
    items = _check_matrix("item_embeddings", item_embeddings)
    ids = _check_item_ids(item_ids, len(items))
    _check_same_dim(_check_matrix("queries", queries), items)
    searcher, tuning = tuned(build_searcher(items, config), tune_queries, items, config)
    evaluation = evaluate_searcher(searcher, queries, items, config)
    if tuning is not None:
        evaluation = dataclasses.replace(evaluation,
                                         reason=f"{evaluation.reason} {tuning.sentence()}")
    if out_dir is not None:
        save_index(searcher, ids, evaluation, out_dir, {})
    return searcher, evaluation


def save_index(
    searcher,
    item_ids: np.ndarray,
    evaluation: IndexEvaluation,
    out_dir: str | os.PathLike,
    metadata: dict,
) -> None:
    """Writes ``scann/``, ``item_ids.npy`` and ``index.json`` into ``out_dir``.

    ``metadata`` (JSON-serialisable, e.g. the training run id) is stored as given; ``load_index``
    returns it with the evaluation added under ``"evaluation"``. ``out_dir`` may be a remote URI.
    """
    ids = _check_item_ids(item_ids, searcher.size())
    if evaluation.num_items != len(ids):
        raise ValueError(
            f"the evaluation is of {evaluation.num_items} items but the searcher holds "
            f"{len(ids)}; save the evaluation that build_and_evaluate returned with its searcher"
        )
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    reserved = [key for key in _RESERVED_METADATA_KEYS if key in metadata]
    if reserved:
        raise ValueError(f"metadata key(s) {reserved} are reserved for the index; rename them")
    try:
        json.dumps(metadata)
    except TypeError as e:
        raise ValueError(
            f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {e}"
        ) from e
    out = str(out_dir)
    if io.is_remote(out):
        if tf.io.gfile.exists(os.path.join(out, INDEX_FILE)):
            raise ValueError(f"{out} already holds an index; save into a fresh directory")
        with tempfile.TemporaryDirectory() as tmp:
            save_index(searcher, ids, evaluation, os.path.join(tmp, "index"), metadata)
            io.copy_tree(os.path.join(tmp, "index"), out, last=INDEX_FILE)
        return
    root = Path(out)
    scann_dir = root / SCANN_DIR
    if (root / INDEX_FILE).exists() or (scann_dir.exists() and any(scann_dir.iterdir())):
        raise ValueError(f"{root} already holds an index; save into a fresh directory")
    scann_dir.mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(scann_dir))
    _write_relative_asset_paths(scann_dir)
    dataset = np.load(scann_dir / DATASET_FILE, mmap_mode="r")  # the float32 rows re-scored
    np.save(root / ITEM_IDS_FILE, ids)
    document = {
        "format_version": FORMAT_VERSION,
        "scann_version": importlib.metadata.version("scann"),
        "searcher": {
            "num_items": len(ids),
            "dim": int(dataset.shape[1]),
            **_searcher_params(searcher),
        },
        "metadata": metadata,
        "evaluation": evaluation.to_dict(),
    }
    (root / INDEX_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))


def _write_relative_asset_paths(scann_dir: Path) -> None:
    """ScaNN writes absolute asset paths; keep bare file names so the folder can move."""
    listing = scann_dir / ASSETS_FILE
    assets = text_format.Parse(listing.read_text(), scann_assets_pb2.ScannAssets())
    for asset in assets.assets:
        asset.asset_path = os.path.basename(asset.asset_path)
    listing.write_text(text_format.MessageToString(assets))


def _check_config(config: IndexConfig) -> None:
    problems = []
    if config.num_neighbors < 1:
        problems.append(f"num_neighbors={config.num_neighbors} must be >= 1")
    if config.items_per_leaf < 1:
        problems.append(f"items_per_leaf={config.items_per_leaf} must be >= 1")
    if not 0.0 < config.leaves_to_search_share <= 1.0:
        problems.append(f"leaves_to_search_share={config.leaves_to_search_share} must be in (0, 1]")
    if config.max_leaves < 2:
        problems.append(f"max_leaves={config.max_leaves} must be >= 2 (a tree needs 2 leaves)")
    if config.reorder < config.num_neighbors:
        problems.append(
            f"reorder={config.reorder} is below num_neighbors={config.num_neighbors} (ScaNN would "
            f"return only {config.reorder} neighbours); set reorder >= num_neighbors"
        )
    if config.dims_per_block < 1:
        problems.append(f"dims_per_block={config.dims_per_block} must be >= 1")
    if config.eval_queries < 1:
        problems.append(f"eval_queries={config.eval_queries} must be >= 1")
    if config.tune_k < 1:
        problems.append(f"tune_k={config.tune_k} must be >= 1")
    if not 0.0 <= config.tune_margin <= 1.0:
        problems.append(f"tune_margin={config.tune_margin} must be in [0, 1]")
    if config.tune_queries < 0:
        problems.append(f"tune_queries={config.tune_queries} must be >= 0 (0: no tuning)")
    if not 0.0 <= config.min_recall <= 1.0:
        problems.append(f"min_recall={config.min_recall} must be in [0, 1]")
    if not config.max_latency_ms > 0.0:
        problems.append(f"max_latency_ms={config.max_latency_ms} must be > 0")
    if not 0 <= config.seed < 2**31:
        problems.append(f"seed={config.seed} must be in [0, 2**31)")
    if problems:
        raise ValueError("invalid index config: " + "; ".join(problems) + " (section `index:`)")


def _check_same_dim(queries: np.ndarray, items: np.ndarray) -> None:
    if queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"queries have dim {queries.shape[1]} but item_embeddings have dim {items.shape[1]}; "
            "embed both with the towers of the same training run"
        )


