"""The model backend contract (``serving/models/backends.py``) on every backend: in-process,
gRPC (the development model server on loopback), unavailable and the test double; in-process
and gRPC parity; and how both follow pushed versions: complete ones only, one version per page.

The models are tiny SavedModels with the real signatures (``trainer.retrieval``,
``trainer.ranking``), pushed by the real Pusher (``push_lib.push``). Version v answers, by hand:

    query tower      user u                     -> [v, u]
    candidate tower  item i                     -> [i, v]
    ranker           (user, item i, score s)    -> p_watch = v / (v + i),
                                                   watch_time_seconds = s + 100 v

so user u's retrieval score of item i is v * (i + u), and every answer shows its version. The
index of version v holds the candidate tower's embeddings of the 12 titles of
``tests/test_homepage.py``'s catalogue; the towers and the index of v are of training run "run-v".
"""

import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.model_pusher import push_lib
from components.scann_indexer.index_lib import build_and_evaluate, save_index
from marquee import io
from marquee.artifacts import (
    CANDIDATE_TOWER,
    EMBEDDING,
    EXPORT_INFO,
    KNOWN,
    MODEL_CONFIG_FILE,
    P_WATCH,
    PUSH_LOG,
    QUERY_TOWER,
    RANK_BY_ID,
    RANKER,
    RETRIEVAL_INDEX,
    RETRIEVAL_SCORE,
    SAVED_MODEL_FILE,
    SAVED_MODELS,
    SIGNATURE,
    WATCH_TIME_SECONDS,
)
from marquee.config import IndexConfig
from marquee.dev.model_server import ModelServer
from marquee.retrieval_index import INDEX_FILE
from serving.models.backends import UnavailableBackend
from serving.models.errors import MODEL_ERRORS
from serving.models.grpc import GrpcBackend
from serving.models.in_process import InProcessBackend
from serving.models.index_store import IndexStore
from serving.models.query import QueryFeatures, query_inputs
from serving.models.versions import complete_versions, has_ranker, incomplete_versions
from tests.test_homepage import FULL, QUERY, FixedModelBackend, catalogue, make
from trainer import features as f
from trainer.ranking import by_id_signature, serving_signature
from trainer.retrieval import candidate_signature, query_signature

TIMEOUT_S = 10.0
# The toy ranker's by-id table: titles 1..10. Version 2's ranker has no by-id signature
# (as one exported before it existed).
TABLE = 10
NOT_PUSHED = 99
# How fast the backends look for new versions here (seconds): the in-process check and retry,
# the gRPC backend's check and the model server's poll.
CHECK_S, RETRY_S, POLL_S = 0.05, 0.2, 0.1
WAIT_S = 20.0  # the bound on picking up a version (it takes well under a second here)
STAY_S = 0.4  # how long a version not to be picked up is watched: many checks and polls


# ----------------------------------------------------------------------------- the models


def run(version: int) -> str:
    return f"run-{version}"


def _save(path: Path, signature: dict, outputs, version: int, by_id=None) -> None:
    module = tf.Module()
    module.fn = tf.function(lambda **kw: outputs(kw))
    signatures = {SIGNATURE: module.fn.get_concrete_function(**signature)}
    if by_id is not None:
        module.by_id = tf.function(lambda **kw: by_id(kw))
        signatures[RANK_BY_ID] = module.by_id.get_concrete_function(**by_id_signature())
    tf.saved_model.save(module, str(path), signatures=signatures)
    io.write_text(path.joinpath(*EXPORT_INFO), json.dumps(
        {"training_run": run(version), "signatures": sorted(signatures)}))


def _column(x, v: float) -> tf.Tensor:
    return tf.fill(tf.shape(x), v)


