"""trainer.steps.GraphSteps: fit and evaluate give Keras's results, with the step traced once.

The model is y = w x (one weight, no bias) fitted by plain SGD on the mean squared error, so
every weight can be checked against numpy: w <- w - lr * mean(2 (w x - y) x) per batch.
"""

import numpy as np
import pytest
import tensorflow as tf

from trainer.steps import GraphSteps

X = np.arange(1.0, 11.0, dtype=np.float32)  # 10 rows: batches of 3, 3, 3, 1
Y = 2.0 * X
BATCH, LR, EPOCHS, W0 = 3, 0.01, 2, 0.5


class Linear(tf.keras.Model):
    """Trained by Keras's own train and test steps, from ``compile`` (whose loss tracker and
    optimizer create variables in the first trace)."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(W0, name="w")

    def call(self, x):
        return self.w * x


class GraphLinear(GraphSteps, Linear):
    pass


class Stepped(Linear):
    """Its own steps, which create no variables: the case of the towers, whose weights and
    optimizer slots exist before ``fit``. Counts its traces."""

    traces = 0

    def train_step(self, data):
        type(self).traces += 1  # Python: runs once per trace of the step
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x) - y))
        self.w.assign_sub(LR * tape.gradient(loss, self.w))
        return {"loss": loss}

    def test_step(self, data):
        x, y = data
        return {"loss": tf.reduce_mean(tf.square(self(x) - y))}


class GraphStepped(GraphSteps, Stepped):
    traces = 0


def numpy_weight() -> float:
    w = W0
    for _ in range(EPOCHS):
        for start in range(0, len(X), BATCH):
            x, y = X[start:start + BATCH], Y[start:start + BATCH]
            w -= LR * np.mean(2.0 * (w * x - y) * x)
    return w


def fit(cls, steps_per_execution: int, run_eagerly: bool = False):
    model = cls()
    model.compile(optimizer=tf.keras.optimizers.SGD(LR), loss="mse",
                  steps_per_execution=steps_per_execution, run_eagerly=run_eagerly)
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH)
    history = model.fit(data, validation_data=data, epochs=EPOCHS, verbose=0)
    return model, history.history


@pytest.mark.parametrize("steps_per_execution", [1, 3])
@pytest.mark.parametrize("graph, keras", [(GraphLinear, Linear), (GraphStepped, Stepped)])
def test_fit_gives_the_numpy_weight_and_keras_history(graph, keras, steps_per_execution):
    # With 3 steps an execution, each epoch's last execution runs the one step left.
    model, history = fit(graph, steps_per_execution)
    keras_model, keras_history = fit(keras, steps_per_execution)
    assert float(model.w.numpy()) == pytest.approx(numpy_weight(), abs=1e-6)
    assert float(model.w.numpy()) == pytest.approx(float(keras_model.w.numpy()), abs=1e-7)
    assert history.keys() == keras_history.keys() == {"loss", "val_loss"}
    for key in history:
        np.testing.assert_allclose(history[key], keras_history[key], rtol=1e-6)
    assert int(model._train_counter.numpy()) == 4 * EPOCHS
    assert int(model._test_counter.numpy()) == 4  # evaluate's own count: the last epoch's


def test_the_step_is_traced_once_where_keras_traces_it_twice():
    GraphStepped.traces = Stepped.traces = 0
    fit(GraphStepped, 3)
    fit(Stepped, 3)
    assert GraphStepped.traces == 1
    assert Stepped.traces == 2  # AutoGraph's trial trace of the loop body, then the loop's


def test_eager_models_keep_keras_functions():
    GraphStepped.traces = 0
    model, _ = fit(GraphStepped, 3, run_eagerly=True)
    assert GraphStepped.traces == 4 * EPOCHS  # eager: the Python step runs at every step
    assert float(model.w.numpy()) == pytest.approx(numpy_weight(), abs=1e-6)
