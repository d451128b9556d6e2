"""The model backend interface of the thin client: the same calls in-process or over TF Serving.

Every backend implements :class:`ModelBackend`; one contract test class
(``tests/test_backends.py``) runs on each: in-process, gRPC, unavailable and the test double.
The retrieval index is not a backend call: stock TF Serving cannot load ScaNN ops, so the client
searches it in-process (:class:`serving.models.index_store.IndexStore`), after checking that the
index and the query tower that answered come from the same training run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from serving.models.errors import MODEL_ERRORS, ModelUnavailable

log = logging.getLogger(__name__)


class ModelBackend(Protocol):
    name: str

    def query_embeddings(self, inputs: dict[str, np.ndarray], timeout_s: float,
                         version: int | None = None) -> tuple[np.ndarray, int]:
        """Query tower of ``version`` (None: the newest): inputs of B queries -> ([B, dim]
        embeddings, version that answered)."""

    def rank(self, inputs: dict[str, np.ndarray], timeout_s: float,
             version: int | None = None) -> dict[str, np.ndarray]:
        """Ranker of ``version`` (None: the newest) on N (user, item) pairs ->
        {p_watch: [N], watch_time_seconds: [N]}."""

    def rank_by_id(self, inputs: dict[str, np.ndarray], timeout_s: float,
                   version: int | None = None) -> dict[str, np.ndarray]:
        """The ranker's ``rank_by_id`` signature: the page's query features (batch 1),
        ``item_id`` [N] and ``retrieval_score`` [N] -> {p_watch, watch_time_seconds, known}:
        [N] each; ``known`` false for an id the model's table lacks (score it with ``rank``)."""

    def ranks_by_id(self, version: int | None = None) -> bool:
        """Whether ``version``'s ranker has the ``rank_by_id`` signature (rankers exported before
        it have only ``serving_default``)."""

    def ranker_inputs(self, version: int | None = None) -> frozenset[str]:
        """The input names of ``version``'s ranker (empty: none, or not listed by a ranker
        exported before they were); the page sends ``als_score`` only to a ranker that takes
        it."""

    def candidate_embeddings(self, inputs: dict[str, np.ndarray], version: int,
                             timeout_s: float) -> np.ndarray:
        """Candidate tower of ``version`` on N titles' raw inputs -> [N, dim] (new titles)."""

    def has_ranker(self, version: int | None = None) -> bool:
        """Whether ``version`` (None: the newest) has a ranker to call."""

    def serving_version(self) -> int | None:
        """The version new pages are served from (the page cache's key), None if none."""


class UnavailableBackend:
    """Stands in when no model can be loaded at start-up: every call fails, so every request is
    answered by the popularity fallback (with this reason) instead of the server not starting."""

    name = "unavailable"

    def __init__(self, reason: str):
        self.reason = reason

    def query_embeddings(self, inputs, timeout_s, version=None):
        raise ModelUnavailable(self.reason)

    def rank(self, inputs, timeout_s, version=None):
        raise ModelUnavailable(self.reason)

    def rank_by_id(self, inputs, timeout_s, version=None):
        raise ModelUnavailable(self.reason)

    def ranks_by_id(self, version=None) -> bool:
        return False

    def ranker_inputs(self, version=None) -> frozenset[str]:
        return frozenset()

    def candidate_embeddings(self, inputs, version, timeout_s):
        raise ModelUnavailable(self.reason)

    def has_ranker(self, version=None) -> bool:
        return False

    def serving_version(self) -> int | None:
        return None


class WaitingBackend:
    """No model could be loaded at start-up (nothing pushed yet, or a broken push): until one
    loads, every call fails like :class:`UnavailableBackend` (the fallback answers, with the
    reason); every ``retry_s`` a background thread tries ``load()`` again, and once it returns
    a backend every call goes to it. So a server started before the first push serves models
    once they arrive, without a restart."""

    RETRY_S = 10.0

    def __init__(self, load: Callable[[], object], reason: str, retry_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._load, self.reason, self._clock = load, reason, clock
        self.retry_s = self.RETRY_S if retry_s is None else retry_s
        self._backend = None
        self._next = clock() + self.retry_s
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self._backend.name if self._backend is not None else "unavailable"

    def _try(self) -> None:
        try:
            self._backend = self._load()
            log.info("models loaded: serving them from now on (backend %s)", self._backend.name)
        except MODEL_ERRORS + (ValueError,) as e:
            self.reason = f"no model loaded yet: {e}"
            self._next = self._clock() + self.retry_s

    def _current(self):
        if self._backend is None and self._clock() >= self._next:
            with self._lock:
                if self._loading is None or not self._loading.is_alive():
                    self._next = float("inf")  # until this attempt ends
                    self._loading = threading.Thread(target=self._try, daemon=True,
                                                     name="load-models")
                    self._loading.start()
        if self._backend is None:
            raise ModelUnavailable(self.reason)
        return self._backend

    def query_embeddings(self, inputs, timeout_s, version=None):
        return self._current().query_embeddings(inputs, timeout_s, version)

    def rank(self, inputs, timeout_s, version=None):
        return self._current().rank(inputs, timeout_s, version)

    def rank_by_id(self, inputs, timeout_s, version=None):
        return self._current().rank_by_id(inputs, timeout_s, version)

    def ranks_by_id(self, version=None) -> bool:
        return self._backend is not None and self._backend.ranks_by_id(version)

    def ranker_inputs(self, version=None) -> frozenset[str]:
        return frozenset() if self._backend is None else self._backend.ranker_inputs(version)

    def candidate_embeddings(self, inputs, version, timeout_s):
        return self._current().candidate_embeddings(inputs, version, timeout_s)

    def has_ranker(self, version=None) -> bool:
        return self._backend is not None and self._backend.has_ranker(version)

    def serving_version(self) -> int | None:
        try:
            return self._current().serving_version()
        except ModelUnavailable:
            return None


class PinnedBackend:
    """An experiment arm's view of a backend: every model of ``version``, whatever is newer
    (the backend must ``keep`` it loaded)."""

    def __init__(self, backend, version: int):
        self.backend, self.version = backend, int(version)
        self.name = f"{backend.name}@{version}"

    def query_embeddings(self, inputs, timeout_s, version=None):
        return self.backend.query_embeddings(inputs, timeout_s, self.version)

    def rank(self, inputs, timeout_s, version=None):
        return self.backend.rank(inputs, timeout_s, self.version if version is None else version)

    def rank_by_id(self, inputs, timeout_s, version=None):
        return self.backend.rank_by_id(inputs, timeout_s,
                                       self.version if version is None else version)

    def ranks_by_id(self, version=None) -> bool:
        return self.backend.ranks_by_id(self.version if version is None else version)

    def ranker_inputs(self, version=None) -> frozenset[str]:
        return self.backend.ranker_inputs(self.version if version is None else version)

    def candidate_embeddings(self, inputs, version, timeout_s):
        return self.backend.candidate_embeddings(inputs, version, timeout_s)

    def has_ranker(self, version=None) -> bool:
        return self.backend.has_ranker(self.version if version is None else version)

    def serving_version(self) -> int | None:
        return self.version