def save_version(root: Path, v: int) -> None:
    """Version ``v`` of the toy models as the Trainer, RankingTrainer and ScannIndexer leave
    them: ``serving/{query,candidate}_tower``, ``ranker``, ``index``."""
    _save(root / "serving" / QUERY_TOWER, query_signature(), lambda kw: {EMBEDDING: tf.stack(
        [_column(kw[f.USER_ID], float(v)), tf.cast(kw[f.USER_ID], tf.float32)], axis=1)}, v)
    _save(root / "serving" / CANDIDATE_TOWER, candidate_signature(), lambda kw: {
        EMBEDDING: tf.stack([tf.cast(kw[f.ITEM_ID], tf.float32),
                             _column(kw[f.ITEM_ID], float(v))], axis=1)}, v)
    ranker = lambda kw: {  # noqa: E731
        P_WATCH: v / (v + tf.cast(kw[f.ITEM_ID], tf.float32)),
        WATCH_TIME_SECONDS: kw[RETRIEVAL_SCORE] + 100.0 * v}
    # By id, the toy's table holds titles 1..TABLE; any other id scores 0.5 and is not known.
    by_id = lambda kw: {  # noqa: E731
        **{k: tf.where(kw[f.ITEM_ID] <= TABLE, x, 0.5 if k == P_WATCH else 0.0)
           for k, x in ranker(kw).items()}, KNOWN: kw[f.ITEM_ID] <= TABLE}
    _save(root / "ranker", serving_signature(), ranker, v, by_id=by_id if v != 2 else None)
    ids = catalogue().item_ids
    items = Toy(v).candidates({f.ITEM_ID: ids})
    searcher, evaluation = build_and_evaluate(items, ids, items[:3], IndexConfig())
    save_index(searcher, ids, evaluation, root / "index", {"training_run": run(v)})


@dataclasses.dataclass(frozen=True)
class Toy:
    """Version ``version`` of the toy models in numpy (the module docstring)."""

    version: int

    def query(self, inputs) -> np.ndarray:
        u = np.asarray(inputs[f.USER_ID], np.float32)
        return np.stack([np.full_like(u, self.version), u], axis=1)

    def candidates(self, inputs) -> np.ndarray:
        i = np.asarray(inputs[f.ITEM_ID], np.float32)
        return np.stack([i, np.full_like(i, self.version)], axis=1)

    def rank(self, inputs) -> dict[str, np.ndarray]:
        i = np.asarray(inputs[f.ITEM_ID], np.float32)
        return {P_WATCH: self.version / (self.version + i),
                WATCH_TIME_SECONDS: np.asarray(inputs[RETRIEVAL_SCORE]) + 100.0 * self.version}


@dataclasses.dataclass(frozen=True)
class Double:
    """What ``tests.test_homepage.FixedModelBackend`` answers: QUERY for everyone, as version 1;
    p_watch = sigmoid(item_id - 6), watch time 60 s per id."""

    version: int = 1

    def query(self, inputs) -> np.ndarray:
        return np.tile(QUERY, (len(inputs[f.USER_ID]), 1))

    def candidates(self, inputs) -> np.ndarray:
        """Title i embeds to ``[i / 10, 0, 0, 1]``, worked out by hand."""
        i = np.asarray(inputs[f.ITEM_ID], np.float32)
        return np.stack([i / 10, 0 * i, 0 * i, 0 * i + 1], axis=1)

    def rank(self, inputs) -> dict[str, np.ndarray]:
        i = np.asarray(inputs[f.ITEM_ID], np.float64)
        return {P_WATCH: 1 / (1 + np.exp(-(i - 6))), WATCH_TIME_SECONDS: 60 * i}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    for v in (1, 2, 3):
        save_version(root / str(v), v)
    return root


def push(zoo: Path, base: Path, version: int, ranker: bool = True) -> None:
    """The real Pusher: the towers and the index of ``version``, and its ranker if ``ranker``."""
    src = zoo / str(version)
    result = push_lib.push(src / "serving", src / "index", True, base, run(version),
                           now=version, ranker_dir=src / "ranker", ranker_blessed=ranker)
    assert result.version == version, result


# ----------------------------------------------------------------------------- the inputs

USERS = (1, 2, 7)
ITEMS = (1, 2, 3, 12)


def queries(users=USERS) -> dict[str, np.ndarray]:
    """The query tower's inputs for ``users`` (B = len(users))."""
    return {k: v.numpy() for k, v in query_inputs(
        [QueryFeatures(user_id=u, timestamp=1_700_000_000 + 3600 * u, device="tv",
                       country="US", history=tuple(range(1, u + 1))) for u in users], 5).items()}


