"""Model backends of the thin client: the same two calls in-process or over TF Serving's gRPC.

Both implement :class:`ModelBackend`; the contract tests run on both, including parity (the same
user gets the same list). The retrieval index is not a backend call: stock TF Serving cannot
load ScaNN ops, so the client searches it in-process (:class:`IndexStore`), after checking that
the index and the query tower that answered come from the same training run.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import tensorflow as tf

from components.model_pusher.push_lib import (
    CANDIDATE_TOWER,
    QUERY_TOWER,
    RANKER,
    RETRIEVAL_INDEX,
    versions,
)
from components.scann_indexer.index_lib import RetrievalIndex, load_index
from serving.retrieval import ModelMismatch, NoPushedModel, check_same_run, training_run_of
from trainer.ranking import P_WATCH, WATCH_TIME_SECONDS
from trainer.retrieval import EMBEDDING

SIGNATURE = "serving_default"


class ModelBackend(Protocol):
    name: str

    def query_embeddings(self, inputs: dict[str, np.ndarray],
                         timeout_s: float) -> tuple[np.ndarray, int]:
        """Query tower: inputs of B queries -> ([B, dim] embeddings, version that answered)."""

    def rank(self, inputs: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """Ranker on N (user, item) pairs -> {p_watch: [N], watch_time_seconds: [N]}."""

    def candidate_embeddings(self, inputs: dict[str, np.ndarray], version: int,
                             timeout_s: float) -> np.ndarray:
        """Candidate tower of ``version`` on N titles' raw inputs -> [N, dim] (new titles)."""

    def has_ranker(self) -> bool:
        ...


class InProcessBackend:
    """Loads the latest pushed SavedModels from the model base into this process.

    Calls of one model are serialised (a lock per model): concurrent calls of a loaded
    signature with different batch sizes corrupt the heap in TF 2.16 (reproduced with the ranker
    from 4 threads; ``tests/test_serving.py`` runs concurrent homepages). One call already uses
    every core through TF's intra-op threads, so the lock costs little throughput.
    """

    name = "in_process"

    def __init__(self, model_base: str | Path):
        self.base = Path(model_base)
        vs = versions(self.base / QUERY_TOWER)
        if not vs:
            raise NoPushedModel(f"{self.base / QUERY_TOWER}: no pushed version; run the pipeline")
        self.query_version = vs[-1]
        self._query = tf.saved_model.load(
            str(self.base / QUERY_TOWER / str(vs[-1]))).signatures[SIGNATURE]
        rv = versions(self.base / RANKER)
        self.ranker_version = rv[-1] if rv else None
        self._ranker = (tf.saved_model.load(str(self.base / RANKER / str(rv[-1])))
                        .signatures[SIGNATURE] if rv else None)
        self._candidate = None  # loaded on first use (only new titles need it)
        self._lock = threading.Lock()
        self._calls = {QUERY_TOWER: threading.Lock(), RANKER: threading.Lock(),
                       CANDIDATE_TOWER: threading.Lock()}

    def query_embeddings(self, inputs, timeout_s):
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        with self._calls[QUERY_TOWER]:
            out = self._query(**tensors)
        return out[EMBEDDING].numpy(), self.query_version

    def rank(self, inputs, timeout_s):
        if self._ranker is None:
            raise NoPushedModel(f"{self.base / RANKER}: no blessed ranker pushed")
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        with self._calls[RANKER]:
            out = self._ranker(**tensors)
        return {P_WATCH: out[P_WATCH].numpy(), WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS].numpy()}

    def has_ranker(self) -> bool:
        return self._ranker is not None

    def candidate_embeddings(self, inputs, version, timeout_s):
        if version != self.query_version:
            raise ModelMismatch(f"this process loaded model version {self.query_version}; the "
                                f"candidate tower of version {version} is not loaded")
        with self._lock:
            if self._candidate is None:
                path = self.base / CANDIDATE_TOWER / str(version)
                self._candidate = tf.saved_model.load(str(path)).signatures[SIGNATURE]
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        with self._calls[CANDIDATE_TOWER]:
            out = self._candidate(**tensors)
        return out[EMBEDDING].numpy()


class GrpcBackend:
    """TF Serving (or ``marquee model-server``) over gRPC: models query_tower and ranker."""

    name = "tf_serving"

    def __init__(self, target: str, model_base: str | Path, timeout_s: float = 1.0):
        from serving.tf_serving_client import TFServingClient

        self.target = target
        self.base = Path(model_base)
        self.client = TFServingClient(target, timeout_s=timeout_s)

    def query_embeddings(self, inputs, timeout_s):
        out, version = self.client.predict_with_version(QUERY_TOWER, inputs, timeout_s=timeout_s)
        return out[EMBEDDING], version

    def rank(self, inputs, timeout_s):
        out = self.client.predict(RANKER, inputs, timeout_s=timeout_s)
        return {P_WATCH: out[P_WATCH], WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS]}

    def candidate_embeddings(self, inputs, version, timeout_s):
        return self.client.predict(CANDIDATE_TOWER, inputs, version=version,
                                   timeout_s=timeout_s)[EMBEDDING]

    def has_ranker(self) -> bool:
        # The pusher writes the ranker only when blessed; TF Serving serves what is on disk.
        return bool(versions(self.base / RANKER))


class IndexStore:
    """Loads the retrieval index pushed with a given query-tower version, and checks that both
    come from one training run (refusing a mismatched pair with ModelMismatch)."""

    # How long the newest pushed version is remembered (it is read on every cached request).
    LATEST_TTL_S = 1.0

    def __init__(self, model_base: str | Path, clock=time.monotonic):
        self.base = Path(model_base)
        self._lock = threading.Lock()
        self._cache: dict[int, RetrievalIndex] = {}
        self._clock = clock
        self._latest: tuple[float, int | None] = (float("-inf"), None)

    def latest_version(self) -> int | None:
        """The newest pushed index version (None before the first push), re-read from disk at
        most every ``LATEST_TTL_S`` seconds instead of on every request."""
        now = self._clock()
        checked, version = self._latest
        if now - checked >= self.LATEST_TTL_S:
            pushed = versions(self.base / RETRIEVAL_INDEX)
            version = pushed[-1] if pushed else None
            self._latest = (now, version)
        return version

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
        index = load_index(index_dir)
        run = training_run_of(self.base / QUERY_TOWER / str(query_version))
        check_same_run(run, index.metadata.get("training_run", "?"), str(index_dir))
        with self._lock:
            self._cache = {query_version: index}  # keep only the newest: bounded memory
        return index

    def popularity(self) -> dict[int, float]:
        """Train positives per item from the newest index's metadata ({} if none pushed)."""
        vs = versions(self.base / RETRIEVAL_INDEX)
        if not vs:
            return {}
        meta = json.loads((self.base / RETRIEVAL_INDEX / str(vs[-1]) / "index.json").read_text())
        pop = meta.get("metadata", {}).get("popularity", {})
        return {int(k): float(v) for k, v in pop.items()}
