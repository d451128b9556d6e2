"""A saved retrieval index, as serving and the pipeline read it: load and search.

``marquee.artifacts`` names the folder; this module is its format::

    DIR/scann/          ScaNN's serialized assets (bare file names; resolved wherever DIR is)
    DIR/item_ids.npy    row -> item id
    DIR/index.json      metadata, evaluation, searcher parameters; written last, so its
                        presence marks a complete index

The ScannIndexer (``components/scann_indexer/index_lib.py``) builds, evaluates and saves it;
serving loads it and searches it in the client (stock TF Serving cannot load ScaNN ops).
"""

from __future__ import annotations

import marquee  # noqa: F401  (TF_USE_LEGACY_KERAS before scann imports TensorFlow)

# isort: split
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

try:
    import scann
    from scann.proto import scann_pb2
    from scann.scann_ops import scann_assets_pb2
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the retrieval index needs ScaNN, which ships Linux x86-64 wheels only: "
        "pip install scann==1.3.2 (pinned in pyproject.toml)"
    ) from e

from marquee import io
from marquee.sorted_ids import positions

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
ITEM_IDS_FILE = "item_ids.npy"
SCANN_DIR = "scann"
ASSETS_FILE = "scann_assets.pbtxt"
SCANN_CONFIG_FILE = "scann_config.pb"
DATASET_FILE = "dataset.npy"
# A tree search re-scores exactly at least this many candidates per neighbour asked (and at least
# the searcher's own ``reorder``): asymmetric-hashing scores are approximate, so the true k-th
# best is often ranked just past k. At 500K x 64, top-1000, re-scoring 1,000 gave recall@1000
# 0.88 and 2,000 gave 0.95 (bench/bench_ann.py's data); 4,000 added 0.002 for 0.1 ms more.
REORDER_PER_NEIGHBOUR = 2


def load_index(index_dir: str | os.PathLike) -> RetrievalIndex:
    """Loads what ``save_index`` wrote, from wherever the folder is now (local or remote)."""
    src = str(index_dir)
    if io.is_remote(src):
        if not tf.io.gfile.exists(os.path.join(src, INDEX_FILE)):
            raise ValueError(f"{src} holds no {INDEX_FILE}: not a saved index (or a partial copy)")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "index")
            io.copy_tree(src, local)
            return load_index(local)  # the searcher is in memory once loaded
    root = Path(src)
    if not (root / INDEX_FILE).is_file():
        raise ValueError(f"{root} holds no {INDEX_FILE}: not a saved index (or a partial copy)")
    document = json.loads((root / INDEX_FILE).read_text())
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root / INDEX_FILE} has format_version {document.get('format_version')!r}; this "
            f"code reads {FORMAT_VERSION}. Rebuild the index with this version of marquee."
        )
    ids = np.load(root / ITEM_IDS_FILE, allow_pickle=False)
    searcher = _load_scann(root / SCANN_DIR)
    if searcher.size() != len(ids):
        raise ValueError(
            f"{root}: the ScaNN searcher holds {searcher.size()} items but {ITEM_IDS_FILE} has "
            f"{len(ids)}; the folder mixes two indexes, rebuild it"
        )
    metadata = {**document["metadata"], "evaluation": document["evaluation"]}
    # ScaNN keeps the float32 rows it re-scores (brute force scores them all) in dataset.npy.
    embeddings = np.load(root / SCANN_DIR / DATASET_FILE, allow_pickle=False)
    return RetrievalIndex(searcher, ids, metadata, dim=document["searcher"]["dim"],
                          embeddings=embeddings)


