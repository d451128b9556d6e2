"""End to end through the real TFX LocalDagRunner on tiny simulated data (slow: ~2 minutes)."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.model_pusher import push_lib
from components.model_pusher.push_lib import CANDIDATE_TOWER, QUERY_TOWER, RETRIEVAL_INDEX
from components.ranking_evaluator.executor import evaluate
from marquee.artifacts import ALS_SCORE
from marquee.config import EvaluatorConfig
from marquee.data import contract as c
from serving.models.in_process import InProcessBackend
from serving.models.index_store import IndexStore
from serving.models.query import ModelMismatch, QueryFeatures, query_inputs
from trainer import als_feature
from trainer import features as f
from trainer.ranking import (
    KNOWN,
    LOG_WATCH_TIME,
    OWN_EXAMPLE,
    OWN_POSITIVE,
    P_WATCH,
    RANK_BY_ID,
    RAW_KEYS,
    RETRIEVAL_SCORE,
    WATCH_TIME_SECONDS,
    WATCHED_LOGIT,
    RankingRecords,
    _dataset,
    add_retrieval_negatives,
    export_ranker,
    labels,
    load_catalogue,
    load_split,
    retrieval_scores,
    scan_split,
    train_ranker,
)
from trainer.retrieval import HISTORY_PAD, LIST_PAD

from .conftest import E2E_CONFIG as CONFIG
from .test_export import user_objects

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def run(pipeline_run):
    return pipeline_run.tmp, pipeline_run.summary


def _version(base, model):
    (v,) = [p for p in (base / model).iterdir() if p.name.isdigit()]
    return v


def test_examples_are_every_positive_watch_split_by_time(run):
    tmp, _ = run
    inter = pd.read_parquet(tmp / "data" / "interactions.parquet")
    positives = inter[(inter[c.EVENT] == c.EVENT_WATCH)
                      & (inter[c.WATCH_SECONDS] >= CONFIG.data.min_watch_seconds)]
    (counts_file,) = (tmp / "run" / "tfx" / "ContractExampleGen" / "examples").glob(
        "*/counts.json")
    info = json.loads(counts_file.read_text())
    assert info["counts"]["train"] + info["counts"]["eval"] == len(positives)
    assert info["counts"]["eval"] == int((positives[c.TIMESTAMP] >= info["eval_cutoff"]).sum())
    assert info["counts"]["catalogue"] == 200


def test_pushed_towers_answer_raw_features(run):
    tmp, summary = run
    base = tmp / "run" / "serving"
    versions = {m: _version(base, m).name for m in (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX)}
    assert len(set(versions.values())) == 1, versions
    assert ("pushed als, candidate_tower, query_tower, ranker, retrieval_index as version"
            in summary)
    assert (tmp / "run" / "summary.md").is_file()

    query = tf.saved_model.load(str(_version(base, QUERY_TOWER)))
    inputs = query_inputs([QueryFeatures(user_id=3, timestamp=1_700_000_000, history=[5, 7]),
                           QueryFeatures(user_id=10**9, timestamp=1_700_003_600)], 20)
    emb = query.signatures["serving_default"](**inputs)["embedding"].numpy()
    assert emb.shape == (2, CONFIG.retrieval.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)

    cand = tf.saved_model.load(str(_version(base, CANDIDATE_TOWER)))
    out = cand.signatures["serving_default"](
        item_id=tf.constant([1, 10**9], tf.int64), title=tf.constant(["A new title", "x"]),
        director=tf.constant(["", "Someone"]), release_year=tf.constant([2024, 0], tf.int64),
        duration_seconds=tf.constant([5400, 0], tf.int64),
        genres=tf.constant([["drama", "comedy"], ["horror", LIST_PAD]]),
        cast=tf.constant([[LIST_PAD], [LIST_PAD]]), keywords=tf.constant([[LIST_PAD]] * 2),
    )["embedding"].numpy()
    assert out.shape == (2, CONFIG.retrieval.embedding_dim) and np.isfinite(out).all()
    # trainer/export: the graphs hold the variables and the Transform resources, no Keras object
    for model in (QUERY_TOWER, CANDIDATE_TOWER, "ranker"):
        assert not any(i.startswith("_tf_keras") for i in user_objects(_version(base, model)))


def test_pushed_tower_and_index_retrieve_and_mismatch_refused(run):
    tmp, _ = run
    base = tmp / "run" / "serving"
    backend, indexes = InProcessBackend(base), IndexStore(base)
    items = set(pd.read_parquet(tmp / "data" / "items.parquet")[c.ITEM_ID])
    query = {k: v.numpy() for k, v in query_inputs(
        [QueryFeatures(user_id=3, timestamp=1_700_000_000, history=[5])], 20).items()}
    emb, version = backend.query_embeddings(query, 10.0)
    found, scores = indexes.get(version).search(emb, 10)
    ids = found[0].tolist()
    assert len(ids) == 10 == len(set(ids)) and set(ids) <= items
    assert scores[0].tolist() == sorted(scores[0].tolist(), reverse=True)

    # A newer push whose index comes from another training run is refused.
    new = str(version + 1)
    shutil.copytree(base / QUERY_TOWER / str(version), base / QUERY_TOWER / new)
    shutil.copytree(base / RETRIEVAL_INDEX / str(version), base / RETRIEVAL_INDEX / new)
    meta = json.loads((base / RETRIEVAL_INDEX / new / "index.json").read_text())
    meta["metadata"]["training_run"] = "another-run"
    (base / RETRIEVAL_INDEX / new / "index.json").write_text(json.dumps(meta))
    try:
        with pytest.raises(ModelMismatch, match="another-run"):
            IndexStore(base).get(version + 1)
    finally:
        shutil.rmtree(base / QUERY_TOWER / new)
        shutil.rmtree(base / RETRIEVAL_INDEX / new)


def test_als_is_fitted_on_the_train_split_and_pushed_with_the_towers(run):
    from marquee.als import load_als
    from marquee.artifacts import ALS
    from serving.models.als_store import AlsStore
    from serving.models.query import training_run_of

    tmp, summary = run
    base = tmp / "run" / "serving"
    version = int(_version(base, QUERY_TOWER).name)
    assert int(_version(base, ALS).name) == version
    model = load_als(_version(base, ALS))
    assert model.training_run == training_run_of(base / QUERY_TOWER / str(version))
    (counts_file,) = (tmp / "run" / "tfx" / "ContractExampleGen" / "examples").glob(
        "*/counts.json")
    counts = json.loads(counts_file.read_text())["counts"]
    assert model.metadata["positives"] == counts["train"]
    items = pd.read_parquet(tmp / "data" / "items.parquet")[c.ITEM_ID]
    assert model.item_ids.tolist() == sorted(items) and model.factors == CONFIG.als.factors
    assert AlsStore(base).get(version).training_run == model.training_run
    assert "## ALS source" in summary
    # a user's folded-in vector ranks the titles they watched in train above the average one
    inter = pd.read_parquet(tmp / "data" / "interactions.parquet")
    pos = inter[(inter[c.EVENT] == c.EVENT_WATCH)
                & (inter[c.WATCH_SECONDS] >= CONFIG.data.min_watch_seconds)]
    user, watched = next((u, g[c.ITEM_ID].unique()) for u, g in pos.groupby(c.USER_ID)
                         if g[c.ITEM_ID].nunique() >= 5)
    scores = model.scores(model.fold_in(watched))
    assert scores[model.rows(watched)].mean() > scores.mean(), user


def test_feature_keys_cover_the_signatures():
    # Every raw key the towers take is spelled in trainer/features.py.
    assert set(f.QUERY_FEATURES) == set(query_inputs(
        [QueryFeatures(user_id=1, timestamp=0)], 3))


def _ranking_inputs(tmp, als=None):

    examples = next((tmp / "run" / "tfx" / "ContractExampleGen" / "examples").glob("*"))
    retrieval = next((tmp / "run" / "tfx" / "Trainer" / "model").glob("*/Format-Serving"))
    transform = next((tmp / "run" / "tfx" / "Transform" / "transform_graph").glob("*"))
    train = load_split([str(examples / "Split-rank_train" / "*")], str(retrieval), als=als)
    return examples, retrieval, transform, train


def _als_scorer(tmp):
    """Serving's ALS scores of the run's pushed model (the RankingEvaluator's)."""
    examples = next((tmp / "run" / "tfx" / "ContractExampleGen" / "examples").glob("*"))
    (als_dir,) = (tmp / "run" / "tfx" / "AlsTrainer" / "model").glob("*")
    return als_feature.load_scorer(str(als_dir), str(examples))


def test_ranker_takes_the_als_score_as_serving_gives_it(run):
    tmp, _ = run
    examples = next((tmp / "run" / "tfx" / "ContractExampleGen" / "examples").glob("*"))
    scorer = als_feature.out_of_fold_scorer(str(examples), CONFIG.als, 3)
    _, _, _, train = _ranking_inputs(tmp, scorer)
    # The numpy reference: a row's (user, title) fold k; ALS model k, fitted on the positives
    # outside fold k, with the user folded in from their positives outside fold k.
    users, items = als_feature.train_positives(str(examples))
    fold = als_feature.fold_of(users, items, 3)
    for k, model in enumerate(scorer.models):
        assert model.metadata["positives"] == np.count_nonzero(fold != k)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(train[f.ITEM_ID]), 60, replace=False)
    own = 0
    for r in rows:
        user, item = int(train[f.USER_ID][r]), int(train[f.ITEM_ID][r])
        k = int(als_feature.fold_of(user, item, 3))
        seen = items[(users == user) & (fold != k)]
        own += bool(np.any((users == user) & (items == item)))
        x = scorer.models[k].fold_in(seen)
        expected = 0.0 if x is None else float(scorer.models[k].score(x, [item])[0])
        assert train[ALS_SCORE][r] == pytest.approx(expected, rel=1e-3, abs=1e-5), (user, item)
        assert item not in seen  # the pair is never in what scores it
    assert 0 < own < len(rows)  # positive pairs and others were both checked
    # The pushed ranker was trained with it: both signatures take it, the export info says so,
    # the backend reports it (the page sends it), and it moves the score.
    base = tmp / "run" / "serving"
    version = int(_version(base, "ranker").name)
    info = json.loads((_version(base, "ranker") / "assets.extra" / "marquee.json").read_text())
    assert ALS_SCORE in info["inputs"] and info["als_score"] is True
    loaded = tf.saved_model.load(str(_version(base, "ranker")))
    for name in ("serving_default", RANK_BY_ID):
        assert ALS_SCORE in loaded.signatures[name].structured_input_signature[1], name
    backend = InProcessBackend(base)
    assert ALS_SCORE in backend.ranker_inputs(version)
    batch = {k: train[k][:32] for k in RAW_KEYS + (RETRIEVAL_SCORE,)}
    p = [loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in batch.items()},
                                              als_score=tf.constant(np.full(32, a, np.float32))
                                              )[P_WATCH].numpy() for a in (0.0, 1.0)]
    assert np.abs(p[1] - p[0]).max() > 1e-4


