"""The closed-loop audience: the same users as the simulated dataset, the simulator's watch rule."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from marquee.data import contract as c
from marquee.data.audience import Audience
from marquee.data.simulate import AFFINITY, DAY, TRUTH_DIR, TRUTH_FILE, SimConfig, simulate

# As tests/test_simulate.py: 500 users in 3 chunks, 300 titles, 20 days (~4,000 logged pages).
CONFIG = SimConfig(users=500, items=300, days=20, seed=7, truth_users=60, chunk_users=200)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate(out, CONFIG)
    x = pd.read_parquet(out / f"{c.INTERACTIONS}.parquet")
    return dataclasses.make_dataclass("World", ["out", "audience", "users", "imp", "watch"])(
        out, Audience.of(CONFIG), pd.read_parquet(out / f"{c.USERS}.parquet"),
        x[x[c.EVENT] == c.EVENT_IMPRESSION], x[x[c.EVENT] == c.EVENT_WATCH])


def logged_pages(imp: pd.DataFrame):
    """The logging policy's pages: (user ids [s], pages, page times [s], devices [s])."""
    imp = imp.sort_values([c.USER_ID, c.TIMESTAMP, c.POSITION])
    groups = imp.groupby([c.USER_ID, c.TIMESTAMP], sort=False)
    first = groups.head(1)
    return (first[c.USER_ID].to_numpy(), [g[c.ITEM_ID].to_numpy() for _, g in groups],
            first[c.TIMESTAMP].to_numpy(), first[c.DEVICE].to_numpy())


def test_the_audience_is_the_simulated_dataset(world):
    np.testing.assert_array_equal(world.audience.user_ids, world.users[c.USER_ID])
    truth = pd.read_parquet(world.out / TRUTH_DIR / TRUTH_FILE)
    got = world.audience.affinity(truth[c.USER_ID].to_numpy(), truth[c.ITEM_ID].to_numpy())
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, truth[AFFINITY].to_numpy())  # bit for bit, 60 x 300


def test_sessions_come_after_the_period_from_signed_up_users(world):
    for day in (0, 3):
        users, times = world.audience.sessions(day)
        start = CONFIG.end + day * DAY
        assert users.dtype == times.dtype == np.int64
        assert (times >= start).all() and (times < start + DAY).all()
        assert (np.diff(times) >= 0).all()
        signup = world.users.set_index(c.USER_ID)[c.SIGNUP_AT]
        assert (signup.loc[users].to_numpy() < times).all()


def test_sessions_follow_the_users_own_activity(world):
    # The same rates as the log: over the last 5 logged days (every user has signed up by then
    # but the few who join in those days) the log held 1,116 sessions, Poisson sd ~33; the
    # audience's first 5 days should hold as many (1,093), within 15% (over 3 sd of the
    # difference).
    page_times = world.imp.drop_duplicates([c.USER_ID, c.TIMESTAMP])
    logged = (page_times[c.TIMESTAMP] >= CONFIG.end - 5 * DAY).sum()
    drawn = sum(len(world.audience.sessions(day)[0]) for day in range(5))
    assert abs(drawn - logged) < 0.15 * logged
    # ...and the heavy users of the log are the heavy users of the loop.
    per_user = page_times.groupby(c.USER_ID).size()
    loop = pd.Series(np.concatenate([world.audience.sessions(d)[0] for d in range(20)]))
    both = pd.concat([per_user, loop.value_counts()], axis=1).fillna(0)
    assert both.corr(method="spearman").iloc[0, 1] > 0.6
    # ...at their own hours: a user's loop sessions sit near their logged ones (circular mean).
    def mean_hour(times):
        angle = 2 * np.pi * (times % DAY) / DAY
        return np.angle(np.exp(1j * angle).mean()) % (2 * np.pi)

    users, times = (np.concatenate(a) for a in zip(*[world.audience.sessions(d)
                                                      for d in range(20)], strict=True))
    heavy = per_user[per_user >= 20].index[:50]
    gaps = []
    for u in heavy:
        logged_hours = mean_hour(page_times.loc[page_times[c.USER_ID] == u, c.TIMESTAMP])
        loop_hours = mean_hour(times[users == u])
        gap = abs(logged_hours - loop_hours)
        gaps.append(min(gap, 2 * np.pi - gap) * 24 / (2 * np.pi))
    assert np.median(gaps) < 1.5  # hours; a random hour would be 6 on average


