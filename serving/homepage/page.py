"""What a homepage answer is: the titles (:class:`Pick`), the rows, and how it was made."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Pick:
    """One title on the page. ``score`` is the final score (a z-score over the request's
    candidates; see :func:`serving.homepage.ranking.blend`), ``sources`` every candidate source's
    own score for it, ``explore`` marks an item the exploration step put in."""

    item_id: int
    title: str
    score: float
    retrieval_score: float | None = None
    p_watch: float | None = None
    watch_time_seconds: float | None = None
    item_to_item: float | None = None  # the blend's item-to-item signal (when weighted)
    popularity: float | None = None  # train positives (when the blend weighs popularity)
    als: float | None = None  # the blend's ALS signal (when weighted)
    sources: dict[str, float] = dataclasses.field(default_factory=dict)
    explore: bool = False
    team: str | None = None  # an interleaved page: the arm whose list the title came from


@dataclasses.dataclass(frozen=True)
class PageRow:
    """A titled row ("Because you watched X") built around ``seed_item_id``."""

    title: str
    seed_item_id: int
    items: list[Pick]


@dataclasses.dataclass
class Homepage:
    user_id: int
    items: list[Pick]
    fallback: bool = False
    reason: str | None = None
    degraded: str | None = None
    model_version: int | None = None
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    stage: str | None = None  # the cold-start stage: new, light or full
    rows: list[PageRow] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # source -> why
    cached: bool = False  # answered from the page cache
    # The fallback answered because of an unexpected error (a bug, logged with its traceback
    # and counted apart in /metrics), not a model or store failure the design expects.
    internal_error: bool = False
    # Logged with the page's impressions (send it back with a watch of one of its titles).
    page_id: str | None = None
    # Experiment id -> the arm that served this page (an interleaving experiment: "interleaved";
    # each title's team is on the title); empty outside experiments.
    experiments: dict[str, str] = dataclasses.field(default_factory=dict)
    device: str | None = None  # the user's latest device (logged with the impressions)

    def to_dict(self) -> dict:
        """The page as plain dicts and lists: ``dataclasses.asdict(self)``, written out (asdict
        deep-copies every value generically: 2.5 ms for a 50-title page with its rows, most of
        a cache hit's cost)."""
        out = {name: getattr(self, name) for name in _PAGE_FIELDS}
        for name in _PAGE_DICTS:
            out[name] = dict(out[name])
        out["items"] = [_pick_dict(p) for p in self.items]
        out["rows"] = [{"title": r.title, "seed_item_id": r.seed_item_id,
                        "items": [_pick_dict(p) for p in r.items]} for r in self.rows]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Homepage:
        """Inverse of ``to_dict`` (a cached page)."""
        rows = [PageRow(r["title"], r["seed_item_id"], [Pick(**p) for p in r["items"]])
                for r in d["rows"]]
        return cls(**{**d, "items": [Pick(**p) for p in d["items"]], "rows": rows})


_PICK_FIELDS = tuple(f.name for f in dataclasses.fields(Pick))
_PAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Homepage))
_PAGE_DICTS = ("timings_ms", "skipped", "experiments")


def _pick_dict(p: Pick) -> dict:
    out = {name: getattr(p, name) for name in _PICK_FIELDS}
    out["sources"] = dict(p.sources)
    return out


def degrade(page: Homepage, why: str) -> None:
    """Marks ``page`` as served with a part missing (``degraded`` lists every reason)."""
    page.degraded = why if page.degraded is None else f"{page.degraded}; {why}"
