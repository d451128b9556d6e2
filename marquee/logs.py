"""Quiet library logs for the long-running commands (``marquee pipeline run``, ``marquee demo``).

A pipeline run on TFX, Beam and TensorFlow prints a few hundred library lines that say nothing
to the person running it: notices repeated by every component and Beam worker about features
TFX does not use here, and tracebacks TensorFlow prints while a Beam worker shuts down. They are
dropped by exact message, never by level, so a new or real warning from those libraries still
shows. ``MARQUEE_VERBOSE=1`` keeps every line (for a bug report).

What is dropped (each checked against TFX 1.16, TensorFlow 2.16, Beam 2.x):

* absl/TFX: ``ArtifactQuery.property_predicate is not supported`` (the local runner's MLMD
  query, once per component), ``Examples artifact does not have payload_format custom
  property`` (our ExampleGen writes tf.Example, the fallback), ``Tables initialized inside a
  tf.function`` (Transform's vocabularies in the exported graph), ``No baseline statistics
  found. Rubber stamping`` and the ``[BaselineStatistics] Input resolution error`` traceback
  (the drift baseline's resolver on a run folder's first run: nothing accepted yet, which the
  optional input downstream expects; the run summary says so);
* TensorFlow: ``Model's `__init__()` arguments contain non-serializable objects`` (TFRS models
  are saved as SavedModels, not from their config);
* the Transform graph in graph mode (``data.transform_tf_compat_v1``): absl's ``Tensorflow
  Transform is running in tf.compat.v1 mode`` (the preprocessing_fn has no tf.function), and
  TensorFlow's v1 SavedModel notices: ``Issue encountered when serializing tft_...`` (TFT's own
  graph collections, which it does not need saved), ``Expected binary or unicode string, got
  type_url ... AssetFileDef`` (each vocabulary asset, at every load) and ``build_tensor_info
  ... is deprecated``;
* Beam's job service relaying its workers' ``WARN`` lines (``No semi_persistent_directory``,
  ``Discarding unparseable args``);
* ``Exception ignored in: AtomicFunction.__del__`` ``TypeError`` at interpreter shut-down (a
  TensorFlow 2.16 finaliser running after its module was torn down; see :func:`install_hook`).
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE_ENV = "MARQUEE_VERBOSE"

# logger name -> message fragments dropped from it
BENIGN: dict[str, tuple[str, ...]] = {
    "absl": ("ArtifactQuery.property_predicate is not supported",
             "does not have payload_format custom property",
             "Tables initialized inside a tf.function",
             "No baseline statistics found. Rubber stamping",
             "[BaselineStatistics] Input resolution error",
             "Tensorflow Transform is running in tf.compat.v1 mode"),
    "tensorflow": ("arguments contain non-serializable objects",
                   "Expected binary or unicode string, got type_url",
                   "Issue encountered when serializing tft_",
                   "build_tensor_info (from tensorflow.python.saved_model.utils_impl) is "
                   "deprecated"),
    "apache_beam.runners.portability.local_job_service": (
        "No semi_persistent_directory found", "Discarding unparseable args"),
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _DropBenign(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to hide
            return True
        return not any(f in message for f in self.fragments)


def quiet_libraries() -> None:
    """Drops :data:`BENIGN` messages from their loggers (idempotent; no-op when verbose)."""
    if verbose():
        return
    for name, fragments in BENIGN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBenign) for f in logger.filters):
            logger.addFilter(_DropBenign(fragments))


def _is_shutdown_noise(unraisable) -> bool:
    obj = getattr(unraisable, "object", None)
    return (isinstance(unraisable.exc_value, TypeError)
            and getattr(obj, "__qualname__", "") == "AtomicFunction.__del__")


def install_hook() -> None:
    """Drops TensorFlow's ``AtomicFunction.__del__`` TypeError at shut-down from
    ``sys.unraisablehook``; anything else still reaches the previous hook."""
    if verbose() or getattr(sys.unraisablehook, "_marquee", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not _is_shutdown_noise(unraisable):
            previous(unraisable)

    hook._marquee = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class _ComponentProgress(logging.Filter):
    """On the absl logger: turns TFX's ``Component X is running/finished`` INFO records into
    progress lines, and lets no other INFO record through (the level is raised to INFO only to
    see those)."""

    def __init__(self, say, clock):
        super().__init__()
        self.say, self.clock, self.started = say, clock, {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.msg in ("Component %s is running.", "Component %s is finished.") and record.args:
            node = record.args[0]
            if record.msg.endswith("running."):
                self.started[node] = self.clock()
            else:
                took = self.clock() - self.started.pop(node, self.clock())
                self.say(f"  {node}: done in {took:.0f} s")
        return False


class component_progress:
    """``with component_progress(say):`` a TFX run says each component's end and its seconds
    (from the LocalDagRunner's own records) through ``say``."""

    def __init__(self, say):
        import time

        self.logger = logging.getLogger("absl")
        self.filter = _ComponentProgress(say, time.perf_counter)

    def __enter__(self):
        from absl import logging as absl_logging

        self.level, self.verbosity = self.logger.level, absl_logging.get_verbosity()
        self.logger.addFilter(self.filter)
        if self.logger.getEffectiveLevel() > logging.INFO:
            # Through absl's verbosity flag, not the logger's level alone: code that sets the
            # verbosity and puts back what get_verbosity() said (TensorFlow's SavedModel export
            # does, around every save) puts back the flag's value, and a raised logger level
            # would be lost with the first save: no line for any later component.
            absl_logging.set_verbosity(absl_logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        from absl import logging as absl_logging

        self.logger.removeFilter(self.filter)
        absl_logging.set_verbosity(self.verbosity)
        self.logger.setLevel(self.level)
