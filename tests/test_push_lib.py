"""The Pusher's plain function: blessing gate, versions, TF Serving config, atomic layout."""

import json

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components.model_pusher import push_lib


def _model(tmp_path):
    src = tmp_path / "model"
    for m in push_lib.SAVED_MODELS:
        (src / m / "variables").mkdir(parents=True)
        (src / m / "saved_model.pb").write_bytes(b"pb")
    index = tmp_path / "index"
    index.mkdir()
    (index / "index.json").write_text("{}")
    return src, index


def test_not_blessed_pushes_nothing(tmp_path):
    src, index = _model(tmp_path)
    result = push_lib.push(src, index, blessed=False, base=tmp_path / "serving",
                           training_run="r1")
    assert not result.pushed and result.version is None
    assert not (tmp_path / "serving").exists()


def test_push_layout_versions_and_log(tmp_path):
    src, index = _model(tmp_path)
    base = tmp_path / "serving"
    first = push_lib.push(src, index, True, base, "r1", now=1000,
                          ranker_dir=src / "ranker", ranker_blessed=True)
    # the clock going backwards (or two pushes in one second) still gives a newer version
    second = push_lib.push(src, index, True, base, "r2", now=900,
                           ranker_dir=src / "ranker", ranker_blessed=True)
    assert (first.version, second.version) == (1000, 1001)
    for m in push_lib.SAVED_MODELS + (push_lib.RETRIEVAL_INDEX,):
        assert push_lib.versions(base / m) == [1000, 1001]
    assert (base / "query_tower" / "1001" / "saved_model.pb").read_bytes() == b"pb"
    assert not list(base.rglob(".*.tmp"))
    log = [json.loads(line) for line in (base / push_lib.PUSH_LOG).read_text().splitlines()]
    assert [(r["version"], r["training_run"]) for r in log] == [(1000, "r1"), (1001, "r2")]


def test_model_config_is_tf_servings_format(tmp_path):
    src, index = _model(tmp_path)
    base = tmp_path / "serving"
    push_lib.push(src, index, True, base, "r1", now=5,
                  ranker_dir=src / "ranker", ranker_blessed=True)
    config = text_format.Parse((base / push_lib.MODEL_CONFIG_FILE).read_text(),
                               model_server_config_pb2.ModelServerConfig())
    names = [m.name for m in config.model_config_list.config]
    assert names == list(push_lib.SAVED_MODELS)
    assert all(m.base_path.startswith(str(base.resolve())) for m in
               config.model_config_list.config)


def test_missing_saved_model_is_a_clear_error(tmp_path):
    src, index = _model(tmp_path)
    (src / "candidate_tower" / "saved_model.pb").unlink()
    with pytest.raises(FileNotFoundError, match="candidate_tower: no saved_model.pb"):
        push_lib.push(src, index, True, tmp_path / "serving", "r1")


def test_unblessed_ranker_is_not_pushed_but_blessed_towers_are(tmp_path):
    src, index = _model(tmp_path)
    base = tmp_path / "serving"
    result = push_lib.push(src, index, True, base, "r1", now=7,
                           ranker_dir=src / "ranker", ranker_blessed=False)
    assert result.pushed and set(result.paths) == {"query_tower", "candidate_tower",
                                                   "retrieval_index"}
    assert "the ranker was not blessed" in result.reason
    assert not (base / "ranker").exists()
    config = text_format.Parse((base / push_lib.MODEL_CONFIG_FILE).read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert [m.name for m in config.model_config_list.config] == ["query_tower",
                                                                "candidate_tower"]
    # and nothing blessed -> nothing pushed at all
    none = push_lib.push(src, index, False, tmp_path / "other", "r2",
                         ranker_dir=src / "ranker", ranker_blessed=False)
    assert not none.pushed and not (tmp_path / "other").exists()


def test_als_is_pushed_with_the_towers_only(tmp_path):
    src, index = _model(tmp_path)
    als = tmp_path / "als"
    als.mkdir()
    (als / "item_factors.npy").write_bytes(b"f")
    base = tmp_path / "serving"
    with pytest.raises(FileNotFoundError, match="no als.json; the AlsTrainer's model folder"):
        push_lib.push(src, index, True, base, "r1", now=10, als_dir=als)
    assert not base.exists()  # checked before anything is copied
    (als / "als.json").write_text("{}")
    pushed = push_lib.push(src, index, True, base, "r1", now=11, als_dir=als)
    assert "als" in pushed.paths and push_lib.versions(base / push_lib.ALS) == [pushed.version]
    assert (base / "als" / str(pushed.version) / "item_factors.npy").read_bytes() == b"f"
    # the next version number counts the ALS folder too
    assert push_lib.next_version(base, now=0) == pushed.version + 1
    # not blessed: the towers, the index and the ALS model all stay out
    skipped = push_lib.push(src, index, False, tmp_path / "other", "r2", als_dir=als)
    assert not skipped.pushed and not (tmp_path / "other").exists()
