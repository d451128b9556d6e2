"""The contract validator on good and bad input, with hand-countable rejects."""

import csv

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marquee.data import contract as c
from marquee.data.validate import TooManyRejects, load_dataset, validate_dataset

T0 = 1_700_000_000


def users(n=3):
    return {
        c.USER_ID: list(range(1, n + 1)),
        c.SIGNUP_AT: [T0] * n,
        c.COUNTRY: ["US"] * n,
        c.SUBSCRIPTION_TIER: ["basic"] * n,
        c.AGE_BUCKET: ["25-34"] + [None] * (n - 1),
        c.ONBOARDING_GENRES: [["drama", "comedy", "horror"]] + [None] * (n - 1),
    }


def items(n=4):
    return {
        c.ITEM_ID: [10 * (i + 1) for i in range(n)],
        c.TITLE: [f"Title {i}" for i in range(n)],
        c.GENRES: [["drama"]] * n,
        c.CAST: [["A. Actor", "B. Actor"]] * n,
        c.DIRECTOR: ["D. Rector"] * n,
        c.RELEASE_YEAR: [2001] * n,
        c.DURATION_SECONDS: [5400] * n,
        c.ADDED_AT: [T0] * n,
        c.MATURITY_RATING: ["PG"] * n,
    }


def interactions(n=10):
    return {
        c.USER_ID: [1 + i % 3 for i in range(n)],
        c.ITEM_ID: [10 * (1 + i % 4) for i in range(n)],
        c.TIMESTAMP: [T0 + 60 * i for i in range(n)],
        c.EVENT: ["impression", "watch"] * (n // 2),
        c.POSITION: [1 + i % 5 for i in range(n)],
        c.WATCH_SECONDS: [0.0, 300.0] * (n // 2),
        c.DEVICE: ["tv"] * n,
        c.RATING: [None] * n,
    }


def write(tmp_path, u=None, it=None, x=None):
    c.write_table(tmp_path, c.USERS, u or users())
    c.write_table(tmp_path, c.ITEMS, it or items())
    c.write_table(tmp_path, c.INTERACTIONS, x or interactions())
    return tmp_path


def rejects(report):
    with open(report.rejects_path) as fh:
        return list(csv.DictReader(fh))


def test_clean_dataset_passes(tmp_path):
    report = validate_dataset(write(tmp_path))
    assert report.ok
    assert {t: r.rows for t, r in report.tables.items()} == {
        c.USERS: 3, c.ITEMS: 4, c.INTERACTIONS: 10}
    assert sum(r.rejected for r in report.tables.values()) == 0
    ds = load_dataset(tmp_path)
    assert len(ds.interactions) == 10 and ds.interactions[c.TIMESTAMP].dtype == np.int64


def test_missing_column_is_a_file_error_naming_it(tmp_path):
    x = interactions()
    del x[c.EVENT]
    pq.write_table(pa.Table.from_pydict(x), tmp_path / "interactions.parquet")
    c.write_table(tmp_path, c.USERS, users())
    c.write_table(tmp_path, c.ITEMS, items())
    with pytest.raises(c.ContractError, match="missing column.*event"):
        validate_dataset(tmp_path)


def test_bad_rows_go_to_rejects_with_row_and_reason(tmp_path):
    x = pd.DataFrame(interactions())
    x[c.TIMESTAMP] = x[c.TIMESTAMP].astype("float64")
    x.loc[2, c.TIMESTAMP] = np.nan            # NaN timestamp
    x.loc[3, c.WATCH_SECONDS] = -5.0          # negative watch time
    x.loc[5, c.ITEM_ID] = 999                 # unknown item id
    x.loc[7, c.USER_ID] = 42                  # unknown user id
    x.loc[8, c.EVENT] = "click"               # not an event
    pq.write_table(pa.Table.from_pandas(x, preserve_index=False), tmp_path / "interactions.parquet")
    c.write_table(tmp_path, c.USERS, users())
    c.write_table(tmp_path, c.ITEMS, items())
    report = validate_dataset(tmp_path, max_bad_share=0.6)
    assert report.tables[c.INTERACTIONS].rejected == 5
    rows = {int(r["row"]): r["reason"] for r in rejects(report)}
    assert set(rows) == {2, 3, 5, 7, 8}
    assert "timestamp: is NaN" in rows[2]
    assert "watch_seconds: -5 is negative" in rows[3]
    assert "item_id: 999 is not in items" in rows[5]
    assert "user_id: 42 is not in users" in rows[7]
    assert "event: 'click' is not one of" in rows[8]
    assert report.ok  # 5/10 <= 0.6
    assert not validate_dataset(tmp_path, max_bad_share=0.4).ok


def test_wrong_type_cell_is_rejected_not_crashing(tmp_path):
    x = pd.DataFrame(interactions())
    x[c.TIMESTAMP] = x[c.TIMESTAMP].astype(str)
    x.loc[4, c.TIMESTAMP] = "yesterday"
    pq.write_table(pa.Table.from_pandas(x, preserve_index=False), tmp_path / "interactions.parquet")
    c.write_table(tmp_path, c.USERS, users())
    c.write_table(tmp_path, c.ITEMS, items())
    report = validate_dataset(tmp_path, max_bad_share=0.5)
    assert [r["reason"] for r in rejects(report)] == [
        "timestamp: expected a number, got 'yesterday'"]
    # The other nine string timestamps parse: types are coerced, not all-or-nothing.
    assert report.tables[c.INTERACTIONS].rejected == 1


def test_duplicate_ids_and_referential_integrity(tmp_path):
    it = items()
    it[c.ITEM_ID][3] = 10  # duplicate of the first item; item 40 no longer exists
    write(tmp_path, it=it)
    report = validate_dataset(tmp_path, max_bad_share=1.0)
    reasons = [r["reason"] for r in rejects(report)]
    assert reasons[0] == "item_id: 10 is a duplicate (an earlier row has it)"
    # interactions with item 40 (rows 3 and 7) now point at nothing
    assert reasons[1:] == ["item_id: 40 is not in items"] * 2


def test_impression_with_watch_time_is_rejected(tmp_path):
    x = interactions()
    x[c.WATCH_SECONDS][0] = 30.0  # row 0 is an impression
    write(tmp_path, x=x)
    report = validate_dataset(tmp_path, max_bad_share=1.0)
    assert "on an impression" in rejects(report)[0]["reason"]


def test_empty_file_is_a_clear_error(tmp_path):
    x = {k: v[:0] for k, v in interactions().items()}
    write(tmp_path, x=x)
    with pytest.raises(c.ContractError, match="has no rows"):
        validate_dataset(tmp_path)


def test_not_parquet_and_missing_table(tmp_path):
    c.write_table(tmp_path, c.USERS, users())
    with pytest.raises(c.ContractError, match="no items table"):
        validate_dataset(tmp_path)
    (tmp_path / "items.parquet").write_bytes(b"")
    with pytest.raises(c.ContractError, match="not a readable Parquet file"):
        validate_dataset(tmp_path)


def test_over_the_limit_load_raises_with_summary(tmp_path):
    x = interactions()
    x[c.ITEM_ID] = [999] * 10
    write(tmp_path, x=x)
    with pytest.raises(TooManyRejects, match="FAILED"):
        load_dataset(tmp_path)


def test_folder_of_parts_is_read_in_order(tmp_path):
    write(tmp_path)
    (tmp_path / "interactions.parquet").unlink()
    x = interactions()
    (tmp_path / "interactions").mkdir()
    half = {k: v[:5] for k, v in x.items()}
    rest = {k: v[5:] for k, v in x.items()}
    with c.TableWriter(tmp_path / "interactions" / "part-0000.parquet", c.INTERACTIONS) as w:
        w.write(half)
    with c.TableWriter(tmp_path / "interactions" / "part-0001.parquet", c.INTERACTIONS) as w:
        w.write(rest)
    ds = load_dataset(tmp_path)
    assert ds.interactions[c.TIMESTAMP].tolist() == x[c.TIMESTAMP]


def test_writer_names_unknown_missing_and_null_columns(tmp_path):
    with pytest.raises(c.ContractError, match="not in the contract"):
        c.write_table(tmp_path, c.USERS, {**users(), "usr_id": [1, 2, 3]})
    u = users()
    del u[c.COUNTRY]
    with pytest.raises(c.ContractError, match="missing required column.*country"):
        c.write_table(tmp_path, c.USERS, u)
    u = users()
    u[c.SIGNUP_AT] = [T0, None, T0]
    with pytest.raises(c.ContractError, match="users.signup_at: 1 null"):
        c.write_table(tmp_path, c.USERS, u)
    # a failed write leaves no half table behind
    assert not (tmp_path / "users.parquet").exists()


def test_table_in_both_file_and_folder_is_ambiguous(tmp_path):
    write(tmp_path)
    (tmp_path / "interactions").mkdir()
    with pytest.raises(c.ContractError, match="both interactions.parquet and interactions/"):
        validate_dataset(tmp_path)
