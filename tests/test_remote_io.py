"""The custom components on a remote filesystem: TensorFlow's in-memory ``ram://`` stands in for
``gs://`` (both go through tf.io.gfile; ``ram://`` is a real filesystem, not a mock).

The toy models are hand-made SavedModels with the real signatures, so every figure is checkable
by hand:

- candidate tower: item i -> [i, 1]; query tower: any query -> [1, 0]. The retrieval score of
  item i is i, so the top items are the highest ids.
- ranker: P(watch) = 0.8 for an even item id, 0.2 for an odd one; watch time 600 s / 10 s.
"""

import json
import os
import uuid

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_serving.config import model_server_config_pb2
from tfx.types import standard_artifacts

from components.anomaly_gate.executor import ANOMALIES_FILE, AnomaliesFound, check_anomalies
from components.contract_example_gen import example_lib
from components.contract_example_gen.executor import check_rejects, write_examples
from components.contract_example_gen.validate_lib import REJECTS_DIR
from components.model_pusher import component as pusher
from components.model_pusher import push_lib
from components.ranking_evaluator import executor as evaluator
from components.scann_indexer import executor as indexer
from components.scann_indexer.component import ScannIndex
from components.scann_indexer.index_lib import INDEX_FILE, load_index
from marquee import io
from marquee.config import from_dict
from marquee.data import contract as c
from marquee.data.validate import TooManyRejects, validate_dataset
from trainer import features as f
from trainer.ranking import P_WATCH, WATCH_TIME_SECONDS, serving_signature
from trainer.retrieval import EMBEDDING, METADATA_FILE, candidate_signature, query_signature

RUN = "run-remote-1"
ITEM_IDS = [10, 11, 12, 13, 14]


def _remove_files(root: str) -> None:
    """Frees a ram:// tree (its rmtree fails on directories that were never made explicitly)."""
    for dirpath, _, names in tf.io.gfile.walk(root):
        for name in names:
            if tf.io.gfile.exists(os.path.join(dirpath, name)):
                tf.io.gfile.remove(os.path.join(dirpath, name))


@pytest.fixture
def ram():
    root = f"ram://marquee-test-{uuid.uuid4().hex[:8]}"
    yield root
    _remove_files(root)


def _files(root: str) -> dict[str, bytes]:
    """Relative path -> content of every file under ``root`` (local or remote)."""
    out = {}
    for dirpath, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with tf.io.gfile.GFile(path, "rb") as fh:
                out[path[len(root.rstrip("/")) + 1:]] = fh.read()
    return out


# ----------------------------------------------------------------------------- marquee.io


def test_copy_tree_round_trips_through_ram(tmp_path, ram):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.json").write_text('{"x": 1}')
    (src / "a" / "b" / "deep.bin").write_bytes(bytes(range(256)) * 3)
    (src / "a" / "empty_dir").mkdir()

    io.copy_tree(src, f"{ram}/copy", last="top.json")
    io.copy_tree(f"{ram}/copy", tmp_path / "back")

    assert _files(f"{ram}/copy") == {"top.json": b'{"x": 1}',
                                     "a/b/deep.bin": bytes(range(256)) * 3}
    assert _files(str(tmp_path / "back")) == _files(str(src))
    assert io.list_dir(f"{ram}/copy/a") == ["b", "empty_dir"]
    assert io.list_dir(f"{ram}/nowhere") == []
    with pytest.raises(FileNotFoundError, match="nowhere: no such directory"):
        io.copy_tree(f"{ram}/nowhere", tmp_path / "x")


def test_publish_tree_locally_renames_into_place(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"pb")
    leftover = tmp_path / "models" / ".1.tmp"  # from a push that died half-way
    leftover.mkdir(parents=True)
    (leftover / "stale").write_text("x")

    io.publish_tree(src, tmp_path / "models" / "1", last="saved_model.pb")

    assert sorted(os.listdir(tmp_path / "models")) == ["1"]
    assert (tmp_path / "models" / "1" / "saved_model.pb").read_bytes() == b"pb"


# ----------------------------------------------------------------------------- contract data

USERS = {c.USER_ID: [1, 2], c.SIGNUP_AT: [0, 0], c.COUNTRY: ["US", "FR"],
         c.SUBSCRIPTION_TIER: ["basic", "premium"], c.AGE_BUCKET: [None, "25-34"],
         c.ONBOARDING_GENRES: [None, None]}
