"""Re-ranking: the ranked list -> the page, as small steps with one interface, ordered by config.

:data:`STEPS` maps the config's step names to the step classes (one module per kind:
``filters``, ``shape``, ``exploration``); :func:`build_pipeline` turns config into a
:class:`~serving.rerank.base.RerankPipeline`. The interface and its contract are in
:mod:`serving.rerank.base`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from serving.rerank.base import (
    SECONDS_PER_DAY,
    RerankContext,
    RerankPipeline,
    RerankStep,
    Scored,
    request_rng,
    scored_from_catalogue,
)
from serving.rerank.exploration import Exploration, exploration_slots
from serving.rerank.filters import ALLOWED_MATURITY, BlockList, ExcludeWatched, MaturityFilter
from serving.rerank.shape import MMR, FreshnessBoost, MaxPerGenre

__all__ = ["ALLOWED_MATURITY", "MMR", "SECONDS_PER_DAY", "STEPS", "BlockList", "ExcludeWatched",
           "Exploration", "FreshnessBoost", "MaturityFilter", "MaxPerGenre", "RerankContext",
           "RerankPipeline", "RerankStep", "Scored", "build_pipeline", "exploration_slots",
           "request_rng", "scored_from_catalogue"]

STEPS: dict[str, type] = {s.name: s for s in (
    ExcludeWatched, MaturityFilter, BlockList, MaxPerGenre, FreshnessBoost, MMR, Exploration)}


def _step(config: Any) -> RerankStep:
    if isinstance(config, RerankStep):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict) or config.get("step") not in STEPS:
        raise ValueError(f"a re-rank step is a dict {{'step': NAME, ...arguments}}, a dataclass "
                         f"with a 'step' field, or a step; NAME one of {sorted(STEPS)}; "
                         f"got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "step"}
    cls = STEPS[config["step"]]
    try:
        return cls(**kwargs)
    except TypeError as e:
        fields = [x.name for x in dataclasses.fields(cls)]
        raise ValueError(f"re-rank step {config['step']!r} takes {fields}, got {sorted(kwargs)}"
                         ) from e


def build_pipeline(step_configs: Sequence[Any]) -> RerankPipeline:
    """Config -> pipeline. Each entry: ``{"step": name, **arguments}`` (names: :data:`STEPS`),
    a dataclass with those fields (e.g. a typed config), or a step instance."""
    return RerankPipeline(tuple(_step(x) for x in step_configs))
