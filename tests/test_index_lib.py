"""ScannIndexer library: exact top-k against a numpy reference, ScaNN recall, the blessing rule,
save -> move -> load, and input validation."""

import marquee  # noqa: F401  (TF_USE_LEGACY_KERAS before scann imports TensorFlow)

# isort: split
import itertools
import shutil

import numpy as np
import pytest

from components.scann_indexer import index_lib
from components.scann_indexer.index_lib import (
    IndexEvaluation,
    RetrievalIndex,
    bless,
    brute_force_top_k,
    build_and_evaluate,
    build_searcher,
    evaluate_searcher,
    load_index,
    plan_index,
    save_index,
)
from marquee.config import IndexConfig

DEFAULT = IndexConfig()


def clustered(num_items, dim, num_queries, seed=0):
    """Items and queries drawn around 50 shared Gaussian centres (embeddings have structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    items = centres[rng.integers(0, 50, num_items)] + 0.5 * rng.normal(size=(num_items, dim))
    queries = centres[rng.integers(0, 50, num_queries)] + 0.5 * rng.normal(size=(num_queries, dim))
    return items.astype(np.float32), queries.astype(np.float32)


def reference_top_k(queries, items, k):
    """Exact top-k by a full stable argsort: equal scores keep the lower row first."""
    scores = np.einsum("qd,nd->qn", queries.astype(np.float64), items.astype(np.float64))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found, exact):
    return np.mean(
        [np.intersect1d(f, e).size / exact.shape[1] for f, e in zip(found, exact, strict=True)]
    )


@pytest.fixture(scope="module")
def catalogue():
    items, queries = clustered(5000, 32, 500)
    ids = 1000 + 7 * np.arange(len(items), dtype=np.int64)  # row r is item 1000 + 7r
    return items, ids, queries


@pytest.fixture(scope="module")
def built(catalogue):
    items, ids, queries = catalogue
    searcher, evaluation = build_and_evaluate(items, ids, queries, DEFAULT)
    return searcher, evaluation


@pytest.fixture(scope="module")
def tiny():
    """Below IndexConfig.brute_force_below: the brute-force path."""
    items, queries = clustered(50, 8, 30, seed=3)
    ids = np.arange(50, dtype=np.int64)[::-1] * 10  # row r is item 10 * (49 - r)
    searcher, evaluation = build_and_evaluate(items, ids, queries, DEFAULT)
    return items, ids, queries, searcher, evaluation


# --- exact top-k ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_items,dim,k,ties",
    list(itertools.product([50, 1000, 5000], [8, 32], [1, 10, 100], [False, True])),
)
def test_brute_force_top_k_matches_argsort_reference(num_items, dim, k, ties):
    rng = np.random.default_rng(num_items * 1000 + dim * 10 + k)
    if ties:  # small integers: dot products are exact, and many of them are equal
        items = rng.integers(-2, 3, size=(num_items, dim)).astype(np.float32)
        queries = rng.integers(-2, 3, size=(20, dim)).astype(np.float32)
    else:
        items = rng.normal(size=(num_items, dim)).astype(np.float32)
        queries = rng.normal(size=(20, dim)).astype(np.float32)

    got = brute_force_top_k(queries, items, k)

    assert got.shape == (20, min(k, num_items))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, reference_top_k(queries, items, k))


def test_brute_force_top_k_hand_checked_ties():
    items = np.array([[1, 0], [0, 1], [1, 0], [2, 0]], np.float32)
    query = np.array([[1, 0]], np.float32)
    # scores: row0 1, row1 0, row2 1, row3 2 -> 3 first, then the tie 0 before 2, then 1.
    np.testing.assert_array_equal(brute_force_top_k(query, items, 4), [[3, 0, 2, 1]])
    # k = 2 cuts inside the tie: the lower row (0) takes the place.
    np.testing.assert_array_equal(brute_force_top_k(query, items, 2), [[3, 0]])
    # k above the catalogue is clipped.
    assert brute_force_top_k(query, items, 10).shape == (1, 4)


# --- plan ----------------------------------------------------------------------------------


def test_plan_scales_leaves_with_the_catalogue():
    # 5000 / 100 = 50 leaves; ceil(50 * 0.2) = 10 searched; reorder 400; k 100.
    assert plan_index(5000, DEFAULT) == index_lib.IndexPlan(5000, 100, False, 50, 10, 400)
    # round(4321 / 100) = 43 leaves; ceil(43 * 0.2 = 8.6) = 9 searched.
    assert plan_index(4321, DEFAULT).num_leaves == 43
    assert plan_index(4321, DEFAULT).leaves_to_search == 9
    # 50 * 0.14 is 7.000000000000001 in floating point: still 7 leaves, not 8.
    assert plan_index(5000, IndexConfig(leaves_to_search_share=0.14)).leaves_to_search == 7
    # reorder is clipped to the catalogue.
    assert plan_index(5000, IndexConfig(reorder=9000)).reorder == 5000


def test_plan_caps_the_leaves_at_max_leaves():
    # 500,000 / 100 = 5,000 leaves, capped at 2,000 (of 250 items); ceil(2,000 * 0.2) = 400.
    assert plan_index(500_000, DEFAULT) == index_lib.IndexPlan(500_000, 100, False, 2000, 400, 400)
    # Below the cap the leaves follow items_per_leaf: 199,900 / 100 = 1,999.
    assert plan_index(199_900, DEFAULT).num_leaves == 1999
    assert plan_index(5000, IndexConfig(max_leaves=8)).num_leaves == 8
    assert plan_index(5000, IndexConfig(max_leaves=8)).leaves_to_search == 2  # ceil(1.6)


def test_a_search_rescores_twice_the_neighbours_asked():
    # max(reorder, 2 k), clipped to the catalogue; brute force (reorder 0) re-scores nothing.
    assert index_lib.rescored(1000, 400, 500_000) == 2000
    assert index_lib.rescored(100, 400, 500_000) == 400
    assert index_lib.rescored(1000, 400, 1500) == 1500
    assert index_lib.rescored(30, 0, 500) == 30


def test_plan_falls_back_to_brute_force_for_small_catalogues():
    small = plan_index(DEFAULT.brute_force_below - 1, DEFAULT)
    assert small.brute_force and small.num_leaves == 0
    assert plan_index(50, DEFAULT) == index_lib.IndexPlan(50, 50, True, 0, 0, 0)  # k clipped
    # Big enough, but items_per_leaf makes a single leaf: no tree either.
    assert plan_index(5000, IndexConfig(items_per_leaf=5000)).brute_force


# --- ScaNN recall and latency --------------------------------------------------------------


def test_scann_recall_against_brute_force_on_clustered_catalogue(catalogue, built):
    items, ids, queries = catalogue
    searcher, evaluation = built

    assert evaluation.recall >= 0.95, evaluation.reason
    assert (evaluation.num_items, evaluation.num_queries, evaluation.k) == (5000, 500, 100)
    assert evaluation.num_leaves == 50
    assert 0 < evaluation.latency_ms_p50 <= evaluation.latency_ms_p99
    assert evaluation.blessed, evaluation.reason

    # The same figure computed independently, through the serving path and the argsort reference.
    index = RetrievalIndex(searcher, ids, {}, dim=32)
    found_ids, _ = index.search(queries, 100)
    exact_ids = ids[reference_top_k(queries, items, 100)]
    assert recall(found_ids, exact_ids) == pytest.approx(evaluation.recall, abs=1e-9)


def test_deliberately_bad_config_measures_low_recall_and_is_not_blessed(catalogue, built):
    items, ids, queries = catalogue
    # 250 leaves of ~20 items, 1 searched: at most ~20 of the true top 100 can be found.
    bad = IndexConfig(items_per_leaf=20, leaves_to_search_share=0.001, reorder=100)
    assert plan_index(5000, bad).leaves_to_search == 1

    _, evaluation = build_and_evaluate(items, ids, queries, bad)

    assert evaluation.recall < 0.5
    assert evaluation.recall < built[1].recall
    assert not evaluation.blessed
    assert f"{evaluation.recall:.4f}" in evaluation.reason and "0.95" in evaluation.reason


def test_tiny_catalogue_is_searched_exactly(tiny):
    items, ids, queries, searcher, evaluation = tiny
    assert evaluation.num_leaves == 0 and evaluation.k == 50
    assert evaluation.recall == 1.0
    assert "brute force" in evaluation.reason


def test_build_is_deterministic_for_a_seed(catalogue):
    items, _, queries = catalogue
    first = build_searcher(items, DEFAULT).search_batched(queries[:50], final_num_neighbors=100)
    again = build_searcher(items, DEFAULT).search_batched(queries[:50], final_num_neighbors=100)
    np.testing.assert_array_equal(first[0], again[0])


# --- blessing rule -------------------------------------------------------------------------


def test_bless_passes_good_figures():
    blessed, reason = bless(0.96, 5.0, DEFAULT)
    assert blessed
    assert "0.96" in reason and "0.95" in reason and "5 ms" in reason and "20" in reason


def test_bless_refuses_low_recall_and_names_both_figures():
    blessed, reason = bless(0.94, 5.0, DEFAULT)
    assert not blessed
    assert "0.94" in reason and "0.95" in reason
    assert reason.startswith("Not blessed")


def test_bless_refuses_slow_search():
    blessed, reason = bless(0.99, 25.0, DEFAULT)
    assert not blessed
    assert "25 ms" in reason and "20" in reason and "latency" in reason


def test_bless_thresholds_are_inclusive():
    assert bless(0.95, 20.0, DEFAULT)[0]
    assert not bless(0.9499, 20.0, DEFAULT)[0]
    assert not bless(0.95, 20.01, DEFAULT)[0]


@pytest.mark.parametrize("recall_value,latency", [(1.2, 5.0), (float("nan"), 5.0), (0.9, -1.0)])
def test_bless_rejects_impossible_figures(recall_value, latency):
    with pytest.raises(ValueError):
        bless(recall_value, latency, DEFAULT)


# --- serving search ------------------------------------------------------------------------


def test_search_single_query_gives_one_row(catalogue, built):
    items, ids, queries = catalogue
    index = RetrievalIndex(built[0], ids, {}, dim=32)

    one_ids, one_scores = index.search(queries[7], 10)
    batch_ids, batch_scores = index.search(queries[:8], 10)

    assert one_ids.shape == (10,) and one_ids.dtype == np.int64
    assert one_scores.shape == (10,) and one_scores.dtype == np.float32
    np.testing.assert_array_equal(one_ids, batch_ids[7])
    np.testing.assert_allclose(one_scores, batch_scores[7])
    # Re-scored exactly: the scores are the dot products of the returned items.
    rows = (one_ids - 1000) // 7
    np.testing.assert_allclose(one_scores, items[rows] @ queries[7], rtol=1e-5)


def test_search_k_above_catalogue_is_clipped_on_the_tree(catalogue, built):
    items, ids, queries = catalogue
    index = RetrievalIndex(built[0], ids, {}, dim=32)

    found, scores = index.search(queries[:3], 6000)

    # The searched leaves hold ~1000 items; the rest is found by searching every leaf.
    assert found.shape == (3, 5000) and not np.isnan(scores).any()
    for row in range(3):
        assert sorted(found[row]) == sorted(ids)
        assert (np.diff(scores[row]) <= 1e-5).all()  # best first


def test_search_k_above_catalogue_is_clipped_on_brute_force(tiny):
    items, ids, queries, searcher, _ = tiny
    index = RetrievalIndex(searcher, ids, {}, dim=8)

    found, scores = index.search(queries[:4], 80)

    assert found.shape == (4, 50)
    np.testing.assert_array_equal(found, ids[reference_top_k(queries[:4], items, 50)])


def test_search_empty_batch(built, catalogue):
    index = RetrievalIndex(built[0], catalogue[1], {}, dim=32)
    found, scores = index.search(np.zeros((0, 32), np.float32), 10)
    assert found.shape == (0, 10) and scores.shape == (0, 10)


# --- save / load ---------------------------------------------------------------------------


def test_save_move_load_search_gives_the_same_ids(tmp_path, catalogue, built):
    items, ids, queries = catalogue
    searcher, evaluation = built
    before_ids, before_scores = RetrievalIndex(searcher, ids, {}, dim=32).search(queries, 100)

    original = tmp_path / "indexer_output"
    save_index(searcher, ids, evaluation, original, {"training_run": "run-7"})
    moved = tmp_path / "serving" / "42"
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # ScaNN's absolute asset paths now point nowhere
    index = load_index(moved)

    after_ids, after_scores = index.search(queries, 100)
    np.testing.assert_array_equal(after_ids, before_ids)
    np.testing.assert_allclose(after_scores, before_scores)
    np.testing.assert_array_equal(index.item_ids, ids)
    assert index.item_ids.dtype == np.int64
    assert index.metadata["training_run"] == "run-7"
    assert index.metadata["evaluation"] == evaluation.to_dict()
    assert str(tmp_path) not in (moved / "scann" / "scann_assets.pbtxt").read_text()


def test_save_move_load_brute_force_index(tmp_path, tiny):
    items, ids, queries, searcher, evaluation = tiny
    save_index(searcher, ids, evaluation, tmp_path / "a", {})
    shutil.move(tmp_path / "a", tmp_path / "b")

    index = load_index(tmp_path / "b")

    found, _ = index.search(queries, 5)
    np.testing.assert_array_equal(found, ids[reference_top_k(queries, items, 5)])
    assert index.metadata["evaluation"]["num_leaves"] == 0


@pytest.mark.parametrize("case", ["tree", "brute_force"])
def test_loaded_index_scores_given_items_as_search_does(tmp_path, catalogue, built, tiny, case):
    if case == "tree":
        (items, ids, queries), (searcher, evaluation) = catalogue, built
    else:
        items, ids, queries, searcher, evaluation = tiny
    save_index(searcher, ids, evaluation, tmp_path / "index", {})
    index = load_index(tmp_path / "index")
    np.testing.assert_array_equal(index.embeddings, items)  # scann/dataset.npy, row order
    for q in queries[:5]:
        found, scores = index.search(q, 10)
        np.testing.assert_allclose(index.score(q, found[::-1]), scores[::-1], rtol=1e-5,
                                   atol=1e-5)
        # hand-checkable: the score of any item is the numpy dot product of its row
        row = int(np.flatnonzero(ids == ids[-1])[0])
        np.testing.assert_allclose(index.score(q, [ids[-1]]), [items[row] @ q], rtol=1e-5)
    with pytest.raises(KeyError, match="not in the retrieval index"):
        index.score(queries[0], [-1])
    with pytest.raises(ValueError, match="without its item embeddings"):
        RetrievalIndex(searcher, ids, {}, dim=items.shape[1]).score(queries[0], ids[:1])


def test_save_and_load_through_a_remote_filesystem(tiny):
    items, ids, queries, searcher, evaluation = tiny
    uri = "ram://marquee-test-index/v1"  # tf.io.gfile's in-memory filesystem stands in for gs://
    save_index(searcher, ids, evaluation, uri, {"training_run": "run-9"})

    index = load_index(uri)

    found, _ = index.search(queries[0], 3)
    np.testing.assert_array_equal(found, ids[reference_top_k(queries[:1], items, 3)[0]])
    assert index.metadata["training_run"] == "run-9"


def test_build_and_evaluate_saves_when_given_out_dir(tmp_path, tiny):
    items, ids, queries, _, _ = tiny
    _, evaluation = build_and_evaluate(items, ids, queries, DEFAULT, out_dir=tmp_path / "idx")
    assert load_index(tmp_path / "idx").metadata["evaluation"] == evaluation.to_dict()


def test_save_refuses_a_directory_that_already_holds_an_index(tmp_path, tiny):
    _, ids, _, searcher, evaluation = tiny
    save_index(searcher, ids, evaluation, tmp_path, {})
    with pytest.raises(ValueError, match="already holds an index"):
        save_index(searcher, ids, evaluation, tmp_path, {})


def test_load_reports_missing_assets(tmp_path, tiny):
    _, ids, _, searcher, evaluation = tiny
    save_index(searcher, ids, evaluation, tmp_path, {})
    (tmp_path / "scann" / "dataset.npy").unlink()
    with pytest.raises(ValueError, match="dataset.npy"):
        load_index(tmp_path)
    with pytest.raises(ValueError, match="index.json"):
        load_index(tmp_path / "nowhere")


# --- validation ----------------------------------------------------------------------------


def _items():
    return np.random.default_rng(1).normal(size=(60, 8)).astype(np.float32)


def _with_nan():
    items = _items()
    items[5, 2] = np.nan
    return items


def _with_inf():
    items = _items()
    items[3, 0] = np.inf
    return items


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: brute_force_top_k(_items()[0], _items(), 5), "2-D"),
        (
            lambda: brute_force_top_k(_items()[:, :4], _items(), 5),
            "dim 4 but item_embeddings have dim 8",
        ),
        (lambda: brute_force_top_k(_items(), _with_nan(), 5), r"NaN or inf \(first: \[5\]\)"),
        (lambda: brute_force_top_k(_with_inf(), _items(), 5), r"NaN or inf \(first: \[3\]\)"),
        (lambda: brute_force_top_k(_items(), _items(), 0), "positive integer"),
        (lambda: brute_force_top_k(_items(), np.zeros((0, 8)), 5), "empty"),
        (lambda: build_searcher(_with_nan(), DEFAULT), "NaN"),
        (lambda: build_searcher(_items().astype(str), DEFAULT), "numbers"),
        (lambda: build_and_evaluate(_items(), np.arange(59), _items(), DEFAULT), "59 entries but"),
        (
            lambda: build_and_evaluate(_items(), np.r_[np.arange(59), 3], _items(), DEFAULT),
            r"duplicated id\(s\) \(first: \[3\]\)",
        ),
        (lambda: build_and_evaluate(_items(), np.arange(60.0), _items(), DEFAULT), "integer"),
        (lambda: build_and_evaluate(_items(), np.arange(60), _items()[:, :3], DEFAULT), "dim 3"),
        (
            lambda: build_searcher(_items(), IndexConfig(reorder=50)),
            "reorder=50 is below num_neighbors=100",
        ),
        (
            lambda: build_searcher(_items(), IndexConfig(leaves_to_search_share=0.0)),
            "leaves_to_search_share",
        ),
        (lambda: build_searcher(_items(), IndexConfig(max_leaves=1)), "max_leaves=1 must be >= 2"),
        (
            lambda: build_searcher(_items(), IndexConfig(dims_per_block=0)),
            "dims_per_block=0 must be >= 1",
        ),
    ],
)
def test_input_validation_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_search_validates_queries(tiny):
    _, ids, queries, searcher, _ = tiny
    index = RetrievalIndex(searcher, ids, {"training_run": "run-3"}, dim=8)
    with pytest.raises(ValueError, match="dim 4 but this index holds dim-8.*run-3"):
        index.search(queries[:, :4], 5)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(8, np.nan), 5)
    with pytest.raises(ValueError, match="2-D"):
        index.search(queries[None], 5)


def test_evaluate_refuses_embeddings_the_searcher_was_not_built_on(tiny):
    items, _, queries, searcher, _ = tiny
    with pytest.raises(ValueError, match="searcher holds 50 items"):
        evaluate_searcher(searcher, queries, items[:40], DEFAULT)


def test_save_validates_metadata(tmp_path, tiny):
    _, ids, _, searcher, evaluation = tiny
    with pytest.raises(ValueError, match="reserved"):
        save_index(searcher, ids, evaluation, tmp_path / "a", {"evaluation": 1})
    with pytest.raises(ValueError, match="JSON"):
        save_index(searcher, ids, evaluation, tmp_path / "b", {"run": object()})
    wrong = IndexEvaluation(**{**evaluation.to_dict(), "num_items": 7})
    with pytest.raises(ValueError, match="evaluation is of 7 items"):
        save_index(searcher, ids, wrong, tmp_path / "c", {})


# --- tuning the leaves searched ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(catalogue):
    """A tree over the 5,000 clustered items, tuned on 200 queries other than the eval ones."""
    items, ids, queries = catalogue
    tune = clustered(5000, 32, 200, seed=11)[1]
    config = IndexConfig(tune_k=300, leaves_to_search_share=0.6)  # 30 of 50 leaves
    searcher = build_searcher(items, config)
    tuning = index_lib.tune_leaves_to_search(searcher, tune, items, config)
    return items, ids, queries, tune, config, searcher, tuning


def _recall_at(searcher, queries, items, k, leaves, reorder):
    """recall@k of searches visiting ``leaves`` leaves, against the full-argsort reference."""
    exact = reference_top_k(queries, items, k)
    pre = index_lib.rescored(k, reorder, len(items))
    found = [searcher.search(q, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
                             leaves_to_search=leaves)[0] for q in queries]
    return np.mean([np.intersect1d(f, e).size / k for f, e in zip(found, exact, strict=True)])


def test_tuning_finds_the_fewest_leaves_reaching_the_goal(tuned):
    items, _, _, tune, config, searcher, tuning = tuned
    plan = plan_index(len(items), config)
    assert (tuning.planned, tuning.goal, tuning.num_queries) == (plan.leaves_to_search, 0.96, 200)
    assert 1 <= tuning.leaves_to_search < tuning.planned  # clustered items need fewer leaves
    for k in (100, 300):  # both ks reach the goal at the chosen number, by an independent count
        at = _recall_at(searcher, tune, items, k, tuning.leaves_to_search, plan.reorder)
        assert at == pytest.approx(tuning.recall[k]) and at >= 0.96
    if tuning.leaves_to_search > 1:  # one leaf fewer misses it at some k
        below = [_recall_at(searcher, tune, items, k, tuning.leaves_to_search - 1, plan.reorder)
                 for k in (100, 300)]
        assert min(below) < 0.96
    assert f"tuned to {tuning.leaves_to_search} of the plan's {tuning.planned}" in tuning.sentence()


def test_the_tuned_searcher_saves_loads_and_searches_its_leaves(tuned, tmp_path):
    items, ids, queries, tune, config, searcher, tuning = tuned
    copy = index_lib.with_leaves_to_search(searcher, tuning.leaves_to_search)
    for q in queries[:20]:  # the copy's default is the tuned number, with the same tree
        want = searcher.search(q, final_num_neighbors=100, pre_reorder_num_neighbors=400,
                               leaves_to_search=tuning.leaves_to_search)[0]
        np.testing.assert_array_equal(
            copy.search(q, final_num_neighbors=100, pre_reorder_num_neighbors=400)[0], want)
    _, evaluation = build_and_evaluate(items, ids, queries, config, out_dir=tmp_path / "idx",
                                       tune_queries=tune)
    assert evaluation.leaves_to_search == tuning.leaves_to_search
    assert tuning.sentence() in evaluation.reason
    index = load_index(tmp_path / "idx")
    assert index.metadata["evaluation"]["leaves_to_search"] == tuning.leaves_to_search
    found, _ = index.search(queries[0], 100)
    np.testing.assert_array_equal(
        found, ids[copy.search(queries[0], final_num_neighbors=100,
                               pre_reorder_num_neighbors=400)[0].astype(np.int64)])


def test_no_tuning_without_held_out_queries_or_a_tree(catalogue, tiny):
    items, ids, queries = catalogue
    plan = plan_index(len(items), DEFAULT)
    _, evaluation = build_and_evaluate(items, ids, queries, DEFAULT)  # no tune_queries
    assert evaluation.leaves_to_search == plan.leaves_to_search
    assert "tuned" not in evaluation.reason
    off = IndexConfig(tune_leaves=False)
    _, evaluation = build_and_evaluate(items, ids, queries, off, tune_queries=queries[:50])
    assert evaluation.leaves_to_search == plan.leaves_to_search
    tiny_items, _, tiny_queries, searcher, _ = tiny  # brute force: nothing to tune
    assert index_lib.tune_leaves_to_search(searcher, tiny_queries, tiny_items, DEFAULT) is None


@pytest.mark.parametrize("field,value,message", [
    ("tune_k", 0, "tune_k=0 must be >= 1"),
    ("tune_margin", 1.5, "tune_margin=1.5 must be in [0, 1]"),
    ("tune_queries", -1, "tune_queries=-1 must be >= 0"),
])
def test_tuning_settings_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_index(10_000, IndexConfig(**{field: value}))