ITEMS = {c.ITEM_ID: [10, 11, 12], c.TITLE: ["Ten", "Eleven", "Twelve"],
         c.GENRES: [["drama"], [], ["comedy"]], c.CAST: [[], [], []],
         c.DIRECTOR: [None, None, None], c.RELEASE_YEAR: [1999, None, 2020],
         c.DURATION_SECONDS: [5400, None, 6000], c.ADDED_AT: [0, 0, 0],
         c.MATURITY_RATING: ["PG", "R", "G"]}
# (user, item, timestamp, event, position, watch seconds); the last row is bad (negative seconds)
EVENTS = [(1, 10, 1000, "watch", 1, 600.0), (1, 11, 3000, "watch", 2, 30.0),
          (2, 12, 2000, "watch", 1, 900.0), (2, 10, 2500, "impression", 3, 0.0),
          (2, 11, 4000, "watch", 1, 700.0), (1, 12, 5000, "watch", 1, -5.0)]


def _interactions(rows) -> dict:
    user, item, ts, event, position, seconds = (list(col) for col in zip(*rows, strict=True))
    return {c.USER_ID: user, c.ITEM_ID: item, c.TIMESTAMP: ts, c.EVENT: event,
            c.POSITION: position, c.WATCH_SECONDS: seconds, c.DEVICE: ["tv"] * len(rows),
            c.RATING: [None] * len(rows)}


@pytest.fixture
def dataset(tmp_path, ram):
    """The hand-made dataset above, on ram://; interactions as a folder of two part files."""
    local = tmp_path / "data"
    c.write_table(local, c.USERS, USERS)
    c.write_table(local, c.ITEMS, ITEMS)
    (local / c.INTERACTIONS).mkdir()
    with c.TableWriter(local / c.INTERACTIONS / "part-0000.parquet", c.INTERACTIONS) as w:
        w.write(_interactions(EVENTS[:4]))
    with c.TableWriter(local / c.INTERACTIONS / "part-0001.parquet", c.INTERACTIONS) as w:
        w.write(_interactions(EVENTS[4:]))
    io.copy_tree(local, f"{ram}/data")
    return f"{ram}/data"


def test_contract_tables_are_listed_and_read_from_a_uri(dataset):
    assert c.table_files(dataset, c.USERS) == [f"{dataset}/users.parquet"]
    assert c.table_files(dataset, c.INTERACTIONS) == [
        f"{dataset}/interactions/part-0000.parquet", f"{dataset}/interactions/part-0001.parquet"]
    batches = list(c.iter_batches(dataset, c.INTERACTIONS, batch_size=3))
    # 4 rows then 2 rows: offsets restart per file, batches of at most 3
    assert [(os.path.basename(p), offset, b.num_rows) for p, offset, b in batches] == [
        ("part-0000.parquet", 0, 3), ("part-0000.parquet", 3, 1), ("part-0001.parquet", 0, 2)]
    items = [i for _, _, b in batches for i in b.column(c.ITEM_ID).to_pylist()]
    assert items == [e[1] for e in EVENTS]


def test_contract_errors_on_a_uri_read_as_locally(dataset, ram):
    with pytest.raises(c.ContractError, match="no users table: expected users.parquet or a "
                                              "folder users/"):
        c.table_path(f"{ram}/empty", c.USERS)
    io.write_text(f"{ram}/broken/users.parquet", "not parquet")
    with pytest.raises(c.ContractError, match="users.parquet: not a readable Parquet file"):
        list(c.iter_batches(f"{ram}/broken", c.USERS))
    tf.io.gfile.makedirs(f"{dataset}/{c.USERS}")
    # an empty folder is no table on an object store (it has no folders, only prefixes)
    assert c.table_files(dataset, c.USERS) == [f"{dataset}/users.parquet"]
    tf.io.gfile.copy(f"{dataset}/users.parquet", f"{dataset}/users/part-0.parquet")
    with pytest.raises(c.ContractError, match="both users.parquet and users/ exist"):
        c.table_path(dataset, c.USERS)


def test_validator_reads_a_uri_and_a_file_uri(dataset, tmp_path):
    report = validate_dataset(dataset, 0.5, tmp_path / "rejects.csv")
    assert {t: (r.rows, r.rejected) for t, r in report.tables.items()} == {
        c.USERS: (2, 0), c.ITEMS: (3, 0), c.INTERACTIONS: (6, 1)}
    rejects = (tmp_path / "rejects.csv").read_text().splitlines()
    assert rejects[1].startswith(f"interactions,{dataset}/interactions/part-0001.parquet,1,")

    local = tmp_path / "local"
    io.copy_tree(dataset, local)
    by_file_uri = validate_dataset(f"file://{local}", 0.5, tmp_path / "r2.csv")
    assert {t: r.rows for t, r in by_file_uri.tables.items()} == {
        c.USERS: 2, c.ITEMS: 3, c.INTERACTIONS: 6}


