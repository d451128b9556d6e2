"""Shared fixtures. Importing marquee first sets TF_USE_LEGACY_KERAS before TensorFlow loads."""

import warnings
from pathlib import Path

import marquee  # noqa: F401

warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
MOVIELENS_100K = REPO.parent / "shared" / "datasets" / "movielens-100k"


# ----------------------------------------------------------------------------- pipeline run

import dataclasses  # noqa: E402

import pytest  # noqa: E402

from marquee.config import from_dict  # noqa: E402

# Tiny and fast; the evaluator gate is opened so that the ranker is pushed and serving tests
# exercise it (the gate itself is tested with the default thresholds).
E2E_CONFIG = from_dict({
    "retrieval": {"epochs": 2, "batch_size": 128},
    "ranking": {"epochs": 2, "batch_size": 256},
    "evaluator": {"min_auc_gain": -1.0, "max_logloss_increase": 100.0},
    "index": {"eval_queries": 50},
    # Worker processes, as on data past beam.in_memory_below: every DoFn is pickled to them.
    # (test_drift_pipeline runs the default, in_memory on data this small.)
    "beam": {"direct_num_workers": 2, "direct_running_mode": "multi_processing"},
})


@dataclasses.dataclass
class PipelineRun:
    tmp: Path
    summary: str

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def serving(self) -> Path:
        return self.tmp / "run" / "serving"


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> PipelineRun:
    """One real LocalDagRunner run on tiny simulated data, shared by the slow tests."""
    from marquee.data.simulate import SimConfig, simulate
    from pipeline.local_runner import run_local

    tmp = tmp_path_factory.mktemp("e2e")
    simulate(tmp / "data", SimConfig(users=150, items=200, days=20, seed=1))
    summary = run_local(tmp / "data", tmp / "run", E2E_CONFIG)
    return PipelineRun(tmp, summary)


# ----------------------------------------------------------------------------- redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A throwaway redis-server on a free loopback port for one test module
    (``tests/redis_server.py``; ``.ci/run`` installs the binary)."""
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: `apt-get install -y redis-server`")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