def titles(items=ITEMS) -> dict[str, np.ndarray]:
    """The candidate tower's inputs for ``items`` of the catalogue (N = len(items))."""
    cat = catalogue()
    return cat.candidate_inputs(cat.rows(items))


def pairs(user: int = 1, items=ITEMS) -> dict[str, np.ndarray]:
    """The ranker's inputs: ``user`` with each of ``items``, retrieval scores 0.5, 1.5, ..."""
    out = {k: np.repeat(v, len(items), axis=0) for k, v in queries((user,)).items()}
    out.update(titles(items))
    out[RETRIEVAL_SCORE] = np.arange(len(items), dtype=np.float32) + 0.5
    return out


# ----------------------------------------------------------------------------- the contract


class BackendContract:
    """What every ``ModelBackend`` does. A test class per backend inherits it and provides the
    ``backend`` fixture and ``MODEL``: the numpy reference of the version it serves (None: it
    serves nothing, so every call is refused with one of ``MODEL_ERRORS``)."""

    MODEL: Toy | Double | None = None

    def test_query_tower_embeds_a_batch_as_the_serving_version(self, backend):
        version = backend.serving_version()
        if self.MODEL is None:
            assert version is None
            with pytest.raises(MODEL_ERRORS):
                backend.query_embeddings(queries(), TIMEOUT_S)
            return
        embeddings, answered = backend.query_embeddings(queries(), TIMEOUT_S)
        assert isinstance(answered, int) and answered == version == self.MODEL.version
        embeddings = np.asarray(embeddings)
        assert embeddings.shape == (len(USERS), embeddings.shape[1]) and embeddings.shape[1] > 0
        assert np.issubdtype(embeddings.dtype, np.floating)
        np.testing.assert_allclose(embeddings, self.MODEL.query(queries()), rtol=1e-6)

    def test_ranker_scores_n_pairs_of_the_version_asked(self, backend):
        version = backend.serving_version()
        if self.MODEL is None:
            assert not backend.has_ranker()
            for asked in (None, 1):
                with pytest.raises(MODEL_ERRORS):
                    backend.rank(pairs(), TIMEOUT_S, asked)
            return
        assert backend.has_ranker(version) and backend.has_ranker()  # None: the serving one
        out = backend.rank(pairs(), TIMEOUT_S, version)
        assert set(out) == {P_WATCH, WATCH_TIME_SECONDS}
        p, seconds = np.asarray(out[P_WATCH]), np.asarray(out[WATCH_TIME_SECONDS])
        assert p.shape == seconds.shape == (len(ITEMS),)
        assert ((p > 0) & (p < 1)).all()
        expected = self.MODEL.rank(pairs())
        np.testing.assert_allclose(p, expected[P_WATCH], rtol=1e-6)
        np.testing.assert_allclose(seconds, expected[WATCH_TIME_SECONDS], rtol=1e-6)
        np.testing.assert_allclose(backend.rank(pairs(), TIMEOUT_S)[P_WATCH], p)  # None: newest

    def test_ranker_by_id_flags_the_ids_its_table_lacks(self, backend):
        version = backend.serving_version()
        if self.MODEL is None or not isinstance(self.MODEL, Toy):
            assert not backend.ranks_by_id()
            return
        assert backend.ranks_by_id(version) and backend.ranks_by_id()
        inputs = {**queries((1,)), f.ITEM_ID: np.array(ITEMS, np.int64),
                  RETRIEVAL_SCORE: pairs()[RETRIEVAL_SCORE]}
        out = backend.rank_by_id(inputs, TIMEOUT_S, version)
        assert np.asarray(out[KNOWN]).tolist() == [i <= TABLE for i in ITEMS]  # 12 is not
        known = np.asarray(out[KNOWN])
        expected = self.MODEL.rank(pairs())
        np.testing.assert_allclose(np.asarray(out[P_WATCH])[known], expected[P_WATCH][known],
                                   rtol=1e-6)

    def test_candidate_tower_embeds_n_titles_of_the_version_asked(self, backend):
        if self.MODEL is None:
            with pytest.raises(MODEL_ERRORS):
                backend.candidate_embeddings(titles(), 1, TIMEOUT_S)
            return
        version = backend.serving_version()
        embeddings = np.asarray(backend.candidate_embeddings(titles(), version, TIMEOUT_S))
        query, _ = backend.query_embeddings(queries(), TIMEOUT_S)
        assert embeddings.shape == (len(ITEMS), np.asarray(query).shape[1])
        np.testing.assert_allclose(embeddings, self.MODEL.candidates(titles()), rtol=1e-6)

    def test_a_version_not_served_is_refused_with_a_model_error(self, backend):
        assert not backend.has_ranker(NOT_PUSHED)
        with pytest.raises(MODEL_ERRORS):
            backend.rank(pairs(), TIMEOUT_S, NOT_PUSHED)
        with pytest.raises(MODEL_ERRORS):
            backend.candidate_embeddings(titles(), NOT_PUSHED, TIMEOUT_S)