def _example_gen(dataset: str, config, out: str) -> dict:
    with beam.Pipeline() as p:
        info = write_examples(p, dataset, config, out)
    return info


def test_example_gen_validation_writes_rejects_shards(dataset, tmp_path):
    # Beam's file sinks write the outputs (ram:// is TensorFlow's, not Beam's; gs:// is both)
    out = str(tmp_path / "ContractExampleGen" / "examples" / "1")
    config = from_dict({"data": {"max_bad_share": 0.5}})
    info = _example_gen(dataset, config, out)
    report = check_rejects(info, dataset, config, out)
    assert report.rejects_path == f"{out}/{REJECTS_DIR}/"
    (shard,) = tf.io.gfile.glob(f"{out}/{REJECTS_DIR}/rejects-*.csv")
    lines = io.read_text(shard).splitlines()
    assert lines[0] == "table,file,row,reason"
    assert len(lines) == 2 and "watch_seconds" in lines[1]
    assert lines[1].startswith(f"interactions,{dataset}/interactions/part-0001.parquet,1,")
    # over the limit (1 of 6 interactions > 1%): the message names the URIs as given
    with pytest.raises(TooManyRejects) as failed:
        check_rejects(info, dataset, from_dict({}), out)
    assert f"dataset {dataset}\n" in str(failed.value)
    assert f"rejected rows with file, row and reason: {out}/{REJECTS_DIR}/" in str(failed.value)


def test_example_gen_reads_a_uri(dataset, tmp_path):
    config = from_dict({"data": {"max_bad_share": 0.5, "eval_cutoff": 2500}})
    out = tmp_path / "examples"
    info = _example_gen(dataset, config, str(out))
    assert info["eval_cutoff"] == 2500

    def items(split):
        files = tf.io.gfile.glob(str(out / f"Split-{split}" / "*"))
        records = tf.data.TFRecordDataset(files, compression_type="GZIP")
        return sorted(tf.train.Example.FromString(r.numpy()).features.feature[f.ITEM_ID]
                      .int64_list.value[0] for r in records)

    # positives (>= 120 s) before 2500: user 1 on 10, user 2 on 12; after: user 2 on 11; user
    # 1's 30-second watch is no positive and the bad row was dropped
    assert items(example_lib.TRAIN) == [10, 12]
    assert items(example_lib.EVAL) == [11]
    assert items(example_lib.CATALOGUE) == [10, 11, 12]


# ----------------------------------------------------------------------------- anomaly gate


def test_anomaly_gate_reads_a_uri(ram):
    clean = anomalies_pb2.Anomalies()
    bad = anomalies_pb2.Anomalies()
    info = bad.anomaly_info["device"]
    info.short_description = "Unexpected string values"
    info.reason.add(description="Examples contain values missing from the schema: fridge.")
    with tf.io.gfile.GFile(f"{ram}/clean/Split-eval/{ANOMALIES_FILE}", "wb") as fh:
        fh.write(clean.SerializeToString())
    with tf.io.gfile.GFile(f"{ram}/bad/Split-train/{ANOMALIES_FILE}", "wb") as fh:
        fh.write(bad.SerializeToString())

    check_anomalies(f"{ram}/clean")
    with pytest.raises(AnomaliesFound, match="train: feature 'device': Unexpected string "
                                             "values: Examples contain .*fridge"):
        check_anomalies(f"{ram}/bad")


# ----------------------------------------------------------------------------- toy models


def _save_model(path: str, signature: dict, outputs) -> None:
    module = tf.Module()
    module.fn = tf.function(lambda **kw: outputs(kw))
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.fn.get_concrete_function(**signature)})
    io.write_text(os.path.join(path, "assets.extra", "marquee.json"),
                  json.dumps({"training_run": RUN}))


def _candidate(kw):
    x = tf.cast(kw[f.ITEM_ID], tf.float32)
    return {EMBEDDING: tf.stack([x, tf.ones_like(x)], axis=1)}


def _query(kw):
    ones = tf.ones_like(tf.cast(kw[f.USER_ID], tf.float32))
    return {EMBEDDING: tf.stack([ones, tf.zeros_like(ones)], axis=1)}


def _ranker(kw):
    even = tf.equal(kw[f.ITEM_ID] % 2, 0)
    return {P_WATCH: tf.where(even, 0.8, 0.2),
            WATCH_TIME_SECONDS: tf.where(even, 600.0, 10.0)}


