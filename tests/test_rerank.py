"""Re-rank steps: one contract on every step, hand-checked rows, MMR against a numpy reference."""

import dataclasses
import itertools

import numpy as np
import pytest

from marquee.data import contract as c
from serving.rerank import (
    ALLOWED_MATURITY,
    MMR,
    BlockList,
    ExcludeWatched,
    Exploration,
    FreshnessBoost,
    MaturityFilter,
    MaxPerGenre,
    RerankContext,
    RerankStep,
    Scored,
    build_pipeline,
    exploration_slots,
    request_rng,
    scored_from_catalogue,
)
from serving.state.catalogue import UserProfile
from tests.test_sources import CATALOGUE, DAY, NOW

GENRES = ("action", "comedy", "drama", "horror", "romance", "scifi")


def random_items(rng: np.random.Generator, n: int, start: int = 1, dim: int = 4) -> list[Scored]:
    return [Scored(item_id=start + i, score=float(rng.normal()),
                   genres=tuple(rng.choice(GENRES, size=rng.integers(0, 3), replace=False)),
                   added_at=int(NOW - rng.integers(0, 30) * DAY),
                   maturity=str(rng.choice(c.MATURITY_RATINGS)), embedding=rng.normal(size=dim))
            for i in range(n)]


def ctx(user_id=7, watched=(), age="25-34", seed=0, pool=()) -> RerankContext:
    return RerankContext(UserProfile(user_id, age_bucket=age, watched=frozenset(watched)), NOW,
                         seed, tuple(pool))


STEPS = {
    "exclude_watched": ExcludeWatched(),
    "maturity": MaturityFilter(),
    "block_list": BlockList(frozenset({3, 5, 101})),
    "max_per_genre": MaxPerGenre(2),
    "freshness": FreshnessBoost(days=7, boost=1.5, mode="add"),
    "mmr": MMR(lam=0.6, k=10),
    "mmr_genres": MMR(lam=0.3, k=40),
    "exploration": Exploration(share=0.25, seed=3),
    "pipeline": build_pipeline([
        {"step": "exclude_watched"}, {"step": "maturity"}, {"step": "block_list", "item_ids": [3]},
        {"step": "freshness", "days": 7, "boost": 1.2}, {"step": "max_per_genre", "n": 3},
        {"step": "mmr", "lam": 0.7, "k": 12}, {"step": "exploration", "share": 0.2}]),
}


# ---------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("seed", [0, 1])
def test_contract(name, seed):
    step = STEPS[name]
    rng = np.random.default_rng(seed)
    items = random_items(rng, 30)
    if name == "mmr_genres":
        items = [dataclasses.replace(x, embedding=None) for x in items]
    pool = random_items(rng, 8, start=100)
    context = ctx(watched={2, 4, 100}, age="under-18", seed=seed, pool=pool)
    before = [(x.item_id, x.score) for x in items]

    assert isinstance(step, RerankStep)
    out = step.apply(items, context)
    ids = [x.item_id for x in out]
    assert [(x.item_id, x.score) for x in items] == before, "the input was changed"
    assert len(set(ids)) == len(ids), "duplicates"
    assert set(ids) <= {x.item_id for x in items + pool}, "items from nowhere"
    if not isinstance(step, Exploration) and name != "pipeline":
        assert set(ids) <= {x.item_id for x in items}, "only exploration adds items"
    if step.is_filter:
        kept = set(ids)
        assert out == [x for x in items if x.item_id in kept], "a filter keeps the order"
    again = step.apply(items, context)
    assert [(x.item_id, x.score) for x in again] == [(x.item_id, x.score) for x in out]
    assert step.apply([], context) == []


def test_pipeline_filters_the_exploration_pool_too():
    items = scored_from_catalogue(CATALOGUE, [1, 2], [2.0, 1.0])
    pool = scored_from_catalogue(CATALOGUE, [3, 4, 5, 6], [0.0] * 4)  # G, R, NC-17, unrated
    pipeline = build_pipeline([ExcludeWatched(), MaturityFilter(), BlockList({3}),
                               Exploration(share=0.5)])
    for seed in range(10):
        out = pipeline.apply(items, ctx(age="under-18", seed=seed, pool=pool))
        assert [x.item_id for x in out] == [1, 2]  # 3 blocked, 4-6 too mature for under-18
    out = pipeline.apply(items, ctx(age="45-54", pool=pool, watched={4, 5}))
    assert [x.item_id for x in out if x.explore] == [6]


# ---------------------------------------------------------------------------- filters

