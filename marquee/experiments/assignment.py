"""Who is in which experiment and arm: a pure function of the config and the user id.

    u = hash(salt, user id) in [0, 1)          the user's place in an experiment
    l = hash("layer:" + layer, user id)         the user's place in a layer

A user is in an experiment of a layer when ``l`` falls in the experiment's slice of the layer
(experiments of a layer take consecutive slices of ``traffic`` each, in config order, so they
never share a user) and the request's time is inside the experiment's [start, end). Inside it,
``u < holdout`` is the holdout; the rest of ``[holdout, 1)`` is cut into the arms by their
shares. The hash is SHA-256 of ``salt:user_id`` (its first 8 bytes as a fraction), so any
process, replica or language reproduces it, and a new salt reshuffles every user.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence

from marquee.data import contract as c
from marquee.experiments.config import HOLDOUT, INTERLEAVING, KINDS, ArmConfig, ExperimentConfig

_SCALE = float(2**64)


def unit_hash(salt: str, user_id: int) -> float:
    """A uniform fraction in [0, 1) for (salt, user id): SHA-256 of ``f"{salt}:{user_id}"``,
    its first 8 bytes read big-endian over 2**64."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A user's arm in one experiment (``arm`` is ``holdout`` for a held-out user)."""

    experiment: str
    arm: str
    kind: str = "ab"

    @property
    def held_out(self) -> bool:
        return self.arm == HOLDOUT


class ExperimentError(ValueError):
    """An experiment config that cannot be served; the message lists every problem."""


def _label_problem(what: str, value: object) -> str | None:
    if not (isinstance(value, str) and 0 < len(value) <= c.MAX_LABEL_LENGTH and value.isascii()
            and value.isprintable() and c.LABEL_SEPARATOR not in value):
        return (f"{what} must be 1-{c.MAX_LABEL_LENGTH} printable ASCII characters without "
                f"{c.LABEL_SEPARATOR!r} (it is logged with every impression), got {value!r}")
    return None


def check_experiments(experiments: Sequence[ExperimentConfig]) -> None:
    """Raises ExperimentError listing every problem of ``serving.experiments``."""
    problems: list[str] = []
    ids = [e.id for e in experiments]
    problems += [f"experiment id {i!r} is listed twice" for i in sorted(set(ids))
                 if ids.count(i) > 1]
    layers: dict[str, float] = {}
    interleave_layers = set()
    for e in experiments:
        where = f"experiment {e.id!r}"
        problems += [p for p in [_label_problem(f"{where}: id", e.id)] if p]
        if e.kind not in KINDS:
            problems.append(f"{where}: kind must be one of {', '.join(KINDS)}, got {e.kind!r}")
        if e.interleaving not in INTERLEAVING:
            problems.append(f"{where}: interleaving must be one of {', '.join(INTERLEAVING)}, "
                            f"got {e.interleaving!r}")
        if not e.arms:
            problems.append(f"{where}: needs at least one arm")
        if e.kind == "interleave":
            interleave_layers.add(e.layer)
            if len(e.arms) != 2:
                problems.append(f"{where}: interleaving merges exactly two arms, got "
                                f"{len(e.arms)}")
        names = [a.name for a in e.arms]
        problems += [f"{where}: arm {n!r} is listed twice" for n in sorted(set(names))
                     if names.count(n) > 1]
        for a in e.arms:
            problems += [p for p in [_label_problem(f"{where}: arm name", a.name)] if p]
            if a.name == HOLDOUT:
                problems.append(f"{where}: the arm name {HOLDOUT!r} is reserved for held-out "
                                "users (set holdout: SHARE instead)")
            if not (isinstance(a.share, int | float) and math.isfinite(a.share) and a.share > 0):
                problems.append(f"{where}: arm {a.name!r} needs a share > 0, got {a.share!r}")
            for key in ("experiments", "auth", "limits"):
                if key in a.serving:
                    problems.append(f"{where}: arm {a.name!r} cannot override serving.{key}")
        total = sum(a.share for a in e.arms if isinstance(a.share, int | float))
        if e.arms and abs(total - 1.0) > 1e-9:
            problems.append(f"{where}: arm shares must sum to 1, got {total:g} "
                            f"({', '.join(f'{a.name}={a.share:g}' for a in e.arms)})")
        if not 0 <= e.holdout < 1:
            problems.append(f"{where}: holdout must be a share in [0, 1), got {e.holdout!r}")
        if not 0 < e.traffic <= 1:
            problems.append(f"{where}: traffic must be a share in (0, 1], got {e.traffic!r}")
        if e.start is not None and e.end is not None and e.start >= e.end:
            problems.append(f"{where}: start {e.start} is not before end {e.end}")
        problems += [p for p in [_label_problem(f"{where}: layer", e.layer)] if p]
        layers[e.layer] = layers.get(e.layer, 0.0) + e.traffic
    problems += [f"layer {name!r}: its experiments' traffic sums to {t:g}, more than 1 (they "
                 "must not share users); lower their traffic or move one to another layer"
                 for name, t in layers.items() if t > 1 + 1e-9]
    if len(interleave_layers) > 1:
        problems.append(f"interleaving experiments are in layers {sorted(interleave_layers)}; "
                        "a page is interleaved by at most one experiment, so put them all in "
                        "one layer")
    if problems:
        raise ExperimentError(f"serving.experiments: {len(problems)} problem(s): "
                              + "; ".join(problems))


def arm_of(arms: Sequence[ArmConfig], u: float, holdout: float = 0.0) -> str:
    """The arm at fraction ``u`` in [0, 1): the holdout below ``holdout``, then the arms by
    cumulative share over the rest."""
    if u < holdout:
        return HOLDOUT
    x = (u - holdout) / (1.0 - holdout)
    edge = 0.0
    for arm in arms[:-1]:
        edge += arm.share
        if x < edge:
            return arm.name
    return arms[-1].name


class Assigner:
    """The experiments a user is in at a time, one per layer (checked at construction)."""

    def __init__(self, experiments: Sequence[ExperimentConfig]):
        check_experiments(experiments)
        self.experiments = tuple(experiments)
        # layer -> [(experiment, slice start, slice end)] in config order
        self._layers: dict[str, list[tuple[ExperimentConfig, float, float]]] = {}
        for e in self.experiments:
            slices = self._layers.setdefault(e.layer, [])
            lo = slices[-1][2] if slices else 0.0
            slices.append((e, lo, lo + e.traffic))

    def assign(self, user_id: int, timestamp: int) -> tuple[Assignment, ...]:
        """The user's arm in each experiment they are in at ``timestamp`` (UTC seconds), in
        layer order of the config."""
        out = []
        for layer, slices in self._layers.items():
            place = unit_hash(f"layer:{layer}", user_id)
            for e, lo, hi in slices:
                if lo <= place < hi and _active(e, timestamp):
                    arm = arm_of(e.arms, unit_hash(e.salt or e.id, user_id), e.holdout)
                    out.append(Assignment(e.id, arm, e.kind))
                    break
        return tuple(out)


def _active(e: ExperimentConfig, timestamp: int) -> bool:
    return (e.start is None or e.start <= timestamp) and (e.end is None or timestamp < e.end)


def expected_shares(e: ExperimentConfig) -> dict[str, float]:
    """The share of the experiment's users each arm (and the holdout) should get."""
    shares = {a.name: (1.0 - e.holdout) * a.share for a in e.arms}
    if e.holdout > 0:
        shares[HOLDOUT] = e.holdout
    return shares