USER = {c.USER_ID: 1, c.COUNTRY: "US", c.SUBSCRIPTION_TIER: "basic", c.AGE_BUCKET: None}


def _item(i: int) -> dict:
    return {c.ITEM_ID: i, c.TITLE: f"t{i}", c.GENRES: [], c.CAST: [], c.DIRECTOR: None,
            c.RELEASE_YEAR: None, c.DURATION_SECONDS: 3600, c.ADDED_AT: 0, c.KEYWORDS: None}


def _watch(item: int, seconds: float, t: int) -> tf.train.Example:
    event = {c.TIMESTAMP: t, c.DEVICE: "tv"}
    return example_lib._example(USER, event, _item(item), [], seconds, 1)


def _write_split(examples_uri: str, split: str, examples: list) -> None:
    path = f"{examples_uri}/Split-{split}/data_tfrecord-00000-of-00001.gz"
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for e in examples:
            w.write(e.SerializeToString())


@pytest.fixture(scope="module")
def run_root():
    """A pipeline root on ram:// with the toy Trainer, RankingTrainer and ExampleGen outputs."""
    root = f"ram://marquee-run-{uuid.uuid4().hex[:8]}"
    serving = f"{root}/Trainer/model/1/Format-Serving"
    _save_model(f"{serving}/query_tower", query_signature(), _query)
    _save_model(f"{serving}/candidate_tower", candidate_signature(), _candidate)
    io.write_text(f"{serving}/{METADATA_FILE}",
                  json.dumps({"training_run": RUN, "popularity": {"10": 3}}))
    _save_model(f"{root}/RankingTrainer/model/2/Format-Serving/ranker", serving_signature(),
                _ranker)
    examples = f"{root}/ContractExampleGen/examples/3"
    _write_split(examples, example_lib.CATALOGUE,
                 [example_lib.catalogue_example(_item(i)) for i in ITEM_IDS])
    _write_split(examples, example_lib.EVAL, [_watch(i, 600.0, 100) for i in (10, 11, 12)])
    _write_split(examples, example_lib.RANK_TRAIN, [_watch(10, 600.0, 10), _watch(11, 0.0, 11)])
    _write_split(examples, example_lib.RANK_EVAL, [
        _watch(10, 600.0, 100), _watch(11, 0.0, 101), _watch(12, 700.0, 102),
        _watch(13, 0.0, 103)])
    yield root
    _remove_files(root)


def _artifact(cls, uri: str, **int_properties):
    artifact = cls()
    artifact.uri = uri
    for key, value in int_properties.items():
        artifact.set_int_custom_property(key, value)
    return artifact


def _index(run_root: str):
    model = _artifact(standard_artifacts.Model, f"{run_root}/Trainer/model/1")
    examples = _artifact(standard_artifacts.Examples, f"{run_root}/ContractExampleGen/examples/3")
    index = _artifact(ScannIndex, f"{run_root}/ScannIndexer/index/{uuid.uuid4().hex[:6]}")
    indexer.Executor().Do({"model": [model], "examples": [examples]}, {"index": [index]},
                          {"config_json": from_dict({}).to_json()})
    return model, index


# ----------------------------------------------------------------------------- ScannIndexer


def test_scann_indexer_reads_and_writes_uris(run_root):
    _, index = _index(run_root)
    uri = index.uri
    # 5 items, brute force below 4,000: recall is exact
    assert index.get_int_custom_property(indexer.BLESSED) == 1
    assert index.get_float_custom_property("recall") == 1.0
    assert {INDEX_FILE, "item_ids.npy", "scann/scann_assets.pbtxt"} <= set(_files(uri))
    loaded = load_index(uri)
    assert loaded.metadata["training_run"] == RUN
    assert loaded.metadata["popularity"] == {"10": 3}
    ids, scores = loaded.search(np.array([1.0, 0.0], np.float32), 2)
    assert ids.tolist() == [14, 13] and scores.tolist() == [14.0, 13.0]


# ----------------------------------------------------------------------------- RankingEvaluator


