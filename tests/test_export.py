"""trainer.export: the saved graph holds the variables and resources, not the Keras objects, and
the reloaded signature answers what the Keras model does."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from trainer.export import Export, transform_resources


class _Scored(Export):
    def __init__(self, model, table):
        super().__init__({"model": model}, None, model.variables, [table])
        self._table = self._no_dependency(table)

    def score(self, ids):
        return {"score": self.model(tf.cast(self._table.lookup(ids)[:, None], tf.float32))}


def user_objects(path) -> set[str]:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    return {n.user_object.identifier for n in proto.meta_graphs[0].object_graph_def.nodes
            if n.WhichOneof("kind") == "user_object"}


def _model_and_table():
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu"),
                                 tf.keras.layers.Dense(1)])
    model.build((None, 1))
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant([10, 20, 30], tf.int64), tf.constant([1, 2, 3], tf.int64)), 0)
    return model, table


def test_the_signature_answers_as_the_keras_model_without_keras_in_the_saved_graph(tmp_path):
    model, table = _model_and_table()
    module = _Scored(model, table)
    fn = tf.function(lambda ids: module.score(ids), autograph=False)
    concrete = fn.get_concrete_function(tf.TensorSpec([None], tf.int64, "ids"))
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": concrete})

    assert not any(i.startswith("_tf_keras") for i in user_objects(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    ids = tf.constant([20, 10, 99, 30], tf.int64)  # 99: the table's default, 0
    got = loaded(ids=ids)["score"].numpy()
    want = model(tf.constant([[2.0], [1.0], [0.0], [3.0]])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.ptp(got) > 1e-3  # distinct rows: the weights and the table both matter


def test_an_untracked_resource_fails_the_save_loudly(tmp_path):
    model, table = _model_and_table()

    class Forgets(_Scored):  # the table is used but not passed as a resource
        def __init__(self):
            Export.__init__(self, {"model": model}, None, model.variables)
            self._table = self._no_dependency(table)

    module = Forgets()
    concrete = tf.function(lambda ids: module.score(ids)).get_concrete_function(
        tf.TensorSpec([None], tf.int64))
    with pytest.raises((AssertionError, ValueError), match="(?i)track"):
        tf.saved_model.save(module, str(tmp_path / "m"), signatures=concrete)


def test_transform_resources_falls_back_to_the_layer():
    class Layer:
        pass

    layer = Layer()
    assert transform_resources(layer) is layer
    layer._saved_model_loader_tracked_dict = {"loader": 1}
    assert transform_resources(layer) == {"loader": 1}
