"""Imports MovieLens (100K, 1M, latest, latest-small, 20M, 25M) into the data contract.

``import_movielens(src, out_dir)`` detects the format from the files in ``src``, streams the
ratings into ``interactions.parquet`` and writes ``items.parquet`` and ``users.parquet``.
``docs/movielens.md`` documents the same mapping for users.

Formats (the folder GroupLens' zip unpacks to):

* ``100k``: ``u.data`` (user, item, rating, timestamp; tabs), ``u.item`` (``|``, latin-1:
  id|title|release date|video release date|IMDb URL|19 genre flags in ``u.genre`` order),
  ``u.user`` (id|age|gender|occupation|zip).
* ``1m``: ``ratings.dat``, ``movies.dat`` (latin-1, genres ``|``-separated), ``users.dat``
  (``::``-separated; Age is a code 1/18/25/35/45/50/56).
* ``csv`` (latest, latest-small, 20M, 25M): ``ratings.csv``, ``movies.csv``, optional
  ``tags.csv``. There is no users file: users are the ids found in the ratings.

Mapping:

* Each rating is one ``watch`` interaction: position null, device ``unknown``, rating as given,
  timestamp as given. MovieLens has no watch time, so ``watch_seconds`` is made up from the
  rating around a nominal 100-minute title: a rating >= 4 means watched (``6000 * r / 5``: 4 ->
  4800, 4.5 -> 5400, 5 -> 6000); below 4 means abandoned early (``24 * r``, always under 120 s:
  3 -> 72, 1 -> 24, 0.5 -> 12). So "watched past 2 minutes" is exactly "rating >= 4".
* Items: title as given; release_year from the title's trailing "(YYYY)", else the 100K release
  date, else null; genres from the flags or lists, without MovieLens' "unknown" and
  "(no genres listed)"; cast empty; director and duration null; maturity ``unrated``; keywords
  from tags.csv (lowercased, deduplicated, most frequent first, ties alphabetical, at most 20; an
  empty list for an untagged item) or null without a tags file; added_at = the item's first
  rating (MovieLens has no catalogue date; an item nobody rated gets the dataset's first rating).
* Users: signup_at = the user's first rating (the dataset's first rating if they rated nothing);
  country and subscription_tier ``unknown`` (a US zip code is not a country); age_bucket from the
  exact age (100K) or the age code (1M), null when unknown; onboarding_genres null. Gender,
  occupation and zip code have no column in the contract and are not carried.

Rows the source itself has broken (a rating of a movie missing from the movies file, a duplicate
movie id, a rating out of range) are imported as they are, so that ``validate_dataset`` sends
them to its rejects file instead of them vanishing here. A value the contract's column type cannot
hold at all (a user id that is not a whole number, a missing timestamp) stops the import with a
:class:`~marquee.data.contract.ContractError` naming the file and row.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from marquee.data import contract as c

FORMAT_100K = "100k"
FORMAT_1M = "1m"
FORMAT_CSV = "csv"
# The files that identify each format, in detection order.
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    FORMAT_100K: ("u.data", "u.item", "u.user"),
    FORMAT_1M: ("ratings.dat", "movies.dat", "users.dat"),
    FORMAT_CSV: ("ratings.csv", "movies.csv"),
}
FORMAT_NAMES = {
    FORMAT_100K: "MovieLens 100K",
    FORMAT_1M: "MovieLens 1M",
    FORMAT_CSV: "MovieLens latest / latest-small / 20M / 25M",
}
CSV_TAGS_FILE = "tags.csv"
# The genres of u.item's 19 flags, in order (as listed in 100K's u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
ML100K_ITEM_GENRE_FLAGS_START = 5  # id|title|release date|video release date|IMDb URL|flags...
LEGACY_ENCODING = "latin-1"  # 100K and 1M; the csv formats are UTF-8
CSV_COLUMNS = {  # MovieLens csv header -> contract column
    "userId": c.USER_ID, "movieId": c.ITEM_ID, "rating": c.RATING, "timestamp": c.TIMESTAMP,
}
CSV_TITLE, CSV_GENRES, CSV_TAG = "title", "genres", "tag"
RATINGS_CHUNK_ROWS = 1_000_000

# --- the mapping
NOMINAL_DURATION_SECONDS = 6000.0  # 100 minutes
WATCHED_MIN_RATING = 4.0  # from here on a rating means "watched"
ABANDONED_SECONDS_PER_STAR = 24.0  # below it: 24 s a star, so at most 84 s (< 120 s)
UNKNOWN_DEVICE = "unknown"
UNKNOWN_COUNTRY = "unknown"
UNKNOWN_SUBSCRIPTION_TIER = "unknown"
MATURITY_RATING = "unrated"
NOT_A_GENRE = frozenset({"unknown", "(no genres listed)"})
MAX_KEYWORDS = 20
# 100K gives the exact age: the bucket is the first whose lower bound it reaches.
AGE_BUCKET_LOWER_BOUNDS = (
    (55, "55+"), (45, "45-54"), (35, "35-44"), (25, "25-34"), (18, "18-24"), (1, "under-18"),
)
# 1M gives a code per range; "50-55" goes to 45-54 (five of its six years are under 55).
ML1M_AGE_CODE_BUCKETS = {
    1: "under-18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-54", 50: "45-54", 56: "55+",
}

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_YEAR_AT_END = re.compile(r"(\d{4})\s*$")


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What an import wrote: the detected format and the rows per contract table."""

    format: str  # FORMAT_100K, FORMAT_1M or FORMAT_CSV
    src: Path
    out_dir: Path
    users: int
    items: int
    interactions: int
    items_with_keywords: int | None  # None without a tags file
    seconds: float

    def __str__(self) -> str:
        keywords = (
            "" if self.items_with_keywords is None
            else f", {self.items_with_keywords:,} with keywords from tags"
        )
        return (
            f"{FORMAT_NAMES[self.format]} from {self.src} -> {self.out_dir} in "
            f"{self.seconds:.1f} s: {self.interactions:,} interactions (one watch per rating), "
            f"{self.users:,} users, {self.items:,} items{keywords}.\n"
            f"Check it with `marquee data validate {self.out_dir}`."
        )


