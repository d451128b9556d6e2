"""Seeded simulator of a video-streaming service: accounts, a catalogue and a logged home page.

``simulate(out_dir, SimConfig(...))`` writes a dataset folder in the data contract
(``users.parquet``, ``items.parquet``, ``interactions.parquet``) plus the ground truth the log was
drawn from (``_truth/affinities.parquet``, and the config in ``_truth/config.json``), so offline
metrics can be checked against it. ``marquee.data.audience.Audience`` puts the same users in front
of pages a real serving stack returns (a closed loop). ``docs/simulator.md`` describes the world
and how its defaults were calibrated against MovieLens 100K (``bench/calibrate_simulator.py``).

The world:

* **Users** have latent tastes: a genre preference (Dirichlet over :data:`GENRES`) and
  ``FACTOR_DIM`` latent factors of decaying spread (:data:`FACTOR_SCALE`); a heavy-tailed
  activity rate; a preferred device and a preferred local evening hour (shifted to UTC by their
  country). ``new_user_share`` of them sign up during the period and pick three of their top
  genres in the onboarding quiz.
* **Items** have latent factors, 1-3 genres, a quality term, a popularity rank (correlated with
  quality), cast and director drawn from power-law pools of people, durations (features
  ~80-170 min, episodes 20-60 min) and keywords that name their strongest latent factors.
  ``new_item_share`` of them join the catalogue during the period.
* **Affinity** ``a(u, i) = <user factors, item factors> + GENRE_WEIGHT * mean over the item's
  genres of the user's centred log genre preference + item quality`` (:func:`_affinity`): a pure
  function of the seeded state, written to ``_truth/`` for a sample of users.
* **The logging policy** (:func:`_page`) shows a page of ``page_size`` titles per session: it
  draws candidates by popularity (``(rank + popularity_offset * items) ** -popularity_exponent``),
  a ``personalised_share`` of them from the user's favourite genres, keeps the titles in the
  catalogue at session time that the user has not watched yet, and shows the best
  ``policy_taste_weight * affinity + Gumbel noise`` first. Each shown title is an ``impression``.
* **The watch model** (:func:`_watch`, shared with the audience): a shown title is watched with
  ``P = position ** -position_bias * sigmoid(a + watch_bias)``; a watch is a ``watch`` event at
  the same position, a minute or so later. Low affinity abandons early (usually under two
  minutes), high affinity watches most of the title (less on phones). ``rating_share`` of
  watches carry a half-star rating that rises with affinity.

Determinism: every random draw comes from ``numpy.random.default_rng`` seeded with
``(seed, stream, chunk)``; the same config gives byte-identical files (on the same numpy and
pyarrow versions). Memory: the catalogue is held whole; users and their events are simulated
``chunk_users`` at a time, in blocks of whole users, and streamed to Parquet, so memory does not
grow with users x items.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from marquee.data import contract as c

GENRES = (
    "action", "adventure", "animation", "comedy", "crime", "documentary", "drama", "family",
    "fantasy", "history", "horror", "music", "mystery", "romance", "sci-fi", "thriller", "war",
    "western",
)
# How common each genre is in the catalogue (and, scaled, in users' tastes).
_GENRE_FREQ = np.array([8, 5, 3, 10, 6, 3, 12, 3, 4, 2, 5, 2, 4, 6, 5, 7, 2, 1], np.float64)
_GENRE_FREQ /= _GENRE_FREQ.sum()
FACTOR_DIM = 16
# Spread of the users' latent factors: factor k has standard deviation 0.5 * FACTOR_SCALE[k], a
# decaying spectrum (variance 0.6 ** k, rescaled so the factor term keeps standard deviation
# ~1), as in rating data: a few broad tastes dominate, which a model learns from a few dozen
# watches a user (docs/simulator.md: the demo's ranker reaches AUC 0.80 on it, 0.78 with equal
# spreads).
_FACTOR_VARIANCE = 0.6 ** np.arange(FACTOR_DIM)
FACTOR_SCALE = np.sqrt(_FACTOR_VARIANCE / _FACTOR_VARIANCE.mean())
# Weight of the genre-match term in the affinity (the factor term has standard deviation ~1).
GENRE_WEIGHT = 1.8
QUALITY_SD = 0.4  # standard deviation of the item quality term (shared by every user)
# One keyword pair per latent factor: an item is tagged with the side of its strongest factors.
FACTOR_KEYWORDS = (
    ("dark", "light-hearted"), ("slow-burn", "fast-paced"), ("cerebral", "visceral"),
    ("ensemble", "solo-lead"), ("gritty", "glossy"), ("romantic", "platonic"),
    ("epic", "intimate"), ("quirky", "conventional"), ("violent", "gentle"),
    ("true-story", "invented"), ("period-piece", "contemporary"), ("suspenseful", "relaxing"),
    ("feel-good", "bittersweet"), ("satirical", "earnest"), ("mind-bending", "straightforward"),
    ("coming-of-age", "midlife"),
)
KIND_KEYWORDS = ("feature", "episode")

DAY = 86_400
YEAR = 365 * DAY
_USER_DEVICES = tuple(d for d in c.DEVICES if d != "unknown")
_USER_DEVICE_INDEX = np.array([c.DEVICES.index(d) for d in _USER_DEVICES])
_DEVICE_SHARE = {"tv": 0.45, "mobile": 0.25, "tablet": 0.12, "web": 0.18}
# Share of a title watched on each device relative to a TV (phones give up sooner).
_DEVICE_COMPLETION = {"tv": 1.0, "mobile": 0.7, "tablet": 0.85, "web": 0.9, "unknown": 0.9}
# Country, share of users, UTC offset in hours (for the evening-viewing habit).
_COUNTRIES = (
    ("US", 0.34, -5), ("GB", 0.08, 0), ("CA", 0.05, -5), ("DE", 0.07, 1), ("FR", 0.06, 1),
    ("BR", 0.08, -3), ("IN", 0.08, 5), ("MX", 0.05, -6), ("JP", 0.04, 9), ("AU", 0.03, 10),
    ("ES", 0.03, 1), ("IT", 0.03, 1), ("NL", 0.02, 1), ("SE", 0.02, 1), ("KR", 0.01, 9),
    ("unknown", 0.01, 0),
)
_TIER_SHARE = {"basic": 0.35, "standard": 0.40, "premium": 0.23, "unknown": 0.02}
_AGE_SHARE = (0.04, 0.18, 0.27, 0.22, 0.15, 0.14)  # in contract AGE_BUCKETS order
_MATURITY_SHARE = {"G": 0.06, "PG": 0.14, "PG-13": 0.30, "R": 0.30, "NC-17": 0.02,
                   "unrated": 0.18}
_KIDS_MATURITY_SHARE = {"G": 0.45, "PG": 0.45, "PG-13": 0.10}  # animation and family titles
# Share of null values in the nullable columns.
_MISSING = {c.AGE_BUCKET: 0.10, c.DIRECTOR: 0.02, c.RELEASE_YEAR: 0.01,
            c.DURATION_SECONDS: 0.005, c.KEYWORDS: 0.05}

_FIRST_NAMES = (
    "Ada", "Alan", "Alice", "Amir", "Ana", "Anton", "Aria", "Ben", "Bianca", "Carlos", "Chen",
    "Chloe", "Dara", "David", "Elena", "Eli", "Emma", "Farah", "Felix", "Grace", "Hana", "Hugo",
    "Ines", "Ivan", "Jade", "Jonas", "Julia", "Kai", "Kenji", "Lara", "Leo", "Lina", "Luca",
    "Maya", "Mei", "Milo", "Nadia", "Nina", "Noah", "Omar", "Olga", "Paul", "Priya", "Quinn",
    "Rafael", "Rosa", "Ruth", "Sam", "Sara", "Sofia", "Tariq", "Tess", "Theo", "Uma", "Vera",
    "Victor", "Wen", "Yara", "Yusuf", "Zara", "Zoe", "Marco", "Lena", "Oscar",
)
_SURNAME_HEADS = (
    "Al", "Bar", "Cal", "Dun", "Ell", "Fair", "Gold", "Hart", "Ivers", "Jen", "Kel", "Lang",
    "Mar", "Nor", "Oak", "Pem", "Quill", "Ros", "Sand", "Thorn", "Ul", "Vance", "Wester", "Yar",
    "Ash", "Brook", "Crane", "Dale", "East", "Frost", "Glen", "Hol",
)
_SURNAME_TAILS = (
    "ton", "ley", "ford", "wood", "berg", "man", "son", "well", "by", "ridge", "stone", "field",
    "more", "dale", "hurst", "worth", "lin", "ard", "ing", "ock", "win", "ick", "ward", "mont",
    "vale", "gate", "cott", "bury", "holm", "rup", "sen", "ez",
)
_TITLE_PARTS = (
    ("", "The ", "A ", "Return of the ", "Beyond the ", "Into the ", "Song of the ", "Last "),
    ("", "Silent ", "Broken ", "Golden ", "Hidden ", "Midnight ", "Crimson ", "Lost ", "Frozen ",
     "Electric ", "Wild ", "Hollow ", "Final ", "Secret ", "Burning ", "Distant ", "Quiet ",
     "Iron ", "Velvet ", "Endless "),
    ("Harbor", "Garden", "Signal", "Kingdom", "Orchard", "Frontier", "Mirror", "River", "Empire",
     "Station", "Code", "Voyage", "Circle", "Archive", "Horizon", "Tide", "Engine", "Lantern",
     "Canyon", "Promise", "Witness", "Shadow", "Machine", "Island", "Summer", "Winter", "Crown",
     "Protocol", "Ballad", "Comet"),
    ("", "", "", "", " II", " III", " Returns", " Rising", " Chronicles", ": Origins"),
)

# Random streams: each part of the world draws from its own generator (seed, stream, chunk).
_STREAM_ITEMS, _STREAM_USERS, _STREAM_EVENTS, _STREAM_TRUTH = 1, 2, 3, 4
# ...and the closed-loop audience's (marquee/data/audience.py): its sessions and its watches.
_STREAM_AUDIENCE, _STREAM_RESPOND = 5, 6
# Candidates the logging policy draws per page slot (it shows the best of them).
_CANDIDATES_PER_SLOT = 2
# Policy candidates per block of sessions simulated together inside a chunk (~66K sessions of
# 15-title pages, ~1M rows, one Parquet row group; bounds memory for long pages).
_BLOCK_CANDIDATES = 2_000_000
# Truth rows computed together (bounds memory for big catalogues).
_TRUTH_BLOCK_ROWS = 2_000_000
TRUTH_DIR = "_truth"
TRUTH_FILE = "affinities.parquet"
CONFIG_FILE = "config.json"  # in TRUTH_DIR: the SimConfig the dataset was simulated with
AFFINITY = "affinity"
TRUTH_SCHEMA = pa.schema([pa.field(c.USER_ID, pa.int64(), nullable=False),
                          pa.field(c.ITEM_ID, pa.int64(), nullable=False),
                          pa.field(AFFINITY, pa.float32(), nullable=False)])


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Size, seed and behaviour of the simulated service. Invalid values raise ValueError."""

    users: int = 1000
    items: int = 2000
    days: int = 60
    seed: int = 0
    start: int = 1_700_000_000  # UTC seconds of day 0
    truth_users: int = 200  # users whose affinity to every item goes to _truth/ (at most `users`)
    chunk_users: int = 20_000  # users simulated per chunk (bounds memory)
    page_size: int = 15  # titles per page: one impression each, at positions 1..page_size
    sessions_per_day: float = 0.45  # mean sessions per user per day after signup (at most 8)
    activity_spread: float = 1.2  # sigma of the log-normal spread of activity across users
    new_user_share: float = 0.2  # share of users who sign up during the period
    new_item_share: float = 0.1  # share of titles added to the catalogue during the period
    # Popularity: the title of popularity rank r (1 = most popular) is drawn by the policy with
    # weight (r + popularity_offset * items) ** -popularity_exponent (offset 0: a Zipf law; the
    # offset flattens the head, the exponent thins the tail).
    popularity_exponent: float = 3.5
    popularity_offset: float = 0.15
    personalised_share: float = 0.5  # share of policy candidates drawn from favourite genres
    policy_taste_weight: float = 3.0  # weight of the user's affinity in which candidates are shown
    position_bias: float = 0.7  # P(watch) scales with position ** -position_bias
    watch_bias: float = -1.0  # added to affinity in the watch logit (lower: fewer watches)
    rating_share: float = 0.07  # share of watches that carry an explicit rating

    def __post_init__(self) -> None:
        for name, ok, expected, fix in _CHECKS:
            value = getattr(self, name)
            kind = int if name in _INT_FIELDS else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not (
                math.isfinite(value) and ok(self, value)
            ):
                raise ValueError(f"SimConfig.{name}: expected {expected}, got {value!r}. {fix}")

    @property
    def end(self) -> int:
        """UTC seconds just after the last simulated day."""
        return self.start + self.days * DAY


