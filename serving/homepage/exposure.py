"""Calibrated exposure: a per-title table of how often the stack shows each title, so the blend
can push down the titles it over-shows (``serving.homepage.ranking.blend``'s exposure term).

The table is made by :func:`calibrate` from the stack's own pages over a set of users (no
labels: only what the stack would show): the top ``k`` of the pages without the exposure term
are counted, then the top ``k`` of the pages with the term over those counts, and the table is
the mean of the two counts (one damped step towards the fixed point; a second full pass counted
alone would over-correct, the penalised titles dropping out of every page). ``marquee
evaluate`` computes it with the chosen blend and writes it next to its report; ``marquee serve``
reads it from ``serving.exposure_file``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from marquee.data.contract import ITEM_ID

EXPOSURE = "exposure"
EXPOSURE_K = 50  # the page depth counted (the design's coverage@50)


class ExposureTable:
    """Exposure per title id; a title the table does not hold (added since) counts 0."""

    def __init__(self, counts: dict[int, float]):
        self._counts = {int(k): float(v) for k, v in counts.items()}

    def __len__(self) -> int:
        return len(self._counts)

    def counts(self, item_ids: Iterable[int]) -> np.ndarray:
        return np.array([self._counts.get(int(i), 0.0) for i in item_ids], np.float64)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = sorted(self._counts)
        pd.DataFrame({ITEM_ID: np.array(ids, np.int64),
                      EXPOSURE: [self._counts[i] for i in ids]}).to_parquet(path, index=False)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExposureTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"serving.exposure_file {path}: no such file; give the "
                                    "exposure.parquet `marquee evaluate` wrote, or set "
                                    "serving.exposure_weight to 0")
        frame = pd.read_parquet(path)
        missing = {ITEM_ID, EXPOSURE} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: an exposure table needs the columns {ITEM_ID!r} and "
                             f"{EXPOSURE!r}; it has {sorted(frame.columns)} (missing "
                             f"{sorted(missing)})")
        if (frame[EXPOSURE] < 0).any():
            raise ValueError(f"{path}: exposure counts must be >= 0")
        return cls(dict(zip(frame[ITEM_ID].tolist(), frame[EXPOSURE].tolist(), strict=True)))


def count_exposure(lists: Iterable[Iterable[int]], k: int = EXPOSURE_K) -> dict[int, float]:
    """How many of ``lists`` hold each title in their first ``k``."""
    out: dict[int, float] = {}
    for items in lists:
        for i in list(items)[:k]:
            out[int(i)] = out.get(int(i), 0.0) + 1.0
    return out


def calibrate(pages: Callable[[ExposureTable | None], Iterable[Iterable[int]]],
              k: int = EXPOSURE_K) -> ExposureTable:
    """The table of the module docstring: ``pages(table)`` returns every user's ranked list with
    the exposure term over ``table`` (None: without it)."""
    first = count_exposure(pages(None), k)
    second = count_exposure(pages(ExposureTable(first)), k)
    return ExposureTable({i: (first.get(i, 0.0) + second.get(i, 0.0)) / 2
                          for i in first.keys() | second.keys()})