def test_sessions_are_deterministic_per_day_and_seed(world):
    a = world.audience.sessions(2, seed=5)
    np.testing.assert_array_equal(a[1], Audience.of(CONFIG).sessions(2, seed=5)[1])
    assert not np.array_equal(a[1], world.audience.sessions(2, seed=6)[1])
    assert not np.array_equal(a[1], world.audience.sessions(3, seed=5)[1])
    with pytest.raises(ValueError, match="day: expected an integer >= 0"):
        world.audience.sessions(-1)


def test_the_logged_pages_get_the_logged_watch_rate(world):
    users, pages, times, devices = logged_pages(world.imp)
    rows = world.audience.respond(users, pages, times, devices=devices, seed=1)
    # 8,482 logged watches of 47,596 impressions (8,461 redrawn); a redraw has sd below
    # sqrt(8,482) = 92, so the two counts differ by less than 5% (~3 sd of the difference).
    assert abs(len(rows[c.USER_ID]) - len(world.watch)) < 0.05 * len(world.watch)
    got = pd.DataFrame(rows)
    past = (got[c.WATCH_SECONDS] >= c.WATCHED_THRESHOLD_SECONDS).mean()
    logged_past = (world.watch[c.WATCH_SECONDS] >= c.WATCHED_THRESHOLD_SECONDS).mean()
    assert abs(past - logged_past) < 0.03
    by_position = got.groupby(c.POSITION).size() / world.watch.groupby(c.POSITION).size()
    assert by_position.between(0.8, 1.25).loc[1:5].all()  # the same rate slot by slot


def test_rows_are_contract_watches_after_their_page(world, tmp_path):
    users, pages, times, devices = logged_pages(world.imp)
    first = np.unique(users, return_index=True)[1][:300]  # one page per user: the first
    users, pages, times = users[first], [pages[k] for k in first], times[first]
    rows = world.audience.respond(users, pages, times, seed=2)
    assert set(rows) == {c.USER_ID, c.ITEM_ID, c.TIMESTAMP, c.EVENT, c.POSITION, c.WATCH_SECONDS,
                         c.DEVICE, c.RATING}
    got = pd.DataFrame(rows)
    assert (got[c.EVENT] == c.EVENT_WATCH).all() and got[c.DEVICE].isin(c.DEVICES).all()
    page_of = {u: (t, list(p)) for u, p, t in zip(users, pages, times, strict=True)}
    for row in got.itertuples(index=False):
        # the page was shown a little before the watch, the title in the slot named
        shown_at, page = page_of[row.user_id]
        assert shown_at < row.timestamp < shown_at + 3600
        assert page[row.position - 1] == row.item_id
    assert (got[c.WATCH_SECONDS] > 0).all()
    path = c.write_table(tmp_path, c.INTERACTIONS, got)  # NaN ratings become nulls
    back = pd.read_parquet(path)
    assert back[c.RATING].isna().sum() == got[c.RATING].isna().sum() > 0


def test_higher_affinity_pages_get_more_watches(world):
    # Each of 2,000 sessions of truth users sees either its user's 15 best titles or their
    # 15 worst, in the same order. P(watch) = p ** -0.7 * sigmoid(a - 1): the best titles have
    # a ~ 4.3 (sigmoid(3.3) = 0.96), the worst a ~ -3.7 (sigmoid(-4.7) = 0.009): ~100 times
    # fewer watches (9,131 against 75 with these seeds).
    truth = pd.read_parquet(world.out / TRUTH_DIR / TRUTH_FILE)
    rng = np.random.default_rng(0)
    users = rng.choice(truth[c.USER_ID].unique(), 2000)
    ranked = {u: g.sort_values(AFFINITY)[c.ITEM_ID].to_numpy() for u, g in truth.groupby(
        c.USER_ID)}
    times = np.full(2000, CONFIG.end + 3600)
    best = world.audience.respond(users, [ranked[u][::-1][:15] for u in users], times, seed=3)
    worst = world.audience.respond(users, [ranked[u][:15] for u in users], times, seed=3)
    assert len(best[c.USER_ID]) > 10 * len(worst[c.USER_ID])
    # ...and watch for longer (low affinity abandons within two minutes).
    assert np.median(best[c.WATCH_SECONDS]) > 10 * np.median(worst[c.WATCH_SECONDS])


