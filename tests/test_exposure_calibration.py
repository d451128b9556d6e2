"""Calibrated exposure (serving.homepage.exposure): the table, its blend term and its config."""

import numpy as np
import pandas as pd
import pytest

from marquee.config import ServingConfig
from serving.homepage.exposure import ExposureTable, calibrate, count_exposure
from serving.homepage.ranking import blend


def test_count_exposure_counts_each_list_top_k():
    assert count_exposure([[1, 2, 3], [2, 3, 4], [3]], k=2) == {1: 1, 2: 2, 3: 2}


def test_calibrate_averages_the_plain_and_the_penalised_pass():
    # Three users who all rank 1 > 2 > 3 > 4; a page shows the top 2. Without the term, 1 and 2
    # are shown 3 times each. With it (here: titles shown before drop behind the others), every
    # page is 3, 4. The table is the mean: 1 and 2 -> 1.5, 3 and 4 -> 1.5.
    calls = []

    def pages(table):
        calls.append(table)
        if table is None:
            return [[1, 2, 3, 4]] * 3
        order = sorted([1, 2, 3, 4], key=lambda i: (table.counts([i])[0], i))
        return [order] * 3

    table = calibrate(pages, k=2)
    assert calls[0] is None and calls[1].counts([1, 2, 3, 4]).tolist() == [3, 3, 0, 0]
    assert table.counts([1, 2, 3, 4, 99]).tolist() == [1.5, 1.5, 1.5, 1.5, 0.0]


def test_blend_subtracts_log_exposure_hand_checked():
    r = np.array([1.0, 0.0, -1.0])  # z = (1.2247, 0, -1.2247)
    exposure = np.expm1(np.array([3.0, 2.0, 1.0]))  # log1p -> 3, 2, 1: z = (1.2247, 0, -1.2247)
    z = np.sqrt(1.5)
    np.testing.assert_allclose(blend(r, None, 0.0, exposure=exposure, exposure_weight=0.5),
                               [0.5 * z, 0, -0.5 * z], atol=1e-12)
    np.testing.assert_allclose(blend(r, None, 0.0, exposure=exposure, exposure_weight=0.0),
                               [z, 0, -z])


def test_the_table_round_trips_and_bad_tables_say_how_to_fix(tmp_path):
    path = ExposureTable({7: 2.5, 3: 0.0}).save(tmp_path / "exposure.parquet")
    assert ExposureTable.load(path).counts([3, 7, 8]).tolist() == [0.0, 2.5, 0.0]
    with pytest.raises(FileNotFoundError, match="exposure.parquet `marquee evaluate` wrote"):
        ExposureTable.load(tmp_path / "none.parquet")
    pd.DataFrame({"item_id": [1], "shown": [2.0]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing \['exposure'\]"):
        ExposureTable.load(tmp_path / "bad.parquet")


def test_an_exposure_weight_needs_a_table_and_must_not_be_negative():
    with pytest.raises(ValueError, match="serving.exposure_file is empty"):
        ServingConfig(exposure_weight=0.5)
    with pytest.raises(ValueError, match="must be >= 0"):
        ServingConfig(exposure_weight=-1.0, exposure_file="x.parquet")
    assert ServingConfig(exposure_weight=0.5, exposure_file="x.parquet").exposure_weight == 0.5
