"""The ALS source's model (marquee.als): the fold-in against implicit's own solve and a hand
count, the saved format, the fit on the train split's positives, the store's same-run check and
the source's use of live watches."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tensorflow as tf

from components.als_trainer import als_lib
from marquee.als import ALS_FILE, AlsModel, load_als, save_als
from marquee.artifacts import ALS, EXPORT_INFO, QUERY_TOWER
from marquee.config import AlsConfig, ConfigError, from_dict
from marquee.data import contract as c
from serving.models.als_store import AlsStore
from serving.models.query import ModelMismatch
from serving.sources.als import AlsSource
from serving.sources.base import SourceRequest
from serving.state.catalogue import Catalogue, UserProfile


def test_fold_in_hand_checked():
    # one factor, titles 10 -> 1 and 20 -> 2, reg 1, alpha 2; positives {10}:
    # A = YtY + reg + (alpha - 1) * 1 * 1 = 5 + 1 + 1 = 7, b = alpha * 1 = 2: x = 2/7
    m = AlsModel(np.array([10, 20]), np.array([[1.0], [2.0]]), regularization=1.0, alpha=2.0)
    x = m.fold_in([10])
    assert x == pytest.approx([2 / 7])
    assert m.scores(x) == pytest.approx([2 / 7, 4 / 7], rel=1e-6)
    assert m.score(x, [20, 30, 10]) == pytest.approx([4 / 7, 0.0, 2 / 7], rel=1e-6)
    # repeats count once, unknown ids are left out, nothing known: None
    assert m.fold_in([10, 10, 99]) == pytest.approx(x)
    assert m.fold_in([99]) is None and m.fold_in([]) is None


def test_fold_in_equals_implicits_own_solve():
    """The vector implicit's ALS computes for a user from fixed item factors
    (``recalculate_user``: the solve of every ALS iteration) is ours, for 6 users."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    x = sp.random(40, 25, density=0.2, random_state=1, format="csr", dtype=np.float64)
    x.data[:] = 1.0
    with threadpool_limits(1, "blas"):
        fit = AlternatingLeastSquares(factors=6, regularization=0.7, alpha=3.0, iterations=4,
                                      random_state=0, dtype=np.float64)
        fit.fit(x, show_progress=False)
    model = AlsModel(np.arange(25) * 10 + 1, fit.item_factors, 0.7, 3.0)
    for u in range(6):
        expected = fit.recalculate_user(u, x[u])
        assert model.fold_in(x[u].indices * 10 + 1) == pytest.approx(expected, abs=1e-6)


def test_model_rejects_bad_factors_with_the_fix():
    with pytest.raises(ValueError, match="raise als.regularization"):
        AlsModel(np.array([1, 2]), np.array([[1.0], [np.nan]]), 1.0, 2.0)
    with pytest.raises(ValueError, match=r"\[2, factors\]"):
        AlsModel(np.array([1, 2]), np.ones((3, 2)), 1.0, 2.0)
    with pytest.raises(ValueError, match="sorted and distinct"):
        AlsModel(np.array([2, 1]), np.ones((2, 2)), 1.0, 2.0)


def test_save_load_round_trip_and_partial_folders(tmp_path):
    m = AlsModel(np.array([3, 7]), np.array([[1.0, 2.0], [3.0, 4.0]]), 2.5, 4.0,
                 {"training_run": "run-1"})
    save_als(m, tmp_path / "m")
    back = load_als(tmp_path / "m")
    assert back.item_ids.tolist() == [3, 7] and back.item_factors.tolist() == [[1, 2], [3, 4]]
    assert (back.regularization, back.alpha, back.training_run) == (2.5, 4.0, "run-1")
    doc = json.loads((tmp_path / "m" / ALS_FILE).read_text())
    (tmp_path / "m" / ALS_FILE).write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(ValueError, match="Retrain it"):
        load_als(tmp_path / "m")
    (tmp_path / "m" / ALS_FILE).unlink()
    with pytest.raises(ValueError, match="partial copy"):
        load_als(tmp_path / "m")