@pytest.fixture(scope="module")
def base(zoo, tmp_path_factory) -> Path:
    """A model base with version 1 pushed (with its ranker); never changed."""
    base = tmp_path_factory.mktemp("models")
    push(zoo, base, 1)
    return base


@pytest.fixture(scope="module")
def model_server(base):
    with ModelServer(base, host="127.0.0.1", poll_seconds=POLL_S) as server:
        yield server


@pytest.fixture(scope="module")
def in_process(base):
    return InProcessBackend(base)


@pytest.fixture(scope="module")
def grpc_backend(base, model_server):
    return GrpcBackend(model_server.address, base)


class TestInProcess(BackendContract):
    MODEL = Toy(1)

    @pytest.fixture
    def backend(self, in_process):
        return in_process


class TestGrpc(BackendContract):
    MODEL = Toy(1)

    @pytest.fixture
    def backend(self, grpc_backend):
        return grpc_backend


class TestUnavailable(BackendContract):
    MODEL = None

    @pytest.fixture
    def backend(self):
        return UnavailableBackend("no model loaded from /models: nothing pushed")


class TestFixedModelBackend(BackendContract):
    MODEL = Double()

    @pytest.fixture
    def backend(self):
        return FixedModelBackend()


def test_in_process_and_grpc_give_the_same_answers(base, model_server):
    local, remote = InProcessBackend(base), GrpcBackend(model_server.address, base)
    users, items = (3, 1, 4, 15, 9), tuple(range(1, 13))
    (a, va), (b, vb) = (x.query_embeddings(queries(users), TIMEOUT_S) for x in (local, remote))
    assert va == vb == 1
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a[3], [1.0, 15.0])  # user 15, version 1
    ra, rb = (x.rank(pairs(4, items), TIMEOUT_S, 1) for x in (local, remote))
    for key in (P_WATCH, WATCH_TIME_SECONDS):
        np.testing.assert_allclose(ra[key], rb[key], rtol=1e-6)
    assert ra[P_WATCH][[0, 3]] == pytest.approx([1 / 2, 1 / 5])  # items 1 and 4: 1 / (1 + i)
    ca, cb = (x.candidate_embeddings(titles(items), 1, TIMEOUT_S) for x in (local, remote))
    np.testing.assert_allclose(ca, cb, rtol=1e-6)
    np.testing.assert_allclose(ca[11], [12.0, 1.0])


def test_a_ranker_without_the_by_id_signature_is_ranked_from_features(zoo, tmp_path):
    push(zoo, tmp_path, 2)
    backend = InProcessBackend(tmp_path)
    assert backend.has_ranker(2) and not backend.ranks_by_id(2)
    with pytest.raises(MODEL_ERRORS, match="no 'rank_by_id' signature"):
        backend.rank_by_id({**queries((1,)), f.ITEM_ID: np.array(ITEMS, np.int64),
                            RETRIEVAL_SCORE: pairs()[RETRIEVAL_SCORE]}, TIMEOUT_S, 2)
    with ModelServer(tmp_path, host="127.0.0.1", poll_seconds=POLL_S) as server:
        remote = GrpcBackend(server.address, tmp_path)
        deadline = time.monotonic() + WAIT_S
        while remote.serving_version() is None and time.monotonic() < deadline:
            time.sleep(CHECK_S)
        assert remote.has_ranker(2) and not remote.ranks_by_id(2)


