"""The training progress line: when it prints, and what it says (a fake clock)."""

import numpy as np
import tensorflow as tf

from trainer.progress import Progress


def _fit(callback, steps_per_execution=1):
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
    x, y = np.ones((40, 2), np.float32), np.zeros((40, 1), np.float32)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])  # 10 batches


def test_a_line_every_interval_with_batches_rate_and_loss():
    ticks = iter(range(1000))  # each clock read is 1 s later
    said = []
    _fit(Progress("Trainer", batch_size=4, every=3.0, say=said.append,
                  clock=lambda: float(next(ticks))))
    # Epoch start reads the clock at t0, then one read a batch: a line at t0+3, t0+6, t0+9,
    # i.e. after batches 3, 6 and 9 (of 10), in each of the two epochs.
    assert len(said) == 6
    assert said[0].startswith("Trainer: epoch 1, batch 3 of 10 (30%), 4 examples/s, loss ")
    assert said[2].startswith("Trainer: epoch 1, batch 9 of 10 (90%), 4 examples/s")
    assert said[3].startswith("Trainer: epoch 2, batch 3 of 10 (30%)")
    float(said[0].rsplit("loss ", 1)[1])  # a number


def test_steps_per_execution_reports_the_executions_last_batch():
    ticks = iter(range(1000))
    said = []
    _fit(Progress("RankingTrainer", batch_size=4, every=1.0, say=said.append,
                  clock=lambda: float(next(ticks))), steps_per_execution=5)
    # two executions an epoch (batches 1-5 and 6-10), one clock read each: 5 batches in 1 s
    assert len(said) == 4 and all(s.startswith("RankingTrainer: epoch 1,") for s in said[:2])
    assert [s.split(",")[1] for s in said[:2]] == [" batch 5 of 10 (50%)", " batch 10 of 10 (100%)"]
    assert ", 20 examples/s" in said[0]


def test_each_epochs_seconds_are_kept():
    ticks = iter(range(1000))
    progress = Progress("Trainer", batch_size=4, every=100.0, say=lambda line: None,
                        clock=lambda: float(next(ticks)))
    _fit(progress)
    # begin, 10 batches, end: the end's read is 11 reads after the begin's, in both epochs
    assert progress.epoch_seconds == [11.0, 11.0]
