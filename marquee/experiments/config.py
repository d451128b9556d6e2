"""Experiments as config (``serving.experiments`` in the config file).

An experiment is an id, a salt, a time window, arms with traffic shares and an optional holdout,
in a layer. Each arm is a named override of the serving config and/or a pushed model version::

    serving:
      experiments:
        - id: mmr-2026-12
          layer: rerank
          start: 1796083200          # UTC seconds; null: from now on
          arms:
            - {name: control, share: 0.5}
            - {name: mmr-0.6, share: 0.5, serving: {rerank: [...]}}
        - id: ranker-vs-retrieval
          kind: interleave             # both arms' lists merged on one page (team draft)
          arms:
            - {name: ranker, share: 0.5}
            - {name: retrieval-only, share: 0.5, serving: {ranker_weight: 0.0}}

Assignment (:mod:`marquee.experiments.assignment`) is a pure function of these settings and the
user id, so every replica and restart puts a user in the same arm. Experiments of one layer are
mutually exclusive (each takes its ``traffic`` share of the layer's buckets, in order); a user is
in at most one experiment per layer, and may be in one of each layer.
"""

from __future__ import annotations

import dataclasses

KINDS = ("ab", "interleave")
INTERLEAVING = ("team_draft", "balanced")
HOLDOUT = "holdout"


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    name: str
    # Share of the experiment's (non-holdout) users in this arm; an experiment's shares sum to 1.
    share: float
    # Settings of `serving:` this arm changes (any key of ServingConfig but experiments, auth and
    # limits), e.g. {"ranker_weight": 0.0}; {} serves the base config.
    serving: dict = dataclasses.field(default_factory=dict)
    # A pushed model version this arm is served from (null: the newest, as outside experiments).
    model_version: int | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    id: str
    arms: tuple[ArmConfig, ...]
    # Hashed with the user id into the arm buckets; default: the id. A new salt reshuffles users.
    salt: str = ""
    # ab: each user sees one arm. interleave: two arms' lists merged on one page, each title
    # carrying the team (arm) it came from.
    kind: str = "ab"
    interleaving: str = "team_draft"
    # UTC seconds [start, end) the experiment serves; null: open. Outside it, no one is in it.
    start: int | None = None
    end: int | None = None
    # Experiments of a layer never share a user; each takes `traffic` of the layer's buckets.
    layer: str = "default"
    traffic: float = 1.0
    # Share of the experiment's users held out: served the base config, logged as arm `holdout`.
    holdout: float = 0.0
