"""TF Serving (or ``marquee model-server``) over its gRPC API."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from marquee.artifacts import (
    CANDIDATE_TOWER,
    EMBEDDING,
    KNOWN,
    P_WATCH,
    QUERY_TOWER,
    RANK_BY_ID,
    RANKER,
    WATCH_TIME_SECONDS,
    versions,
)
from serving.models.errors import ModelUnavailable
from serving.models.versions import (
    NO_RANKER,
    RankerExport,
    has_ranker,
    is_complete,
    pushed_models,
    ranker_export,
)

log = logging.getLogger(__name__)

def _copy(e: Exception) -> Exception:
    """A new exception like ``e``, to raise again without growing ``e``'s traceback."""
    from serving.models.tf_serving_client import ServingError

    if isinstance(e, ServingError):
        return type(e)(e.code, e.details, e.rpc, e.model, e.target)
    return type(e)(*e.args)


class GrpcBackend:
    """TF Serving (or ``marquee model-server``) over gRPC, following new versions the way
    :class:`serving.models.in_process.InProcessBackend` does.

    TF Serving loads each model's newest version on its own, whether or not the rest of that
    push is there yet. So every ``check_every_s`` (on a request or :meth:`serving_version`) the
    backend looks for the newest complete version on disk (``serving.models.versions``) and
    switches to it once the server reports each of its models AVAILABLE (GetModelStatus); until
    then it keeps the version it serves. Every call names its version: the query tower is asked
    for the serving version, and the ranker and the candidate tower for the version the page's
    query tower answered with, so a page never mixes versions.
    """

    name = "tf_serving"

    def __init__(self, target: str, model_base: str | Path, timeout_s: float = 1.0,
                 check_every_s: float = 1.0, clock=time.monotonic):
        from serving.models.tf_serving_client import TFServingClient

        self.target = target
        self.base = Path(model_base)
        self.client = TFServingClient(target, timeout_s=timeout_s)
        self.check_every_s, self._clock = check_every_s, clock
        self._checked = float("-inf")
        self._checking = threading.Lock()
        self._served: int | None = None
        # The ranker's exports (signatures empty: no ranker) of the newest two versions served.
        self._rankers: dict[int, RankerExport] = {}
        self._why_none: Exception = ModelUnavailable(
            f"no complete version of {self.base} is loaded in the model server at {target}")

    # ------------------------------------------------------------------ versions

    def serving_version(self) -> int | None:
        """The newest complete version the server has loaded (None if none, or if the server
        could not be asked yet)."""
        now = self._clock()
        # One request checks at a time; the others go on with the version served, or, before
        # the first check is done, wait for it.
        if (now - self._checked >= self.check_every_s
                and self._checking.acquire(blocking=self._served is None)):
            try:
                if now - self._checked >= self.check_every_s:  # not just done by another
                    self._checked = now
                    self._refresh()
            finally:
                self._checking.release()
        return self._served

    def _refresh(self) -> None:
        from serving.models.tf_serving_client import ServingError

        pushed = pushed_models(self.base)
        complete = []
        for version in reversed(versions(self.base / QUERY_TOWER)):
            if not is_complete(self.base, version, pushed):
                continue
            if version == self._served:
                return  # still the newest servable version
            complete.append(version)
            try:
                if self._loaded(version):
                    self._serve(version)
                    return
            except ServingError as e:  # keep what is served; the next check asks again
                log.warning("model server at %s: cannot tell which versions it serves: %s",
                            self.target, e)
                self._why_none = e
                return
        self._served = None
        self._why_none = ModelUnavailable(
            f"no complete version of {self.base} is loaded in the model server at {self.target}"
            f" (complete on disk: {sorted(complete) or 'none'}); a push may be under way, or "
            "the server cannot load it: its GetModelStatus says why")

    def _loaded(self, version: int) -> bool:
        """Whether the server has every model of ``version`` AVAILABLE."""
        from serving.models.tf_serving_client import ModelNotFoundError

        models = [QUERY_TOWER, CANDIDATE_TOWER] + ([RANKER] if has_ranker(self.base, version)
                                                   else [])
        for model in models:
            try:
                status = self.client.get_model_status(model, version)
            except ModelNotFoundError:  # not loaded yet
                return False
            if not any(s.version == version and s.state == "AVAILABLE" for s in status):
                return False
        return True

    def _serve(self, version: int) -> None:
        log.info("model server at %s: serving version %d", self.target, version)
        older = sorted(v for v in self._rankers if v < version)[-1:]  # pages under way
        self._rankers = {**{v: self._rankers[v] for v in older},
                         version: ranker_export(self.base, version)}
        self._served = version

    def _version(self, version: int | None) -> int:
        if version is not None:
            return version
        served = self.serving_version()
        if served is None:
            raise _copy(self._why_none)
        return served

    # ------------------------------------------------------------------ calls

    def keep(self, version: int) -> None:
        """An experiment arm pinned to ``version``: the model server must serve it too (its
        model config's version policy), checked here so a missing one fails at start-up."""
        if not self._loaded(version):
            raise ModelUnavailable(
                f"the model server at {self.target} does not serve every model of version "
                f"{version} of {self.base}; list it in the server's model config "
                "(model_version_policy {specific {versions: ...}}) or pin the arm to one served")
        self._rankers.setdefault(version, ranker_export(self.base, version))

    def query_embeddings(self, inputs, timeout_s, version: int | None = None):
        out, version = self.client.predict_with_version(
            QUERY_TOWER, inputs, version=self._version(version), timeout_s=timeout_s)
        return out[EMBEDDING], version

    def rank(self, inputs, timeout_s, version: int | None = None):
        out = self.client.predict(RANKER, inputs, version=self._version(version),
                                  timeout_s=timeout_s)
        return {P_WATCH: out[P_WATCH], WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS]}

    def rank_by_id(self, inputs, timeout_s, version: int | None = None):
        out = self.client.predict(RANKER, inputs, RANK_BY_ID, version=self._version(version),
                                  timeout_s=timeout_s)
        return {P_WATCH: out[P_WATCH], WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS],
                KNOWN: out[KNOWN]}

    def ranks_by_id(self, version: int | None = None) -> bool:
        if version is None:
            version = self.serving_version()
        return RANK_BY_ID in self._rankers.get(version, NO_RANKER).signatures

    def ranker_inputs(self, version: int | None = None) -> frozenset[str]:
        if version is None:
            version = self.serving_version()
        return self._rankers.get(version, NO_RANKER).inputs

    def candidate_embeddings(self, inputs, version, timeout_s):
        return self.client.predict(CANDIDATE_TOWER, inputs, version=version,
                                   timeout_s=timeout_s)[EMBEDDING]

    def has_ranker(self, version: int | None = None) -> bool:
        """Whether ``version`` (None: the serving one), one of the two newest served, has a
        ranker pushed (and loaded: a version is served once all its models are)."""
        if version is None:
            version = self.serving_version()
        return bool(self._rankers.get(version, NO_RANKER).signatures)
