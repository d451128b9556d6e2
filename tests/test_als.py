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


@pytest.mark.parametrize("alpha,positives", [(3.0, 5), (3.0, 8), (3.0, 9), (3.0, 15),
                                              (3.0, 30), (1.0, 5), (0.5, 5)])
def test_fold_in_equals_the_direct_solve(alpha, positives):
    # 16 factors: up to 8 positives go through the Woodbury identity (alpha > 1), more (or
    # alpha <= 1) through the [f, f] system; both must be the numpy reference's solve.
    rng = np.random.default_rng(positives)
    factors = rng.normal(size=(40, 16))
    model = AlsModel(np.arange(40) * 3, factors, 0.5, alpha)
    rows = rng.choice(40, positives, replace=False)
    y = model.item_factors[rows].astype(np.float64)
    gram = model.item_factors.astype(np.float64).T @ model.item_factors + 0.5 * np.eye(16)
    want = np.linalg.solve(gram + (alpha - 1) * y.T @ y, alpha * y.sum(axis=0))
    np.testing.assert_allclose(model.fold_in(rows * 3), want, rtol=1e-9, atol=1e-12)
    # with every title's row of Y G^-1 precomputed (up to 15 positives by the identity)
    np.testing.assert_allclose(model.fold_in(rows * 3, model.projected()), want, rtol=1e-9,
                               atol=1e-12)


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


def test_ranker_feature_scores_each_row_out_of_its_fold():
    from trainer.als_feature import AlsScorer, fold_of

    # two folds of the positives: user 7 {10 (fold 1), 21 (fold 0)}, user 8 {30 (fold 0)};
    # fold = (user * 1000003 + title) mod 2
    users, items = np.array([7, 7, 8]), np.array([10, 21, 30])
    assert fold_of(users, items, 2).tolist() == [1, 0, 0]
    # each fold's model (one factor, reg 1, alpha 2): fold 0 titles 10 -> 1, 21 -> 2, 30 -> -1
    # (YtY 6), fold 1 10 -> 2, 21 -> 1, 30 -> 0 (YtY 5)
    fold0 = AlsModel(np.array([10, 21, 30]), np.array([[1.0], [2.0], [-1.0]]), 1.0, 2.0)
    fold1 = AlsModel(np.array([10, 21, 30]), np.array([[2.0], [1.0], [0.0]]), 1.0, 2.0)
    scorer = AlsScorer([fold0, fold1], users, items)
    rows = {"user_id": np.array([7, 7, 7, 8, 8, 9, 7]),
            "item_id": np.array([10, 21, 30, 30, 11, 10, 99])}
    assert fold_of(rows["user_id"], rows["item_id"], 2).tolist() == [1, 0, 1, 0, 1, 1, 0]
    got = scorer({k: tf.constant(v) for k, v in rows.items()}).numpy()
    # (7, 10), fold 1: fold1 with 7's positives outside fold 1 = {21}: A = 5 + 1 + 1 = 7,
    #   b = 2, x = 2/7 -> 2 * 2/7 = 4/7
    # (7, 21), fold 0: fold0 with {10}: A = 6 + 1 + 1 = 8, b = 2, x = 1/4 -> 2/4
    # (7, 30), fold 1: fold1 with {21}: x = 2/7 -> 0 * 2/7 = 0
    # (8, 30), fold 0: fold0 with 8's positives outside fold 0: none -> 0
    # (8, 11): a title without factors; (9, 10): a user without positives; (7, 99): unknown
    assert got == pytest.approx([4 / 7, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], abs=1e-6)
    # one model, every positive folded in: serving's score (7 with {10, 21}: A = 12, b = 6,
    # x = 1/2)
    served = AlsScorer([fold0], users, items)
    got = served({k: tf.constant(v[:3]) for k, v in rows.items()}).numpy()
    assert got == pytest.approx([0.5, 1.0, -0.5], abs=1e-6)


def test_feature_folds_config_says_what_it_expects():
    with pytest.raises(ConfigError, match="als_score_folds: expected an integer >= 2"):
        from_dict({"ranking": {"als_score_folds": 1}})