def test_ranker_losses_and_position_tower_dropped_at_serving(run, tmp_path):

    tmp, _ = run
    _, _, transform, train = _ranking_inputs(tmp)
    model, _ = train_ranker(train, str(transform), CONFIG.ranking, epochs=1, steps=5)
    # Both heads' losses, hand-checked: BCE(logit 0) = ln 2 for either label; MSE of log time
    # errors (0, 2) = 2; total = 1.0 * ln 2 + 0.1 * 2.
    y_true = {WATCHED_LOGIT: tf.constant([1.0, 0.0]), LOG_WATCH_TIME: tf.constant([1.0, 1.0])}
    y_pred = {WATCHED_LOGIT: tf.constant([0.0, 0.0]), LOG_WATCH_TIME: tf.constant([1.0, 3.0])}
    loss = float(model.compute_loss(y=y_true, y_pred=y_pred))
    assert loss == pytest.approx(np.log(2) * 1.0 + 0.1 * 2.0, rel=1e-5)

    # Give positions very different learned biases; serving must not see them.
    bias = np.zeros((CONFIG.ranking.position_buckets + 1, 1), np.float32)
    bias[1], bias[5] = 0.0, 3.0
    model.position_bias.set_weights([bias])
    batch = {k: train[k][:16] for k in RAW_KEYS + (RETRIEVAL_SCORE,)}
    at = lambda pos: tf.sigmoid(model({**batch, "position": np.full(16, pos, np.int64)})[  # noqa: E731
        WATCHED_LOGIT]).numpy()
    assert np.all(at(5) > at(1))  # the tower matters in training...
    export_ranker(model, str(tmp_path / "ranker"), {})
    served = tf.saved_model.load(str(tmp_path / "ranker")).signatures["serving_default"]
    assert "position" not in served.structured_input_signature[1]
    out = served(**{k: tf.constant(v) for k, v in batch.items()})[P_WATCH].numpy()
    np.testing.assert_allclose(out, at(1), rtol=1e-5)  # ...and is fixed to position 1 served


