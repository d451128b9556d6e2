"""The model backend interface of the thin client: the same calls in-process or over TF Serving.

Every backend implements :class:`ModelBackend`; one contract test class
(``tests/test_backends.py``) runs on each: in-process, gRPC, unavailable and the test double.
The retrieval index is not a backend call: stock TF Serving cannot load ScaNN ops, so the client
searches it in-process (:class:`serving.models.index_store.IndexStore`), after checking that the
index and the query tower that answered come from the same training run.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from serving.models.errors import ModelUnavailable


class ModelBackend(Protocol):
    name: str

    def query_embeddings(self, inputs: dict[str, np.ndarray],
                         timeout_s: float) -> tuple[np.ndarray, int]:
        """Query tower: inputs of B queries -> ([B, dim] embeddings, version that answered)."""

    def rank(self, inputs: dict[str, np.ndarray], timeout_s: float,
             version: int | None = None) -> dict[str, np.ndarray]:
        """Ranker of ``version`` (None: the newest) on N (user, item) pairs ->
        {p_watch: [N], watch_time_seconds: [N]}."""

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

    def query_embeddings(self, inputs, timeout_s):
        raise ModelUnavailable(self.reason)

    def rank(self, inputs, timeout_s, version=None):
        raise ModelUnavailable(self.reason)

    def candidate_embeddings(self, inputs, version, timeout_s):
        raise ModelUnavailable(self.reason)

    def has_ranker(self, version=None) -> bool:
        return False

    def serving_version(self) -> int | None:
        return None
