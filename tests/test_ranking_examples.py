"""The ranking negative sampler and the example builder (plain function, no Beam).

A hand-made user: shown items 10, 11, 12, 13, 14 at t=100..104 (positions 1-5); watched 10
for 600 s (positive) and 11 for 30 s (a real negative: abandoned); 12, 13, 14 were shown and
never watched. With 4 negatives per positive and half from impressions, the positive on item 10
gets 2 impression negatives (from 12, 13, 14) and 2 random catalogue items the user never
watched.
"""

import numpy as np
import pytest
import tensorflow as tf

from components.contract_example_gen.example_lib import (
    EVAL,
    RANK_EVAL,
    RANK_TRAIN,
    TRAIN,
    negative_cdf,
    user_examples,
)
from marquee.config import DataConfig, RankingConfig
from marquee.data import contract as c
from trainer import features as f

USER = {c.USER_ID: 1, c.COUNTRY: "US", c.SUBSCRIPTION_TIER: "basic", c.AGE_BUCKET: None}
ITEMS = {i: {c.ITEM_ID: i, c.TITLE: f"t{i}", c.GENRES: [], c.CAST: [], c.DIRECTOR: None,
             c.RELEASE_YEAR: None, c.DURATION_SECONDS: 3600, c.ADDED_AT: 0, c.KEYWORDS: None}
         for i in range(10, 40)}
ITEM_IDS = np.array(sorted(ITEMS), np.int64)


def ev(item, t, event, seconds=0.0, position=None):
    return {c.USER_ID: 1, c.ITEM_ID: item, c.TIMESTAMP: t, c.EVENT: event,
            c.WATCH_SECONDS: seconds, c.POSITION: position, c.DEVICE: "tv"}


EVENTS = [ev(10 + k, 100 + k, c.EVENT_IMPRESSION, position=1 + k) for k in range(5)] + [
    ev(10, 150, c.EVENT_WATCH, 600.0, 1), ev(11, 160, c.EVENT_WATCH, 30.0, 2)]


def run(events=EVENTS, cutoff=10**9, ranking=RankingConfig(), data=DataConfig(), cdf=None):
    out = []
    for split, ex in user_examples(USER, events, ITEMS, ITEM_IDS, cutoff, data, ranking, cdf):
        feats = ex.features.feature
        out.append((split, feats[f.ITEM_ID].int64_list.value[0],
                    feats[f.WATCH_SECONDS].float_list.value[0],
                    feats[f.POSITION].int64_list.value[0],
                    list(feats[f.HISTORY].int64_list.value)))
    return out


def test_ratio_impressions_and_no_positive_among_negatives():
    rows = run()
    retrieval = [r for r in rows if r[0] == TRAIN]
    ranking = [r for r in rows if r[0] == RANK_TRAIN]
    assert [(r[1], r[2]) for r in retrieval] == [(10, 600.0)]
    # 2 watches (one positive, one abandoned) + 4 negatives for the one positive
    assert len(ranking) == 6
    negatives = [r for r in ranking if r[2] == 0.0]
    assert len(negatives) == 4
    shown_negatives = [r for r in negatives if r[1] in (12, 13, 14)]
    assert len(shown_negatives) == 2  # half from impressions...
    assert {r[3] for r in shown_negatives} <= {3, 4, 5}  # ...with their logged positions
    random_negatives = [r for r in negatives if r[1] not in (12, 13, 14)]
    assert len(random_negatives) == 2 and all(r[3] == 0 for r in random_negatives)
    # never the positive, never anything the user watched
    assert not {r[1] for r in negatives} & {10, 11}


def test_labels_of_watches_and_history():
    rows = run()
    watches = {r[1]: r for r in rows if r[0] == RANK_TRAIN and r[2] > 0}
    assert watches[10][2] == 600.0 and watches[11][2] == 30.0
    # the abandoned watch of 11 came after the positive on 10: 10 is in its history
    assert watches[11][4] == [10] and watches[10][4] == []


def test_ratio_is_configurable_and_shortfall_filled_randomly():
    rows = run(ranking=RankingConfig(negatives_per_positive=8, impression_negative_share=1.0))
    negatives = [r for r in rows if r[0] == RANK_TRAIN and r[2] == 0.0]
    # only 3 never-watched impressions exist: the other 5 are random catalogue items
    assert len(negatives) == 8
    assert sum(r[1] in (12, 13, 14) for r in negatives) == 3


