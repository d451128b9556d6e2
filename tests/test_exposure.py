"""Exposure and diversity metrics: a Lorenz curve and Gini worked by hand, entropies and Jaccard
distances by hand, with scipy / numpy references."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from marquee.data import contract as c
from marquee.evaluation.protocol import gini
from marquee.monitoring import exposure

DAY = 86_400


def items_frame() -> pd.DataFrame:
    return pd.DataFrame({
        c.ITEM_ID: [1, 2, 3, 4, 5],
        c.GENRES: [["Drama"], ["Comedy"], ["Drama", "Comedy"], [], []],
        c.ADDED_AT: [0, 10 * DAY, 0, 0, 0],
    })


def test_exposure_counts_keep_the_catalogue_order_and_its_unshown_titles():
    counts = exposure.exposure_counts([30, 40, 40, 40], [40, 10, 30, 20])
    assert counts.tolist() == [3, 0, 1, 0]
    with pytest.raises(ValueError, match=r"not in the catalogue \(e.g. \[99\]\)"):
        exposure.exposure_counts([10, 99], [10, 20])


def test_lorenz_curve_and_gini_by_hand():
    # catalogue 10, 20, 30, 40; shown 30 once and 40 three times -> counts 0, 0, 1, 3 (sorted)
    # Lorenz: x = 0, .25, .5, .75, 1; y = 0, 0, 0, 1/4, 1
    # area (trapezoids of width 1/4) = 1/4 * (0 + 0 + 1/8 + 5/8) = 3/16 -> Gini = 1 - 6/16 = 0.625
    # formula: sum (2i - n - 1) x_i / (n sum x) = ((6 - 5) * 1 + (8 - 5) * 3) / (4 * 4) = 0.625
    shown, catalogue = [30, 40, 40, 40], [10, 20, 30, 40]
    x, y = exposure.lorenz_curve(exposure.exposure_counts(shown, catalogue))
    assert x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert y.tolist() == [0.0, 0.0, 0.0, 0.25, 1.0]
    area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
    assert area == pytest.approx(3 / 16)
    assert exposure.exposure_gini(shown, catalogue) == pytest.approx(0.625)
    assert exposure.coverage(shown, catalogue) == 0.5


def test_gini_is_one_minus_twice_the_area_under_the_lorenz_curve():
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = rng.poisson(rng.gamma(0.5, 4.0, 60))
        x, y = exposure.lorenz_curve(counts)
        area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
        assert gini(counts) == pytest.approx(1 - 2 * area, abs=1e-12)


def test_gini_extremes():
    assert exposure.exposure_gini([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.0)
    assert exposure.exposure_gini([2, 2, 2], [1, 2, 3, 4]) == pytest.approx(3 / 4)  # (n-1)/n
    x, y = exposure.lorenz_curve([0, 0, 0])
    assert y.tolist() == x.tolist()  # nothing shown: the line of equality


def test_genre_entropy_per_user_by_hand():
    # user 7: Drama, Comedy -> 1 bit. user 8: item 1 twice (Drama 2) and item 3 (Drama 1/2,
    # Comedy 1/2) -> p = 5/6, 1/6: H = 5/6 log2(6/5) + 1/6 log2(6) = 0.650022.
    # user 9: item 4 has no genre -> all weight on NO_GENRE -> 0 bits
    impressions = pd.DataFrame({c.USER_ID: [7, 7, 8, 8, 8, 9],
                                c.ITEM_ID: [1, 2, 1, 1, 3, 4]})
    entropy = exposure.genre_entropy_per_user(impressions, items_frame())
    assert entropy.index.tolist() == [7, 8, 9]
    assert entropy[7] == pytest.approx(1.0)
    assert entropy[8] == pytest.approx(5 / 6 * math.log2(6 / 5) + 1 / 6 * math.log2(6))
    assert entropy[8] == pytest.approx(scipy.stats.entropy([2.5, 0.5], base=2))
    assert entropy[9] == 0.0


def test_intra_list_diversity_by_hand():
    # page a: {Drama}, {Comedy}, {Drama, Comedy}: distances 1, 1 - 1/2, 1 - 1/2 -> mean 2/3
    # page b: one title, no pair -> nan. page c: two titles without genres -> 0
    impressions = pd.DataFrame({c.USER_ID: 1, c.ITEM_ID: [1, 2, 3, 1, 4, 5],
                                c.PAGE_ID: ["a", "a", "a", "b", "c", "c"]})
    ild = exposure.intra_list_diversity(impressions, items_frame())
    assert ild["a"] == pytest.approx(2 / 3)
    assert math.isnan(ild["b"])
    assert ild["c"] == 0.0
    with pytest.raises(ValueError, match="needs a page_id on every impression"):
        exposure.intra_list_diversity(impressions.assign(page_id=[None, "a", "a", "b", "c", "c"]),
                                      items_frame())


def test_novelty_is_the_mean_popularity_rank():
    # counts 100, 50, 50, 0 -> ranks 1, 2.5, 2.5, 4; shown 10, 30, 40, 40 -> 11.5 / 4 = 2.875
    popularity = pd.Series([100, 50, 50, 0], index=[10, 20, 30, 40])
    assert exposure.novelty([10, 30, 40, 40], popularity) == pytest.approx(2.875)
    with pytest.raises(ValueError, match="popularity counts"):
        exposure.novelty([10, 50], popularity)


def test_new_title_share():
    # item 2 was added on day 10: shown on day 12 it is 2 days old (new within 7 days), on day
    # 20 10 days old; item 1 (added day 0) on day 12 is 12 days old -> 1 of 3 is new
    impressions = pd.DataFrame({c.ITEM_ID: [1, 2, 2],
                                c.TIMESTAMP: [12 * DAY, 12 * DAY, 20 * DAY]})
    assert exposure.new_title_share(impressions, items_frame(), days=7) == pytest.approx(1 / 3)
    assert exposure.new_title_share(impressions, items_frame(), days=11) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not in the items table"):
        exposure.new_title_share(impressions.assign(item_id=[1, 2, 9]), items_frame(), days=7)


def test_array_level_forms_by_hand():
    # counts 0, 2, 0, 1 -> 2 of 4 shown
    assert exposure.coverage_of_counts([0, 2, 0, 1]) == 0.5
    assert exposure.coverage_of_counts([]) == 0.0
    # {Drama}, {Comedy}, {Drama, Comedy}: 1, 1/2, 1/2 -> 2/3; order does not matter
    assert exposure.list_diversity([["Drama"], ["Comedy"], ["Drama", "Comedy"]]) == \
        pytest.approx(2 / 3)
    assert exposure.list_diversity([["Comedy", "Drama"], ["Drama"]]) == pytest.approx(0.5)
    assert exposure.list_diversity([[], []]) == 0.0
    assert math.isnan(exposure.list_diversity([["Drama"]]))
    # counts 100, 50, 50, 0 -> ranks 1, 2.5, 2.5, 4
    assert exposure.popularity_ranks([100, 50, 50, 0]).tolist() == [1.0, 2.5, 2.5, 4.0]
    # added on day 10: on day 12 it is 2 days old (new within 7 days), on day 17 exactly 7
    # (not new: age < days), on day 9 shown before it was added (new)
    new = exposure.is_new(10 * DAY, [12 * DAY, 17 * DAY, 9 * DAY], days=7)
    assert new.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="days must be positive, got 0"):
        exposure.is_new(0, 0, days=0)


def test_each_page_of_the_table_gets_list_diversity_of_its_titles():
    rng = np.random.default_rng(3)
    genres = [["Drama"], ["Comedy"], ["Drama", "Comedy"], [], []]
    pages = rng.integers(0, 6, 40)
    impressions = pd.DataFrame({c.USER_ID: 1, c.ITEM_ID: rng.integers(1, 6, 40),
                                c.PAGE_ID: pages})
    ild = exposure.intra_list_diversity(impressions, items_frame())
    for page, rows in impressions.groupby(c.PAGE_ID):
        expected = exposure.list_diversity([genres[i - 1] for i in rows[c.ITEM_ID]])
        assert ild[page] == pytest.approx(expected, nan_ok=True)
