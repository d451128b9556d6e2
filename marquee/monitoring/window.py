"""Live exposure over a sliding window of served pages, in memory bounded by the catalogue.

The batch metrics of :mod:`marquee.monitoring.exposure` read the impression log after the fact;
:class:`ExposureWindow` keeps the same figures up to date while serving, for gauges read at
scrape time (``marquee_exposure_<key>``, one per key of :meth:`ExposureWindow.stats`)::

    page served --observe--> bucket of the current time: impressions per catalogue row, pages,
                             new-title impressions, the page's intra-list diversity
    scrape      --stats----> the live buckets summed: coverage, Gini, new-title share, ...

Time is cut into ``buckets`` buckets of ``window_seconds / buckets`` each; the window is the
current bucket and the ``buckets - 1`` before it, so it spans between ``window_seconds - width``
and ``window_seconds`` of traffic. A bucket is cleared when time moves past it, so memory does not
grow with traffic, only with the catalogue (see :class:`ExposureWindow` for the bytes).

Each figure is the one of :mod:`marquee.monitoring.exposure` on the window's impressions (a
served page's ``items``, the titles the impression log records; the "Because you watched" rows
are not counted): coverage and Gini over the *whole* current catalogue, titles added while
serving included (never shown: 0); the new-title rule of ``exposure.is_new`` at the page's time;
each page's ``exposure.list_diversity``; novelty from ``exposure.popularity_ranks``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from marquee.evaluation.protocol import gini
from marquee.monitoring import exposure

if TYPE_CHECKING:
    from serving.homepage.page import Homepage


class CatalogueView(Protocol):
    """What the window reads of :class:`serving.state.catalogue.Catalogue`: item id -> row,
    and per row (``[n_titles]``) the id, the genres and ``added_at`` (epoch seconds). Rows only
    grow (``Catalogue.add``) and never move."""

    item_ids: np.ndarray
    genres: list[list[str]]
    added_at: np.ndarray
    row: Mapping[int, int]


class ExposureWindow:
    """Exposure of the pages served in the last ``window_seconds`` (thread-safe).

    ``catalogue``: the serving catalogue (:class:`CatalogueView`), read as it grows;
    ``window_seconds`` and ``buckets``: the window and how finely it slides (expiry happens a
    bucket at a time); ``new_days``: a title added less than this many days before a page is
    new on it; ``popularity``: item id -> count (e.g. ``UserStore.popularity()``, positive
    watches; a title without one counts 0) for the ``novelty`` figure (omitted without it);
    ``clock``: epoch seconds (a fake one in tests).

    Memory: one ``int32`` count per catalogue row per bucket, ``counts [buckets, n_titles]``,
    i.e. ``4 * buckets * n_titles`` bytes (12 buckets over 100,000 titles: 4.8 MB), plus the
    popularity ranks when given (``8 * n_titles``) and a few scalars per bucket; :attr:`nbytes`
    says how many. The arrays grow (to the catalogue's size exactly) only when a page shows a
    title added after they were sized, never with traffic.
    """

    def __init__(self, catalogue: CatalogueView, window_seconds: float = 3600.0,
                 buckets: int = 12, new_days: float = 14.0,
                 popularity: Mapping[int, float] | None = None,
                 clock: Callable[[], float] = time.time):
        if not (isinstance(buckets, int) and buckets >= 1):
            raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds!r}")
        if not new_days > 0:
            raise ValueError(f"new_days must be positive, got {new_days!r}")
        self.catalogue, self.new_days, self.clock = catalogue, float(new_days), clock
        self.window_seconds, self.buckets = float(window_seconds), buckets
        self.width = self.window_seconds / buckets
        self._popularity = None if popularity is None else dict(popularity)
        self._ranks = np.zeros(0, np.float64)  # popularity ranks of rows [n], when given
        self._lock = threading.Lock()
        self._counts = np.zeros((buckets, len(catalogue.item_ids)), np.int32)
        self._slot = np.full(buckets, -1, np.int64)  # the time slot each bucket holds
        self._latest = -1  # the latest slot seen: the window never slides back
        # per bucket: pages, impressions, impressions of new titles, unknown ids, and the sum
        # and number of pages with an intra-list diversity (two titles or more)
        self._pages = np.zeros(buckets, np.int64)
        self._impressions = np.zeros(buckets, np.int64)
        self._new = np.zeros(buckets, np.int64)
        self._unknown = np.zeros(buckets, np.int64)
        self._ild_sum = np.zeros(buckets, np.float64)
        self._ild_pages = np.zeros(buckets, np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the window's arrays (the bound of the class docstring)."""
        arrays = (self._counts, self._ranks, self._slot, self._pages, self._impressions,
                  self._new, self._unknown, self._ild_sum, self._ild_pages)
        return sum(a.nbytes for a in arrays)

    # ------------------------------------------------------------------------------ observe

    def observe(self, page: Homepage, timestamp: float | None = None) -> None:
        """Counts one served page (its ``items``, each with an ``item_id``) served at
        ``timestamp`` (epoch seconds; default: the clock), which decides which titles were new
        on it; the page goes into the bucket of the clock's now. Cached and fallback pages
        count too: they were shown."""
        self.observe_items([p.item_id for p in page.items], timestamp)

    def observe_items(self, item_ids: Sequence[int], timestamp: float | None = None) -> None:
        """Counts one page of titles ``item_ids`` ``[k]``, in page order. An id the catalogue
        does not hold is counted under ``unknown_impressions`` and left out of every other
        figure (a monitor never fails the page it watches)."""
        catalogue = self.catalogue
        at = self.clock() if timestamp is None else timestamp
        # Rows first: an id found in the map has its row in every array read after it.
        rows = [catalogue.row.get(int(i)) for i in item_ids]
        known = np.array([r for r in rows if r is not None], np.int64)
        unknown = len(rows) - len(known)
        added = catalogue.added_at[known]
        new = int(exposure.is_new(added, int(at), self.new_days).sum())
        ild = exposure.list_diversity([catalogue.genres[r] for r in known.tolist()])
        with self._lock:
            b = self._bucket(self._now_slot())
            if len(known) and int(known.max()) >= self._counts.shape[1]:
                self._grow(len(catalogue.item_ids))
            np.add.at(self._counts[b], known, 1)
            self._pages[b] += 1
            self._impressions[b] += len(known)
            self._new[b] += new
            self._unknown[b] += unknown
            if not np.isnan(ild):
                self._ild_sum[b] += ild
                self._ild_pages[b] += 1

    def _now_slot(self) -> int:
        self._latest = max(self._latest, int(self.clock() // self.width))
        return self._latest

    def _bucket(self, slot: int) -> int:
        """The bucket of ``slot``, cleared first if it held an older slot (under the lock)."""
        b = slot % self.buckets
        if self._slot[b] != slot:
            self._counts[b] = 0
            for a in (self._pages, self._impressions, self._new, self._unknown, self._ild_sum,
                      self._ild_pages):
                a[b] = 0
            self._slot[b] = slot
        return b

    def _grow(self, n: int) -> None:
        grown = np.zeros((self.buckets, n), np.int32)
        grown[:, :self._counts.shape[1]] = self._counts
        self._counts = grown

    # ------------------------------------------------------------------------------ read

    def _snapshot(self) -> tuple[np.ndarray, dict[str, float]]:
        """The live buckets summed, at one moment: impressions per row ``int64 [n_titles]``
        (the catalogue's size now) and the per-bucket scalars."""
        n = len(self.catalogue.item_ids)
        with self._lock:
            now = self._now_slot()
            live = (self._slot > now - self.buckets) & (self._slot >= 0)
            total = self._counts[live].sum(axis=0, dtype=np.int64)
            sums = {"pages": self._pages, "impressions": self._impressions, "new": self._new,
                    "unknown": self._unknown, "ild_sum": self._ild_sum,
                    "ild_pages": self._ild_pages}
            sums = {k: float(a[live].sum()) for k, a in sums.items()}
        counts = np.zeros(n, np.int64)  # titles added since the last page are 0
        counts[:len(total)] = total
        return counts, sums

    def counts(self) -> np.ndarray:
        """Impressions per catalogue row over the window, ``int64 [n_titles]`` (the current
        catalogue's size; rows never shown are 0): ``exposure.exposure_counts`` of the same
        impressions against ``catalogue.item_ids``."""
        return self._snapshot()[0]

    def stats(self) -> dict[str, float]:
        """The window's figures, each a gauge ``marquee_<prefix>_<key>``:

        ``pages``, ``impressions`` (titles shown, on known titles), ``unknown_impressions``
        (ids not in the catalogue, left out of the rest); ``titles`` (catalogue size now),
        ``titles_shown``, ``coverage`` (= titles_shown / titles), ``gini`` (of impressions over
        every title, unshown ones 0); ``new_titles`` (titles added within ``new_days`` of now),
        ``new_title_share`` (of impressions); ``intra_list_diversity`` (mean over pages of two
        titles or more); ``novelty`` (mean popularity rank shown; only with ``popularity``).
        A share or mean over nothing is nan (exported as NaN: no data, which no alert fires
        on)."""
        counts, s = self._snapshot()
        impressions = s["impressions"]
        added = self.catalogue.added_at[:len(counts)]
        nan = float("nan")
        out = {
            "pages": s["pages"], "impressions": impressions,
            "unknown_impressions": s["unknown"], "titles": float(len(counts)),
            "titles_shown": float(np.count_nonzero(counts)),
            "coverage": exposure.coverage_of_counts(counts), "gini": gini(counts),
            "new_titles": float(exposure.is_new(added, int(self.clock()), self.new_days).sum()),
            "new_title_share": s["new"] / impressions if impressions else nan,
            "intra_list_diversity": s["ild_sum"] / s["ild_pages"] if s["ild_pages"] else nan,
        }
        if self._popularity is not None:
            ranks = self._ranks_of(len(counts))
            out["novelty"] = float(counts @ ranks) / impressions if impressions else nan
        return out

    def _ranks_of(self, n: int) -> np.ndarray:
        """Popularity ranks of the first ``n`` rows, recomputed when the catalogue grew (a new
        title counts 0 and so moves the ranks of every other title counting 0)."""
        with self._lock:
            ranks = self._ranks
        if len(ranks) != n:
            ids = np.asarray(self.catalogue.item_ids[:n]).tolist()
            ranks = exposure.popularity_ranks([self._popularity.get(i, 0.0) for i in ids])
            with self._lock:
                self._ranks = ranks
        return ranks