def test_positive_threshold_is_configurable():
    # with min_watch_seconds 0 (MovieLens: every rating is a positive) the 30 s watch of 11 is a
    # positive too: 4 negatives each, and it is no longer a negative candidate for the other
    rows = run(ranking=RankingConfig(min_watch_seconds=0.0))
    negatives = [r for r in rows if r[0] == RANK_TRAIN and r[2] == 0.0]
    assert len(negatives) == 8
    assert not {r[1] for r in negatives} & {10, 11}
    # only 12, 13, 14 were shown and never watched: 2 + 1 impressions, the rest random
    assert sum(r[1] in (12, 13, 14) for r in negatives) == 3


def test_negative_cdf_by_hand():
    # items 1, 2, 3 with 0, 3, 8 positives: weights (0+1, 3+1, 8+1) ** 0.5 = 1, 2, 3 -> / 6
    cdf = negative_cdf(np.array([1, 2, 3]), {2: 3, 3: 8}, 0.5)
    np.testing.assert_allclose(cdf, [1 / 6, 3 / 6, 1.0])
    assert negative_cdf(np.array([1, 2, 3]), {2: 3}, 0.0) is None  # uniform: drawn directly


def test_random_negatives_follow_the_cdf():
    # all the mass on item 39 (the last id) and 25: only those can be random negatives
    weights = np.zeros(len(ITEM_IDS))
    weights[ITEM_IDS == 25] = 1.0
    weights[ITEM_IDS == 39] = 3.0
    cdf = np.cumsum(weights) / weights.sum()
    rows = run(ranking=RankingConfig(negatives_per_positive=6, impression_negative_share=0.0),
               cdf=cdf)
    negatives = [r[1] for r in rows if r[0] == RANK_TRAIN and r[2] == 0.0]
    assert len(negatives) == 6 and set(negatives) <= {25, 39}


def test_time_split_and_determinism():
    rows = run(cutoff=155)  # the positive at 150 is train, the abandoned watch at 160 eval
    assert {r[1] for r in rows if r[0] == RANK_EVAL} == {11}
    assert not [r for r in rows if r[0] == EVAL]
    assert run() == run()  # seeded by (ranking.seed, user id)


def test_example_round_trips_through_the_schema_spec():
    (split, example), *_ = user_examples(USER, EVENTS, ITEMS, ITEM_IDS, 10**9, DataConfig(),
                                         RankingConfig())
    from trainer.raw_inputs import raw_feature_spec
    parsed = tf.io.parse_single_example(example.SerializeToString(),
                                        raw_feature_spec(f.ALL_FEATURES))
    assert int(parsed[f.USER_ID]) == 1 and parsed[f.AGE_BUCKET].numpy() == b""


@pytest.mark.parametrize("history, position, seconds", [
    ([], None, 0.0), ([3, 2, 1], 7, 612.5), ([2**40, 1], 0, 1e-3)])
def test_encoder_writes_the_example_message(history, position, seconds):
    # ExampleEncoder writes bytes by hand from cached parts; they must parse to exactly the
    # tf.train.Example _example builds (map order aside), whatever is missing.
    from components.contract_example_gen.example_lib import ExampleEncoder, _example

    encode = ExampleEncoder()
    event = ev(10, 1_700_000_123, c.EVENT_WATCH, seconds, position)
    bare_user = {c.USER_ID: 2}  # no country, tier or age: the missing values
    for user in (USER, bare_user, USER):  # the second USER: from the cache
        for item in (ITEMS[10], {c.ITEM_ID: 99}, ITEMS[10]):
            expected = _example(user, event, item, history, seconds, position)
            assert tf.train.Example.FromString(
                encode(user, event, item, history, seconds, position)) == expected


def test_user_examples_encoded_equal_the_messages():
    from components.contract_example_gen.example_lib import ExampleEncoder

    as_messages = list(user_examples(USER, EVENTS, ITEMS, ITEM_IDS, 10**9, DataConfig(),
                                     RankingConfig()))
    encoded = list(user_examples(USER, EVENTS, ITEMS, ITEM_IDS, 10**9, DataConfig(),
                                 RankingConfig(), make=ExampleEncoder()))
    assert [s for s, _ in encoded] == [s for s, _ in as_messages] and len(encoded) == 7
    assert [tf.train.Example.FromString(b) for _, b in encoded] == [e for _, e in as_messages]
