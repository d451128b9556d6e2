"""The pushed retrieval indexes, loaded by version and checked against the query tower's run."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from marquee.artifacts import (
    QUERY_TOWER,
    RETRIEVAL_INDEX,
    versions,
)
from marquee.retrieval_index import INDEX_FILE, RetrievalIndex, load_index
from serving.models.errors import ModelUnavailable
from serving.models.query import ModelMismatch, check_same_run, training_run_of


class IndexStore:
    """Loads the retrieval index pushed with a given query-tower version, and checks that both
    come from one training run (refusing a mismatched pair with ModelMismatch)."""

    def __init__(self, model_base: str | Path):
        self.base = Path(model_base)
        self._lock = threading.Lock()
        self._cache: dict[int, RetrievalIndex] = {}

    def get(self, query_version: int) -> RetrievalIndex:
        with self._lock:
            if query_version in self._cache:
                return self._cache[query_version]
        index_dir = self.base / RETRIEVAL_INDEX / str(query_version)
        if not index_dir.is_dir():
            raise ModelMismatch(
                f"the query tower answered as version {query_version} but {index_dir} does not "
                "exist; the index and the towers are pushed together, so the model base and the "
                "model server are out of sync")
        if not (index_dir / INDEX_FILE).is_file():
            raise ModelUnavailable(f"{index_dir} holds no {INDEX_FILE}: the index of version "
                                   f"{query_version} is still being copied (or the copy broke)")
        try:
            index = load_index(index_dir)
        except ValueError as e:  # a model failure (the page falls back), not a bug of the page
            raise ModelUnavailable(f"the index of version {query_version}: {e}") from e
        run = training_run_of(self.base / QUERY_TOWER / str(query_version))
        check_same_run(run, index.metadata.get("training_run", "?"), str(index_dir))
        with self._lock:
            # the newest two (a page under way may still use the one before): bounded memory
            self._cache = {v: self._cache[v] for v in sorted(self._cache)[-1:]}
            self._cache[query_version] = index
        return index

    def popularity(self) -> dict[int, float]:
        """Train positives per item from the newest whole index's metadata ({} if none)."""
        whole = [v for v in versions(self.base / RETRIEVAL_INDEX)
                 if (self.base / RETRIEVAL_INDEX / str(v) / INDEX_FILE).is_file()]
        if not whole:
            return {}
        meta = json.loads((self.base / RETRIEVAL_INDEX / str(whole[-1]) / INDEX_FILE).read_text())
        pop = meta.get("metadata", {}).get("popularity", {})
        return {int(k): float(v) for k, v in pop.items()}
