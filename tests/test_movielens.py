"""The MovieLens importer: the real 100K, tiny hand-written 1M and csv folders, and bad input."""

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marquee.data import contract as c
from marquee.data import movielens as ml
from marquee.data.movielens import ImportSummary, import_movielens
from marquee.data.validate import validate_dataset

ML100K = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "movielens-100k"


def read(out: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(out / f"{table}.parquet")


def rejected(report) -> list[tuple[str, str]]:
    with open(report.rejects_path) as fh:
        return [(r["table"], r["reason"]) for r in csv.DictReader(fh)]


def write_files(folder: Path, files: dict[str, str], encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding=encoding)
    return folder


# ----------------------------------------------------------------------------- the mapping rules


@pytest.mark.parametrize("rating, seconds", [
    # r >= 4: 6000 * r / 5            r < 4: 24 * r
    (5.0, 6000.0), (4.5, 5400.0), (4.0, 4800.0),
    (3.5, 84.0), (3.0, 72.0), (2.5, 60.0), (2.0, 48.0), (1.5, 36.0), (1.0, 24.0), (0.5, 12.0),
])
def test_watch_seconds_per_rating(rating, seconds):
    assert ml.watch_seconds(np.array([rating])).tolist() == [seconds]


def test_watched_past_two_minutes_is_rating_at_least_4():
    ratings = np.arange(c.MIN_RATING, c.MAX_RATING + 0.25, 0.5)  # 0.5, 1.0, ..., 5.0
    assert len(ratings) == 10
    watched = ml.watch_seconds(ratings) >= c.WATCHED_THRESHOLD_SECONDS
    assert watched.tolist() == (ratings >= 4).tolist()


@pytest.mark.parametrize("age, bucket", [
    (None, None), (0, None), (7, "under-18"), (17, "under-18"), (18, "18-24"), (24, "18-24"),
    (25, "25-34"), (34, "25-34"), (35, "35-44"), (44, "35-44"), (45, "45-54"), (54, "45-54"),
    (55, "55+"), (73, "55+"),
])
def test_age_bucket(age, bucket):
    assert ml.age_bucket(age) == bucket


def test_every_mapped_value_is_one_the_contract_allows():
    buckets = {b for _, b in ml.AGE_BUCKET_LOWER_BOUNDS} | set(ml.ML1M_AGE_CODE_BUCKETS.values())
    assert buckets == set(c.AGE_BUCKETS)
    assert ml.UNKNOWN_DEVICE in c.DEVICES
    assert ml.UNKNOWN_SUBSCRIPTION_TIER in c.SUBSCRIPTION_TIERS
    assert ml.MATURITY_RATING in c.MATURITY_RATINGS


@pytest.mark.parametrize("title, release_date, year", [
    ("Toy Story (1995)", "", 1995),
    ("Cosmos (1980) ", "", 1980),  # ml-latest has titles with a trailing space
    ("Yes, Madam (a.k.a. Police Assassins) (1985)", "", 1985),
    ("Land Before Time III: The Time of the Great Giving (1995) (V)", "01-Jan-1995", 1995),
    ("Babylon 5", "", None),
    ("Fawlty Towers (1975-1979)", "", None),
    ("unknown", "", None),
])
def test_release_year(title, release_date, year):
    assert ml.release_year(title, release_date) == year


# ----------------------------------------------------------------------------- real MovieLens 100K


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K.resolve()} (the shared datasets folder)")
    out = tmp_path_factory.mktemp("ml100k")
    lines: list[str] = []
    summary = import_movielens(ML100K, out, progress=lines.append)
    return summary, out, lines


def u_data() -> pd.DataFrame:
    """u.data read independently of the importer: a reference for its aggregates."""
    rows = [list(map(int, line.split())) for line in (ML100K / "u.data").read_text().splitlines()]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "ts"])


