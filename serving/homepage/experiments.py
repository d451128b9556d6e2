"""The homepage front: which stack serves a user (experiments), and the impression log.

    request -> assignment (marquee.experiments.assignment) -> the stack of the user's arms
            -> (interleaving: both arms' pages merged, each title with its team)
            -> page id, experiments on the page -> impressions logged (serving.ingest.exposures)

Every arm is a real serving stack (:class:`HomepageService`) built from the base config with the
arm's overrides (and, if it names one, pinned to a pushed model version), sharing the base's
models, catalogue, users, feature store, titles added while serving and item-to-item neighbours.
A user in experiments of several layers is served the stack of all their arms' overrides
together (overrides of different layers may not touch the same setting). The stacks are built
at start-up, so a bad override fails there, not on a request. Arm stacks do not cache pages (a
page cached before a user entered an experiment must not stand for their arm).

Outside experiments the base stack answers as before. Each page gets a ``page_id``, and with an
impression log (``--event-log``) every page served is logged; experiments need one.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent import futures

from marquee.config import ConfigError, with_overrides
from marquee.experiments.assignment import Assigner, Assignment, ExperimentError, unit_hash
from marquee.experiments.config import ArmConfig, ExperimentConfig
from marquee.experiments.interleave import METHODS
from serving.homepage.page import Homepage, degrade
from serving.homepage.service import HomepageService
from serving.ingest.exposures import INTERLEAVED, ExposureLog
from serving.models.backends import PinnedBackend

log = logging.getLogger(__name__)

# Most stacks (combinations of arms across layers) built at start-up.
MAX_STACKS = 64
Key = frozenset  # of (experiment id, arm name): the arms a stack serves


class Homepages:
    """The front over a base :class:`HomepageService` (see the module docstring). Reads any
    other attribute from the base (its store, users, catalogue, backend, breakers), so the API
    and the write path take it where they took the service."""

    def __init__(self, base: HomepageService, exposures: ExposureLog | None = None,
                 now: Callable[[], float] = time.time,
                 new_page_id: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.base, self.exposures = base, exposures
        self._now, self._new_page_id = now, new_page_id
        config = base.config
        self.assigner = Assigner(config.experiments) if config.experiments else None
        self._experiments = {e.id: e for e in config.experiments}
        self.stacks: dict[Key, HomepageService] = {Key(): base}
        for key, arms in _combinations(config.experiments):
            if key:
                self.stacks[key] = self._stack(arms)
        base.fresh.on_add = self.items_added  # titles added while serving reach every stack
        self._pool = futures.ThreadPoolExecutor(4, thread_name_prefix="interleave") if any(
            e.kind == "interleave" for e in config.experiments) else None

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    # ------------------------------------------------------------------ start-up

    def _stack(self, arms: list[tuple[ExperimentConfig, ArmConfig]]) -> HomepageService:
        base = self.base
        config = dataclasses.replace(base.config, experiments=(), cache_ttl_seconds=0.0)
        touched: dict[str, str] = {}
        version = None
        for e, arm in arms:
            where = f"serving.experiments[{e.id}].arms[{arm.name}].serving"
            for name in arm.serving:
                if name in touched:
                    raise ExperimentError(
                        f"{where}: {name} is also set by {touched[name]}; arms of experiments "
                        "in different layers may serve one user together, so they must not set "
                        "the same setting: move the experiments into one layer")
                touched[name] = f"experiment {e.id!r} arm {arm.name!r}"
            try:
                config = with_overrides(config, dict(arm.serving), where)
            except ConfigError as err:
                raise ExperimentError(str(err)) from err
            if arm.model_version is not None:
                if version is not None and version != arm.model_version:
                    raise ExperimentError(
                        f"experiment {e.id!r} arm {arm.name!r} pins model version "
                        f"{arm.model_version} and another layer's arm pins {version}: a page is "
                        "served by one version; move the experiments into one layer")
                version = arm.model_version
        backend = base.backend
        if version is not None:
            if not hasattr(backend, "keep"):
                raise ExperimentError(f"the {backend.name} backend cannot serve a pinned model "
                                      f"version ({version}); drop model_version from the arm")
            backend.keep(version)
            backend = PinnedBackend(backend, version)
        names = ", ".join(f"{e.id}={arm.name}" for e, arm in arms)
        try:
            stack = HomepageService(
                backend, base.indexes, base.catalogue, base.users, config,
                popularity=base.popularity, clock=base._clock, now=base._now,
                interactions=base.interactions, store=base.store,
                min_watch_seconds=base.min_watch_seconds, fresh=base.fresh, shared=base.shared)
        except ValueError as err:
            raise ExperimentError(f"the stack of {names}: {err}") from err
        if version is not None:
            stack.warm_up()
        log.info("experiment stack built: %s%s", names,
                 f" (model version {version})" if version is not None else "")
        return stack

    def log_impressions(self, exposures: ExposureLog | None) -> None:
        """Sets the impression log (None: pages are not logged); experiments need one."""
        if exposures is None and self.assigner is not None:
            raise ExperimentError(
                "serving.experiments is set, but this server has no impression log: an "
                "experiment's analysis reads the impressions it served. Start `marquee serve` "
                "with --event-log DIR")
        self.exposures = exposures

    # ------------------------------------------------------------------ request

    def homepage(self, user_id: int, k: int | None = None, timestamp: int | None = None,
                 seed: int | None = None) -> Homepage:
        """The page of the stack (or interleaved stacks) of the user's arms, with its page id
        and experiments, logged when there is an impression log."""
        at = int(self._now()) if timestamp is None else int(timestamp)
        assigned = self.assigner.assign(user_id, at) if self.assigner is not None else ()
        key = Key((a.experiment, a.arm) for a in assigned
                  if a.kind == "ab" and not a.held_out)
        inter = next((a for a in assigned if a.kind == "interleave" and not a.held_out), None)
        if inter is None:
            page = self.stacks[key].homepage(user_id, k, timestamp, seed)
        else:
            page = self._interleaved(key, inter, user_id, k, timestamp, seed, at)
        page.page_id = self._new_page_id()
        page.experiments = {a.experiment: INTERLEAVED if a is inter else a.arm
                            for a in assigned}
        if self.exposures is not None:
            self.exposures.log(page, at, page.device or "unknown", page.experiments)
        return page

    def _interleaved(self, key: Key, inter: Assignment, user_id: int, k: int | None,
                     timestamp: int | None, seed: int | None, at: int) -> Homepage:
        e = self._experiments[inter.experiment]
        arms = [a.name for a in e.arms]
        stacks = [self.stacks[key | {(e.id, name)}] for name in arms]
        k = self.base.config.k if k is None else k
        other = self._pool.submit(stacks[1].homepage, user_id, k, timestamp, seed)
        pages = [stacks[0].homepage(user_id, k, timestamp, seed), other.result()]
        day = at // 86_400 if seed is None else seed
        coin = int(unit_hash(f"interleave:{e.salt or e.id}:{day}", user_id) * 2**62)
        picks = [{p.item_id: p for p in page.items} for page in pages]
        merged = METHODS[e.interleaving]([p.item_id for p in pages[0].items],
                                         [p.item_id for p in pages[1].items], k, seed=coin)
        page = dataclasses.replace(
            pages[0], items=[dataclasses.replace(picks[team][item], team=arms[team])
                             for item, team in merged],
            timings_ms={**{f"{arms[0]}.{n}": v for n, v in pages[0].timings_ms.items()},
                        **{f"{arms[1]}.{n}": v for n, v in pages[1].timings_ms.items()}},
            fallback=pages[0].fallback and pages[1].fallback, cached=False)
        for name, p in zip(arms, pages, strict=True):
            if p.fallback and not page.fallback:
                degrade(page, f"arm {name} fell back: {p.reason}")
        if page.fallback:
            page.reason = "; ".join(f"arm {n}: {p.reason}" for n, p in zip(arms, pages,
                                                                            strict=True))
        return page

    # ------------------------------------------------------------------ hooks, life cycle

    def observe(self, event) -> None:
        for stack in self.stacks.values():
            stack.observe(event)

    def refresh_trending(self, now: int | None = None) -> None:
        for stack in self.stacks.values():
            stack.refresh_trending(now)

    def items_added(self, rows: list[int]) -> None:
        for stack in self.stacks.values():
            stack.items_added(rows)

    def start_refresh(self) -> None:
        for stack in self.stacks.values():
            stack.start_refresh()

    def stop(self) -> None:
        for stack in self.stacks.values():
            stack.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        self.base.warm_up()


def _combinations(experiments: tuple[ExperimentConfig, ...]):
    """Every combination of arms one user can be served (one arm or none per layer): yields
    (key, [(experiment, arm)]). More than MAX_STACKS is an ExperimentError."""
    layers: dict[str, list[tuple[ExperimentConfig, ArmConfig] | None]] = {}
    for e in experiments:
        layers.setdefault(e.layer, [None]).extend((e, arm) for arm in e.arms)
    count = functools.reduce(lambda n, options: n * len(options), layers.values(), 1)
    if count > MAX_STACKS:
        raise ExperimentError(
            f"serving.experiments: {count} combinations of arms across layers "
            f"({' x '.join(f'{name}: {len(o)}' for name, o in layers.items())}), more than "
            f"{MAX_STACKS} serving stacks; end finished experiments or share a layer")
    for choice in itertools.product(*layers.values()):
        arms = [c for c in choice if c is not None]
        yield Key((e.id, arm.name) for e, arm in arms), arms


def front(service: HomepageService | Homepages) -> Homepages:
    """``service`` as a front (built if it is a bare stack)."""
    return service if isinstance(service, Homepages) else Homepages(service)


__all__ = ["Homepages", "front"]
