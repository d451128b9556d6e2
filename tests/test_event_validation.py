"""The fast event check agrees with the dataset validator's rules: a row it takes, the full
check takes too, as the same event; a plainly typed row the full check takes, it takes."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from marquee.data import contract as c
from serving.ingest.events import EventValidator, _plain_event, check_row

USERS, ITEMS = {1, 2, 3}, {10, 20}
VALIDATOR = EventValidator(USERS, ITEMS)
ints = st.one_of(st.integers(-5, 25), st.integers(-(2**70), 2**70), st.booleans())
numbers = st.one_of(ints, st.floats(allow_nan=True, allow_infinity=True), st.just(0.0))
anything = st.one_of(st.none(), ints, numbers, st.text(max_size=4), st.lists(st.integers()))


def mostly(valid, other):
    """Valid values 3 times in 4 (so whole rows are often valid and one field is off)."""
    return st.one_of(valid, valid, valid, other)


ROW = st.fixed_dictionaries(
    {c.USER_ID: mostly(st.sampled_from([1, 2, 3, 4]), anything),
     c.ITEM_ID: mostly(st.sampled_from([10, 20, 30]), anything),
     c.TIMESTAMP: mostly(st.integers(c.MIN_TIMESTAMP - 5, c.MAX_TIMESTAMP + 5), anything),
     c.EVENT: mostly(st.sampled_from(c.EVENTS), anything),
     c.WATCH_SECONDS: mostly(st.sampled_from([0, 0.0, 30.5, 600, -1]), numbers),
     c.DEVICE: mostly(st.sampled_from(c.DEVICES), anything)},
    optional={c.POSITION: mostly(st.sampled_from([None, 0, 1, 10_000, 10_001]), anything),
              c.RATING: mostly(st.sampled_from([None, 0.4, 0.5, 3, 5.0, 5.5]), numbers),
              "extra": anything})


def _plainly_typed(row: dict) -> bool:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    return (all(is_int(row[k]) for k in (c.USER_ID, c.ITEM_ID, c.TIMESTAMP))
            and is_num(row[c.WATCH_SECONDS]) and "extra" not in row
            and (row.get(c.POSITION) is None or is_int(row[c.POSITION]))
            and (row.get(c.RATING) is None or is_num(row[c.RATING])))


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(ROW)
def test_the_fast_check_takes_exactly_what_the_full_check_takes(row):
    _agree(row)


def test_a_plain_watch_is_taken_fast_and_a_bad_one_gets_every_problem():
    row = {c.USER_ID: 1, c.ITEM_ID: 10, c.TIMESTAMP: 1_700_000_000, c.EVENT: "watch",
           c.WATCH_SECONDS: 600, c.DEVICE: "tv"}
    event = _plain_event(row, USERS, ITEMS)
    assert event is not None and event.watch_seconds == 600.0 and event.position is None
    assert _plain_event({**row, c.EVENT: "impression"}, USERS, ITEMS) is None  # 600 s shown
    assert _plain_event({**row, c.USER_ID: True}, USERS, ITEMS) is None
    assert _plain_event({**row, c.ITEM_ID: 30}, USERS, ITEMS) is None


BASE = {c.USER_ID: 1, c.ITEM_ID: 10, c.TIMESTAMP: 1_700_000_000, c.EVENT: "watch",
        c.WATCH_SECONDS: 600, c.DEVICE: "tv", c.POSITION: 3, c.RATING: 4.0}
EDGES = {
    c.USER_ID: [1, 4, 0, -1, 2**63, True, "1", 1.0, None],
    c.ITEM_ID: [10, 30, -10, 2**64, False, "10", 10.0, None],
    c.TIMESTAMP: [c.MIN_TIMESTAMP - 1, c.MIN_TIMESTAMP, c.MAX_TIMESTAMP, c.MAX_TIMESTAMP + 1,
                  True, 1.5, "1700000000", None],
    c.EVENT: ["watch", "impression", "click", "", None, 1],
    c.WATCH_SECONDS: [0, 0.0, -1, -0.5, 0.5, 10**12, math.inf, math.nan, True, "600", None],
    c.DEVICE: list(c.DEVICES) + ["toaster", "", None, 3],
    c.POSITION: [None, 0, 1, 10_000, 10_001, 1.0, True, "3", -3],
    c.RATING: [None, 0.4, 0.5, 5, 5.0, 5.5, math.nan, math.inf, True, "4"],
}


def _agree(row: dict) -> None:
    fast = _plain_event(row, USERS, ITEMS)
    _, problems = check_row(c.INTERACTIONS, row, "an interaction", VALIDATOR._refs())
    if fast is not None:
        assert problems == [], (row, problems)
        assert fast == VALIDATOR.validate(row)
    elif not problems and _plainly_typed(row):
        raise AssertionError(f"the full check takes {row} but the fast one does not")


def test_every_edge_value_of_every_field_gets_the_same_verdict_from_both_checks():
    cases = 0
    for field, values in EDGES.items():
        for value in values:
            for event in ("watch", "impression"):  # the impression-has-no-watch-time rule
                base = {**BASE, c.EVENT: event, c.WATCH_SECONDS: 0 if event != "watch" else 600}
                _agree({**base, field: value})
                cases += 1
    for absent in (c.POSITION, c.RATING, c.DEVICE):
        _agree({k: v for k, v in BASE.items() if k != absent})
    _agree({**BASE, "extra": 1})
    assert cases == 2 * sum(map(len, EDGES.values()))