class RetrievalIndex:
    """What serving uses: a ScaNN searcher plus the row -> item id mapping.

    Attributes:
      item_ids: [num_items] int64, row -> item id.
      metadata: what ``save_index`` was given plus ``"evaluation"`` (``IndexEvaluation.to_dict``).
      dim: embedding dimension queries must have.
      embeddings: [num_items, dim] float32 item embeddings by row (what ScaNN re-scores), or
        None when not given; ``score`` needs them.
    """

    def __init__(self, searcher, item_ids: np.ndarray, metadata: dict, dim: int,
                 embeddings: np.ndarray | None = None):
        self._searcher = searcher
        self.item_ids = _check_item_ids(item_ids, searcher.size())
        self.metadata = metadata
        self.dim = int(dim)
        if embeddings is not None:
            embeddings = _check_matrix("embeddings", embeddings)
            if embeddings.shape != (len(self.item_ids), self.dim):
                raise ValueError(
                    f"embeddings have shape {embeddings.shape} but the index holds "
                    f"{len(self.item_ids)} items of dim {self.dim}; pass the rows it was built on"
                )
        self.embeddings = embeddings
        self._by_id = np.argsort(self.item_ids, kind="stable")  # rows in item id order
        self._sorted_ids = self.item_ids[self._by_id]
        params = _searcher_params(searcher)
        self._num_leaves = params["num_leaves"]
        self._reorder = params["reorder"]

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def _need_embeddings(self) -> None:
        if self.embeddings is None:
            raise ValueError("this index was built without its item embeddings; load it with "
                             "load_index (which reads scann/dataset.npy) to score given items")

    def find(self, item_ids) -> np.ndarray:
        """``item_ids [N]`` -> their rows [N], -1 for an id the index does not hold."""
        at = positions(self._sorted_ids, item_ids)
        return np.where(at >= 0, self._by_id[at], -1)

    def contains(self, item_ids) -> np.ndarray:
        """``item_ids [N]`` -> [N] bool: which the index holds."""
        return self.find(item_ids) >= 0

    def rows(self, item_ids) -> np.ndarray:
        """``item_ids [N]`` -> their rows [N]; ids not in the index raise KeyError naming them."""
        rows = self.find(item_ids)
        if (rows < 0).any():
            ids = np.asarray(item_ids, np.int64).reshape(-1)
            raise KeyError(f"item id(s) not in the retrieval index"
                           f"{' (it is empty)' if not self.num_items else ''}: "
                           f"{ids[rows < 0][:5].tolist()}")
        return rows

    def score(self, query: np.ndarray, item_ids) -> np.ndarray:
        """Exact dot product of one query ``[dim]`` with each of ``item_ids [N]`` -> ``[N]``
        float32: the score ``search`` gives those items (exactly, up to float rounding)."""
        self._need_embeddings()  # before the ids: the missing embeddings are the first fix
        return self.score_rows(query, self.rows(item_ids))

    def score_rows(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """:meth:`score` of the items at ``rows [N]``: rows the index holds (>= 0; :meth:`find`
        gives -1 for an id it lacks, which would index the last row)."""
        self._need_embeddings()
        q = np.asarray(query, np.float32)
        if q.shape != (self.dim,):
            raise ValueError(f"score takes one query of shape ({self.dim},), got {q.shape}")
        return (self.embeddings[rows] @ q).astype(np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by dot product, best first.

        ``queries`` [B, dim] -> (item_ids [B, k] int64, scores [B, k] float32); a single query
        [dim] gives [k] and [k]. ``k`` larger than the catalogue is clipped to ``num_items``.
        """
        q = np.asarray(queries)
        single = q.ndim == 1
        q = _check_matrix("queries", q[None, :] if single else q, allow_empty=True)
        if q.shape[1] != self.dim:
            raise ValueError(
                f"queries have dim {q.shape[1]} but this index holds dim-{self.dim} item "
                "embeddings; encode queries with the query tower of the run that built the index "
                f"(metadata: {self.metadata.get('training_run', 'unknown run')})"
            )
        k = _check_k(k, self.num_items)
        if len(q) == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        pre = rescored(k, self._reorder, self.num_items)
        if single:  # serving's call: ScaNN's one-query search skips the batch set-up (~0.04 ms)
            rows, scores = self._searcher.search(
                q[0], final_num_neighbors=k, pre_reorder_num_neighbors=pre
            )
            if len(rows) == k:
                return self.item_ids[np.asarray(rows, np.int64)], np.asarray(scores, np.float32)
            rows, scores = np.zeros((1, k), np.int64), np.full((1, k), np.nan, np.float32)
        else:
            rows, scores = self._searcher.search_batched(
                q, final_num_neighbors=k, pre_reorder_num_neighbors=pre
            )
            rows, scores = np.asarray(rows), np.asarray(scores)
        # A tree search only scores the leaves it visits; when those hold fewer than k items,
        # ScaNN returns fewer (one query) or pads the row with row 0 and NaN (a batch). Search
        # such queries again over every leaf.
        short = np.isnan(scores).any(axis=1)
        if short.any():
            again, again_scores = self._searcher.search_batched(
                q[short],
                final_num_neighbors=k,
                pre_reorder_num_neighbors=pre,
                leaves_to_search=self._num_leaves,
            )
            rows[short], scores[short] = again, again_scores
        ids = self.item_ids[rows.astype(np.int64)]
        scores = scores.astype(np.float32)
        return (ids[0], scores[0]) if single else (ids, scores)


def rescored(k: int, reorder: int, num_items: int) -> int:
    """Candidates a search for ``k`` neighbours re-scores exactly: max(reorder,
    REORDER_PER_NEIGHBOUR * k) clipped to the catalogue; ``k`` for brute force (reorder 0: its
    scores are exact already)."""
    return min(num_items, max(reorder, REORDER_PER_NEIGHBOUR * k)) if reorder else k


def _searcher_params(searcher) -> dict:
    config = text_format.Parse(searcher.config(), scann_pb2.ScannConfig())
    if config.HasField("brute_force"):
        return {"brute_force": True, "num_leaves": 0, "leaves_to_search": 0, "reorder": 0}
    return {
        "brute_force": False,
        "num_leaves": config.partitioning.num_children,
        "leaves_to_search": config.partitioning.query_spilling.max_spill_centers,
        "reorder": config.exact_reordering.approx_num_neighbors,
    }


def _load_scann(scann_dir: Path):
    """Loads ScaNN assets from ``scann_dir`` wherever it now lives.

    ScaNN opens each asset at the path listed in ``scann_assets.pbtxt`` (a relative path is taken
    from the process's working directory), so the listing is resolved against ``scann_dir`` into a
    temporary directory holding only the listing and the small ``scann_config.pb``; the large
    assets are read in place. The folder itself is never written to (serving may mount it
    read-only).
    """
    listing = scann_dir / ASSETS_FILE
    if not listing.is_file():
        raise ValueError(
            f"{scann_dir} holds no {ASSETS_FILE}: not a ScaNN index written by save_index"
        )
    assets = text_format.Parse(listing.read_text(), scann_assets_pb2.ScannAssets())
    missing = []
    for asset in assets.assets:
        path = scann_dir.resolve() / os.path.basename(asset.asset_path)
        if not path.is_file():
            missing.append(path.name)
        asset.asset_path = str(path)
    if missing:
        raise ValueError(
            f"{scann_dir} lacks ScaNN asset(s) {missing}: an incomplete copy? copy the index again"
        )
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(scann_dir / SCANN_CONFIG_FILE, tmp)
        Path(tmp, ASSETS_FILE).write_text(text_format.MessageToString(assets))
        return scann.scann_ops_pybind.load_searcher(tmp, assets_backcompat_shim=False)


def _check_matrix(name: str, array, allow_empty: bool = False) -> np.ndarray:
    """[rows, dim] finite numbers -> C-contiguous float32, or a ValueError saying what is wrong."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}; pass a float32 array")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [rows, dim], got shape {arr.shape}; stack the vectors into "
            "one matrix (np.stack) or reshape"
        )
    if arr.shape[1] == 0 or (arr.shape[0] == 0 and not allow_empty):
        raise ValueError(f"{name} is empty (shape {arr.shape}); it needs at least one row and dim")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} has {bad.size} row(s) with NaN or inf (first: {bad[:5].tolist()}); the tower "
            "produced non-finite embeddings (diverged training or values beyond float32); fix "
            "the model or drop those rows"
        )
    return arr


def _check_k(k, num_items: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return min(int(k), num_items)


def _check_item_ids(item_ids, num_items: int) -> np.ndarray:
    """[num_items] unique integers -> int64, or a ValueError saying what is wrong."""
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(
            f"item_ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}; "
            "pass the catalogue's int64 item ids in embedding-row order"
        )
    if len(ids) != num_items:
        raise ValueError(
            f"item_ids has {len(ids)} entries but there are {num_items} item embeddings; pass one "
            "id per embedding row, in row order"
        )
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise ValueError("item_ids exceed the int64 range; map them to int64 ids first")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise ValueError(
            f"item_ids has {dup.size} duplicated id(s) (first: {dup[:5].tolist()}); each item "
            "must appear once in the catalogue; deduplicate it before indexing"
        )
    return ids.astype(np.int64)