def test_100k_counts_and_zero_rejects(ml100k):
    summary, out, lines = ml100k
    assert (summary.format, summary.interactions, summary.users, summary.items) == (
        "100k", 100_000, 943, 1_682)
    assert summary.items_with_keywords is None
    assert "100,000 interactions" in str(summary) and "943 users" in str(summary)
    assert lines[-1] == "users: 943 written"
    report = validate_dataset(out)
    assert {t: (r.rows, r.rejected) for t, r in report.tables.items()} == {
        c.USERS: (943, 0), c.ITEMS: (1_682, 0), c.INTERACTIONS: (100_000, 0)}
    assert report.ok
    assert sorted(p.name for p in out.glob("*.parquet*")) == [
        "interactions.parquet", "items.parquet", "users.parquet"]


def test_100k_first_line_becomes_a_watch(ml100k):
    _, out, _ = ml100k
    first = read(out, c.INTERACTIONS).iloc[0]
    # u.data line 1: "196\t242\t3\t881250949"; rating 3 < 4 -> 24 * 3 = 72 s
    assert (first[c.USER_ID], first[c.ITEM_ID], first[c.TIMESTAMP]) == (196, 242, 881250949)
    assert (first[c.EVENT], first[c.DEVICE]) == (c.EVENT_WATCH, "unknown")
    assert (first[c.RATING], first[c.WATCH_SECONDS]) == (3.0, 72.0)
    assert pd.isna(first[c.POSITION])


def test_100k_watched_share_matches_ratings_of_4_and_5(ml100k):
    _, out, _ = ml100k
    x = read(out, c.INTERACTIONS)
    # u.data has 34,174 ratings of 4 and 21,201 of 5 (README / `cut -f3 u.data | sort | uniq -c`)
    assert int((x[c.WATCH_SECONDS] >= c.WATCHED_THRESHOLD_SECONDS).sum()) == 34_174 + 21_201
    assert sorted(x[c.WATCH_SECONDS].unique().tolist()) == [24.0, 48.0, 72.0, 4800.0, 6000.0]


def test_100k_items(ml100k):
    _, out, _ = ml100k
    items = read(out, c.ITEMS).set_index(c.ITEM_ID)
    toy = items.loc[1]
    assert toy[c.TITLE] == "Toy Story (1995)" and toy[c.RELEASE_YEAR] == 1995
    assert list(toy[c.GENRES]) == ["Animation", "Children's", "Comedy"]
    assert list(toy[c.CAST]) == [] and toy[c.DIRECTOR] is None
    assert pd.isna(toy[c.DURATION_SECONDS]) and toy[c.MATURITY_RATING] == "unrated"
    assert toy[c.KEYWORDS] is None  # 100K has no tags
    # No "(YYYY)" at the end of the title: the year comes from the release date 01-Jan-1995.
    assert items.loc[1412, c.RELEASE_YEAR] == 1995
    # Item 267 is "unknown|||" with only the "unknown" genre flag set.
    assert items.loc[267, c.TITLE] == "unknown" and list(items.loc[267, c.GENRES]) == []
    assert pd.isna(items.loc[267, c.RELEASE_YEAR])
    assert items.loc[543, c.TITLE] == "Misérables, Les (1995)"  # u.item is latin-1
    first_rating = u_data().groupby("item")["ts"].min()
    assert items[c.ADDED_AT].sort_index().tolist() == first_rating.sort_index().tolist()


def test_100k_genre_order_is_u_genre(ml100k):
    lines = (ML100K / "u.genre").read_text(encoding="latin-1").split()
    assert tuple(line.split("|")[0] for line in lines) == ml.ML100K_GENRES


def test_100k_users(ml100k):
    _, out, _ = ml100k
    users = read(out, c.USERS).set_index(c.USER_ID)
    assert users.loc[1, c.AGE_BUCKET] == "18-24"  # u.user: 1|24|M|technician|85711
    assert users.loc[2, c.AGE_BUCKET] == "45-54"  # 2|53|F|other|94043
    assert set(users[c.COUNTRY]) == {"unknown"} and set(users[c.SUBSCRIPTION_TIER]) == {"unknown"}
    assert users[c.ONBOARDING_GENRES].isna().all()
    assert users[c.SIGNUP_AT].tolist() == u_data().groupby("user")["ts"].min().tolist()


