"""The simulator: contract-clean output, determinism, and the behaviours the models must learn."""

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest

from marquee.data import contract as c
from marquee.data.simulate import (
    AFFINITY,
    CONFIG_FILE,
    GENRES,
    TRUTH_DIR,
    SimConfig,
    _affinity,
    _blocks,
    _first_unique,
    read_sim_config,
    shape_config,
    simulate,
)
from marquee.data.validate import load_dataset, validate_dataset

# 500 users in 3 chunks (200, 200, 100), 300 titles, 20 days: ~56K interaction rows in ~1 s.
CONFIG = SimConfig(users=500, items=300, days=20, seed=7, truth_users=60, chunk_users=200)
FILES = [f"{t}.parquet" for t in c.TABLES] + [f"{TRUTH_DIR}/affinities.parquet",
                                               f"{TRUTH_DIR}/{CONFIG_FILE}"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    lines = []
    summary = simulate(out, CONFIG, progress=lines.append)
    data = load_dataset(out)
    x = data.interactions
    truth = pd.read_parquet(summary.truth_path)
    return dataclasses.make_dataclass(
        "Sim", ["out", "summary", "lines", "data", "imp", "watch", "truth"]
    )(out, summary, lines, data, x[x[c.EVENT] == c.EVENT_IMPRESSION],
      x[x[c.EVENT] == c.EVENT_WATCH], truth)


def test_output_passes_the_contract_with_no_rejects(sim):
    report = validate_dataset(sim.out)
    assert report.ok
    assert {t: r.rejected for t, r in report.tables.items()} == {t: 0 for t in c.TABLES}
    assert {t: r.rows for t, r in report.tables.items()} == sim.summary.rows
    assert sim.summary.rows[c.USERS] == 500 and sim.summary.rows[c.ITEMS] == 300
    assert len(sim.imp) == sim.summary.impressions and len(sim.watch) == sim.summary.watches
    # ~0.45 sessions/user/day * 20 days * 500 users * ~0.9 (late signups) = ~4,000 pages of at
    # most 15 titles (fewer when a user's unwatched candidates run out): at most ~60K.
    assert 30_000 < sim.summary.impressions < 60_000


def test_progress_reports_each_chunk_and_summary_prints_counts(sim):
    assert len(sim.lines) == 3
    assert "users 401-500 of 500 (chunk 3/3)" in sim.lines[-1]
    text = str(sim.summary)
    assert f"{sim.summary.rows[c.INTERACTIONS]:,} interactions" in text
    assert str(sim.summary.truth_path) in text


def test_same_config_same_bytes_other_seed_differs(sim, tmp_path):
    simulate(tmp_path / "again", CONFIG)
    simulate(tmp_path / "other", dataclasses.replace(CONFIG, seed=8))
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (sim.out / name).read_bytes(), name
        assert (tmp_path / "other" / name).read_bytes() != (sim.out / name).read_bytes(), name


def test_popularity_has_a_long_tail(sim):
    # Weights (r + 0.15 * 300) ** -3.5 over 300 titles: the top 30 take
    # sum_{r<=30} (r + 45) ** -3.5 / sum_{r<=300} = 72% of the popularity draws; genre draws,
    # pages without repeats or watched titles and the taste-led pick dilute it (54% with this
    # seed). A uniform policy would give the top 10% of titles little more than 10%.
    shown = sim.imp[c.ITEM_ID].value_counts()
    assert shown.iloc[:30].sum() / len(sim.imp) > 0.4
    # ...and the tail is still shown: nearly every title that is in the catalogue gets a page.
    assert len(shown) > 0.9 * 300


def test_position_bias_is_visible(sim):
    shown = sim.imp.groupby(c.POSITION).size()
    watched = sim.watch.groupby(c.POSITION).size()
    rate = watched / shown
    # P(watch) scales with position ** -0.7: 1 at the top, 10 ** -0.7 = 0.20 at slot 10; the
    # policy also puts its best guesses first, so the logged drop is steeper still.
    assert rate[1] > 5 * rate[10]
    assert set(shown.index) == set(range(1, 16))


def test_no_event_before_the_title_or_the_account_exists(sim):
    x = sim.data.interactions.merge(sim.data.items[[c.ITEM_ID, c.ADDED_AT]], on=c.ITEM_ID)
    x = x.merge(sim.data.users[[c.USER_ID, c.SIGNUP_AT]], on=c.USER_ID)
    assert len(x) == len(sim.data.interactions)
    assert (x[c.TIMESTAMP] >= x[c.ADDED_AT]).all()
    assert (x[c.TIMESTAMP] >= x[c.SIGNUP_AT]).all()
    assert x[c.TIMESTAMP].min() >= CONFIG.start and x[c.TIMESTAMP].max() < CONFIG.end
    # A watch follows its impression: same user, item and position, a little later.
    first_shown = sim.imp.groupby([c.USER_ID, c.ITEM_ID])[c.TIMESTAMP].min()
    first_watch = sim.watch.groupby([c.USER_ID, c.ITEM_ID])[c.TIMESTAMP].min()
    assert (first_watch > first_shown.reindex(first_watch.index)).all()


def test_a_watched_title_is_never_shown_again(sim):
    # The policy leaves out what the user watched in an earlier session (as the served stack's
    # exclude_watched step does), so no title is watched twice either.
    first_watch = sim.watch.groupby([c.USER_ID, c.ITEM_ID])[c.TIMESTAMP].min().rename("first")
    shown = sim.imp.join(first_watch, on=[c.USER_ID, c.ITEM_ID])
    watched_pairs = shown.drop_duplicates([c.USER_ID, c.ITEM_ID])["first"].notna()
    assert watched_pairs.sum() == len(first_watch) == len(sim.watch)  # each watch was shown
    assert not (shown[c.TIMESTAMP] > shown["first"]).any()
    assert not sim.watch.duplicated([c.USER_ID, c.ITEM_ID]).any()
    # Within a page each title appears once, at positions 1..n without gaps.
    pages = sim.imp.groupby([c.USER_ID, c.TIMESTAMP])
    assert not sim.imp.duplicated([c.USER_ID, c.TIMESTAMP, c.ITEM_ID]).any()
    assert (pages[c.POSITION].max() == pages.size()).all()


def test_the_policy_shows_titles_the_user_likes(sim, tmp_path):
    # policy_taste_weight 3 picks each page from twice as many candidates by 3 * affinity +
    # Gumbel noise, best first; weight 0 picks them at random (still from popular titles and
    # favourite genres). Measured on each user's first page (later pages lack what was watched):
    # mean truth affinity shown, minus the mean over every (sampled user, title) pair.
    def first_pages(out):
        truth = pd.read_parquet(out / TRUTH_DIR / "affinities.parquet")
        x = pd.read_parquet(out / "interactions.parquet")
        shown = x[x[c.EVENT] == c.EVENT_IMPRESSION].merge(truth, on=[c.USER_ID, c.ITEM_ID])
        first = shown[shown[c.TIMESTAMP] == shown.groupby(c.USER_ID)[c.TIMESTAMP].transform("min")]
        first = first.assign(lift=first[AFFINITY] - truth[AFFINITY].mean())
        return first["lift"].mean(), first.groupby(c.POSITION)["lift"].mean()

    simulate(tmp_path, dataclasses.replace(CONFIG, policy_taste_weight=0.0))
    (taste_led, by_position), (random_pick, random_by_position) = (first_pages(sim.out),
                                                                   first_pages(tmp_path))
    assert taste_led > 1.0 and random_pick < 0.6 * taste_led  # 1.66 and 0.78 with this seed
    assert by_position[1] > by_position[15] + 2.0  # best first: 4.8 down to -0.5
    assert abs(random_by_position[1] - random_by_position[15]) < 1.0  # no order


def test_the_config_is_recorded_beside_the_truth(sim, tmp_path):
    assert read_sim_config(sim.out) == CONFIG
    with pytest.raises(ValueError, match="config.json is missing.*marquee data synth"):
        read_sim_config(tmp_path)


def test_blocks_hold_whole_users():
    # Sessions of users 0,0,0 | 1,1,2 | 3,3,3,3,3 | 4 in blocks of about 4: a block ends before
    # the user that would overflow it; user 3's five sessions make a block of their own.
    user = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 3, 4])
    assert _blocks(user, 4) == [(0, 3), (3, 6), (6, 11), (11, 12)]
    assert _blocks(user, 100) == [(0, 12)]
    assert _blocks(user[:0], 4) == []