def test_grpc_without_a_model_server_raises_model_errors(base):
    backend = GrpcBackend("127.0.0.1:1", base, timeout_s=0.2)  # nothing listens on port 1
    assert backend.serving_version() is None and not backend.has_ranker()
    for call in (lambda: backend.query_embeddings(queries(), 0.2),
                 lambda: backend.rank(pairs(), 0.2), lambda: backend.rank(pairs(), 0.2, 1),
                 lambda: backend.candidate_embeddings(titles(), 1, 0.2)):
        with pytest.raises(MODEL_ERRORS, match="UNAVAILABLE"):
            call()


# ----------------------------------------------------------------------------- versions on disk


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


def _lay_out(base: Path, version: int, models=(QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX),
             without=()) -> None:
    """Folders of ``models`` of ``version``, each with the file marking it whole unless in
    ``without`` (then with another file only: a copy under way)."""
    for m in models:
        _touch(base / m / str(version) / "variables" / "variables.index")
        if m not in without:
            _touch(base / m / str(version) / (INDEX_FILE if m == RETRIEVAL_INDEX
                                              else SAVED_MODEL_FILE))


def test_without_a_push_log_a_version_is_complete_when_its_files_are(tmp_path):
    _lay_out(tmp_path, 1)
    _lay_out(tmp_path, 2, without=(CANDIDATE_TOWER,))
    _lay_out(tmp_path, 3, (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX, RANKER))
    _lay_out(tmp_path, 4, (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX, RANKER),
             without=(RANKER,))  # its ranker is still being copied
    _lay_out(tmp_path, 5, (QUERY_TOWER, CANDIDATE_TOWER))  # no index
    assert complete_versions(tmp_path) == [1, 3]
    assert incomplete_versions(tmp_path) == [2, 4, 5]
    assert has_ranker(tmp_path, 3) and not has_ranker(tmp_path, 1)


def test_with_a_push_log_a_version_is_complete_once_its_push_is_recorded(tmp_path, caplog):
    everything = (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX, RANKER)
    _lay_out(tmp_path, 1)
    for v in (2, 3, 4):
        _lay_out(tmp_path, v, everything)
    _lay_out(tmp_path, 5, (QUERY_TOWER, CANDIDATE_TOWER, RETRIEVAL_INDEX))  # ranker not yet
    records = [{"version": 1, "models": [CANDIDATE_TOWER, QUERY_TOWER, RETRIEVAL_INDEX]},
               {"version": 2, "models": list(everything)},
               {"version": 3, "models": [RANKER]}]  # a ranker-only push: no towers of its run
    (tmp_path / PUSH_LOG).write_text("".join(json.dumps(r) + "\n" for r in records)
                                     + '{"version": 4, "mod\n')  # a broken line: named, skipped
    # 4 and 5: on disk, not recorded (their pushes are under way)
    assert complete_versions(tmp_path) == [1, 2]
    assert f"{PUSH_LOG} line 4 is not a push record" in caplog.text
    (tmp_path / RANKER / "2" / SAVED_MODEL_FILE).unlink()  # a recorded model must be whole
    assert complete_versions(tmp_path) == [1]


def test_an_index_that_cannot_be_loaded_is_a_model_error(tmp_path):
    _lay_out(tmp_path, 1, (QUERY_TOWER, RETRIEVAL_INDEX), without=(RETRIEVAL_INDEX,))
    with pytest.raises(MODEL_ERRORS, match="holds no index.json"):
        IndexStore(tmp_path).get(1)
    assert IndexStore(tmp_path).popularity() == {}
    (tmp_path / RETRIEVAL_INDEX / "1" / INDEX_FILE).write_text('{"format_version": 0}')
    with pytest.raises(MODEL_ERRORS, match="format_version 0"):  # not a ValueError (a bug)
        IndexStore(tmp_path).get(1)