_INT_FIELDS = {f.name for f in dataclasses.fields(SimConfig) if f.type in (int, "int")}
# (field, check, what was expected, how to fix it)
_CHECKS: tuple[tuple[str, Callable[[SimConfig, float], bool], str, str], ...] = (
    ("users", lambda s, v: v >= 1, "an integer >= 1", "Simulate at least one user."),
    ("items", lambda s, v: v >= 1, "an integer >= 1", "Simulate at least one title."),
    ("days", lambda s, v: 1 <= v <= 3650, "an integer in 1..3650",
     "Pass the number of simulated days, e.g. days=60."),
    ("seed", lambda s, v: v >= 0, "an integer >= 0", "Use a non-negative seed, e.g. seed=0."),
    ("start", lambda s, v: 5 * YEAR <= v and v + s.days * DAY <= c.MAX_TIMESTAMP,
     f"UTC seconds in {5 * YEAR}..{c.MAX_TIMESTAMP} - days * {DAY}",
     "Pass seconds, not milliseconds; signups go back five years before start, so start must "
     "be after 1975 and the period must end before 2100."),
    ("truth_users", lambda s, v: v >= 0, "an integer >= 0",
     "Pass 0 to skip the ground truth, or the number of users to write it for."),
    ("chunk_users", lambda s, v: v >= 1, "an integer >= 1",
     "Pass how many users to simulate at a time, e.g. 20_000 (memory grows with it)."),
    ("page_size", lambda s, v: 1 <= v <= 1000, "an integer in 1..1000",
     "Pass the number of titles on a page, e.g. 15."),
    ("sessions_per_day", lambda s, v: 0 < v <= 8, "a number in (0, 8]",
     "Pass the mean sessions per user per day, e.g. 0.25."),
    ("activity_spread", lambda s, v: 0 <= v <= 3, "a number in 0..3",
     "Pass the log-normal sigma of user activity; 0 makes every user equally active."),
    ("new_user_share", lambda s, v: 0 <= v <= 1, "a share in 0..1", "Pass e.g. 0.2."),
    ("new_item_share", lambda s, v: 0 <= v <= 1, "a share in 0..1", "Pass e.g. 0.1."),
    ("popularity_exponent", lambda s, v: 0 <= v <= 5, "a number in 0..5",
     "Pass the popularity exponent, e.g. 3.5; 0 makes every title equally popular."),
    ("popularity_offset", lambda s, v: 0 <= v <= 1, "a share in 0..1",
     "Pass the head's width as a share of the catalogue, e.g. 0.15; 0 is a Zipf law."),
    ("personalised_share", lambda s, v: 0 <= v <= 1, "a share in 0..1", "Pass e.g. 0.5."),
    ("policy_taste_weight", lambda s, v: 0 <= v <= 20, "a number in 0..20",
     "Pass the weight of affinity in the policy's choice, e.g. 3.0; 0 picks candidates at random."),
    ("position_bias", lambda s, v: 0 <= v <= 5, "a number in 0..5",
     "Pass the exponent of position ** -bias, e.g. 0.7; 0 turns position bias off."),
    ("watch_bias", lambda s, v: -20 <= v <= 20, "a number in -20..20",
     "Pass the logit offset, e.g. -1.0."),
    ("rating_share", lambda s, v: 0 <= v <= 1, "a share in 0..1", "Pass e.g. 0.07."),
)