def watch_seconds(rating: np.ndarray) -> np.ndarray:
    """Made-up watch time for ratings ``[n]`` -> ``[n]``; >= 120 s exactly when rating >= 4."""
    rating = np.asarray(rating, dtype="float64")
    return np.where(
        rating >= WATCHED_MIN_RATING,
        NOMINAL_DURATION_SECONDS * rating / 5.0,
        ABANDONED_SECONDS_PER_STAR * rating,
    )


def age_bucket(age: int | None) -> str | None:
    """The contract's age bucket for an exact age in years; None when unknown (None or < 1)."""
    if age is None:
        return None
    return next((bucket for low, bucket in AGE_BUCKET_LOWER_BOUNDS if age >= low), None)


def release_year(title: str, release_date: str = "") -> int | None:
    """The trailing "(YYYY)" of a title, else the year ending a 100K release date, else None."""
    m = _YEAR_IN_TITLE.search(title) or _YEAR_AT_END.search(release_date)
    return int(m.group(1)) if m else None


def detect_format(src: str | Path) -> str:
    """FORMAT_100K, FORMAT_1M or FORMAT_CSV from the files in ``src``; ContractError if none."""
    src = Path(src)
    if not src.is_dir():
        raise c.ContractError(
            f"{src}: is not a folder. Pass the folder a MovieLens zip unpacks to "
            "(e.g. ml-100k/, ml-1m/, ml-latest-small/), not the zip itself."
        )
    fmt = _format_of(src)
    if fmt is None:
        raise c.ContractError(_unrecognised(src))
    return fmt


def _format_of(folder: Path) -> str | None:
    return next((fmt for fmt, names in FORMAT_FILES.items()
                 if all((folder / n).is_file() for n in names)), None)


