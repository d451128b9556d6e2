"""ContractExampleGen: a dataset folder in the data contract -> time-split retrieval Examples."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.contract_example_gen.executor import Executor
from marquee.config import Config
from marquee.io import runtime_or_str


class ContractExampleGenSpec(ComponentSpec):
    PARAMETERS = {
        "data_dir": ExecutionParameter(type=str),
        "config_json": ExecutionParameter(type=str),
    }
    INPUTS = {}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class ContractExampleGen(base_beam_component.BaseBeamComponent):
    """Splits ``train`` / ``eval`` by time and adds a ``catalogue`` split (one example per item).

    The contract's checks run in the same Beam pipeline (``validate_lib``). Bad rows go to CSV
    shards under ``rejects/`` in the output artifact; over ``data.max_bad_share`` the component
    fails with the validator's summary.
    """

    SPEC_CLASS = ContractExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, data_dir: str, config: Config):
        super().__init__(spec=ContractExampleGenSpec(
            data_dir=runtime_or_str(data_dir), config_json=config.to_json(),
            examples=types.Channel(type=standard_artifacts.Examples)))
