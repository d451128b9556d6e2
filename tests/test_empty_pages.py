"""An empty page is never a silent success: when the filters leave nothing, the fallback answers
and says so. Once a bug: every MovieLens user under 18 got an empty 200 page (all of its titles
are ``unrated``, and minors see only G/PG/PG-13)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from marquee.config import ServingConfig, load_config
from marquee.data import contract as c
from serving.homepage.service import HomepageService
from serving.models.index_store import IndexStore
from serving.state.catalogue import Catalogue
from tests import test_homepage
from tests.test_homepage import GENEROUS, KID, NOW, FixedModelBackend, interactions, users

model_base = test_homepage.model_base  # the tiny model base fixture, shared
ROOT = Path(__file__).resolve().parents[1]


def unrated_catalogue() -> Catalogue:
    """The tiny catalogue with every title unrated, as MovieLens's."""
    cat = test_homepage.catalogue()
    frame = pd.DataFrame({c.ITEM_ID: cat.item_ids, c.TITLE: cat.titles,
                          c.GENRES: [list(g) for g in cat.genres], c.CAST: [[]] * len(cat.titles),
                          c.DIRECTOR: None, c.RELEASE_YEAR: None, c.DURATION_SECONDS: None,
                          c.ADDED_AT: NOW - 100 * 86_400, c.MATURITY_RATING: "unrated",
                          c.KEYWORDS: None})
    return Catalogue.from_frame(frame)


def service(model_base, rerank) -> HomepageService:
    config = ServingConfig(k=6, rerank=rerank, **GENEROUS)
    config = dataclasses.replace(config, sources=tuple(
        dataclasses.replace(s, deadline_ms=30_000) for s in config.sources))
    return HomepageService(FixedModelBackend(), IndexStore(model_base), unrated_catalogue(),
                           users(), config, now=lambda: NOW, interactions=interactions())


def test_filters_that_empty_a_minors_page_fall_back_and_say_so(model_base):
    page = service(model_base, ServingConfig().rerank).homepage(KID)
    assert page.items == [] and page.fallback, page  # nothing a minor may see: not silent
    assert "re-rank filters left no title" in page.reason
    assert "the popularity fallback has no title either" in page.reason


def test_a_catalogue_without_ratings_allows_unrated_titles_by_config(model_base):
    allow = tuple({**s, "unrated": "allow"} if s["step"] == "maturity" else s
                  for s in ServingConfig().rerank)
    page = service(model_base, allow).homepage(KID)
    assert len(page.items) == 6 and not page.fallback, page


def test_the_movielens_config_allows_unrated_titles_and_keeps_the_other_steps():
    steps = load_config(ROOT / "configs" / "movielens.yaml").serving.rerank
    assert {"step": "maturity", "unrated": "allow"} in steps
    assert [s for s in steps if s["step"] != "maturity"] == [
        s for s in ServingConfig().rerank if s["step"] != "maturity"]
