"""TF Serving (or ``marquee model-server``) over its gRPC API."""

from __future__ import annotations

import time
from pathlib import Path

from marquee.artifacts import (
    CANDIDATE_TOWER,
    EMBEDDING,
    P_WATCH,
    QUERY_TOWER,
    RANKER,
    WATCH_TIME_SECONDS,
    versions,
)
from serving.models.versions import complete_versions, has_ranker


class GrpcBackend:
    """TF Serving (or ``marquee model-server``) over gRPC. The query tower answers with the
    version TF Serving serves; the ranker and the candidate tower are then asked for that same
    version, so a page never mixes versions. TF Serving loads new versions itself."""

    name = "tf_serving"
    LATEST_TTL_S = 1.0

    def __init__(self, target: str, model_base: str | Path, timeout_s: float = 1.0,
                 clock=time.monotonic):
        from serving.models.tf_serving_client import TFServingClient

        self.target = target
        self.base = Path(model_base)
        self.client = TFServingClient(target, timeout_s=timeout_s)
        self._clock = clock
        self._latest: tuple[float, int | None] = (float("-inf"), None)

    def serving_version(self) -> int | None:
        """The newest complete version on disk (re-read at most every ``LATEST_TTL_S``)."""
        now = self._clock()
        checked, version = self._latest
        if now - checked >= self.LATEST_TTL_S:
            version = max(complete_versions(self.base), default=None)
            self._latest = (now, version)
        return version

    def query_embeddings(self, inputs, timeout_s):
        out, version = self.client.predict_with_version(QUERY_TOWER, inputs, timeout_s=timeout_s)
        return out[EMBEDDING], version

    def rank(self, inputs, timeout_s, version: int | None = None):
        out = self.client.predict(RANKER, inputs, version=version, timeout_s=timeout_s)
        return {P_WATCH: out[P_WATCH], WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS]}

    def candidate_embeddings(self, inputs, version, timeout_s):
        return self.client.predict(CANDIDATE_TOWER, inputs, version=version,
                                   timeout_s=timeout_s)[EMBEDDING]

    def has_ranker(self, version: int | None = None) -> bool:
        # The pusher writes the ranker only when blessed; TF Serving serves what is on disk.
        if version is None:
            return bool(versions(self.base / RANKER))
        return has_ranker(self.base, version)