# ----------------------------------------------------------------------------- tiny fixtures

T = 978_300_000  # a timestamp in 2001, like 1M's


def test_tiny_100k_with_a_rating_of_an_unknown_user(tmp_path):
    flags = ["0"] * 19
    flags[0] = flags[8] = "1"  # "unknown" (dropped) and Drama, in u.genre order
    src = write_files(tmp_path / "ml-100k", {
        "u.data": f"1\t10\t4\t{T + 5}\n1\t10\t2\t{T}\n7\t10\t5\t{T + 9}\n",
        "u.item": "10|Drôle (1990)|01-Jan-1990||http://x|" + "|".join(flags) + "\n",
        "u.user": "1|17|F|writer|12345\n2||M|other|54321\n",
    }, encoding="latin-1")
    summary = import_movielens(src, tmp_path / "out")
    assert (summary.format, summary.interactions, summary.users, summary.items) == (
        "100k", 3, 2, 1)
    items = read(tmp_path / "out", c.ITEMS)
    assert items[c.TITLE].tolist() == ["Drôle (1990)"]
    assert list(items[c.GENRES][0]) == ["Drama"]
    assert items[c.ADDED_AT].tolist() == [T]  # its first rating is the second line
    users = read(tmp_path / "out", c.USERS)
    # user 2 never rated: signed up at the dataset's first rating; no age -> null bucket
    assert users[c.SIGNUP_AT].tolist() == [T, T]
    assert users[c.AGE_BUCKET].tolist() == ["under-18", None]
    # User 7 is not in u.user: the rating is imported and the validator rejects it.
    report = validate_dataset(tmp_path / "out")
    assert rejected(report) == [(c.INTERACTIONS, "user_id: 7 is not in users")]


ML1M = {
    # UserID::MovieID::Rating::Timestamp; movie 99 is not in movies.dat
    "ratings.dat": (f"1::1::5::{T + 100}\n1::73::3::{T + 50}\n2::1::4::{T + 10}\n"
                    f"3::99::1::{T + 20}\n"),
    # movie 5 is never rated; 73 has a latin-1 title
    "movies.dat": ("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                   "73::Misérables, Les (1995)::Drama|Musical\n"
                   "5::Father of the Bride Part II (1995)::Comedy\n"),
    # UserID::Gender::Age::Occupation::Zip-code
    "users.dat": "1::F::1::10::48067\n2::M::50::16::70072\n3::M::56::15::55117\n4::F::99::0::0\n",
}


def test_1m(tmp_path):
    src = write_files(tmp_path / "ml-1m", ML1M, encoding="latin-1")
    out = tmp_path / "out"
    summary = import_movielens(src, out)
    assert (summary.format, summary.interactions, summary.users, summary.items) == (
        "1m", 4, 4, 3)
    x = read(out, c.INTERACTIONS)
    assert x[c.RATING].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert x[c.WATCH_SECONDS].tolist() == [6000.0, 72.0, 4800.0, 24.0]
    items = read(out, c.ITEMS).set_index(c.ITEM_ID)
    assert items.loc[73, c.TITLE] == "Misérables, Les (1995)"
    assert list(items.loc[73, c.GENRES]) == ["Drama", "Musical"]
    # first ratings: movie 1 at T+10 (user 2), 73 at T+50; 5 never rated -> dataset's first, T+10
    assert items[c.ADDED_AT].to_dict() == {1: T + 10, 73: T + 50, 5: T + 10}
    users = read(out, c.USERS).set_index(c.USER_ID)
    # age codes 1 -> under-18, 50 ("50-55") -> 45-54, 56 -> 55+, 99 is not a code -> null
    assert users[c.AGE_BUCKET].to_dict() == {1: "under-18", 2: "45-54", 3: "55+", 4: None}
    assert users[c.SIGNUP_AT].to_dict() == {1: T + 50, 2: T + 10, 3: T + 20, 4: T + 10}
    report = validate_dataset(out)
    assert rejected(report) == [(c.INTERACTIONS, "item_id: 99 is not in items")]