def test_new_titles_and_new_users_arrive_during_the_period(sim):
    items, users = sim.data.items, sim.data.users
    new_items = items.loc[items[c.ADDED_AT] >= CONFIG.start, c.ITEM_ID]
    assert len(new_items) == 30  # round(0.1 * 300)
    assert sim.watch[c.ITEM_ID].isin(new_items).sum() > 0
    assert sim.imp.loc[sim.imp[c.ITEM_ID].isin(new_items), c.ITEM_ID].nunique() >= 20
    new_users = users[c.SIGNUP_AT] >= CONFIG.start
    assert 0.12 < new_users.mean() < 0.28  # new_user_share 0.2 of 500 users
    assert users.loc[~new_users, c.ONBOARDING_GENRES].isna().all()
    quiz = users.loc[new_users, c.ONBOARDING_GENRES]
    assert quiz.map(lambda g: len(set(g)) == 3 and set(g) <= set(GENRES)).all()


def test_ratings_on_a_few_watches_in_half_stars(sim):
    assert sim.imp[c.RATING].isna().all()
    rated = sim.watch[c.RATING].dropna()
    assert 0.05 <= len(rated) / len(sim.watch) <= 0.10  # rating_share 0.07
    assert ((rated * 2) % 1 == 0).all() and rated.between(0.5, 5.0).all()
    assert sim.summary.ratings == len(rated)