def test_position_bias_shows(world):
    # The same title (the most watched one) for the same users, alone at position 1 or after 9
    # others at position 10: the watch rate falls by 10 ** -0.7 = 1 / 5.01. 6,000 sessions a
    # side give ~3,800 watches at the top (sd ~37) and ~770 at slot 10 (sd ~26): the ratio is
    # 5.0 +- 0.2 (4.95 with these seeds).
    users = np.repeat(world.audience.user_ids, 12)
    times = np.full(len(users), CONFIG.end + 3600)
    title = world.watch[c.ITEM_ID].value_counts().index[0]
    others = np.setdiff1d(np.arange(1, 11), [title])[:9]
    top = world.audience.respond(users, [np.array([title])] * len(users), times, seed=4)
    low = world.audience.respond(users, [np.append(others, title)] * len(users), times, seed=4)
    at_top = (top[c.ITEM_ID] == title).sum()
    at_ten = ((low[c.ITEM_ID] == title) & (low[c.POSITION] == 10)).sum()
    assert 4.3 < at_top / at_ten < 5.8


def test_respond_is_deterministic_per_seed(world):
    users, pages, times, devices = logged_pages(world.imp)
    a = world.audience.respond(users[:500], pages[:500], times[:500], seed=9)
    b = Audience.of(CONFIG).respond(users[:500], pages[:500], times[:500], seed=9)
    other = world.audience.respond(users[:500], pages[:500], times[:500], seed=10)
    for column in a:
        np.testing.assert_array_equal(a[column], b[column])
    assert not np.array_equal(a[c.TIMESTAMP], other[c.TIMESTAMP])


@pytest.mark.parametrize("call, message", [
    (lambda a: a.respond(np.array([1]), [np.array([5, 301])], np.array([0])),
     r"pages\[0\]: 1 title id\(s\) unknown to the simulated catalogue \(ids 1\.\.300\), "
     r"e\.g\. \[301\]"),
    (lambda a: a.respond(np.array([0]), [np.array([5])], np.array([0])),
     r"user_ids: 1 user id\(s\) unknown to the simulated users \(ids 1\.\.500\), e\.g\. \[0\]"),
    (lambda a: a.respond(np.array([1, 2]), [np.array([5])], np.array([0, 0])),
     "one page and one timestamp per session: got 2 user ids, 1 pages and 2 timestamps"),
    (lambda a: a.respond(np.array([1]), [np.array([5])], np.array([0]), devices=["fridge"]),
     r"devices: \['fridge'\] are not contract devices"),
    (lambda a: a.respond(np.array([1]), [np.array([5.5])], np.array([0])),
     r"pages\[0\]: expected a 1-d array of integer title ids, got float64"),
    (lambda a: a.affinity(np.array([1, 2]), np.array([3])),
     "user_ids and item_ids must pair up: got 2 user ids and 1 item ids"),
])
def test_bad_input_says_what_and_how_to_fix(world, call, message):
    with pytest.raises(ValueError, match=message):
        call(world.audience)


def test_an_empty_page_and_no_session_give_no_rows(world):
    rows = world.audience.respond(np.array([1]), [np.array([], np.int64)], np.array([0]))
    assert all(len(v) == 0 for v in rows.values())
    rows = world.audience.respond(np.array([], np.int64), [], np.array([], np.int64))
    assert all(len(v) == 0 for v in rows.values())


def test_a_hundred_thousand_users_fit_in_little_memory():
    # Per user: 35 float32 (factors, genre terms, 1) + signup, rate and hour (8 bytes each) +
    # a device byte = 165 bytes; 100K users = 16.5 MB (the simulator never holds them at once).
    audience = Audience.of(SimConfig(users=100_000, items=500, truth_users=0))
    state = audience._users
    per_user = sum(a.nbytes for a in (state.signup_at, state.embed, state.rate, state.device,
                                      state.hour)) / 100_000
    assert per_user == 165
    users, times = audience.sessions(0)
    assert 30_000 < len(users) < 60_000  # 0.45 a day on average
    rows = audience.respond(users[:1000], [np.arange(1, 16)] * 1000, times[:1000])
    assert len(rows[c.USER_ID]) > 0