def test_config_checks_say_what_was_expected():
    assert from_dict({"als": {"factors": 8}}).als == AlsConfig(factors=8)
    with pytest.raises(ConfigError, match="als: regularization: expected a number > 0, got 0"):
        from_dict({"als": {"regularization": 0}})
    with pytest.raises(ConfigError, match="factors: expected an integer >= 1"):
        from_dict({"als": {"factors": 0}})


def _positives(pairs):
    return pd.DataFrame({c.USER_ID: [u for u, _ in pairs], c.ITEM_ID: [i for _, i in pairs]})


def test_fit_gives_every_catalogue_title_a_row_and_checks_its_input():
    # users 1, 2 watch 10 and 20; user 3 watches 30; title 40 has no positive: zero factors
    pos = _positives([(1, 10), (1, 20), (2, 10), (2, 20), (3, 30), (1, 10)])
    m = als_lib.fit(pos, np.array([10, 20, 30, 40]), AlsConfig(factors=4, iterations=5),
                    {"training_run": "r"})
    assert m.item_ids.tolist() == [10, 20, 30, 40] and m.factors == 4
    assert np.all(m.item_factors[3] == 0) and np.abs(m.item_factors[:3]).sum() > 0
    assert m.metadata["training_run"] == "r" and m.metadata["positives"] == 6
    user = m.fold_in([10])
    scores = m.score(user, [20, 30, 40])
    assert scores[0] > scores[1] and scores[2] == 0  # the co-watched title first
    with pytest.raises(ValueError, match="not in the catalogue split"):
        als_lib.fit(pos, np.array([10, 20]), AlsConfig())
    with pytest.raises(ValueError, match="no positives"):
        als_lib.fit(_positives([]), np.array([10]), AlsConfig())


def _push(base, version, run, model=None):
    info = base / QUERY_TOWER / str(version) / EXPORT_INFO[0]
    info.mkdir(parents=True)
    (info / EXPORT_INFO[1]).write_text(json.dumps({"training_run": run}))
    if model is not None:
        save_als(model, base / ALS / str(version))


def test_store_checks_the_run_and_answers_none_without_a_model(tmp_path):
    m = AlsModel(np.array([1]), np.ones((1, 2)), 1.0, 2.0, {"training_run": "a"})
    _push(tmp_path, 1, "a", m)
    _push(tmp_path, 2, "b")  # a push without ALS
    _push(tmp_path, 3, "c", m)  # ALS of run a beside towers of run c
    store = AlsStore(tmp_path)
    assert store.get(1).training_run == "a" and store.get(1) is store.get(1)
    assert store.get(2) is None and store.get(None) is None
    with pytest.raises(ModelMismatch, match="run c but the index is from a"):
        store.get(3)


def test_source_folds_in_live_watches_and_new_users():
    catalogue = Catalogue.from_frame(pd.DataFrame({
        c.ITEM_ID: [1, 2, 3], c.TITLE: ["a", "b", "c"], c.GENRES: [["x"]] * 3, c.CAST: [[]] * 3,
        c.KEYWORDS: [[]] * 3, c.DIRECTOR: [None] * 3, c.RELEASE_YEAR: [2000] * 3,
        c.DURATION_SECONDS: [6000] * 3, c.ADDED_AT: [0] * 3, c.MATURITY_RATING: ["G"] * 3}))
    # two orthogonal tastes: 1 and 2 alike, 3 apart
    m = AlsModel(np.array([1, 2, 3]), np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), 1.0, 2.0)
    inter = pd.DataFrame({c.USER_ID: [7], c.ITEM_ID: [3], c.TIMESTAMP: [0],
                          c.EVENT: [c.EVENT_WATCH], c.POSITION: [None], c.WATCH_SECONDS: [600.0],
                          c.DEVICE: ["tv"], c.RATING: [None]})
    src = AlsSource(catalogue, lambda v: m if v == 5 else None, lambda: 5,
                    AlsSource.positives_of(inter, catalogue, 120.0))

    def ask(user, history, watched):
        req = SourceRequest.from_profile(UserProfile(user, history=tuple(history),
                                                     watched=frozenset(watched)), 0)
        return [x.item_id for x in src.candidates(req, 3)]

    assert ask(7, [], [3]) == [2, 1]  # from the dataset's watch of 3 (both weakly)
    assert ask(8, [], []) == []  # a new user with no watch: nothing to go on
    assert ask(8, [1], [1]) == [2, 3]  # their first watch, a second ago: 2 first
    score = src.score(UserProfile(8, history=(1,)), [2, 3, 9], version=5)
    assert score[0] > score[1] and score[2] == 0
    assert src.score(UserProfile(8, history=(1,)), [2], version=4) is None  # no model there