# ----------------------------------------------------------------------------- new versions


def eventually(condition, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.02)


def answers(backend, version: int) -> bool:
    """Whether ``backend`` serves ``version`` whole: its version, the query tower's answer and
    the version's ranker (if it has one) and candidate tower."""
    if backend.serving_version() != version:
        return False
    try:
        embeddings, answered = backend.query_embeddings(queries(), TIMEOUT_S)
        if backend.has_ranker(version):
            backend.rank(pairs(), TIMEOUT_S, version)
        backend.candidate_embeddings(titles(), version, TIMEOUT_S)
    except MODEL_ERRORS:
        return False
    np.testing.assert_allclose(embeddings, Toy(answered).query(queries()))
    return answered == version


def serves_only(backend, version: int) -> None:
    """``backend`` keeps answering with ``version`` (and its ranker) for ``STAY_S``."""
    deadline = time.monotonic() + STAY_S
    while time.monotonic() < deadline:
        assert backend.serving_version() == version
        embeddings, answered = backend.query_embeddings(queries(), TIMEOUT_S)
        assert answered == version
        np.testing.assert_allclose(embeddings, Toy(version).query(queries()))
        p = backend.rank(pairs(), TIMEOUT_S, version)[P_WATCH]
        np.testing.assert_allclose(p, Toy(version).rank(pairs())[P_WATCH], rtol=1e-6)
        time.sleep(0.02)


def two_newest_config(base: Path) -> Path:
    """A TF Serving model config serving the two newest versions of each SavedModel of
    ``base``: while a push is under way the previous version stays loaded beside the new
    one's first models. (The Pusher's own ``models.config`` serves the newest only; see
    ``test_grpc_with_the_pushers_model_config_serves_through_a_push``.)"""
    path = base.parent / "two-newest.config"
    path.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{m}" base_path: "{base / m}" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 2 } } }\n" for m in SAVED_MODELS) + "}\n")
    return path


@pytest.fixture(params=["in_process", "grpc"])
def follow(request, tmp_path):
    """(model base, a function making a backend of this kind over it that checks for new
    versions every ``CHECK_S``); the gRPC one talks to a model server polling every
    ``POLL_S`` (:func:`two_newest_config`), started on the first call."""
    base = tmp_path / "models"
    servers = []

    def backend():
        if request.param == "in_process":
            return InProcessBackend(base, check_every_s=CHECK_S, retry_s=RETRY_S)
        servers.append(ModelServer(model_config_file=two_newest_config(base), host="127.0.0.1",
                                   poll_seconds=POLL_S).start())
        return GrpcBackend(servers[-1].address, base, check_every_s=CHECK_S)

    yield base, backend
    for server in servers:
        server.stop()


def test_a_pushed_version_is_followed(zoo, follow):
    base, make_backend = follow
    push(zoo, base, 1)
    backend = make_backend()
    assert answers(backend, 1)
    push(zoo, base, 2)
    eventually(lambda: answers(backend, 2), "version 2 served")
    np.testing.assert_allclose(backend.query_embeddings(queries((7,)), TIMEOUT_S)[0], [[2, 7]])
    out = backend.rank(pairs(items=(2, 6)), TIMEOUT_S, 2)
    np.testing.assert_allclose(out[P_WATCH], [2 / 4, 2 / 8])
    np.testing.assert_allclose(out[WATCH_TIME_SECONDS], [200.5, 201.5])
    np.testing.assert_allclose(backend.candidate_embeddings(titles((3,)), 2, TIMEOUT_S), [[3, 2]])