def test_ranker_item_counts_leave_the_row_out_in_training_only(run):
    tmp, _ = run
    _, _, transform, train = _ranking_inputs(tmp)
    cfg = dataclasses.replace(CONFIG.ranking, item_popularity_features=True)
    model, _ = train_ranker(train, str(transform), cfg, epochs=1, steps=2)
    y = labels(train[f.WATCH_SECONDS], cfg.min_watch_seconds)[0]
    items = train[f.ITEM_ID]
    pos = {i: y[items == i].sum() for i in np.unique(items)}
    n = {i: (items == i).sum() for i in np.unique(items)}
    g, m = y.mean(), cfg.popularity_prior_count
    rows = np.arange(0, len(y), max(1, len(y) // 50))
    batch = {k: train[k][rows] for k in RAW_KEYS + (RETRIEVAL_SCORE,)}
    served = model.item_popularity(batch).numpy()  # serving: the item's full counts
    fit = model.item_popularity({**batch, OWN_POSITIVE: y[rows],
                                 OWN_EXAMPLE: np.ones(len(rows), np.float32)}).numpy()
    for k, r in enumerate(rows):
        p_all, n_all = pos[items[r]], n[items[r]]
        np.testing.assert_allclose(served[k], [np.log1p(p_all), np.log1p(n_all),
                                               (p_all + m * g) / (n_all + m)], rtol=1e-5)
        p_loo, n_loo = p_all - y[r], n_all - 1
        np.testing.assert_allclose(fit[k], [np.log1p(p_loo), np.log1p(n_loo),
                                            (p_loo + m * g) / (n_loo + m)], rtol=1e-5)
    unknown = model.item_popularity({f.ITEM_ID: np.array([10**12], np.int64)}).numpy()
    np.testing.assert_allclose(unknown[0], [0.0, 0.0, g], rtol=1e-5)


def test_ranker_steps_without_autograph_train_the_same_weights(run, monkeypatch):
    """RankingModel's train and test steps skip AutoGraph (seconds of tracing): the graph is
    the one AutoGraph would build, so the same seed and rows give the same weights and
    validation loss as steps AutoGraph converts."""
    from trainer import ranking

    class Converted(ranking.RankingModel):  # Keras' own steps, converted by AutoGraph
        train_step = tf.keras.Model.train_step
        test_step = tf.keras.Model.test_step

    tmp, _ = run
    _, _, transform, train = _ranking_inputs(tmp)
    cfg = dataclasses.replace(CONFIG.ranking, validation_share=0.2)
    fitted = {}
    for name, cls in (("plain", ranking.RankingModel), ("converted", Converted)):
        monkeypatch.setattr(ranking, "RankingModel", cls)
        model, metrics = train_ranker(train, str(transform), cfg, epochs=1, steps=4)
        assert type(model) is cls
        fitted[name] = (model.get_weights(), metrics["final_loss"],
                        model.history.history[f"val_{WATCHED_LOGIT}_loss"])
    (w_plain, loss_plain, val_plain), (w_conv, loss_conv, val_conv) = fitted.values()
    assert len(w_plain) == len(w_conv) > 10
    for a, b in zip(w_plain, w_conv, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert loss_plain == pytest.approx(loss_conv, rel=1e-5)
    assert val_plain == pytest.approx(val_conv, rel=1e-5)
    # The 4 steps moved the weights away from the seed's initial ones.
    fresh = ranking.build_model(tft.TFTransformOutput(str(transform)), cfg,
                                scan_split(train, cfg).counts)
    fresh({k: train[k][:8] for k in RAW_KEYS + (RETRIEVAL_SCORE,)})
    assert max(float(np.abs(a - b).max()) for a, b in zip(
        w_plain, fresh.get_weights(), strict=True)) > 1e-4


def test_one_step_ranker_is_neither_blessed_nor_pushed(run, tmp_path):

    tmp, _ = run
    examples, retrieval, transform, train = _ranking_inputs(tmp)
    model, _ = train_ranker(train, str(transform), CONFIG.ranking, epochs=1, steps=1)
    export_ranker(model, str(tmp_path / "model" / "ranker"), {})
    strict = dataclasses.replace(CONFIG, evaluator=EvaluatorConfig())  # the default gate
    result = evaluate(str(tmp_path / "model" / "ranker"), None, str(examples), str(retrieval),
                      strict)
    assert not result["blessed"], result["reason"]
    assert result["baseline"] == "the popularity baseline"
    pushed = push_lib.push(retrieval, tmp_path / "unused", False, tmp_path / "serving", "r",
                           ranker_dir=tmp_path / "model" / "ranker", ranker_blessed=False)
    assert not pushed.pushed and not (tmp_path / "serving" / "ranker").exists()


def test_retrieval_negatives_on_the_real_towers(run):

    tmp, _ = run
    examples, retrieval, _, train = _ranking_inputs(tmp)
    cfg = dataclasses.replace(CONFIG.ranking, retrieval_negatives_per_positive=2,
                              retrieval_negative_top_n=20)
    catalogue = load_catalogue([str(examples / "Split-catalogue" / "*")])
    out = add_retrieval_negatives(train, catalogue, str(retrieval), cfg)
    n = len(train[f.WATCH_SECONDS])
    extra = {k: v[n:] for k, v in out.items()}
    positives = int(labels(train[f.WATCH_SECONDS])[0].sum())
    # 2 per positive, fewer only where the top 20 holds fewer unwatched, available items
    assert 1.5 * positives <= len(extra[f.ITEM_ID]) <= 2 * positives
    assert not extra[f.WATCH_SECONDS].any()
    watched = {(u, i) for u, i, w in zip(train[f.USER_ID].tolist(), train[f.ITEM_ID].tolist(),
                                         train[f.WATCH_SECONDS].tolist(), strict=True) if w > 0}
    assert not watched & set(zip(extra[f.USER_ID].tolist(), extra[f.ITEM_ID].tolist(),
                                 strict=True))
    # the carried score is the towers' dot product of the new (query, item) pair
    np.testing.assert_allclose(extra[RETRIEVAL_SCORE], retrieval_scores(str(retrieval), extra),
                               rtol=1e-4, atol=1e-4)
    again = add_retrieval_negatives(train, catalogue, str(retrieval), cfg)
    np.testing.assert_array_equal(again[f.ITEM_ID], out[f.ITEM_ID])


def _columns(batches, keys):
    """Batches of (features, labels) -> one array per key; lists padded to the widest batch."""
    out = {}
    for k in keys:
        parts = [(x if k in x else y)[k].numpy() for x, y in batches]
        if parts[0].ndim == 2:
            width = max(p.shape[1] for p in parts)
            pad = HISTORY_PAD if parts[0].dtype.kind == "i" else LIST_PAD.encode()
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=pad)
                     for p in parts]
        out[k] = np.concatenate(parts)
    return out


def test_streamed_ranking_batches_equal_the_in_memory_ones(run):
    # The RankingTrainer streams rank_train from its files; load_split holds it in memory (tests,
    # hard negatives). The model must get the same batches either way.
    tmp, _ = run
    scorer = _als_scorer(tmp)
    examples, retrieval, _, train = _ranking_inputs(tmp, scorer)
    cfg = dataclasses.replace(CONFIG.ranking, batch_size=64)
    records = RankingRecords((str(examples / "Split-rank_train" / "*"),), str(retrieval), scorer)
    in_memory, streamed = scan_split(train, cfg), scan_split(records, cfg)

    # The latest 10% of the examples by time validate, rounded up to whole hours: the latest
    # hour boundary with at least 10% of the rows at or after it.
    ts = train[f.TIMESTAMP]
    hours = np.arange(ts.min() // 3600, ts.max() // 3600 + 1) * 3600
    cutoff = int(hours[[np.mean(ts >= h) >= cfg.validation_share for h in hours]][-1])
    validation = ts >= cutoff
    assert in_memory.cutoff == streamed.cutoff == cutoff
    assert 0.05 * len(ts) < validation.sum() < 0.15 * len(ts)
    for split in (in_memory, streamed):
        assert (split.fit_examples, split.validation_examples) == (
            (~validation).sum(), validation.sum())
        for a in ("ids", "positives", "examples"):
            np.testing.assert_array_equal(getattr(split.counts, a), getattr(in_memory.counts, a))
    y = labels(train[f.WATCH_SECONDS], cfg.min_watch_seconds)[0]
    assert streamed.counts.positives.sum() == y.sum() == (
        train[f.WATCH_SECONDS] >= cfg.min_watch_seconds).sum() > 0

    features = RAW_KEYS + (RETRIEVAL_SCORE, ALS_SCORE, f.POSITION, OWN_POSITIVE, OWN_EXAMPLE)
    for side in (False, True):
        rows = validation == side
        mem = list(_dataset(train, in_memory, cfg, side, shuffle=False))
        rec = list(_dataset(records, streamed, cfg, side, shuffle=False))
        assert len(mem) == len(rec) == int(np.ceil(rows.sum() / 64))
        assert [len(x[f.ITEM_ID]) for x, _ in rec] == [len(x[f.ITEM_ID]) for x, _ in mem]
        m = _columns(mem, features + (WATCHED_LOGIT, LOG_WATCH_TIME))
        r = _columns(rec, features + (WATCHED_LOGIT, LOG_WATCH_TIME))
        for k in m:
            if k in (RETRIEVAL_SCORE, ALS_SCORE):
                np.testing.assert_allclose(r[k], m[k], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(r[k], m[k], err_msg=k)
        # this side's rows in file order, their labels and their own counts (label, 1)
        np.testing.assert_array_equal(r[f.ITEM_ID], train[f.ITEM_ID][rows])
        np.testing.assert_array_equal(r[f.USER_ID], train[f.USER_ID][rows])
        np.testing.assert_allclose(r[RETRIEVAL_SCORE], train[RETRIEVAL_SCORE][rows],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(r[WATCHED_LOGIT], y[rows])
        np.testing.assert_array_equal(r[OWN_POSITIVE], y[rows])
        assert (r[OWN_EXAMPLE] == 1).all()

    # Shuffled with the same seed, both give the same order (the same buffer over the same rows).
    orders = []
    for source, split in ((train, in_memory), (records, streamed)):
        tf.keras.utils.set_random_seed(cfg.seed)
        batches = list(_dataset(source, split, cfg, False, shuffle=True))
        orders.append(_columns(batches, (f.USER_ID, f.ITEM_ID)))
    for k in (f.USER_ID, f.ITEM_ID):
        np.testing.assert_array_equal(orders[1][k], orders[0][k])
    assert not np.array_equal(orders[1][f.USER_ID], train[f.USER_ID][~validation])
    assert sorted(orders[1][f.USER_ID]) == sorted(train[f.USER_ID][~validation])


@pytest.mark.parametrize("rank", [0, 8])  # full-rank and low-rank cross layers
def test_rank_by_id_matches_serving_default(run, tmp_path, rank):
    # The by-id signature (the page's query once, item ids, features looked up in the model)
    # must score exactly as serving_default does with every raw feature sent.
    tmp, _ = run
    examples, _, transform, train = _ranking_inputs(tmp, _als_scorer(tmp))
    cfg = dataclasses.replace(CONFIG.ranking, item_popularity_features=True,
                              cross_projection_dim=rank)
    model, _ = train_ranker(train, str(transform), cfg, epochs=1, steps=3)
    width = int(model.norm.gamma.shape[0])  # the head's input
    kernels = sorted(tuple(w.shape) for c in model.crosses for w in c.trainable_weights
                     if "kernel" in w.name)
    assert kernels == (sorted([(width, rank), (rank, width)] * cfg.cross_layers) if rank
                       else [(width, width)] * cfg.cross_layers)
    catalogue = load_catalogue([str(examples / "Split-catalogue" / "*")])
    export_ranker(model, str(tmp_path / "ranker"), {}, catalogue)
    loaded = tf.saved_model.load(str(tmp_path / "ranker"))
    raw, by_id = loaded.signatures["serving_default"], loaded.signatures[RANK_BY_ID]
    # One user's query against 40 catalogue titles, their features from the catalogue split.
    rows = np.arange(0, len(catalogue[f.ITEM_ID]), max(1, len(catalogue[f.ITEM_ID]) // 40))
    n = len(rows)
    query = {k: train[k][:1] for k in f.QUERY_FEATURES}
    score = np.linspace(-1, 1, n).astype(np.float32)
    als = np.linspace(2, -1, n).astype(np.float32)
    pairs = {**{k: np.repeat(v, n, axis=0) for k, v in query.items()},
             **{k: catalogue[k][rows] for k in f.CANDIDATE_FEATURES}, RETRIEVAL_SCORE: score,
             ALS_SCORE: als}
    expected = raw(**{k: tf.constant(v) for k, v in pairs.items()})
    ids = catalogue[f.ITEM_ID][rows]
    for q in (query, {k: pairs[k] for k in f.QUERY_FEATURES}):  # once, or once per id
        got = by_id(**{k: tf.constant(v) for k, v in q.items()}, item_id=tf.constant(ids),
                    retrieval_score=tf.constant(score), als_score=tf.constant(als))
        assert got[KNOWN].numpy().all()
        for key in (P_WATCH, WATCH_TIME_SECONDS):
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-4,
                                       atol=1e-6)
    # An id the table does not hold is flagged, scored as a title without metadata.
    unknown = np.array([ids[0], 10**12], np.int64)
    got = by_id(**{k: tf.constant(v) for k, v in query.items()}, item_id=tf.constant(unknown),
                retrieval_score=tf.constant(score[:2]), als_score=tf.constant(als[:2]))
    assert got[KNOWN].numpy().tolist() == [True, False]
    assert np.isfinite(got[P_WATCH].numpy()).all()
    assert sorted(json.loads((tmp_path / "ranker" / "assets.extra" / "marquee.json"
                              ).read_text())["signatures"]) == [RANK_BY_ID, "serving_default"]


def test_tune_retrieval_retrains_on_the_runs_transform_outputs(run, monkeypatch):
    """The retrieval settings are chosen by the trainer's own eval Recall@20, re-trained on the
    run's transformed examples: the chosen one is the best reported, the config's start is
    among those tried, and the config it returns differs from the start only there."""
    import dataclasses

    from marquee.evaluation import tuning

    tmp, _ = run
    monkeypatch.setattr(tuning, "RETRIEVAL_GRID", {"temperature": (0.05, 0.1)})
    lines = []
    config, account = tuning.tune_retrieval(tmp / "run", CONFIG, lines.append)
    tried = {float(line.split("temperature ")[1].split(" ")[0]):
             float(line.split(f"{tuning.RETRIEVAL_METRIC} ")[1].split(" ")[0])
             for line in lines if line.startswith("tuning retrieval:")}
    assert set(tried) == {0.05, CONFIG.retrieval.temperature}
    assert tried[config.retrieval.temperature] == max(tried.values())
    assert config == dataclasses.replace(CONFIG, retrieval=dataclasses.replace(
        CONFIG.retrieval, temperature=config.retrieval.temperature))
    assert account.startswith(f"retrieval temperature {config.retrieval.temperature:g}")