def test_filters_hand_checked():
    items = scored_from_catalogue(CATALOGUE, [6, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1])
    assert [x.maturity for x in items] == ["unrated", "NC-17", "R", "G", "PG-13", "PG"]
    ids = lambda out: [x.item_id for x in out]  # noqa: E731
    assert ids(MaturityFilter().apply(items, ctx(age="under-18"))) == [3, 2, 1]
    assert ids(MaturityFilter().apply(items, ctx(age="25-34"))) == [6, 5, 4, 3, 2, 1]
    assert ids(MaturityFilter().apply(items, ctx(age=""))) == [6, 5, 4, 3, 2, 1]  # unknown
    assert ids(ExcludeWatched().apply(items, ctx(watched={5, 1}))) == [6, 4, 3, 2]
    assert ids(BlockList({4, 6}).apply(items, ctx())) == [5, 3, 2, 1]
    assert all(set(v) <= set(c.MATURITY_RATINGS) for v in ALLOWED_MATURITY.values())


def test_max_per_genre_hand_checked():
    items = scored_from_catalogue(CATALOGUE, [1, 2, 6, 3, 4, 5], [6, 5, 4, 3, 2, 1])
    items.append(Scored(7, 0.0))  # no genres: always kept
    # 1 scifi+drama, 2 scifi+action, 6 scifi, 3 romance+drama, 4 romance, 5 comedy.
    # n=1: 1 takes scifi and drama, so 2, 6 (scifi) and 3 (drama) go.
    assert [x.item_id for x in MaxPerGenre(1).apply(items, ctx())] == [1, 4, 5, 7]
    # n=2: 6 is the third scifi; 3 is the second drama.
    assert [x.item_id for x in MaxPerGenre(2).apply(items, ctx())] == [1, 2, 3, 4, 5, 7]
    with pytest.raises(ValueError, match="n >= 1"):
        MaxPerGenre(0)


def test_freshness_hand_checked():
    # 6 was added 2 days before the request; 1 and 2 100 days before; 8 is not out yet.
    items = scored_from_catalogue(CATALOGUE, [1, 2, 6], [1.0, 0.9, 0.6])
    items.append(Scored(8, 0.5, added_at=NOW + DAY))
    ids = lambda step: [(x.item_id, round(x.score, 6)) for x in step.apply(items, ctx())]  # noqa
    assert ids(FreshnessBoost(days=7, boost=1.6)) == [(1, 1.0), (6, 0.96), (2, 0.9), (8, 0.5)]
    assert ids(FreshnessBoost(days=7, boost=0.5, mode="add")) == [
        (6, 1.1), (1, 1.0), (2, 0.9), (8, 0.5)]
    assert ids(FreshnessBoost(days=1, boost=10.0)) == [(1, 1.0), (2, 0.9), (6, 0.6), (8, 0.5)]
    with pytest.raises(ValueError, match="mode 'multiply' or 'add'"):
        FreshnessBoost(days=7, boost=2.0, mode="power")


# ---------------------------------------------------------------------------- MMR

def mmr_reference(scores, similarity, lam, k):
    """Textbook MMR with plain loops: ``similarity [n, n]``; returns the order of indices."""
    span = scores.max() - scores.min()
    rel = (scores - scores.min()) / span if span > 0 else np.zeros(len(scores))
    chosen, left = [], list(range(len(scores)))
    while left and len(chosen) < k:
        best, best_value = None, -np.inf
        for i in left:
            penalty = max((similarity[i, j] for j in chosen), default=0.0)
            value = lam * rel[i] - (1 - lam) * penalty
            if value > best_value:
                best, best_value = i, value
        chosen.append(best)
        left.remove(best)
    return chosen + left


def cosine_matrix(emb):
    n = len(emb)
    return np.array([[emb[i] @ emb[j] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j]))
                      for j in range(n)] for i in range(n)])


def jaccard_matrix(genres):
    return np.array([[len(set(a) & set(b)) / len(set(a) | set(b)) if set(a) | set(b) else 0.0
                      for b in genres] for a in genres])


@pytest.mark.parametrize("lam, n, k, kind", list(itertools.product(
    [0.0, 0.3, 0.7, 1.0], [1, 7, 40], [1, 5, 100], ["embedding", "genres"])))
def test_mmr_matches_numpy_reference(lam, n, k, kind):
    rng = np.random.default_rng(n * 1000 + k)
    items = random_items(rng, n, dim=8)
    scores = np.array([x.score for x in items])
    if kind == "genres":
        items = [dataclasses.replace(x, embedding=None) for x in items]
        sim = jaccard_matrix([x.genres for x in items])
    else:
        sim = cosine_matrix(np.stack([x.embedding for x in items]))
    out = MMR(lam=lam, k=k).apply(items, ctx())
    assert [x.item_id - 1 for x in out] == mmr_reference(scores, sim, lam, k)
    assert [x.score for x in out] == [scores[x.item_id - 1] for x in out]  # scores unchanged


