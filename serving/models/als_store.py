"""The pushed ALS models, loaded by version and checked against the query tower's run."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from marquee.als import ALS_FILE, AlsModel, load_als
from marquee.artifacts import ALS, QUERY_TOWER
from serving.models.query import check_same_run, training_run_of

log = logging.getLogger(__name__)


class AlsStore:
    """``get(version)``: the ALS model pushed with the towers of ``version``, or None when that
    push has none (a model base from before the ALS source, or ``als.enabled`` off). A model
    from another training run than that version's query tower is refused (ModelMismatch), as
    the index is. Loaded once per version; the newest two are kept."""

    def __init__(self, model_base: str | Path):
        self.base = Path(model_base)
        self._lock = threading.Lock()
        self._cache: dict[int, AlsModel | None] = {}

    def get(self, version: int | None) -> AlsModel | None:
        if version is None:
            return None
        with self._lock:
            if version in self._cache:
                return self._cache[version]
        folder = self.base / ALS / str(version)
        model = None
        if (folder / ALS_FILE).is_file():
            model = load_als(folder)
            check_same_run(training_run_of(self.base / QUERY_TOWER / str(version)),
                           model.training_run, str(folder))
        elif folder.is_dir():  # being copied: ask again on the next request
            log.warning("%s holds no %s yet (still being copied?)", folder, ALS_FILE)
            return None
        with self._lock:
            self._cache = {v: self._cache[v] for v in sorted(self._cache)[-1:]}
            self._cache[version] = model
        return model
