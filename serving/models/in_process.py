"""The pushed SavedModels loaded into this process, following new versions as they are pushed."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from marquee.artifacts import (
    CANDIDATE_TOWER,
    EMBEDDING,
    KNOWN,
    P_WATCH,
    QUERY_TOWER,
    RANK_BY_ID,
    RANKER,
    SIGNATURE,
    WATCH_TIME_SECONDS,
)
from serving.models.errors import ModelUnavailable
from serving.models.query import ModelMismatch, NoPushedModel
from serving.models.versions import (
    complete_versions,
    has_ranker,
    incomplete_versions,
    newest_complete_version,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Loaded:
    """One version's models. Calls of one model are serialised (a lock each): concurrent calls
    of a loaded signature with different batch sizes corrupt the heap in TF 2.16 (reproduced with
    the ranker from 4 threads); one call already uses every core through TF's intra-op threads,
    so the lock costs little throughput."""

    version: int
    query: Callable
    ranker: dict[str, Callable] | None  # its signatures by name
    candidate: Callable | None = None  # loaded on first use (only new titles need it)
    # serving_default's input names, read once at load: asked on every page
    ranker_inputs: frozenset[str] = dataclasses.field(init=False)
    locks: dict[str, threading.Lock] = dataclasses.field(default_factory=lambda: {
        QUERY_TOWER: threading.Lock(), RANKER: threading.Lock(),
        CANDIDATE_TOWER: threading.Lock()})

    def __post_init__(self) -> None:
        fn = (self.ranker or {}).get(SIGNATURE)
        self.ranker_inputs = frozenset(fn.structured_input_signature[1]) if fn else frozenset()


def _load(path: Path) -> Callable:
    return tf.saved_model.load(str(path)).signatures[SIGNATURE]


def _load_all(path: Path) -> dict[str, Callable]:
    return dict(tf.saved_model.load(str(path)).signatures)


class InProcessBackend:
    """The newest complete version of the model base, in this process.

    Every ``check_every_s`` (on a request or :meth:`serving_version`) it looks for a newer
    complete version (``serving.models.versions``) and loads it in a background thread; requests
    keep the loaded version until the new one is whole, then switch at once. The previous
    version stays loaded for requests already under way (a page asks every model for the version
    its query tower answered with). A version that fails to load (a folder still being copied)
    is retried after ``retry_s``, never given up on.
    """

    name = "in_process"

    def __init__(self, model_base: str | Path, check_every_s: float = 5.0,
                 retry_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.base = Path(model_base)
        self.check_every_s, self.retry_s, self._clock = check_every_s, retry_s, clock
        self._lock = threading.Lock()
        self._loaded: dict[int, _Loaded] = {}  # the newest two, and any kept (`keep`)
        self._kept: set[int] = set()
        self._retry_at: dict[int, float] = {}
        self._checked = clock()
        self._loading: threading.Thread | None = None
        complete = complete_versions(self.base)
        if not complete:
            half = incomplete_versions(self.base)
            raise NoPushedModel(
                f"{self.base}: no complete pushed version"
                + (f" (incomplete: {half}; a push may be under way)" if half else "")
                + "; run the pipeline (marquee pipeline run) to push one")
        self._load_version(complete[-1])

    # ------------------------------------------------------------------ versions

    @property
    def query_version(self) -> int:
        with self._lock:
            return max(set(self._loaded) - self._kept or self._loaded)

    def keep(self, version: int) -> None:
        """Loads ``version`` (a complete push) and keeps it loaded beside the newest, for an
        experiment arm pinned to it (``serving.experiments[].arms[].model_version``)."""
        complete = complete_versions(self.base)
        if version not in complete:
            raise NoPushedModel(f"{self.base}: model version {version} is not a complete push "
                                f"(complete: {complete or 'none'}); pin an arm to one of them")
        with self._lock:
            self._kept.add(version)
            loaded = version in self._loaded
        if not loaded:
            self._load_version(version)

    def serving_version(self) -> int:
        """The version new pages are served from (checking for a newer one first)."""
        self._maybe_refresh()
        return self.query_version

    def _load_version(self, version: int) -> None:
        path = self.base / QUERY_TOWER / str(version)
        loaded = _Loaded(version, _load(path),
                         _load_all(self.base / RANKER / str(version))
                         if has_ranker(self.base, version) else None)
        with self._lock:
            self._loaded[version] = loaded
            for old in sorted(set(self._loaded) - self._kept)[:-2]:
                del self._loaded[old]
        log.info("in-process models: serving version %d (ranker: %s)", version,
                 "none pushed" if loaded.ranker is None else ", ".join(sorted(loaded.ranker)))

    def _maybe_refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        newest = newest_complete_version(self.base)
        if (newest is None or newest <= self.query_version
                or now < self._retry_at.get(newest, float("-inf"))):
            return
        with self._lock:
            if self._loading is not None and self._loading.is_alive():
                return
            self._loading = threading.Thread(target=self._background_load, args=(newest,),
                                             name=f"load-version-{newest}", daemon=True)
            self._loading.start()

    def _background_load(self, version: int) -> None:
        try:
            self._load_version(version)
        except Exception as e:  # noqa: BLE001 - any load failure: keep serving, retry later
            self._retry_at[version] = self._clock() + self.retry_s
            log.warning("version %d could not be loaded (%s: %s); still serving %d, retrying "
                        "in %.0f s", version, type(e).__name__, e, self.query_version,
                        self.retry_s)

    def wait_loaded(self, timeout_s: float = 60.0) -> None:
        """Waits for a background load under way (tests and benchmarks)."""
        thread = self._loading
        if thread is not None:
            thread.join(timeout_s)

    def _version(self, version: int | None) -> _Loaded:
        with self._lock:
            if version is None:
                return self._loaded[max(set(self._loaded) - self._kept or self._loaded)]
            if version not in self._loaded:
                raise ModelMismatch(f"model version {version} is not loaded in this process "
                                    f"(loaded: {sorted(self._loaded)})")
            return self._loaded[version]

    # ------------------------------------------------------------------ calls

    def query_embeddings(self, inputs, timeout_s, version: int | None = None):
        self._maybe_refresh()
        m = self._version(version)
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        with m.locks[QUERY_TOWER]:
            out = m.query(**tensors)
        return out[EMBEDDING].numpy(), m.version

    def has_ranker(self, version: int | None = None) -> bool:
        try:
            return self._version(version).ranker is not None
        except ModelMismatch:
            return False

    def rank(self, inputs, timeout_s, version: int | None = None):
        out = self._rank(SIGNATURE, inputs, version)
        return {P_WATCH: out[P_WATCH].numpy(), WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS].numpy()}

    def rank_by_id(self, inputs, timeout_s, version: int | None = None):
        out = self._rank(RANK_BY_ID, inputs, version)
        return {P_WATCH: out[P_WATCH].numpy(), WATCH_TIME_SECONDS: out[WATCH_TIME_SECONDS].numpy(),
                KNOWN: out[KNOWN].numpy()}

    def ranks_by_id(self, version: int | None = None) -> bool:
        try:
            ranker = self._version(version).ranker
        except ModelMismatch:
            return False
        return ranker is not None and RANK_BY_ID in ranker

    def ranker_inputs(self, version: int | None = None) -> frozenset[str]:
        try:
            return self._version(version).ranker_inputs
        except ModelMismatch:
            return frozenset()

    def _rank(self, signature: str, inputs, version: int | None):
        m = self._version(version)
        if m.ranker is None:
            raise ModelUnavailable(f"version {m.version} has no blessed ranker pushed")
        if signature not in m.ranker:
            raise ModelUnavailable(f"the ranker of version {m.version} has no {signature!r} "
                                   f"signature (it has {sorted(m.ranker)}); it was exported "
                                   "before it existed: retrain, or call rank()")
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        with m.locks[RANKER]:
            return m.ranker[signature](**tensors)

    def candidate_embeddings(self, inputs, version, timeout_s):
        m = self._version(version)
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        # Loaded under this model's lock, not the backend's: requests of other models go on.
        with m.locks[CANDIDATE_TOWER]:
            if m.candidate is None:
                m.candidate = _load(self.base / CANDIDATE_TOWER / str(m.version))
            out = m.candidate(**tensors)
        return out[EMBEDDING].numpy()