def test_mmr_hand_checked():
    # relevance (min-max): 1 -> 1, 2 -> 0.8, 3 -> 0; 1 and 2 share drama (Jaccard 1), 3 none.
    items = [Scored(1, 1.0, ("drama",)), Scored(2, 0.9, ("drama",)), Scored(3, 0.5, ("comedy",))]
    # lam 0.5: after 1, item 2 = 0.5 * 0.8 - 0.5 * 1 = -0.1 < item 3 = 0 -> 1, 3, 2.
    assert [x.item_id for x in MMR(0.5, 3).apply(items, ctx())] == [1, 3, 2]
    # lam 0.9: item 2 = 0.72 - 0.1 = 0.62 > item 3 = 0 -> relevance order.
    assert [x.item_id for x in MMR(0.9, 3).apply(items, ctx())] == [1, 2, 3]
    # only the first k are MMR picks; the rest follow in their order.
    assert [x.item_id for x in MMR(0.5, 1).apply(items, ctx())] == [1, 2, 3]


# ---------------------------------------------------------------------------- exploration

def test_exploration_slots():
    assert exploration_slots(0.2, 10) == [4, 9]
    assert exploration_slots(0.25, 8) == [3, 7]
    assert exploration_slots(1 / 3, 9) == [2, 5, 8]
    assert exploration_slots(0.0, 10) == []


def page(step, user_id=7, seed=0, pool_size=10):
    items = [Scored(i, float(100 - i)) for i in range(1, 21)]
    pool = [Scored(100 + i, 0.0) for i in range(pool_size)]
    return step.apply(items, ctx(user_id=user_id, seed=seed, pool=pool))


def test_exploration_share_positions_and_order():
    out = page(Exploration(share=0.2))
    # 20 exploit items; slots 4, 9, 14, 19, 24: the 25th slot comes after the last exploit item.
    assert [p for p, x in enumerate(out) if x.explore] == [4, 9, 14, 19, 24]
    assert all(x.item_id >= 100 for x in out if x.explore)
    assert [x.item_id for x in out if not x.explore] == list(range(1, 21))  # order kept
    for m in range(1, len(out) + 1):  # every prefix holds floor(m * share)
        assert sum(x.explore for x in out[:m]) == m // 5
    assert [x.explore for x in page(Exploration(share=0.2), pool_size=1)].count(True) == 1
    assert not any(x.explore for x in page(Exploration(share=0.0)))


def test_exploration_is_reproducible_per_user_and_seed():
    explored = lambda out: [x.item_id for x in out if x.explore]  # noqa: E731
    step = Exploration(share=0.2)
    assert explored(page(step, seed=1)) == explored(page(step, seed=1))
    assert explored(page(step, seed=1)) != explored(page(step, seed=2))
    assert explored(page(step, user_id=7)) != explored(page(step, user_id=8))
    assert explored(page(step)) != explored(page(Exploration(share=0.2, seed=1)))
    # blake2b, not Python's per-process hash(): the same stream in every process.
    assert request_rng(7, 1).integers(1 << 30) == request_rng(7, 1).integers(1 << 30)
    assert int(request_rng(7, 1).integers(1 << 30)) == 874220900


def test_exploration_skips_pool_items_already_shown_or_watched():
    items = [Scored(1, 1.0), Scored(2, 0.5)]
    pool = [Scored(1, 0.0), Scored(3, 0.0), Scored(4, 0.0)]
    out = Exploration(share=0.5).apply(items, ctx(pool=pool, watched={4}))
    assert [(x.item_id, x.explore) for x in out] == [(1, False), (3, True), (2, False)]


# ---------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class MaxPerGenreConfig:  # a typed config entry, as marquee.config would hold it
    n: int
    step: str = "max_per_genre"


def test_build_pipeline_from_config_in_config_order():
    p = build_pipeline([{"step": "exclude_watched"}, {"step": "block_list", "item_ids": [3]},
                        MaxPerGenreConfig(n=1), MMR(0.5, 10)])
    assert [s.name for s in p.steps] == ["exclude_watched", "block_list", "max_per_genre", "mmr"]
    assert p.steps[1] == BlockList(frozenset({3})) and p.steps[2] == MaxPerGenre(1)
    # order is config: boosting the fresh 6 before capping scifi keeps 6, after keeps 1.
    items = scored_from_catalogue(CATALOGUE, [1, 6], [1.0, 0.6])
    fresh, cap = {"step": "freshness", "days": 7, "boost": 2.0}, {"step": "max_per_genre", "n": 1}
    assert [x.item_id for x in build_pipeline([fresh, cap]).apply(items, ctx())] == [6]
    assert [x.item_id for x in build_pipeline([cap, fresh]).apply(items, ctx())] == [1]


def test_build_pipeline_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"one of \['block_list', 'exclude_watched'"):
        build_pipeline([{"step": "shuffle"}])
    with pytest.raises(ValueError, match=r"'mmr' takes \['lam', 'k'\], got \['lambda'\]"):
        build_pipeline([{"step": "mmr", "lambda": 0.5}])
    with pytest.raises(ValueError, match="0 <= lam <= 1"):
        build_pipeline([{"step": "mmr", "lam": 2.0, "k": 5}])