def test_leave_one_out_scores_hand_checked():
    # one factor, titles 10 -> 1, 20 -> 2, 30 -> -1, reg 1, alpha 2 (YtY = 6); positives {10, 20}.
    # 10 left out: fold in {20}: A = 6 + 1 + 4 = 11, b = 4, x = 4/11 -> score of 10 = 4/11.
    # 20 left out: fold in {10}: A = 6 + 1 + 1 = 8, b = 2, x = 1/4 -> score of 20 = 2/4.
    # Both: A = 6 + 1 + 5 = 12, b = 6, x = 1/2.
    m = AlsModel(np.array([10, 20, 30]), np.array([[1.0], [2.0], [-1.0]]), 1.0, 2.0)
    x, rows, loo = m.fold_in_leave_one_out([20, 10, 99])
    assert x == pytest.approx([0.5]) and rows.tolist() == [0, 1]
    assert loo == pytest.approx([4 / 11, 0.5])
    # one positive left out: nothing left to fold in, the score is 0 (as serving sends)
    assert m.fold_in_leave_one_out([30])[2] == pytest.approx([0.0])
    assert m.fold_in_leave_one_out([99]) is None


def test_leave_one_out_equals_folding_in_without_the_title():
    rng = np.random.default_rng(3)
    m = AlsModel(np.arange(40) * 3, rng.normal(size=(40, 8)), 0.5, 5.0)
    for user in range(5):
        positives = rng.choice(m.item_ids, 7, replace=False)
        x, rows, loo = m.fold_in_leave_one_out(positives)
        np.testing.assert_allclose(x, m.fold_in(positives), rtol=1e-9)
        for r, got in zip(rows, loo, strict=True):
            others = [p for p in positives if p != m.item_ids[r]]
            assert got == pytest.approx(m.score(m.fold_in(others), [m.item_ids[r]])[0],
                                        rel=1e-5, abs=1e-7), user


def test_ranker_feature_scores_rows_as_serving_does():
    from trainer.als_feature import AlsScorer

    # the model of the hand-checked test; user 7 watched {10, 20}, user 8 watched {30}
    m = AlsModel(np.array([10, 20, 30]), np.array([[1.0], [2.0], [-1.0]]), 1.0, 2.0)
    scorer = AlsScorer(m, np.array([7, 8, 7]), np.array([10, 30, 20]))
    rows = {"user_id": np.array([7, 7, 7, 8, 8, 9, 7]),
            "item_id": np.array([10, 20, 30, 30, 10, 10, 99])}
    got = scorer({k: tf.constant(v) for k, v in rows.items()}).numpy()
    # 7: own titles left out (4/11, 1/2), an unwatched one by the whole vector (1/2 * -1);
    # 8: own title left out (0), 10 by fold in {30}: A = 8, b = -2, x = -1/4 -> -1/4;
    # an unknown user and an unknown title: 0
    assert got == pytest.approx([4 / 11, 0.5, -0.5, 0.0, -0.25, 0.0, 0.0], abs=1e-6)
