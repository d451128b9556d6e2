"""Freshness: a title added while serving is retrievable within seconds, without retraining.

    POST /v1/items --validate_item--> contract items row --write-ahead log--> DIR/items/part-*
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

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from marquee.data import contract as c
from serving.ingest.events import InvalidEvent, check_not_ahead, check_row
from serving.models.live_index import LiveIndex

if TYPE_CHECKING:
    from marquee.retrieval_index import RetrievalIndex
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
                 on_add: Callable[[list[int]], None] | None = None,
                 timeout_s: float = 1.0, retry_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.catalogue, self.embed = catalogue, embed
        self.on_add = on_add
        self.timeout_s, self.retry_s, self._clock = timeout_s, retry_s, clock
        self._lock = threading.Lock()
        self.item_ids: list[int] = []  # added while serving, oldest first
        # version -> (the pushed index it extends, the LiveIndex), only the newest version kept
        self._live: dict[int, tuple[RetrievalIndex, LiveIndex]] = {}
        self._failed_at = float("-inf")

    def add_rows(self, rows: pd.DataFrame) -> list[int]:
        """Adds validated titles (an items frame) to the catalogue, the content source (through
        ``on_add``) and, once embedded, the side index; returns their catalogue rows."""
        with self._lock:
            added = self.catalogue.add(rows)
            self.item_ids.extend(int(i) for i in rows[c.ITEM_ID])
        if self.on_add is not None:
            self.on_add(added)
        return added

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


class TitleWrites:
    """The titles kind of the write path (``POST /v1/items``): a contract items row, its
    ``added_at`` (default: now) no further ahead than the allowed skew, its id new."""

    name, table, exclusive = "items", c.ITEMS, True

    def __init__(self, fresh: FreshItems, max_future_skew_s: float = 300.0):
        self.fresh, self.skew = fresh, max_future_skew_s

    def validate(self, raw: object, now: int) -> pd.DataFrame:
        row = validate_item(raw, self.fresh.catalogue, now)
        problems = check_not_ahead(c.ADDED_AT, int(row[c.ADDED_AT].iloc[0]), now, self.skew)
        if problems:
            raise InvalidItem(problems)
        return row

    def to_row(self, row: pd.DataFrame) -> dict[str, object]:
        return json.loads(row.iloc[0].to_json())

    def from_row(self, row: Mapping[str, object]) -> pd.DataFrame | None:
        if int(row[c.ITEM_ID]) in self.fresh.catalogue.row:
            return None  # loaded with the dataset (or put back already)
        return validate_item(_plain(row), self.fresh.catalogue, int(row[c.ADDED_AT]))

    def apply(self, row: pd.DataFrame) -> None:
        self.fresh.add_rows(row)

    def answer(self, row: pd.DataFrame) -> dict[str, object]:
        return {"item": self.to_row(row)}


def _plain(row: Mapping[str, object]) -> dict[str, object]:
    """A row read back from Parquet as plain Python (arrays -> lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