CSV = {
    "ratings.csv": ("userId,movieId,rating,timestamp\n"
                    f"10,1,4.5,{T + 30}\n10,2,0.5,{T + 40}\n20,1,3.5,{T + 20}\n20,3,5.0,{T}\n"
                    f"30,2,4.0,{T + 60}\n"),
    "movies.csv": ("movieId,title,genres\n"
                   "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
                   '2,"American President, The (1995)",Comedy|Drama|Romance\n'
                   "3,Babylon 5,(no genres listed)\n"
                   "4,None,\n"),  # titled "None", no genres
}


def tags_csv() -> str:
    # movie 1: "pixar" 3 times in three spellings, "fun" twice, t00..t21 once each
    rows = [f"10,1,{tag},{T}" for tag in ["Pixar", " pixar ", "PIXAR", "fun", "Fun"]]
    rows += [f"20,1,t{i:02d},{T}" for i in range(21, -1, -1)]
    rows += [f'20,2,"politics, US",{T}', f"20,2,,{T}"]  # an empty tag is no keyword
    rows += [f"20,2,NA,{T}"]  # a tag, not a missing value
    return "userId,movieId,tag,timestamp\n" + "\n".join(rows) + "\n"


def test_csv_with_tags(tmp_path):
    src = write_files(tmp_path / "ml-latest-small", {**CSV, "tags.csv": tags_csv()})
    out = tmp_path / "out"
    summary = import_movielens(src, out)
    assert (summary.format, summary.interactions, summary.users, summary.items) == (
        "csv", 5, 3, 4)
    assert summary.items_with_keywords == 2
    x = read(out, c.INTERACTIONS)
    assert x[c.WATCH_SECONDS].tolist() == [5400.0, 12.0, 84.0, 6000.0, 4800.0]
    items = read(out, c.ITEMS).set_index(c.ITEM_ID)
    # most frequent first (pixar 3, fun 2), then ties alphabetical, cut at 20
    assert list(items.loc[1, c.KEYWORDS]) == ["pixar", "fun"] + [f"t{i:02d}" for i in range(18)]
    assert list(items.loc[2, c.KEYWORDS]) == ["na", "politics, us"]
    assert list(items.loc[3, c.KEYWORDS]) == []  # a tags file, but no tag for movie 3
    assert list(items.loc[3, c.GENRES]) == [] and pd.isna(items.loc[3, c.RELEASE_YEAR])
    assert items.loc[2, c.TITLE] == "American President, The (1995)"
    assert items.loc[4, c.TITLE] == "None"  # not read as a missing value
    assert list(items.loc[4, c.GENRES]) == [] and pd.isna(items.loc[4, c.RELEASE_YEAR])
    assert items[c.ADDED_AT].to_dict() == {1: T + 20, 2: T + 40, 3: T, 4: T}
    users = read(out, c.USERS)
    # no users file: the users are the raters, with their first rating and unknown age
    assert users[c.USER_ID].tolist() == [10, 20, 30]
    assert users[c.SIGNUP_AT].tolist() == [T + 30, T, T + 60]
    assert users[c.AGE_BUCKET].isna().all()
    report = validate_dataset(out)
    assert report.ok and rejected(report) == []


def test_csv_without_tags_has_null_keywords(tmp_path):
    summary = import_movielens(write_files(tmp_path / "src", CSV), tmp_path / "out")
    assert summary.items_with_keywords is None
    assert read(tmp_path / "out", c.ITEMS)[c.KEYWORDS].isna().all()