def test_watches_follow_the_truth_affinity(sim):
    # Thirds of the truth affinity over all (sampled user, title) pairs.
    edges = [-np.inf, *sim.truth[AFFINITY].quantile([1 / 3, 2 / 3]), np.inf]

    def by_third(events):
        events = events.merge(sim.truth, on=[c.USER_ID, c.ITEM_ID])
        return events.groupby(pd.cut(events[AFFINITY], edges, labels=["low", "mid", "high"]))

    # Every watch has its impression, so watches / impressions is the watch rate per showing.
    rate = by_third(sim.watch).size() / by_third(sim.imp).size()
    assert rate["high"] > 2 * rate["low"]
    watched = by_third(sim.watch)[c.WATCH_SECONDS]
    assert watched.mean()["high"] > 1.5 * watched.mean()["low"]
    past_two_minutes = watched.apply(lambda s: (s > c.WATCHED_THRESHOLD_SECONDS).mean())
    assert past_two_minutes["high"] > past_two_minutes["low"] + 0.15


def test_truth_has_every_title_for_each_sampled_user(sim):
    truth = sim.truth
    assert len(truth) == sim.summary.truth_rows == 60 * 300
    per_user = truth.groupby(c.USER_ID)[c.ITEM_ID].agg(["nunique", "min", "max"])
    assert len(per_user) == 60
    assert (per_user == [300, 1, 300]).all().all()
    assert per_user.index.isin(sim.data.users[c.USER_ID]).all()
    assert truth[AFFINITY].std() > 0.5
    readme = (sim.out / TRUTH_DIR / "README.md").read_text()
    assert AFFINITY in readme and CONFIG_FILE in readme and len(readme.splitlines()) == 4


def test_catalogue_and_habits_look_like_a_streaming_service(sim):
    items = sim.data.items
    assert items[c.GENRES].map(lambda g: 1 <= len(set(g)) == len(g) <= 3).all()
    cast = items[c.CAST].map(len)
    assert cast.between(1, 5).all() and (cast >= 2).mean() > 0.98
    minutes = items[c.DURATION_SECONDS].dropna() / 60
    assert minutes.between(20, 170).all()
    assert (minutes > 75).mean() > 0.4 and (minutes < 61).mean() > 0.2  # features and episodes
    assert items[c.TITLE].str.len().min() > 0
    assert items[c.RELEASE_YEAR].dropna().max() <= 2024  # start is in November 2023
    # Each session stays on one device, mostly the user's preferred one: 0.8 + 0.2 / 4 = 0.85.
    devices = sim.imp.groupby(c.USER_ID)[c.DEVICE].agg(lambda d: d.value_counts(normalize=True)
                                                      .iloc[0])
    assert devices.mean() > 0.7
    assert 0 < sim.data.users[c.AGE_BUCKET].isna().mean() < 0.2