@dataclasses.dataclass(frozen=True)
class SimSummary:
    """What ``simulate`` wrote."""

    out_dir: Path
    rows: dict[str, int]  # rows per contract table
    impressions: int
    watches: int
    ratings: int
    truth_path: Path
    truth_rows: int
    seconds: float

    def __str__(self) -> str:
        r = self.rows
        return (
            f"simulated {self.out_dir} in {self.seconds:.1f} s: {r[c.USERS]:,} users, "
            f"{r[c.ITEMS]:,} items, {r[c.INTERACTIONS]:,} interactions "
            f"({self.impressions:,} impressions, {self.watches:,} watches, "
            f"{self.ratings:,} rated)\n"
            f"  ground truth: {self.truth_rows:,} user-item affinities in {self.truth_path}"
        )


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """The generator of one random stream: (seed, stream, keys...), keys default (0,)."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *(keys or (0,))]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _cdf(weights: np.ndarray) -> np.ndarray:
    """Cumulative share, ending at exactly 1.0 (for ``searchsorted(cdf, uniform, 'right')``)."""
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index drawn for each uniform in ``u`` (any shape) from the distribution with ``cdf``."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _choice(rng: np.random.Generator, shares: dict | tuple, n: int) -> np.ndarray:
    shares = np.array(list(shares.values()) if isinstance(shares, dict) else shares, np.float64)
    return _draw(_cdf(shares), rng.random(n))


def _first_unique(cand: np.ndarray, valid: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Mask [n, width]: per row, the first ``k`` valid entries not already seen earlier in the row.

    ``valid`` must agree for equal values in a row (it does: availability depends on the item).
    """
    order = np.argsort(cand, axis=1, kind="stable")
    ordered = np.take_along_axis(cand, order, axis=1)
    dup_ordered = np.zeros(cand.shape, bool)
    dup_ordered[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    dup = np.empty_like(dup_ordered)
    np.put_along_axis(dup, order, dup_ordered, axis=1)
    keep = valid & ~dup
    keep &= np.cumsum(keep, axis=1) <= np.reshape(k, (-1, 1))
    return keep


def _lists(vocab: pa.Array, flat: np.ndarray, counts: np.ndarray, null=None) -> pa.ListArray:
    """A list<string> column: row r holds ``vocab[flat[...]]`` for its ``counts[r]`` entries.

    Rows where ``null`` is true are null (and their entries in ``flat`` are dropped: Parquet
    rejects a null list that still spans values).
    """
    mask = None
    if null is not None:
        flat = flat[~np.repeat(null, counts)]
        counts = np.where(null, 0, counts)
        mask = pa.array(null)
    offsets = np.zeros(len(counts) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(flat)), mask=mask)