def test_streaming_in_small_chunks_gives_the_same_dataset(tmp_path, monkeypatch):
    src = write_files(tmp_path / "src", {**CSV, "tags.csv": tags_csv()})
    import_movielens(src, tmp_path / "whole")
    # 5 ratings in chunks of 2: user 20's first rating (T) is in the second chunk, after T+20
    monkeypatch.setattr(ml, "RATINGS_CHUNK_ROWS", 2)
    lines: list[str] = []
    import_movielens(src, tmp_path / "chunked", progress=lines.append)
    assert [m for m in lines if m.startswith("interactions")] == [
        "interactions: 2 ratings written", "interactions: 4 ratings written",
        "interactions: 5 ratings written"]
    for table in c.TABLES:
        pd.testing.assert_frame_equal(read(tmp_path / "chunked", table),
                                      read(tmp_path / "whole", table))


# ----------------------------------------------------------------------------- bad input


def test_unrecognised_folder_says_what_it_looked_for_and_found(tmp_path):
    write_files(tmp_path, {"notes.txt": "hi", "ml-1m.zip": ""})
    with pytest.raises(c.ContractError) as e:
        import_movielens(tmp_path, tmp_path / "out")
    msg = str(e.value)
    for name in ("u.data", "u.item", "u.user", "ratings.dat", "movies.dat", "users.dat",
                 "ratings.csv", "movies.csv", "tags.csv"):
        assert name in msg
    assert "Found in" in msg and "ml-1m.zip, notes.txt" in msg
    assert "Unzip" in msg
    assert not (tmp_path / "out").exists()


def test_partial_set_and_subfolder_are_named(tmp_path):
    # MovieLens 10M has ratings.dat and movies.dat but no users.dat
    write_files(tmp_path, {"ratings.dat": "", "movies.dat": ""})
    write_files(tmp_path / "ml-latest-small", CSV)
    with pytest.raises(c.ContractError) as e:
        import_movielens(tmp_path, tmp_path / "out")
    assert "found ratings.dat, movies.dat but not users.dat" in str(e.value)
    assert f"pass {tmp_path / 'ml-latest-small'} instead" in str(e.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(c.ContractError, match="is not a folder"):
        import_movielens(tmp_path / "ml-100k.zip", tmp_path / "out")


@pytest.mark.parametrize("chunk_rows", [1_000_000, 2])
def test_an_id_the_contract_cannot_hold_stops_the_import_naming_the_line(
    tmp_path, monkeypatch, chunk_rows
):
    monkeypatch.setattr(ml, "RATINGS_CHUNK_ROWS", chunk_rows)
    bad = CSV["ratings.csv"].replace("20,3,5.0", "x7,3,5.0")  # the 4th data row, line 5
    src = write_files(tmp_path / "src", {**CSV, "ratings.csv": bad})
    out = tmp_path / "out"
    with pytest.raises(c.ContractError, match=r"ratings.csv: line 5: user id 'x7' is not a whole"):
        import_movielens(src, out)
    assert list(out.iterdir()) == []  # no half-written tables left behind


def test_no_ratings(tmp_path):
    src = write_files(tmp_path / "src", {**CSV, "ratings.csv": "userId,movieId,rating,timestamp\n"})
    with pytest.raises(c.ContractError, match="ratings.csv: has no ratings"):
        import_movielens(src, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_csv_with_other_columns_is_not_read(tmp_path):
    src = write_files(tmp_path / "src", {**CSV, "ratings.csv": "user,movie,stars,when\n1,1,4,0\n"})
    with pytest.raises(c.ContractError, match="cannot be read as MovieLens latest"):
        import_movielens(src, tmp_path / "out")


def test_summary_reads_well():
    s = ImportSummary("1m", Path("ml-1m"), Path("data"), users=6_040, items=3_883,
                      interactions=1_000_209, items_with_keywords=None, seconds=2.04)
    assert str(s) == (
        "MovieLens 1M from ml-1m -> data in 2.0 s: 1,000,209 interactions (one watch per "
        "rating), 6,040 users, 3,883 items.\nCheck it with `marquee data validate data`.")
