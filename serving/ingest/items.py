"""Freshness: a title added while serving is retrievable within seconds, without retraining.

    POST /v1/items --validate_item--> contract items row --EventLog(items)--> DIR/items/part-*
                                          \\--Catalogue.add--> ranker / re-rank / content source
                                          \\--candidate tower (pushed version v)--> side index v

The pushed candidate tower embeds a title from its metadata (genres, cast, director, year,
duration, title tokens; its id falls in an out-of-vocabulary bucket), so a title without any
interaction gets a meaningful embedding. Those embeddings form a small exact *side index* searched
beside the pushed ScaNN index (:class:`LiveIndex`): every query scores every fresh title exactly
(a few hundred dot products), and the two result lists merge by score.

The items log is a contract ``items`` table, so the next pipeline run over the folder folds the
titles into the full index build; once a pushed index holds a title, it leaves the side index of
that version (:meth:`FreshItems.live_index` embeds only what the pushed index lacks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from marquee.data import contract as c
from serving.ingest.events import InvalidEvent, check_row
from serving.models.live_index import LiveIndex

if TYPE_CHECKING:
    from marquee.retrieval_index import RetrievalIndex
    from serving.ingest.events import EventLog
    from serving.state.catalogue import Catalogue

log = logging.getLogger(__name__)


class InvalidItem(InvalidEvent):
    """A title that breaks the contract or is already in the catalogue; ``problems`` lists all."""

    def __init__(self, problems: list[str], duplicate: bool = False):
        super().__init__(problems, what="title")
        self.duplicate = duplicate  # the only problem: the id is taken (HTTP 409)


def validate_item(raw: object, catalogue: Catalogue, now: int) -> pd.DataFrame:
    """One raw title (a JSON object of the contract's ``items`` fields) -> a one-row items frame.

    ``added_at`` defaults to ``now`` (UTC seconds) when absent, so a title posted as it goes live
    needs no clock of its own; every other required field must be there. Raises InvalidItem
    listing every problem, including an id the catalogue already holds."""
    if isinstance(raw, Mapping) and c.ADDED_AT not in raw:
        raw = {**raw, c.ADDED_AT: int(now)}
    value, problems = check_row(c.ITEMS, raw, "a title")
    if problems:
        raise InvalidItem(problems)
    _check_new(int(value[c.ITEM_ID]), catalogue)
    return pd.DataFrame([value])


def _check_new(item_id: int, catalogue: Catalogue) -> None:
    if item_id in catalogue.row:
        raise InvalidItem([f"{c.ITEM_ID}: {item_id} is already in the catalogue; a new title "
                           "needs a new id (changing a title needs a pipeline run)"],
                          duplicate=True)


class FreshItems:
    """The titles added while serving, and their side index per pushed model version.

    ``embed(inputs, version, timeout_s) -> [N, dim]``: the candidate tower of ``version`` on raw
    candidate inputs (``ModelBackend.candidate_embeddings``). A failed embedding leaves the title
    out of the side index (logged) and is retried after ``retry_s``; the title is in the catalogue
    and the items log either way, and other sources (content, trending) can already return it.
    """

    def __init__(self, catalogue: Catalogue,
                 embed: Callable[[dict[str, np.ndarray], int, float], np.ndarray],
                 items_log: EventLog | None = None, on_add: Callable[[list[int]], None] = None,
                 timeout_s: float = 1.0, retry_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.catalogue, self.embed, self.items_log = catalogue, embed, items_log
        self.on_add = on_add
        self.timeout_s, self.retry_s, self._clock = timeout_s, retry_s, clock
        self._lock = threading.Lock()
        self.item_ids: list[int] = []  # added while serving, oldest first
        # version -> (the pushed index it extends, the LiveIndex), only the newest version kept
        self._live: dict[int, tuple[RetrievalIndex, LiveIndex]] = {}
        self._failed_at = float("-inf")

    def add(self, raw: object, now: int | None = None) -> pd.DataFrame:
        """Validates one title and adds it: items log first (so an accepted title is never lost;
        a log failure raises EventLogError and adds nothing), then the catalogue. Returns the
        typed row. Raises InvalidItem for a bad title."""
        row = validate_item(raw, self.catalogue, int(time.time() if now is None else now))
        with self._lock:  # one add at a time: the id check and the append stay together
            _check_new(int(row[c.ITEM_ID].iloc[0]), self.catalogue)
            if self.items_log is not None:
                self.items_log.append(row.iloc[0].to_dict())
                self.items_log.flush()
            rows = self.catalogue.add(row)
            self.item_ids.append(int(row[c.ITEM_ID].iloc[0]))
        if self.on_add is not None:
            self.on_add(rows)
        return row

    def replay(self, items: pd.DataFrame) -> int:
        """Adds logged titles the catalogue lacks (a restart with the same items log); returns
        how many. The rows were validated when they were logged."""
        items = items[~items[c.ITEM_ID].isin(list(self.catalogue.row))]
        if len(items):
            rows = self.catalogue.add(items)
            with self._lock:
                self.item_ids.extend(int(i) for i in items[c.ITEM_ID])
            if self.on_add is not None:
                self.on_add(rows)
        return len(items)

    def live_index(self, version: int, main: RetrievalIndex) -> LiveIndex:
        """The pushed index of ``version`` plus the added titles it lacks, embedded by that
        version's candidate tower (each title once per version)."""
        with self._lock:
            cached = self._live.get(version)
            fresh = np.asarray(self.item_ids, np.int64)
            fresh = fresh[~main.contains(fresh)].tolist()
            if cached is not None and cached[0] is main:
                live = cached[1]
                if len(live.side_ids) == len(fresh):
                    return live
            else:
                live = LiveIndex(main)
            missing = [i for i in fresh if i not in live._side_row]
            if not missing or self._clock() - self._failed_at < self.retry_s:
                return live
            try:
                inputs = self.catalogue.candidate_inputs(self.catalogue.rows(missing))
                emb = np.asarray(self.embed(inputs, version, self.timeout_s), np.float32)
            except Exception as e:  # the page still answers; the titles wait for a retry
                self._failed_at = self._clock()
                log.warning("could not embed %d new title(s) with candidate tower version %s "
                            "(%s); retrying in %.0f s", len(missing), version, e, self.retry_s)
                return live
            live = LiveIndex(main, np.concatenate([live.side_ids, np.asarray(missing, np.int64)]),
                             np.concatenate([live.side_embeddings, emb]))
            self._live = {version: (main, live)}  # only the newest version: bounded memory
            return live