def _clustered_fit(items=6000, factors=16, users=300, seed=0):
    """An ALS model over ``items`` clustered factor rows and ``users`` users' positives (each
    user's 12 titles drawn from one cluster, as tastes are)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, factors))
    cluster = rng.integers(30, size=items)
    factors_ = centres[cluster] + 0.3 * rng.normal(size=(items, factors))
    ids = np.arange(items, dtype=np.int64) * 2 + 1
    rows = [rng.choice(np.flatnonzero(cluster == rng.integers(30)), 12) for _ in range(users)]
    positives = pd.DataFrame({c.USER_ID: np.repeat(np.arange(users), 12),
                              c.ITEM_ID: ids[np.concatenate(rows)]})
    return AlsModel(ids, factors_, 1.0, 2.0, {"training_run": "run-1"}), positives


def test_index_over_the_factors_is_saved_loaded_and_searched(tmp_path):
    from marquee.config import IndexConfig

    model, positives = _clustered_fit()
    config = IndexConfig(eval_queries=150, tune_queries=100)
    evaluation = als_lib.build_index(model, positives, config, str(tmp_path / "m" / "index"))
    assert evaluation.blessed and evaluation.num_queries == 150 and evaluation.num_items == 6000
    save_als(model, tmp_path / "m")
    back = load_als(tmp_path / "m")
    assert back.index is not None and back.index.metadata["training_run"] == "run-1"
    # Its searches against scoring every title (the path without an index), for 50 users:
    # the same titles (recall@100) with their exact scores.
    hits = 0
    for u in range(50):
        user = back.fold_in(positives[c.ITEM_ID][positives[c.USER_ID] == u])
        ids, scores = back.top(user, 100)
        exact = back.item_ids[np.argsort(-back.scores(user), kind="stable")[:100]]
        hits += np.intersect1d(ids, exact).size
        np.testing.assert_allclose(scores, back.score(user, ids), rtol=1e-5, atol=1e-5)
    assert hits / (50 * 100) >= 0.95
    # A catalogue below a tree's size gets no index: every title is scored.
    small, small_positives = _clustered_fit(items=500)
    assert als_lib.build_index(small, small_positives, config, str(tmp_path / "s")) is None
    save_als(small, tmp_path / "s")
    assert load_als(tmp_path / "s").index is None and small.top(np.ones(16), 5) is None


def test_source_searches_the_index_and_keeps_to_the_catalogue(tmp_path):
    from marquee.config import IndexConfig

    model, positives = _clustered_fit()
    als_lib.build_index(model, positives, IndexConfig(eval_queries=150, tune_queries=100),
                        str(tmp_path / "m" / "index"))
    save_als(model, tmp_path / "m")
    indexed, plain = load_als(tmp_path / "m"), model  # the search, and every title scored
    ids = model.item_ids[::2]  # the catalogue holds every other title
    catalogue = Catalogue.from_frame(pd.DataFrame({
        c.ITEM_ID: ids, c.TITLE: ["t"] * len(ids), c.GENRES: [["x"]] * len(ids),
        c.CAST: [[]] * len(ids), c.KEYWORDS: [[]] * len(ids), c.DIRECTOR: [None] * len(ids),
        c.RELEASE_YEAR: [2000] * len(ids), c.DURATION_SECONDS: [6000] * len(ids),
        c.ADDED_AT: [0] * len(ids), c.MATURITY_RATING: ["G"] * len(ids)}))
    overlap = []
    for u in range(20):
        history = tuple(int(i) for i in positives[c.ITEM_ID][positives[c.USER_ID] == u])
        req = SourceRequest.from_profile(UserProfile(100 + u, history=history,
                                                     watched=frozenset(history)), 0)
        got = [AlsSource(catalogue, lambda v, m=m: m, lambda: 1).candidates(req, 30)
               for m in (indexed, plain)]
        # Half the fit's titles are not in the catalogue: the source asks the index for more.
        assert all(x.item_id in catalogue.row and x.item_id not in history for x in got[0])
        assert len(got[0]) == 30
        overlap.append(len({x.item_id for x in got[0]} & {x.item_id for x in got[1]}) / 30)
    assert np.mean(overlap) >= 0.9


def test_a_folder_mixing_two_fits_is_refused(tmp_path):
    from marquee.config import IndexConfig

    model, positives = _clustered_fit()
    als_lib.build_index(model, positives, IndexConfig(eval_queries=150, tune_queries=100),
                        str(tmp_path / "m" / "index"))
    other = AlsModel(model.item_ids, model.item_factors[::-1], 1.0, 2.0)
    save_als(other, tmp_path / "m")
    with pytest.raises(ValueError, match="mixes two fits: retrain the ALS model"):
        load_als(tmp_path / "m")


def test_titles_without_factors_are_left_out_of_the_index(tmp_path):
    from marquee.config import IndexConfig

    model, positives = _clustered_fit()
    factors = model.item_factors.copy()
    factors[:1000] = 0.0  # never watched in the fit: zero factors, score 0 for every user
    model = AlsModel(model.item_ids, factors, 1.0, 2.0, {"training_run": "run-1"})
    evaluation = als_lib.build_index(model, positives, IndexConfig(eval_queries=150,
                                                                    tune_queries=100),
                                     str(tmp_path / "m" / "index"))
    assert evaluation.num_items == 5000
    save_als(model, tmp_path / "m")
    index = load_als(tmp_path / "m").index
    assert index.num_items == 5000 and not np.isin(model.item_ids[:1000], index.item_ids).any()