@contextlib.contextmanager
def push_held(monkeypatch, zoo: Path, base: Path, version: int, model: str, begun: bool):
    """The real Pusher pushing ``version`` in a thread, held while ``model`` is being copied:
    ``begun``: its folder is there without the file a loader opens first (an object store's
    copy); else not there yet (a local push copies it under a temporary name). The push ends
    when the block does."""
    held, release, failed = threading.Event(), threading.Event(), []
    publish = io.publish_tree

    def publish_tree(src, dest, last):
        if Path(dest).parent.name != model:
            return publish(src, dest, last)
        if begun:
            shutil.copytree(src, dest, ignore=lambda d, names: [last] if Path(d) == Path(src)
                            else [])
        held.set()
        release.wait(WAIT_S)
        if not begun:
            return publish(src, dest, last)
        shutil.copy(Path(src, last), Path(dest, f".{last}.tmp"))
        os.replace(Path(dest, f".{last}.tmp"), Path(dest, last))

    def run_push():
        try:
            push(zoo, base, version)
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread below
            failed.append(e)
            held.set()

    monkeypatch.setattr(push_lib.io, "publish_tree", publish_tree)
    thread = threading.Thread(target=run_push, name=f"push-{version}")
    thread.start()
    assert held.wait(WAIT_S) and not failed, failed
    try:
        yield
    finally:
        release.set()
        thread.join(WAIT_S)
    assert not failed, failed