def test_a_tiny_world_still_follows_the_contract(tmp_path):
    # One title, fewer than a page; more truth users asked for than there are users.
    summary = simulate(tmp_path, SimConfig(users=5, items=1, days=10, truth_users=200))
    assert validate_dataset(tmp_path).ok
    assert summary.truth_rows == 5
    assert (load_dataset(tmp_path).interactions[c.POSITION] == 1).all()


def test_an_empty_log_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no session.*more users or days"):
        simulate(tmp_path / "empty", SimConfig(users=1, days=1, sessions_per_day=1e-9))
    assert list((tmp_path / "empty").iterdir()) == []  # no half-written dataset left behind


@pytest.mark.parametrize("change, message", [
    (dict(users=0), "SimConfig.users: expected an integer >= 1, got 0."),
    (dict(items=2.5), "SimConfig.items: expected an integer >= 1, got 2.5."),
    (dict(new_item_share=1.5), "SimConfig.new_item_share: expected a share in 0..1, got 1.5."),
    (dict(start=1_700_000_000_000), "Pass seconds, not milliseconds"),
    (dict(watch_bias=float("nan")), "SimConfig.watch_bias: expected a number in -20..20"),
    (dict(seed=-1), "Use a non-negative seed"),
    (dict(popularity_offset=2), "SimConfig.popularity_offset: expected a share in 0..1, got 2."),
])
def test_bad_config_says_what_and_how_to_fix(change, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        SimConfig(**change)


def _first_unique_reference(cand, valid, k):
    keep = np.zeros(cand.shape, bool)
    for r in range(cand.shape[0]):
        seen, kept = set(), 0
        for j, value in enumerate(cand[r]):
            if valid[r, j] and value not in seen and kept < k[r]:
                keep[r, j] = True
                kept += 1
            seen.add(value)
    return keep


SHAPES = list(itertools.product([1, 7], [1, 5, 12], [2, 30]))  # rows, width, distinct values


@pytest.mark.parametrize("rows, width, values", SHAPES)
def test_first_unique_matches_a_python_loop(rows, width, values):
    rng = np.random.default_rng(rows * 100 + width * 10 + values)
    cand = rng.integers(0, values, (rows, width))
    valid = (cand % 3) != 0  # validity depends on the value, as item availability does
    k = rng.integers(0, width + 1, rows)
    np.testing.assert_array_equal(_first_unique(cand, valid, k),
                                  _first_unique_reference(cand, valid, k))


def test_affinity_is_the_dot_product_of_the_embeds():
    rng = np.random.default_rng(0)
    users = rng.normal(size=(35, 4)).astype(np.float32)
    items = rng.normal(size=(35, 6)).astype(np.float32)
    u, i = np.array([0, 3, 3, 1]), np.array([5, 0, 2, 2])
    np.testing.assert_allclose(_affinity(users, items, u, i),
                               np.einsum("dn,dn->n", users[:, u], items[:, i]), rtol=1e-5)


@pytest.fixture(scope="module")
def long_tail(tmp_path_factory):
    out = tmp_path_factory.mktemp("long-tail")
    simulate(out, shape_config("long-tail", seed=1))
    return load_dataset(out)


def test_the_long_tail_shape_has_few_users_and_mostly_rarely_watched_titles(long_tail):
    """The second evaluation shape (issue 20): a few hundred users, 10,000 titles, and most
    watched titles seen by a handful of users (MovieLens latest-small's shape)."""
    watches = long_tail.interactions[long_tail.interactions[c.EVENT] == c.EVENT_WATCH]
    viewers = watches.groupby(c.ITEM_ID)[c.USER_ID].nunique()
    assert len(long_tail.items) == 10_000
    assert 400 <= watches[c.USER_ID].nunique() <= 600
    assert len(viewers) > 5_000  # most of the catalogue is watched at least once
    assert viewers.median() <= 5 and (viewers <= 3).mean() >= 0.4
    assert viewers.max() >= 25 * viewers.median()  # and a popular head (seed 1: 171 viewers)


def test_an_unknown_shape_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset shape 'wide'.*'default', 'long-tail'"):
        shape_config("wide")
