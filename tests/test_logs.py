"""The library-log filter drops exactly the listed notices and nothing else."""

import logging
import sys
import types

import pytest

from marquee import logs


@pytest.fixture
def absl_records(monkeypatch):
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    logger = logging.getLogger("absl")
    saved = list(logger.filters)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    yield logger, seen
    logger.removeHandler(handler)
    logger.filters[:] = saved


def test_benign_notices_are_dropped_and_others_kept(absl_records):
    logger, seen = absl_records
    logs.quiet_libraries()
    logs.quiet_libraries()  # idempotent: one filter
    logger.warning("ArtifactQuery.property_predicate is not supported.")
    logger.warning("Examples artifact does not have payload_format custom property. Falling back")
    logger.warning("Transform: a real problem in %s", "my_feature")
    logger.error("ArtifactQuery failed")  # a fragment of a benign notice is not enough
    assert seen == ["Transform: a real problem in my_feature", "ArtifactQuery failed"]
    assert sum(isinstance(f, logs._DropBenign) for f in logger.filters) == 1


def test_verbose_keeps_everything(absl_records, monkeypatch):
    logger, seen = absl_records
    logger.filters[:] = [f for f in logger.filters if not isinstance(f, logs._DropBenign)]
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    logs.quiet_libraries()
    logger.warning("ArtifactQuery.property_predicate is not supported.")
    assert seen == ["ArtifactQuery.property_predicate is not supported."]


def test_the_hook_drops_only_tensorflows_shutdown_type_error(monkeypatch):
    reached = []
    monkeypatch.setattr(sys, "unraisablehook", reached.append)
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    logs.install_hook()

    def atomic_del():
        pass

    atomic_del.__qualname__ = "AtomicFunction.__del__"
    noise = types.SimpleNamespace(exc_value=TypeError("'NoneType' object is not subscriptable"),
                                  object=atomic_del)
    other = types.SimpleNamespace(exc_value=TypeError("x"), object=print)
    error = types.SimpleNamespace(exc_value=ValueError("y"), object=atomic_del)
    for u in (noise, other, error):
        sys.unraisablehook(u)
    assert reached == [other, error]


def test_component_progress_says_each_component_and_hides_other_info():
    from absl import logging as absl_logging

    said: list[str] = []
    before = logging.getLogger("absl").level
    with logs.component_progress(said.append):
        absl_logging.info("Component %s is running.", "Transform")
        absl_logging.info("Using deployment config:\n %s", "...")
        absl_logging.info("Component %s is finished.", "Transform")
    absl_logging.info("Component %s is finished.", "Trainer")  # after the block: not ours
    assert len(said) == 1 and said[0].startswith("  Transform: done in ")
    assert logging.getLogger("absl").level == before


def test_component_progress_outlives_code_that_saves_and_restores_the_verbosity():
    """TensorFlow's SavedModel export (trackable's function listing) sets absl's verbosity to
    FATAL and back to what get_verbosity() returned, around every save: the Trainer's export
    used to silence the progress of every component after it."""
    from absl import logging as absl_logging

    said: list[str] = []
    before = (logging.getLogger("absl").level, absl_logging.get_verbosity())
    with logs.component_progress(said.append):
        saved = absl_logging.get_verbosity()  # as tensorflow/python/trackable/autotrackable.py
        absl_logging.set_verbosity(absl_logging.FATAL)
        absl_logging.set_verbosity(saved)
        absl_logging.info("Component %s is running.", "RankingTrainer")
        absl_logging.info("Component %s is finished.", "RankingTrainer")
    assert len(said) == 1 and said[0].startswith("  RankingTrainer: done in ")
    assert (logging.getLogger("absl").level, absl_logging.get_verbosity()) == before