@pytest.mark.parametrize(("model", "begun"), [
    (QUERY_TOWER, True),  # its query tower folder without saved_model.pb
    (RANKER, True),  # towers and index there, the ranker's folder without saved_model.pb
    (RANKER, False),  # towers and index there, the ranker not yet
], ids=["query-tower-half-copied", "ranker-half-copied", "ranker-not-yet"])
def test_a_push_under_way_is_picked_up_only_once_complete(zoo, follow, monkeypatch, model,
                                                          begun):
    base, make_backend = follow
    push(zoo, base, 1)
    push(zoo, base, 2)
    backend = make_backend()
    assert answers(backend, 2)
    with push_held(monkeypatch, zoo, base, 3, model, begun):
        serves_only(backend, 2)
    eventually(lambda: answers(backend, 3), "version 3 served once its push completed")
    assert backend.has_ranker(3)  # not served without the ranker that was still coming
    np.testing.assert_allclose(backend.rank(pairs(items=(3,)), TIMEOUT_S, 3)[P_WATCH], [0.5])


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_version_that_fails_to_load_is_retried_until_it_loads(zoo, follow, request):
    """A complete version whose query tower cannot be loaded yet (its saved_model.pb cut
    short, as a copy that is not the Pusher's can leave it) is refused and retried later,
    while the previous version keeps serving; once repaired it is served."""
    base, make_backend = follow
    push(zoo, base, 2)
    backend = make_backend()
    assert answers(backend, 2)
    staged = base.parent / "staged"
    push(zoo, staged, 3)
    pb = staged / QUERY_TOWER / "3" / SAVED_MODEL_FILE
    whole = pb.read_bytes()
    pb.write_bytes(whole[: len(whole) // 2])
    for m in (RANKER, CANDIDATE_TOWER, RETRIEVAL_INDEX, QUERY_TOWER):  # then the push log
        os.rename(staged / m / "3", base / m / "3")
    _write_atomically(base / PUSH_LOG, (base / PUSH_LOG).read_bytes()
                      + (staged / PUSH_LOG).read_bytes())
    serves_only(backend, 2)
    _write_atomically(base / QUERY_TOWER / "3" / SAVED_MODEL_FILE, whole)
    eventually(lambda: answers(backend, 3), "version 3 served once loadable", timeout_s=3.0)


def test_grpc_with_the_pushers_model_config_serves_through_a_push(zoo, tmp_path, monkeypatch):
    base = tmp_path / "models"
    push(zoo, base, 1)
    push(zoo, base, 2)
    with ModelServer(model_config_file=base / MODEL_CONFIG_FILE, host="127.0.0.1",
                     poll_seconds=POLL_S) as server:
        backend = GrpcBackend(server.address, base, check_every_s=CHECK_S)
        assert answers(backend, 2)
        with push_held(monkeypatch, zoo, base, 3, RANKER, begun=False):
            serves_only(backend, 2)


def test_a_version_pushed_without_a_ranker_pages_without_one(zoo, follow):
    """Version 2 comes without a ranker while version 1 had one: version 2's pages are
    ranked by the blend without a ranker, never by version 1's."""
    base, make_backend = follow
    push(zoo, base, 1)
    backend = make_backend()
    service = make(base, backend)
    assert service.homepage(FULL).model_version == 1
    push(zoo, base, 2, ranker=False)
    eventually(lambda: answers(backend, 2), "version 2 served")
    assert not backend.has_ranker(2) and not backend.has_ranker()
    for asked in (2, None):
        with pytest.raises(MODEL_ERRORS):
            backend.rank(pairs(), TIMEOUT_S, asked)
    page = service.homepage(FULL)
    assert page.model_version == 2 and not page.fallback and page.degraded is None, page
    picks = [p for p in page.items if not p.explore]
    assert picks and all(p.p_watch is None for p in page.items)
    for p in picks:  # user 1 (FULL): version 2's score 2 * (i + 1)
        assert p.retrieval_score == pytest.approx(2 * (p.item_id + 1))


def test_the_rank_step_scores_titles_the_by_id_table_lacks_from_their_features(zoo, follow):
    """Version 1 ranks by id; titles 11 and 12 are not in its table (added after training):
    the rank step scores them again from their features, so every title gets 1 / (1 + i)."""
    base, make_backend = follow
    push(zoo, base, 1)
    backend = make_backend()
    service = make(base, backend)
    page = service.homepage(FULL)
    assert backend.ranks_by_id(1)
    ids = list(range(1, 13))
    out = service.ranking.score(queries((1,)), ids, np.zeros(len(ids), np.float32), TIMEOUT_S, 1)
    np.testing.assert_allclose(out[P_WATCH], [1 / (1 + i) for i in ids], rtol=1e-6)
    assert out[KNOWN].tolist() == [i <= TABLE for i in ids]
    ranked = [p for p in page.items if p.p_watch is not None]
    assert ranked and all(p.p_watch == pytest.approx(1 / (1 + p.item_id)) for p in ranked)


def test_the_page_cache_hits_again_after_a_push(zoo, follow):
    base, make_backend = follow
    push(zoo, base, 1)
    backend = make_backend()
    service = make(base, backend)
    first, again = service.homepage(FULL), service.homepage(FULL)
    assert (first.model_version, first.cached, again.cached) == (1, False, True)
    push(zoo, base, 2)
    eventually(lambda: answers(backend, 2), "version 2 served")
    first, again = service.homepage(FULL), service.homepage(FULL)
    assert (first.model_version, first.cached) == (2, False)
    assert (again.model_version, again.cached) == (2, True)
    ranked = [p for p in first.items if p.p_watch is not None]
    assert ranked and all(p.p_watch == pytest.approx(2 / (2 + p.item_id)) for p in ranked)


def test_a_server_started_before_the_first_push_serves_it_once_pushed(zoo, tmp_path,
                                                                      monkeypatch):
    """``marquee serve`` before any push: pages come from the sources that need no model
    (degraded, saying why) until a push loads, then the models answer, without a restart."""
    import dataclasses

    from marquee.config import Config, ServingConfig
    from serving.build import build_service
    from serving.models.backends import WaitingBackend
    from tests.test_homepage import GENEROUS, catalogue, interactions, users

    monkeypatch.setattr(WaitingBackend, "RETRY_S", 0.2)
    base = tmp_path / "models"
    base.mkdir()
    serving = ServingConfig(k=6, **GENEROUS)
    serving = dataclasses.replace(serving, sources=tuple(
        dataclasses.replace(s, deadline_ms=30_000) for s in serving.sources))
    service = build_service(Config(serving=serving), None, base,
                            frames=(catalogue(), users(), interactions()))
    page = service.homepage(FULL)
    assert service.backend.name == "unavailable" and page.model_version is None
    assert "no complete pushed version" in page.degraded, page
    push(zoo, base, 1)
    eventually(lambda: service.homepage(FULL).model_version == 1, "the first push served")
    page = service.homepage(FULL)
    assert service.backend.name == "in_process" and page.degraded is None, page
    assert any(p.p_watch is not None for p in page.items)
    service.stop()