def _names(index: np.ndarray) -> pa.Array:
    """Person names for person indices (unique below len(first names) * len(surnames))."""
    first = pa.array(_FIRST_NAMES).take(pa.array(index % len(_FIRST_NAMES)))
    rest = index // len(_FIRST_NAMES)
    head = pa.array(_SURNAME_HEADS).take(pa.array(rest // len(_SURNAME_TAILS)))
    tail = pa.array(_SURNAME_TAILS).take(pa.array(rest % len(_SURNAME_TAILS)))
    return pc.binary_join_element_wise(first, pc.binary_join_element_wise(head, tail, ""), " ")


def _affinity(user_embed: np.ndarray, item_embed: np.ndarray, u: np.ndarray, i: np.ndarray):
    """Affinity [n] float32 of user rows ``u`` [n] and item rows ``i`` [n].

    The embeds are [dims, users] and [dims, items] (factors; genre terms; quality against a
    constant 1). Summed one dimension at a time in a fixed order, so the result does not depend
    on memory alignment or SIMD paths and is bit-for-bit reproducible.
    """
    out = np.zeros(len(u), np.float32)
    for k in range(user_embed.shape[0]):
        out += user_embed[k][u] * item_embed[k][i]
    return out


# ----------------------------------------------------------------------------- catalogue


@dataclasses.dataclass(frozen=True)
class _Catalogue:
    """Per-item state the events need; arrays are indexed by item row (item_id - 1)."""

    added_at: np.ndarray  # [items] int64
    duration: np.ndarray  # [items] float64 true running time (also where the column is null)
    # [FACTOR_DIM + len(GENRES) + 1, items] float32: factors, genre share, quality
    embed: np.ndarray
    pop_cdf: np.ndarray  # [items] popularity cdf
    genre_items: np.ndarray  # [memberships] item rows grouped by genre
    genre_cdf: np.ndarray  # [memberships] popularity cdf inside each genre; genre g spans (g, g+1]
    genre_bounds: np.ndarray  # [len(GENRES) + 1] where each genre's block starts


def _make_catalogue(cfg: SimConfig, columns: bool = True) -> tuple[_Catalogue, dict | None]:
    """The catalogue's hidden state and its ``items`` table columns (None if not ``columns``).

    The columns draw after the state from the same generator, so the state is the same either way.
    """
    rng = _rng(cfg.seed, _STREAM_ITEMS)
    m, n_genres = cfg.items, len(GENRES)
    new = np.zeros(m, bool)
    new[rng.permutation(m)[: round(cfg.new_item_share * m)]] = True
    added = np.where(new, rng.integers(cfg.start + 1, cfg.end - 3600, m),
                     cfg.start - rng.integers(0, 3 * YEAR, m)).astype(np.int64)

    # 1-3 genres, drawn without replacement by catalogue frequency (Gumbel top-k).
    n_genre = 1 + _choice(rng, (0.45, 0.40, 0.15), m)
    keys = np.log(_GENRE_FREQ) + rng.gumbel(size=(m, n_genres))
    genre_of = np.argsort(-keys, axis=1)[:, :3]
    has = np.arange(3) < n_genre[:, None]
    share = np.zeros((n_genres, m), np.float32)
    for j in range(3):
        rows = np.flatnonzero(has[:, j])
        share[genre_of[rows, j], rows] = 1.0 / n_genre[rows]

    factors = rng.normal(0.0, 0.5, (FACTOR_DIM, m))
    quality = rng.normal(0.0, QUALITY_SD, m)
    # Popularity rank follows quality loosely: better titles tend to be more popular.
    rank = np.empty(m, np.int64)
    by_fame = np.argsort(-(quality / QUALITY_SD + rng.normal(0.0, 1.5, m)), kind="stable")
    rank[by_fame] = np.arange(m)
    pop = (rank + 1.0 + cfg.popularity_offset * m) ** -cfg.popularity_exponent
    members = [np.flatnonzero(share[g] > 0) for g in range(n_genres)]
    feature = rng.random(m) < 0.6
    minutes = np.where(feature, np.clip(rng.normal(115, 15, m), 80, 170), rng.uniform(20, 60, m))
    duration = np.round(minutes * 60.0)
    catalogue = _Catalogue(
        added_at=added,
        duration=duration,
        embed=np.concatenate([factors, share, quality[None, :]]).astype(np.float32),
        pop_cdf=_cdf(pop),
        genre_items=np.concatenate(members),
        genre_cdf=np.concatenate([g + _cdf(pop[r]) for g, r in enumerate(members) if len(r)]),
        genre_bounds=np.concatenate([[0], np.cumsum([len(r) for r in members])]),
    )
    if not columns:
        return catalogue, None

    year_added = added.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    fresh = new & (rng.random(m) < 0.7)  # most new arrivals are this year's releases
    year = np.where(fresh, year_added, year_added - np.floor(rng.exponential(8.0, m)))
    year = np.maximum(year, 1920).astype(np.int32)

    maturity = pa.array(list(_MATURITY_SHARE)).take(pa.array(_choice(rng, _MATURITY_SHARE, m)))
    kids = np.isin(genre_of[:, 0], [GENRES.index("animation"), GENRES.index("family")])
    kids_rating = pa.array(list(_KIDS_MATURITY_SHARE)).take(
        pa.array(_choice(rng, _KIDS_MATURITY_SHARE, m)))
    title = pc.binary_join_element_wise(
        *[pa.array(part).take(pa.array(rng.integers(0, len(part), m))) for part in _TITLE_PARTS],
        "")

    # Cast: 2-5 distinct people from a Zipf-ranked pool; directors from the same pool with their
    # own (shuffled) fame ranking.
    name_space = len(_FIRST_NAMES) * len(_SURNAME_HEADS) * len(_SURNAME_TAILS)
    people = min(name_space, max(100, 2 * m))
    fame_cdf = _cdf(np.arange(1.0, people + 1) ** -1.1)
    draws = _draw(fame_cdf, rng.random((m, 8)))
    keep = _first_unique(draws, np.ones(draws.shape, bool), rng.integers(2, 6, m))
    names = _names(rng.permutation(name_space)[:people])
    director = names.take(pa.array(rng.permutation(people)[_draw(fame_cdf, rng.random(m))]))

    # Keywords: the side of the strongest latent factor (often also the second), and the kind.
    strongest = np.argsort(-np.abs(factors), axis=0, kind="stable")[:2].T  # [m, 2]
    negative = np.take_along_axis(factors.T, strongest, axis=1) < 0
    tags = np.concatenate([2 * strongest + negative, 2 * FACTOR_DIM + ~feature[:, None]], axis=1)
    tag_keep = np.stack([np.ones(m, bool), rng.random(m) < 0.6, np.ones(m, bool)], axis=1)
    vocab = pa.array([w for pair in FACTOR_KEYWORDS for w in pair] + list(KIND_KEYWORDS))

    def missing(column: str) -> np.ndarray:
        return rng.random(m) < _MISSING[column]

    table = {
        c.ITEM_ID: np.arange(1, m + 1, dtype=np.int64),
        c.TITLE: title,
        c.GENRES: _lists(pa.array(GENRES), genre_of[has], n_genre),
        c.CAST: _lists(names, draws[keep], keep.sum(axis=1)),
        c.DIRECTOR: pc.if_else(pa.array(missing(c.DIRECTOR)), pa.nulls(m, pa.string()), director),
        c.RELEASE_YEAR: pa.array(year, mask=missing(c.RELEASE_YEAR)),
        c.DURATION_SECONDS: pa.array(duration.astype(np.int64), mask=missing(c.DURATION_SECONDS)),
        c.ADDED_AT: added,
        c.MATURITY_RATING: pc.if_else(pa.array(kids), kids_rating, maturity),
        c.KEYWORDS: _lists(vocab, tags[tag_keep], tag_keep.sum(axis=1), missing(c.KEYWORDS)),
    }
    return catalogue, table


# ----------------------------------------------------------------------------- users


@dataclasses.dataclass(frozen=True)
class _Users:
    """Hidden state of one chunk of users; arrays are indexed by row within the chunk."""

    signup_at: np.ndarray  # [n] int64
    embed: np.ndarray  # [FACTOR_DIM + len(GENRES) + 1, n] float32: factors, genre taste, 1
    genre_cdf: np.ndarray | None  # [n, len(GENRES)] cumulative genre preference (policy only)
    rate: np.ndarray  # [n] mean sessions per day
    device: np.ndarray  # [n] preferred device, index into contract DEVICES
    hour: np.ndarray  # [n] preferred viewing hour, UTC, float


def _make_users(cfg: SimConfig, chunk: int, lo: int, hi: int,
                columns: bool = True) -> tuple[_Users, dict | None]:
    """Users ``lo..hi-1`` (rows; ids are rows + 1): hidden state and ``users`` table columns
    (None if not ``columns``; the columns draw after the state, which is the same either way)."""
    rng = _rng(cfg.seed, _STREAM_USERS, chunk)
    n = hi - lo
    new = rng.random(n) < cfg.new_user_share
    signup = np.where(new, rng.integers(cfg.start, cfg.end - 7200, n),
                      cfg.start - rng.integers(DAY, 5 * YEAR, n)).astype(np.int64)
    taste = rng.dirichlet(5.0 * _GENRE_FREQ, n)  # [n, genres], peaked: a few favourite genres
    log_taste = np.log(taste + 0.01)
    log_taste -= (log_taste * _GENRE_FREQ).sum(axis=1, keepdims=True)  # centred per user
    factors = FACTOR_SCALE[:, None] * rng.normal(0.0, 0.5, (FACTOR_DIM, n))
    embed = np.concatenate([factors, GENRE_WEIGHT * log_taste.T, np.ones((1, n))])
    embed = embed.astype(np.float32)
    spread = cfg.activity_spread
    rate = cfg.sessions_per_day * np.exp(spread * rng.normal(size=n) - spread**2 / 2)
    device = _choice(rng, [_DEVICE_SHARE[d] for d in _USER_DEVICES], n)
    country = _choice(rng, [share for _, share, _ in _COUNTRIES], n)
    utc_offset = np.array([offset for _, _, offset in _COUNTRIES], np.float64)[country]
    local_hour = np.where(rng.random(n) < 0.75, rng.normal(20.5, 1.5, n), rng.uniform(0, 24, n))
    users = _Users(
        signup_at=signup,
        embed=embed,
        genre_cdf=np.cumsum(taste, axis=1),
        rate=np.minimum(rate, 8.0),
        device=_USER_DEVICE_INDEX[device],
        hour=np.mod(local_hour - utc_offset, 24.0),
    )
    if not columns:
        return users, None
    # The onboarding quiz: three genres near the top of the user's taste (a little noisy).
    quiz = np.argsort(-(np.log(taste + 1e-9) + 0.5 * rng.gumbel(size=taste.shape)), axis=1)[:, :3]
    table = {
        c.USER_ID: np.arange(lo + 1, hi + 1, dtype=np.int64),
        c.SIGNUP_AT: signup,
        c.COUNTRY: pa.array([name for name, _, _ in _COUNTRIES]).take(pa.array(country)),
        c.SUBSCRIPTION_TIER: pa.array(list(_TIER_SHARE)).take(
            pa.array(_choice(rng, _TIER_SHARE, n))),
        c.AGE_BUCKET: pc.if_else(pa.array(rng.random(n) < _MISSING[c.AGE_BUCKET]),
                                 pa.nulls(n, pa.string()),
                                 pa.array(c.AGE_BUCKETS).take(
                                     pa.array(_choice(rng, _AGE_SHARE, n)))),
        c.ONBOARDING_GENRES: _lists(pa.array(GENRES), quiz.ravel(), np.full(n, 3), ~new),
    }
    return users, table


# ----------------------------------------------------------------------------- events


def _session_times(users: _Users, user: np.ndarray, day_start: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """UTC seconds [s] (float) of sessions of user rows ``user`` [s] on the days starting at
    ``day_start`` [s]: the user's viewing hour give or take 1.5 hours, never before signup."""
    hour = np.mod(users.hour[user] + rng.normal(0.0, 1.5, len(user)), 24.0)
    t = day_start + hour * 3600.0
    # On the signup day a session cannot precede the signup.
    return np.maximum(t, users.signup_at[user] + 60.0 + 1800.0 * rng.random(len(user)))


def _sessions(cfg: SimConfig, users: _Users, rng: np.random.Generator):
    """Sessions of a chunk over the logged period sorted by (user, time): user rows [s] and UTC
    seconds [s]."""
    first = np.maximum(users.signup_at, cfg.start)
    counts = rng.poisson(users.rate * (cfg.end - first) / DAY)
    user = np.repeat(np.arange(len(first)), counts)
    lo = first[user].astype(np.float64)
    day = np.floor((lo + rng.random(len(user)) * (cfg.end - lo) - cfg.start) / DAY)
    t = _session_times(users, user, cfg.start + day * DAY, rng)
    t = np.minimum(t, cfg.end - 600.0).astype(np.int64)  # none runs past the period
    order = np.lexsort((t, user))
    return user[order], t[order]


def _session_devices(users: _Users, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Device [s] (index into contract DEVICES) of sessions of user rows ``user`` [s]: mostly the
    user's preferred one, now and then another, rarely unknown."""
    device = np.where(rng.random(len(user)) < 0.8, users.device[user],
                      _USER_DEVICE_INDEX[rng.integers(0, len(_USER_DEVICES), len(user))])
    return np.where(rng.random(len(user)) < 0.01, c.DEVICES.index("unknown"), device)


def _page(cfg: SimConfig, cat: _Catalogue, users: _Users, user, t, watched, rng):
    """The logging policy for sessions of user rows ``user`` [s] at times ``t`` [s]. Returns
    (session row, item row, 1-based position, affinity) per impression.

    Candidates: ``_CANDIDATES_PER_SLOT * page_size`` draws per session by popularity, a
    ``personalised_share`` of them from the user's favourite genres instead; only titles in the
    catalogue at session time that the user has not watched (``watched``: sorted keys
    ``user row * items + item row``), each once. The page is the ``page_size`` candidates with
    the highest ``policy_taste_weight * affinity + Gumbel noise``, best first (fewer when the
    candidates run out): an imperfect recommender that knows the user's taste up to noise.
    """
    n, width = len(user), _CANDIDATES_PER_SLOT * cfg.page_size
    cand = _draw(cat.pop_cdf, rng.random((n, width)))
    personal = np.flatnonzero(rng.random((n, width)) < cfg.personalised_share)
    owner = user[personal // width]
    genre = (users.genre_cdf[owner] < rng.random(len(personal))[:, None]).sum(axis=1)
    genre = np.minimum(genre, len(GENRES) - 1)
    lo, hi = cat.genre_bounds[genre], cat.genre_bounds[genre + 1]
    at = np.clip(np.searchsorted(cat.genre_cdf, genre + rng.random(len(personal)), "right"),
                 lo, hi - 1)
    ok = hi > lo  # a genre no title has falls back to the popularity draw
    np.put(cand, personal[ok], cat.genre_items[at[ok]])
    available = cat.added_at[cand] <= t[:, None]
    available &= ~_in_sorted(user[:, None].astype(np.int64) * len(cat.added_at) + cand, watched)
    valid = _first_unique(cand, available, width)
    flat = np.flatnonzero(valid)  # [v] the valid candidates, row-major
    session, slot = np.divmod(flat, width)
    affinity = _affinity(users.embed, cat.embed, user[session], cand[session, slot])
    key = np.full(cand.shape, -np.inf)
    key[session, slot] = (cfg.policy_taste_weight * affinity.astype(np.float64)
                          + rng.gumbel(size=len(flat)))
    order = np.argsort(-key, axis=1, kind="stable")[:, :cfg.page_size]
    keep = np.take_along_axis(valid, order, axis=1)
    session, rank = np.nonzero(keep)
    slot = order[session, rank]
    index = np.empty(cand.size, np.int64)  # candidate -> its row in `affinity`
    index[flat] = np.arange(len(flat))
    return (session, cand[session, slot], (rank + 1).astype(np.int32),
            affinity[index[session * width + slot]])


def _in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Elementwise ``values in sorted_values`` (a sorted 1-d array)."""
    if not len(sorted_values):
        return np.zeros(values.shape, bool)
    at = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[at] == values


@dataclasses.dataclass(frozen=True)
class _Watches:
    """What the watch model drew for the watched ones among shown titles."""

    shown: np.ndarray  # [w] index of each watch into the shown rows
    seconds: np.ndarray  # [w] float64 seconds watched (under two minutes when abandoned)
    rating: np.ndarray  # [w] float64 half stars, NaN when the watch carries no rating
    delay: np.ndarray  # [w] int64 seconds from the page to the watch


def _watch(cfg: SimConfig, cat: _Catalogue, affinity: np.ndarray, item: np.ndarray,
           position: np.ndarray, device: np.ndarray, rng: np.random.Generator) -> _Watches:
    """The watch model, for shown titles [n]: their affinity, item rows, 1-based page positions
    and session devices (indices into contract DEVICES).

    Watched with ``P = position ** -position_bias * sigmoid(affinity + watch_bias)``. Low
    affinity gives up early (under two minutes); otherwise a share of the running time, less on
    small screens. ``rating_share`` of watches carry a half-star rating rising with affinity.
    """
    affinity = affinity.astype(np.float64)
    p_watch = position.astype(np.float64) ** -cfg.position_bias * _sigmoid(
        affinity + cfg.watch_bias)
    w = np.flatnonzero(rng.random(len(item)) < p_watch)
    a, length = affinity[w], cat.duration[item[w]]
    abandon = rng.random(len(w)) < _sigmoid(-1.5 * a - 0.5)
    early = np.minimum(10.0 + rng.exponential(35.0, len(w)), 115.0)
    completion = np.array([_DEVICE_COMPLETION[d] for d in c.DEVICES])[device[w]]
    share = _sigmoid(1.2 * a + 0.5 + rng.normal(0.0, 0.7, len(w))) * completion
    seconds = np.round(np.where(abandon, early, np.clip(share * length, 120.0, None)))
    rated = rng.random(len(w)) < cfg.rating_share
    stars = np.clip(np.round(2.0 * (3.0 + 0.9 * a + rng.normal(0.0, 0.6, len(w)))) / 2.0,
                    c.MIN_RATING, c.MAX_RATING)
    delay = (10.0 + rng.exponential(45.0, len(w))).astype(np.int64)
    return _Watches(shown=w, seconds=np.minimum(seconds, length),
                    rating=np.where(rated, stars, np.nan), delay=delay)


def _block(cfg: SimConfig, cat: _Catalogue, users: _Users, ids: np.ndarray, user, t, rng):
    """Impressions and watches of a block of sessions holding all sessions of its users, sorted
    by (user, time).

    The policy never shows a title the user watched in an earlier session, so each user's pages
    depend on their earlier watches: the block runs in rounds, round r taking every user's r-th
    session. Returns (``interactions`` columns sorted by session, time and position;
    impressions; watches; ratings).
    """
    _, first, count = np.unique(user, return_index=True, return_counts=True)
    by_count = np.argsort(-count, kind="stable")
    first, count = first[by_count], count[by_count]  # active users of round r: a prefix
    watched = np.empty(0, np.int64)  # sorted keys user row * items + item row
    parts = []
    for r in range(int(count[0]) if len(count) else 0):
        sessions = first[: np.searchsorted(-count, -r, side="left")] + r
        u = user[sessions]
        session, item, position, affinity = _page(cfg, cat, users, u, t[sessions], watched, rng)
        device = _session_devices(users, u, rng)[session]
        watches = _watch(cfg, cat, affinity, item, position, device, rng)
        # New keys are distinct and not yet in `watched` (the page left watched titles out).
        new = np.sort(u[session[watches.shown]].astype(np.int64) * len(cat.added_at)
                      + item[watches.shown])
        watched = np.insert(watched, np.searchsorted(watched, new), new)
        parts.append((sessions[session], item, position, device, watches))

    session = np.concatenate([p[0] for p in parts])
    item = np.concatenate([p[1] for p in parts])
    position = np.concatenate([p[2] for p in parts])
    device = np.concatenate([p[3] for p in parts])
    shown = np.concatenate([p[4].shown + offset for p, offset in zip(
        parts, np.cumsum([0] + [len(p[1]) for p in parts[:-1]]), strict=True)])
    seconds, rating, delay = (np.concatenate([getattr(p[4], name) for p in parts])
                              for name in ("seconds", "rating", "delay"))
    u, w = user[session], shown
    n_imp, n_watch = len(item), len(w)
    is_watch = np.concatenate([np.zeros(n_imp, np.int8), np.ones(n_watch, np.int8)])
    ts = np.concatenate([t[session], t[session[w]] + delay])
    sess = np.concatenate([session, session[w]])
    pos = np.concatenate([position, position[w]])
    order = np.lexsort((pos, ts, sess))
    rating = np.concatenate([np.full(n_imp, np.nan), rating])[order]
    return {
        c.USER_ID: ids[np.concatenate([u, u[w]])][order],
        c.ITEM_ID: np.concatenate([item, item[w]])[order] + 1,
        c.TIMESTAMP: ts[order],
        c.EVENT: pa.array([c.EVENT_IMPRESSION, c.EVENT_WATCH]).take(pa.array(is_watch[order])),
        c.POSITION: pos[order],
        c.WATCH_SECONDS: np.concatenate([np.zeros(n_imp), seconds])[order],
        c.DEVICE: pa.array(c.DEVICES).take(pa.array(np.concatenate([device, device[w]])[order])),
        c.RATING: pa.array(rating, mask=np.isnan(rating)),
    }, n_imp, n_watch, int(np.sum(~np.isnan(rating)))


def _blocks(user: np.ndarray, size: int) -> list[tuple[int, int]]:
    """(begin, end) of blocks of about ``size`` sessions [s] sorted by user, cut between users."""
    if not len(user):
        return []
    cuts = np.flatnonzero(np.diff(user)) + 1  # where a user's sessions begin
    bounds = [0]
    while len(user) - bounds[-1] > size:
        at = np.searchsorted(cuts, bounds[-1] + size, side="right") - 1
        nxt = cuts[at] if at >= 0 and cuts[at] > bounds[-1] else None
        if nxt is None:  # one user holds more than a block: the block is that user
            later = cuts[cuts > bounds[-1]]
            if not len(later):
                break
            nxt = later[0]
        bounds.append(int(nxt))
    bounds.append(len(user))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _truth_rows(cat: _Catalogue, users: _Users, ids: np.ndarray, rows: np.ndarray):
    """Yields truth tables: every item's affinity for users at chunk ``rows``, user by user."""
    m = cat.embed.shape[1]
    step = max(1, _TRUTH_BLOCK_ROWS // m)
    for k in range(0, len(rows), step):
        part = rows[k: k + step]
        u = np.repeat(part, m)
        i = np.tile(np.arange(m), len(part))
        yield pa.table({c.USER_ID: ids[u], c.ITEM_ID: i + 1,
                        AFFINITY: _affinity(users.embed, cat.embed, u, i)}, schema=TRUTH_SCHEMA)


_TRUTH_README = """\
Ground truth of the simulated dataset in the folder above; not a contract table, not for training.
{file}: {user}, {item}, {affinity} for every item, for {n} sampled users; the log drew
P(watch | shown at position p) = p ** -{position_bias} * sigmoid({affinity} + {watch_bias}).
{config}: the SimConfig it was simulated with (marquee.data.simulate.read_sim_config).
"""


# Named dataset shapes (``marquee data synth --shape``): SimConfig settings over the defaults.
SHAPES: dict[str, dict] = {
    "default": {},
    # Few users and many long-tail titles, the shape of MovieLens' "latest-small" set (610
    # users, 9,742 titles, most with a handful of ratings): with seed 1, 580 users watch 6,735
    # of the 10,000 titles 90,148 times; the median title has 4 viewers, 48% have at most 3.
    "long-tail": {"users": 600, "items": 10_000, "days": 120},
}


def shape_config(shape: str, **settings) -> SimConfig:
    """The SimConfig of a named shape (:data:`SHAPES`), with ``settings`` (not None) on top."""
    if shape not in SHAPES:
        raise ValueError(f"unknown dataset shape {shape!r}; the shapes are {sorted(SHAPES)}")
    given = {k: v for k, v in settings.items() if v is not None}
    return SimConfig(**{**SHAPES[shape], **given})


def simulate(
    out_dir: str | Path,
    config: SimConfig = SimConfig(),
    progress: Callable[[str], None] | None = None,
) -> SimSummary:
    """Writes a simulated dataset to ``out_dir`` (see the module docstring); returns a summary.

    ``progress`` receives one line per chunk of ``config.chunk_users`` users.
    """
    began = time.perf_counter()
    cfg = config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat, item_columns = _make_catalogue(cfg)
    truth_pick = _rng(cfg.seed, _STREAM_TRUTH).choice(
        cfg.users, min(cfg.truth_users, cfg.users), replace=False)
    truth_pick.sort()
    truth_path = out / TRUTH_DIR / TRUTH_FILE
    truth_path.parent.mkdir(exist_ok=True)
    (truth_path.parent / "README.md").write_text(_TRUTH_README.format(
        file=TRUTH_FILE, user=c.USER_ID, item=c.ITEM_ID, affinity=AFFINITY, n=len(truth_pick),
        position_bias=cfg.position_bias, watch_bias=cfg.watch_bias, config=CONFIG_FILE))
    (truth_path.parent / CONFIG_FILE).write_text(
        json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n")
    counts = {"impressions": 0, "watches": 0, "ratings": 0, "truth_rows": 0}
    n_chunks = -(-cfg.users // cfg.chunk_users)
    with c.TableWriter(out / f"{c.ITEMS}.parquet", c.ITEMS) as items_out, \
            c.TableWriter(out / f"{c.USERS}.parquet", c.USERS) as users_out, \
            c.TableWriter(out / f"{c.INTERACTIONS}.parquet", c.INTERACTIONS) as events_out, \
            pq.ParquetWriter(truth_path, TRUTH_SCHEMA) as truth_out:
        items_out.write(item_columns)
        del item_columns
        for chunk in range(n_chunks):
            lo, hi = chunk * cfg.chunk_users, min(cfg.users, (chunk + 1) * cfg.chunk_users)
            users, user_columns = _make_users(cfg, chunk, lo, hi)
            users_out.write(user_columns)
            ids = user_columns[c.USER_ID]
            rng = _rng(cfg.seed, _STREAM_EVENTS, chunk)
            user, t = _sessions(cfg, users, rng)
            for b, e in _blocks(user, _BLOCK_CANDIDATES // (_CANDIDATES_PER_SLOT * cfg.page_size)):
                block, n_imp, n_watch, n_rated = _block(cfg, cat, users, ids, user[b:e], t[b:e],
                                                        rng)
                events_out.write(block)
                counts["impressions"] += n_imp
                counts["watches"] += n_watch
                counts["ratings"] += n_rated
            mine = truth_pick[(truth_pick >= lo) & (truth_pick < hi)] - lo
            for table in _truth_rows(cat, users, ids, mine):
                truth_out.write_table(table)
                counts["truth_rows"] += table.num_rows
            if progress:
                progress(f"simulate: users {lo + 1:,}-{hi:,} of {cfg.users:,} (chunk {chunk + 1}/"
                         f"{n_chunks}): {events_out.rows:,} interaction rows so far, "
                         f"{time.perf_counter() - began:.1f} s")
        if not events_out.rows:
            # Raising inside the writers' block deletes the contract tables; the truth goes too.
            truth_out.close()
            shutil.rmtree(truth_path.parent)
            raise ValueError(
                f"{out}: the simulated log is empty: {cfg.users:,} users over {cfg.days} days at "
                f"sessions_per_day={cfg.sessions_per_day} had no session, and the contract needs "
                "at least one interaction. Simulate more users or days, or raise "
                "sessions_per_day."
            )
        rows = {c.USERS: users_out.rows, c.ITEMS: items_out.rows,
                c.INTERACTIONS: events_out.rows}
    return SimSummary(out_dir=out, rows=rows, impressions=counts["impressions"],
                      watches=counts["watches"], ratings=counts["ratings"], truth_path=truth_path,
                      truth_rows=counts["truth_rows"], seconds=time.perf_counter() - began)


def read_sim_config(data_dir: str | Path) -> SimConfig:
    """The :class:`SimConfig` a simulated dataset was written with (``_truth/config.json``)."""
    path = Path(data_dir) / TRUTH_DIR / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: {data_dir} was not written by this simulator (MovieLens and "
            "served logs have no SimConfig), or by a version before it recorded its config. "
            "Simulate it again with `marquee data synth --out DIR`.")
    fields = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{path}: unknown SimConfig field(s) {unknown}; it was written by "
                         "another version of the simulator. Simulate the dataset again.")
    return SimConfig(**fields)
