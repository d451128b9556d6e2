"""A progress line during long epochs: Keras's ``verbose=2`` says nothing until an epoch ends,
which at 40K batches is half an hour of silence."""

from __future__ import annotations

import time
from collections.abc import Callable

import tensorflow as tf


class Progress(tf.keras.callbacks.Callback):
    """Every ``every`` seconds of an epoch, ``say``s ``NAME: epoch E, batch B of N (P%),
    R examples/s, loss L`` (``of N`` when the epoch's length is known). It reads the loss
    only when it prints, so the training step does not wait for it in between."""

    def __init__(self, name: str, batch_size: int, every: float = 60.0,
                 say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._supports_tf_logs = True  # logs stay tensors: no host copy a batch
        self.name, self.batch_size, self.every, self.say, self.clock = (
            name, batch_size, every, say, clock)
        self.epoch, self.start, self.last = 0, 0.0, 0.0
        self.epoch_seconds: list[float] = []  # each finished epoch's, its validation included

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch, self.start = epoch, self.clock()
        self.last = self.start

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.epoch_seconds.append(self.clock() - self.start)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last, done = now, batch + 1  # with steps_per_execution, the execution's last batch
        steps = (self.params or {}).get("steps")
        of = f" of {steps:,} ({done / steps:.0%})" if steps else ""
        rate = done * self.batch_size / max(now - self.start, 1e-9)
        loss = (logs or {}).get("loss")
        tail = "" if loss is None else f", loss {float(loss):.4f}"
        self.say(f"{self.name}: epoch {self.epoch + 1}, batch {done:,}{of}, "
                 f"{rate:,.0f} examples/s{tail}")