def test_ranking_evaluator_reads_and_writes_uris(run_root):
    blessing = _artifact(standard_artifacts.ModelBlessing, f"{run_root}/RankingEvaluator/b/5")
    evaluator.Executor().Do(
        {"model": [_artifact(standard_artifacts.Model, f"{run_root}/RankingTrainer/model/2")],
         "examples": [_artifact(standard_artifacts.Examples,
                                f"{run_root}/ContractExampleGen/examples/3")],
         "retrieval_model": [_artifact(standard_artifacts.Model, f"{run_root}/Trainer/model/1")]},
        {"blessing": [blessing]}, {"config_json": from_dict({}).to_json()})

    result = json.loads(io.read_text(f"{blessing.uri}/{evaluator.METRICS_FILE}"))
    everyone = result["candidate_metrics"]["all"]
    # rank_eval: items 10, 12 watched, 11, 13 not; the ranker gives 0.8 / 0.2: perfect order
    assert everyone["examples"] == 4 and everyone["auc"] == 1.0
    assert everyone["log_loss"] == pytest.approx(-np.log(0.8))
    # popularity baseline from rank_train (10 watched, 11 not; prior 10 x rate 0.5):
    # 10 -> 6/11, 11 -> 5/11, unseen 12, 13 -> 0.5; positive/negative pairs won 3.5 of 4
    assert result["baseline_metrics"]["all"]["auc"] == pytest.approx(0.875)
    assert result["blessed"] and blessing.get_int_custom_property("blessed") == 1


# ----------------------------------------------------------------------------- ModelPusher


def _push(run_root: str, model, index, serving_dir: str):
    ranking = _artifact(standard_artifacts.Model, f"{run_root}/RankingTrainer/model/2")
    verdict = _artifact(standard_artifacts.ModelBlessing, f"{run_root}/verdict", blessed=1)
    pushed = _artifact(standard_artifacts.PushedModel,
                       f"{run_root}/ModelPusher/pushed_model/{uuid.uuid4().hex[:6]}")
    pusher.Executor().Do({"model": [model], "index": [index], "ranking_model": [ranking],
                          "ranking_blessing": [verdict]},
                         {"pushed_model": [pushed]}, {"serving_dir": serving_dir})
    return pushed


def _inputs(signature: dict, rows: int) -> dict:
    """Zeros and empty strings of ``rows`` rows for a serving signature (lists of length 1)."""
    out = {}
    for key, spec in signature.items():
        shape = (rows,) + (1,) * (len(spec.shape) - 1)
        out[key] = (np.full(shape, b"", object) if spec.dtype == tf.string
                    else np.zeros(shape, spec.dtype.as_numpy_dtype))
    return out


def test_model_pusher_pushes_to_a_uri_and_serving_loads_it(run_root, tmp_path):
    from serving.models.in_process import InProcessBackend
    from serving.models.index_store import IndexStore

    model, index = _index(run_root)
    base = f"{run_root}/models"
    first = _push(run_root, model, index, base)
    second = _push(run_root, model, index, base)

    v1, v2 = (p.get_int_custom_property("pushed_version") for p in (first, second))
    assert v2 > v1
    for name in push_lib.SAVED_MODELS + (push_lib.RETRIEVAL_INDEX,):
        # written in place: no temporary names on an object store
        assert io.list_dir(f"{base}/{name}") == sorted([str(v1), str(v2)])
    assert tf.io.gfile.exists(f"{base}/ranker/{v2}/variables/variables.index")
    assert json.loads(io.read_text(f"{first.uri}/push.json"))["training_run"] == RUN
    log = [json.loads(line) for line in io.read_text(f"{base}/{push_lib.PUSH_LOG}").splitlines()]
    assert [r["version"] for r in log] == [v1, v2]
    config = text_format.Parse(io.read_text(f"{base}/{push_lib.MODEL_CONFIG_FILE}"),
                               model_server_config_pb2.ModelServerConfig())
    assert [(m.name, m.base_path) for m in config.model_config_list.config] == [
        (m, f"{base}/{m}") for m in push_lib.SAVED_MODELS]

    # serving reads a local model volume: sync the pushed tree down and serve from it
    local = tmp_path / "models"
    io.copy_tree(base, local)
    backend = InProcessBackend(local)
    query = _inputs(query_signature(), 1)
    embeddings, version = backend.query_embeddings(query, 1.0)
    assert version == v2 and embeddings.tolist() == [[1.0, 0.0]]
    ids, _ = IndexStore(local).get(version).search(embeddings[0], 3)
    assert ids.tolist() == [14, 13, 12]
    pairs = _inputs(serving_signature(), 2)
    pairs[f.ITEM_ID] = np.array([10, 11], np.int64)
    pairs["retrieval_score"] = np.array([10.0, 11.0], np.float32)
    scores = backend.rank(pairs, 1.0)
    np.testing.assert_allclose(scores[P_WATCH], [0.8, 0.2])
