"""Candidate sources: one module each, and the registry the config's ``serving.sources`` names.

Adding a source is one module with a class obeying :class:`serving.sources.base.CandidateSource`
and a ``build(ctx)`` function, plus one line in ``SOURCES``.
"""

from __future__ import annotations

from collections.abc import Callable

from serving.sources import als, collaborative, content, item_to_item, trending
from serving.sources.base import BuildContext, CandidateSource

SOURCES: dict[str, Callable[[BuildContext], CandidateSource]] = {
    "als": als.build,
    "collaborative": collaborative.build,
    "content": content.build,
    "item_to_item": item_to_item.build,
    "trending": trending.build,
}