def _unrecognised(src: Path) -> str:
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in src.iterdir())
    lines = [f"{src}: not a MovieLens folder. Looked for one of these sets of files:"]
    for fmt, names in FORMAT_FILES.items():
        extra = f" (and optionally {CSV_TAGS_FILE})" if fmt == FORMAT_CSV else ""
        lines.append(f"  {FORMAT_NAMES[fmt]}: {', '.join(names)}{extra}")
        have = [n for n in names if (src / n).is_file()]
        if have:
            lines.append(f"    found {', '.join(have)} but not "
                         f"{', '.join(n for n in names if n not in have)}")
    shown = ", ".join(found[:20]) + (f", ... ({len(found)} in all)" if len(found) > 20 else "")
    lines.append(f"Found in {src}: {shown or 'nothing'}.")
    for sub in sorted(p for p in src.iterdir() if p.is_dir() and os.access(p, os.R_OK | os.X_OK)):
        fmt = _format_of(sub)
        if fmt is not None:
            lines.append(f"{sub.name}/ holds {FORMAT_NAMES[fmt]}: pass {sub} instead.")
    if any(name.endswith(".zip") for name in found):
        lines.append("Unzip the MovieLens zip first and pass the folder it creates.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ratings


def _whole_numbers(values: pd.Series, path: Path, first_line: int, what: str) -> np.ndarray:
    """int64 ``[n]``, or a ContractError naming the first line the contract could not hold."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype="int64")
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    bad = np.isnan(numbers) | (np.mod(numbers, 1) != 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise c.ContractError(
            f"{path}: line {first_line + i}: {what} {values.iloc[i]!r} is not a whole number, "
            "and the contract cannot hold it. Fix or delete that line and import again."
        )
    return numbers.astype("int64")


def _read_csv_chunks(
    path: Path, fmt: str, has_header: bool, **read_csv_kwargs
) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yields (line number of the chunk's first row, chunk); pandas errors become ContractErrors."""
    line = 2 if has_header else 1
    try:
        with pd.read_csv(path, chunksize=RATINGS_CHUNK_ROWS, header=0 if has_header else None,
                         **read_csv_kwargs) as reader:
            for chunk in reader:
                yield line, chunk
                line += len(chunk)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as e:
        raise c.ContractError(
            f"{path}: cannot be read as {FORMAT_NAMES[fmt]} ({e}). Is this file from a "
            "MovieLens download, unmodified?"
        ) from e


def _ratings_file(src: Path, fmt: str) -> tuple[Path, bool, dict]:
    """(path, has_header, read_csv options) giving columns USER_ID, ITEM_ID, RATING, TIMESTAMP."""
    names = [c.USER_ID, c.ITEM_ID, c.RATING, c.TIMESTAMP]
    if fmt == FORMAT_100K:
        return src / "u.data", False, dict(sep="\t", names=names)
    if fmt == FORMAT_1M:
        # '::' would need pandas' slow python engine; ':' with every other field skipped is exact.
        return src / "ratings.dat", False, dict(sep=":", usecols=[0, 2, 4, 6], names=names)
    return src / "ratings.csv", True, dict(usecols=list(CSV_COLUMNS))


def _running_min(seen: pd.Series | None, new: pd.Series) -> pd.Series:
    return new if seen is None else pd.concat([seen, new]).groupby(level=0).min()


@dataclasses.dataclass
class _FirstRatings:
    """First rating timestamp per user and per item (Series indexed by id), and the row count."""

    users: pd.Series
    items: pd.Series
    rows: int

    @property
    def first(self) -> int:
        """The dataset's first rating."""
        return int(self.users.min())


def _write_interactions(
    src: Path, fmt: str, out: Path, say: Callable[[str], None]
) -> _FirstRatings:
    path, has_header, kwargs = _ratings_file(src, fmt)
    users = items = None
    rows = 0
    with c.TableWriter(out, c.INTERACTIONS) as w:
        for line, chunk in _read_csv_chunks(path, fmt, has_header, **kwargs):
            chunk = chunk.rename(columns=CSV_COLUMNS)
            n = len(chunk)
            user = _whole_numbers(chunk[c.USER_ID], path, line, "user id")
            item = _whole_numbers(chunk[c.ITEM_ID], path, line, "movie id")
            ts = _whole_numbers(chunk[c.TIMESTAMP], path, line, "timestamp")
            # A rating that is not a number becomes NaN: the validator rejects that row.
            rating = pd.to_numeric(chunk[c.RATING], errors="coerce").to_numpy(dtype="float64")
            w.write({
                c.USER_ID: user,
                c.ITEM_ID: item,
                c.TIMESTAMP: ts,
                c.EVENT: pa.repeat(c.EVENT_WATCH, n),
                c.POSITION: pa.nulls(n, pa.int32()),
                c.WATCH_SECONDS: watch_seconds(rating),
                c.DEVICE: pa.repeat(UNKNOWN_DEVICE, n),
                c.RATING: rating,
            })
            # Only the running minimum per id is kept, so memory follows ids, not ratings.
            frame = pd.DataFrame({c.USER_ID: user, c.ITEM_ID: item, c.TIMESTAMP: ts})
            users = _running_min(users, frame.groupby(c.USER_ID)[c.TIMESTAMP].min())
            items = _running_min(items, frame.groupby(c.ITEM_ID)[c.TIMESTAMP].min())
            rows += n
            say(f"interactions: {rows:,} ratings written")
    if not rows:
        raise c.ContractError(f"{path}: has no ratings; a dataset needs at least one.")
    return _FirstRatings(users, items, rows)


# ----------------------------------------------------------------------------- items and users


def _lines(path: Path, sep: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding=encoding, newline="") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split(sep)


def _int(text: str, path: Path, line: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise c.ContractError(
            f"{path}: line {line}: {what} {text!r} is not a whole number, and the contract "
            "cannot hold it. Fix or delete that line and import again."
        ) from None


def _genres(names) -> list[str]:
    return [g for g in names if g and g not in NOT_A_GENRE]


def _items(src: Path, fmt: str) -> pd.DataFrame:
    """ITEM_ID, TITLE, GENRES, RELEASE_YEAR per movie, in file order."""
    rows = []
    if fmt == FORMAT_100K:
        path = src / "u.item"
        for line, f in _lines(path, "|", LEGACY_ENCODING):
            f += [""] * (ML100K_ITEM_GENRE_FLAGS_START - len(f))
            flags = f[ML100K_ITEM_GENRE_FLAGS_START:]  # a short line just has fewer genres
            genres = [g for g, on in zip(ML100K_GENRES, flags, strict=False) if on.strip() == "1"]
            rows.append((_int(f[0], path, line, "movie id"), f[1], _genres(genres),
                         release_year(f[1], f[2])))
    elif fmt == FORMAT_1M:
        path = src / "movies.dat"
        for line, f in _lines(path, "::", LEGACY_ENCODING):
            f += [""] * (3 - len(f))
            rows.append((_int(f[0], path, line, "movie id"), f[1],
                         _genres(f[2].split("|")), release_year(f[1])))
    else:
        path = src / "movies.csv"
        cols = ["movieId", CSV_TITLE, CSV_GENRES]
        for line, chunk in _read_csv_chunks(path, fmt, True, usecols=cols, dtype=str,
                                            keep_default_na=False):
            ids = _whole_numbers(chunk["movieId"], path, line, "movie id")
            for item, title, genres in zip(ids, chunk[CSV_TITLE], chunk[CSV_GENRES], strict=True):
                rows.append((int(item), title, _genres(genres.split("|")), release_year(title)))
    frame = pd.DataFrame(rows, columns=[c.ITEM_ID, c.TITLE, c.GENRES, c.RELEASE_YEAR])
    return frame.astype({c.RELEASE_YEAR: "Int32"})


def _keywords(path: Path) -> dict[int, list[str]]:
    """movie id -> its tags, lowercased, most frequent first (ties alphabetical), MAX_KEYWORDS."""
    counts: pd.Series | None = None  # (movie id, tag) -> times tagged
    for line, chunk in _read_csv_chunks(path, FORMAT_CSV, True, usecols=["movieId", CSV_TAG],
                                        dtype=str, keep_default_na=False):
        ids = _whole_numbers(chunk["movieId"], path, line, "movie id")
        tags = chunk[CSV_TAG].str.strip().str.lower().to_numpy()
        frame = pd.DataFrame({c.ITEM_ID: ids, c.KEYWORDS: tags})
        frame = frame[frame[c.KEYWORDS] != ""]
        new = frame.groupby([c.ITEM_ID, c.KEYWORDS]).size()
        counts = new if counts is None else pd.concat([counts, new]).groupby(level=[0, 1]).sum()
    if counts is None or counts.empty:
        return {}
    ranked = counts.rename("n").reset_index().sort_values(
        [c.ITEM_ID, "n", c.KEYWORDS], ascending=[True, False, True])
    top = ranked.groupby(c.ITEM_ID).head(MAX_KEYWORDS)
    return top.groupby(c.ITEM_ID)[c.KEYWORDS].agg(list).to_dict()


def _users(src: Path, fmt: str, first: _FirstRatings) -> pd.DataFrame:
    """USER_ID and AGE_BUCKET per user, in file order (csv: the users found in the ratings)."""
    rows = []
    if fmt == FORMAT_100K:
        path = src / "u.user"
        for line, f in _lines(path, "|", LEGACY_ENCODING):
            age = f[1].strip() if len(f) > 1 else ""
            rows.append((_int(f[0], path, line, "user id"),
                         age_bucket(int(age)) if age.isdigit() else None))
    elif fmt == FORMAT_1M:
        path = src / "users.dat"
        for line, f in _lines(path, "::", LEGACY_ENCODING):
            code = f[2].strip() if len(f) > 2 else ""
            rows.append((_int(f[0], path, line, "user id"),
                         ML1M_AGE_CODE_BUCKETS.get(int(code)) if code.isdigit() else None))
    else:
        rows = [(int(u), None) for u in first.users.index]
    return pd.DataFrame(rows, columns=[c.USER_ID, c.AGE_BUCKET])


# ----------------------------------------------------------------------------- import


def _write_items(
    src: Path, fmt: str, first: _FirstRatings, out: Path
) -> tuple[int, int | None]:
    """Writes the items table; returns (items, items with keywords or None without tags)."""
    items = _items(src, fmt)
    n = len(items)
    keywords = None
    if fmt == FORMAT_CSV and (src / CSV_TAGS_FILE).is_file():
        found = _keywords(src / CSV_TAGS_FILE)
        keywords = [found.get(i, []) for i in items[c.ITEM_ID]]
    added = items[c.ITEM_ID].map(first.items).fillna(first.first).astype("int64")
    with c.TableWriter(out, c.ITEMS) as w:
        w.write({
            c.ITEM_ID: items[c.ITEM_ID].to_numpy(dtype="int64"),
            c.TITLE: items[c.TITLE].tolist(),
            c.GENRES: items[c.GENRES].tolist(),
            c.CAST: [[] for _ in range(n)],
            c.DIRECTOR: pa.nulls(n, pa.string()),
            c.RELEASE_YEAR: items[c.RELEASE_YEAR],
            c.DURATION_SECONDS: pa.nulls(n, pa.int64()),
            c.ADDED_AT: added.to_numpy(),
            c.MATURITY_RATING: pa.repeat(MATURITY_RATING, n),
            c.KEYWORDS: pa.nulls(n, c.LIST_STR) if keywords is None else keywords,
        })
    return n, None if keywords is None else sum(1 for k in keywords if k)


def _write_users(src: Path, fmt: str, first: _FirstRatings, out: Path) -> int:
    users = _users(src, fmt, first)
    n = len(users)
    signup = users[c.USER_ID].map(first.users).fillna(first.first).astype("int64")
    with c.TableWriter(out, c.USERS) as w:
        w.write({
            c.USER_ID: users[c.USER_ID].to_numpy(dtype="int64"),
            c.SIGNUP_AT: signup.to_numpy(),
            c.COUNTRY: pa.repeat(UNKNOWN_COUNTRY, n),
            c.SUBSCRIPTION_TIER: pa.repeat(UNKNOWN_SUBSCRIPTION_TIER, n),
            c.AGE_BUCKET: pa.array(users[c.AGE_BUCKET].tolist(), pa.string()),
            c.ONBOARDING_GENRES: pa.nulls(n, c.LIST_STR),
        })
    return n


def import_movielens(
    src: str | Path, out_dir: str | Path, progress: Callable[[str], None] | None = None
) -> ImportSummary:
    """Converts the MovieLens folder ``src`` into a contract dataset in ``out_dir``.

    Writes ``interactions.parquet``, ``items.parquet`` and ``users.parquet`` (replacing any there;
    files are written under a temporary name and renamed only when all three are done).
    ``progress`` gets one line per step. Raises ContractError when ``src`` is not MovieLens or a
    value cannot be held by the contract at all (see the module docstring).
    """
    start = time.perf_counter()
    src, out_dir = Path(src), Path(out_dir)
    say = progress or (lambda _line: None)
    fmt = detect_format(src)
    say(f"{src}: {FORMAT_NAMES[fmt]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = {t: out_dir / f"{t}.parquet.partial" for t in c.TABLES}
    try:
        first = _write_interactions(src, fmt, partial[c.INTERACTIONS], say)
        n_items, with_keywords = _write_items(src, fmt, first, partial[c.ITEMS])
        say(f"items: {n_items:,} written")
        n_users = _write_users(src, fmt, first, partial[c.USERS])
        say(f"users: {n_users:,} written")
    except BaseException:
        for p in partial.values():
            p.unlink(missing_ok=True)
        raise
    for table, p in partial.items():
        p.replace(out_dir / f"{table}.parquet")
    return ImportSummary(
        format=fmt, src=src, out_dir=out_dir, users=n_users, items=n_items,
        interactions=first.rows, items_with_keywords=with_keywords,
        seconds=time.perf_counter() - start,
    )
