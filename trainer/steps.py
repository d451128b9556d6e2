"""Keras's train and test functions, traced once and without AutoGraph.

``Model.fit`` runs ``make_train_function``'s ``tf.function``, which loops
``for _ in tf.range(steps_per_execution)`` over a step. AutoGraph converts that loop and
everything the step reaches, and traces the step twice: once to find out which loop variables
the body defines, once for the ``tf.while_loop`` itself. On the two towers (MovieLens 100K,
16 steps an execution) the first execution took 2.3 s against 0.2 s for the next ones.

``GraphSteps`` builds the same execution with no AutoGraph: one concrete step (a
``tf.function`` over the iterator) called from the body of a ``tf.while_loop`` that starts from
zeros of the step's outputs, so the step is traced once and appears once in the graph (first
execution: 1.3 s). The step does what Keras's does: the model's ``train_step`` (``test_step``)
on the iterator's next batch, then the step counter. Models whose steps are plain graph code
(no tensor-dependent Python control flow) mix it in first::

    class TwoTowerModel(GraphSteps, tfrs.Model): ...

A step that creates variables (an optimizer or metric built lazily) is still traced twice, as
``tf.function`` does for any function creating variables on its first call. The towers create
theirs before ``fit`` (``TwoTowerModel.build_weights``), so their train step is traced once; the
ranker's train step creates its Adam slots and loss metrics in the first trace and is traced
twice (its test step once).

It falls back to Keras's own functions where they do more than this: eager runs, a
``jit_compile`` model, a distribution strategy or cluster coordinator, or an autotuned
``steps_per_execution``.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


class GraphSteps:
    """Mixin for a ``tf.keras.Model`` (listed before it): ``fit`` and ``evaluate`` run steps
    traced once, without AutoGraph (module docstring)."""

    def make_train_function(self, force: bool = False):
        if self.train_function is not None and not force:
            return self.train_function
        if not self._plain_steps():
            return super().make_train_function(force)
        self.train_function = self.train_tf_function = executions(
            self.train_step, self._train_counter, self._steps_per_execution)
        return self.train_function

    def make_test_function(self, force: bool = False):
        if self.test_function is not None and not force:
            return self.test_function
        if not self._plain_steps():
            return super().make_test_function(force)
        self.test_function = executions(
            self.test_step, self._test_counter, self._steps_per_execution)
        return self.test_function

    def _plain_steps(self) -> bool:
        """True when Keras's functions would be this module's, AutoGraph aside."""
        return not (self.run_eagerly or self.jit_compile or self._cluster_coordinator
                    or self._distribution_strategy is not None
                    or self.autotune_steps_per_execution)


def executions(step: Callable[[object], dict], counter: tf.Variable,
               steps_per_execution: tf.Variable | None):
    """A ``tf.function(iterator) -> outputs`` running ``steps_per_execution`` steps of ``step``
    on the iterator's batches, adding one to ``counter`` after each; the outputs are the last
    step's. The count is read at each call: Keras lowers it for an epoch's last, shorter
    execution."""

    @tf.function(autograph=False, reduce_retracing=True)
    def one(iterator) -> dict:
        outputs = step(next(iterator))
        first = [t for t in tf.nest.flatten(outputs, expand_composites=True)
                 if not isinstance(t, tf.Variable)][:1]
        with tf.control_dependencies(first):  # counts a step only once it has run
            counter.assign_add(1)
        return outputs

    if steps_per_execution is None or int(steps_per_execution.numpy()) == 1:
        return one

    def execution(iterator) -> dict:
        n = steps_per_execution
        # One concrete step, called from the loop's body only, so the graph holds one copy of
        # it for Grappler to optimise (a first step before the loop was a second copy: 0.3 s
        # more on the towers' first execution). So the loop starts from zeros of the step's
        # outputs (Keras's: scalar metrics).
        concrete = one.get_concrete_function(iterator)
        traced = tf.nest.flatten(concrete.structured_outputs, expand_composites=True)
        if all(isinstance(t, tf.Tensor) and t.shape.is_fully_defined() for t in traced):
            start = tf.constant(0, n.dtype)
            outputs = tf.nest.pack_sequence_as(
                concrete.structured_outputs, [tf.zeros(t.shape, t.dtype) for t in traced],
                expand_composites=True)
        else:  # outputs of unknown shape: a first step before the loop gives the structure
            start, outputs = tf.constant(1, n.dtype), concrete(iterator)
        _, outputs = tf.while_loop(
            lambda i, _: i < n, lambda i, _: (i + 1, concrete(iterator)), (start, outputs))
        return outputs

    return tf.function(execution, autograph=False, reduce_retracing=True)
