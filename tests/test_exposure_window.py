"""The live exposure window: figures worked by hand, expiry with a fake clock, titles added while
serving, the same numbers as the batch metrics on the same impressions, threads, and memory that
does not grow with traffic."""

import dataclasses
import math
import threading

import numpy as np
import pandas as pd
import pytest

from marquee.data import contract as c
from marquee.monitoring import exposure
from marquee.monitoring.window import ExposureWindow
from serving.api.metrics import Metrics
from serving.homepage.page import Homepage, Pick
from serving.state.catalogue import Catalogue

DAY = 86_400
T0 = 12 * DAY  # "now" in these tests: day 12 (a multiple of every bucket width used)
SCALARS = 7 * 8  # bytes of the per-bucket scalars, per bucket: 7 int64/float64 arrays


def items(ids, genres, added_at) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({
        c.ITEM_ID: ids, c.TITLE: [f"T{i}" for i in ids], c.GENRES: genres, c.CAST: [[]] * n,
        c.KEYWORDS: [[]] * n, c.DIRECTOR: [None] * n, c.RELEASE_YEAR: [2000] * n,
        c.DURATION_SECONDS: [6000] * n, c.ADDED_AT: added_at, c.MATURITY_RATING: ["PG"] * n})


def four() -> Catalogue:
    """Titles 10, 20, 30, 40 at rows 0..3; 30 was added on day 10, the others on day 0."""
    return Catalogue.from_frame(items([10, 20, 30, 40],
                                      [["Drama"], ["Comedy"], ["Drama", "Comedy"], []],
                                      [0, 0, 10 * DAY, 0]))


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_two_pages_by_hand():
    # pages [10, 20] and [10, 30] -> counts 2, 1, 1, 0 (title 40 never shown)
    # coverage 3 / 4. Gini: sorted 0, 1, 1, 2, n = 4, total 4:
    #   sum (2i - n - 1) x_i = -3*0 - 1*1 + 1*1 + 3*2 = 6 -> 6 / (4 * 4) = 0.375
    # new within 7 days on day 12: title 30 (added day 10) -> 1 of 4 impressions; 1 new title
    # intra-list diversity: {Drama} vs {Comedy} = 1; {Drama} vs {Drama, Comedy} = 1 - 1/2
    #   -> mean (1 + 0.5) / 2 = 0.75
    # novelty: popularity 100, 50, 50, 0 -> ranks 1, 2.5, 2.5, 4; shown 10, 20, 10, 30
    #   -> (1 + 2.5 + 1 + 2.5) / 4 = 1.75
    window = ExposureWindow(four(), new_days=7, clock=Clock(),
                            popularity={10: 100, 20: 50, 30: 50, 40: 0})
    window.observe_items([10, 20])
    window.observe(Homepage(user_id=1, items=[Pick(10, "T10", 0.0), Pick(30, "T30", 0.0)]))
    assert window.counts().tolist() == [2, 1, 1, 0]
    assert window.stats() == {
        "pages": 2.0, "impressions": 4.0, "unknown_impressions": 0.0, "titles": 4.0,
        "titles_shown": 3.0, "coverage": 0.75, "gini": 0.375, "new_titles": 1.0,
        "new_title_share": 0.25, "intra_list_diversity": 0.75, "novelty": 1.75}


def test_an_empty_window_reports_no_data_and_novelty_needs_popularity():
    stats = ExposureWindow(four(), clock=Clock()).stats()
    assert "novelty" not in stats
    assert stats["pages"] == 0.0 and stats["coverage"] == 0.0 and stats["gini"] == 0.0
    assert math.isnan(stats["new_title_share"]) and math.isnan(stats["intra_list_diversity"])


def test_an_unknown_id_is_counted_apart_and_never_fails_the_page():
    window = ExposureWindow(four(), clock=Clock())
    window.observe_items([10, 999])
    stats = window.stats()
    assert (stats["impressions"], stats["unknown_impressions"]) == (1.0, 1.0)
    assert window.counts().tolist() == [1, 0, 0, 0]
    assert math.isnan(stats["intra_list_diversity"])  # one known title: no pair


def test_old_buckets_expire_with_the_clock():
    # window 60 s in 6 buckets of 10 s: a page stays in it for 50 to 60 s
    clock = Clock()
    window = ExposureWindow(four(), window_seconds=60, buckets=6, clock=clock)
    window.observe_items([10, 20])  # T0, bucket of slot s0
    clock.t = T0 + 25
    window.observe_items([30])  # slot s0 + 2
    clock.t = T0 + 59
    assert window.stats()["pages"] == 2.0 and window.counts().tolist() == [1, 1, 1, 0]
    clock.t = T0 + 60  # slot s0 + 6: s0 has left the window
    assert window.stats()["pages"] == 1.0 and window.counts().tolist() == [0, 0, 1, 0]
    window.observe_items([40])  # reuses the bucket that held s0: cleared first
    assert window.counts().tolist() == [0, 0, 1, 1]
    clock.t = T0 + 5  # the clock stepping back does not bring s0 back
    assert window.counts().tolist() == [0, 0, 1, 1]
    clock.t = T0 + 85  # slot s0 + 8: s0 + 2 has gone too
    assert window.counts().tolist() == [0, 0, 0, 1]
    clock.t = T0 + 1000
    stats = window.stats()
    assert stats["pages"] == stats["impressions"] == stats["coverage"] == 0.0


def test_titles_added_while_serving_join_the_catalogue_and_the_arrays():
    catalogue, clock = four(), Clock()
    window = ExposureWindow(catalogue, buckets=3, new_days=7, clock=clock)
    window.observe_items([10, 20])
    catalogue.add(items([50, 60], [["Drama"], ["Horror"]], [T0 - DAY, T0 - DAY]))
    # two more titles, never shown: coverage 2 / 6; new within 7 days: 30 (day 10), 50, 60;
    # the arrays keep their size until a page shows a new row
    stats = window.stats()
    assert (stats["titles"], stats["coverage"], stats["new_titles"]) == (6.0, 2 / 6, 3.0)
    assert window.counts().tolist() == [1, 1, 0, 0, 0, 0]
    assert window.nbytes == 3 * (4 * 4 + SCALARS)
    window.observe_items([60, 10])
    assert window.counts().tolist() == [2, 1, 0, 0, 0, 1]
    assert window.nbytes == 3 * (4 * 6 + SCALARS)
    stats = window.stats()
    assert stats["new_title_share"] == 0.25  # 60 of 10, 20, 60, 10
    assert stats["intra_list_diversity"] == 1.0  # {Comedy, Drama}; {Horror, Drama}


def test_the_same_figures_as_the_batch_metrics_on_the_same_impressions():
    rng = np.random.default_rng(7)
    n = 40
    ids = (np.arange(n) * 3 + 5).tolist()
    names = ["Drama", "Comedy", "Horror", "Kids", "Scifi"]
    genres = [sorted(rng.choice(names, rng.integers(0, 3), replace=False).tolist())
              for _ in range(n)]
    frame = items(ids, genres, rng.integers(0, T0, n).tolist())
    popularity = pd.Series(rng.poisson(5.0, n), index=ids)
    clock = Clock()
    window = ExposureWindow(Catalogue.from_frame(frame), window_seconds=3600, new_days=5,
                            popularity=popularity.to_dict(), clock=clock)
    rows = []
    for page in range(300):  # the last 10 titles are never shown, the others unevenly
        shown = rng.choice(ids[:30], rng.integers(0, 9), replace=False,
                           p=np.arange(1, 31) / (30 * 31 / 2)).tolist()
        at = T0 + int(rng.integers(0, 3000))
        clock.t = at
        window.observe_items(shown, timestamp=at)
        rows += [(page, i, at) for i in shown]
    shows = pd.DataFrame(rows, columns=[c.PAGE_ID, c.ITEM_ID, c.TIMESTAMP])
    stats, shown = window.stats(), shows[c.ITEM_ID].to_numpy()
    assert window.counts().tolist() == exposure.exposure_counts(shown, ids).tolist()
    assert stats["pages"] == 300 and stats["impressions"] == len(shows)
    assert stats["coverage"] == exposure.coverage(shown, ids) == 0.75
    assert stats["gini"] == pytest.approx(exposure.exposure_gini(shown, ids), abs=1e-12)
    assert stats["new_title_share"] == pytest.approx(
        exposure.new_title_share(shows, frame, days=5), abs=1e-12)
    assert 0 < stats["new_title_share"] < 1
    assert stats["intra_list_diversity"] == pytest.approx(
        exposure.intra_list_diversity(shows, frame).mean(), abs=1e-12)
    assert stats["novelty"] == pytest.approx(exposure.novelty(shown, popularity), abs=1e-12)


def test_threads_lose_no_page():
    window = ExposureWindow(four(), clock=Clock())
    start = threading.Barrier(9)
    errors = []

    def serve():
        start.wait()
        for _ in range(500):
            window.observe_items([10, 20])

    def scrape():
        start.wait()
        for _ in range(200):
            stats = window.stats()
            if stats["impressions"] != 2 * stats["pages"]:
                errors.append(stats)

    threads = [threading.Thread(target=serve) for _ in range(8)]
    threads.append(threading.Thread(target=scrape))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # every scrape saw whole pages
    assert window.counts().tolist() == [4000, 4000, 0, 0]
    assert window.stats()["pages"] == 4000


@dataclasses.dataclass
class BigCatalogue:
    """A catalogue view of ``n`` titles without building the serving one."""

    n: int

    def __post_init__(self):
        self.item_ids = np.arange(self.n, dtype=np.int64)
        self.genres = [["Drama"] if i % 2 else ["Comedy"] for i in range(self.n)]
        self.added_at = np.zeros(self.n, np.int64)
        self.row = {i: i for i in range(self.n)}


def test_memory_is_the_catalogue_times_the_buckets_whatever_the_traffic():
    n, clock = 100_000, Clock()
    window = ExposureWindow(BigCatalogue(n), window_seconds=600, buckets=12, clock=clock)
    bound = 12 * (4 * n + SCALARS)  # the class docstring: 4 bytes per title per bucket
    assert window.nbytes == bound
    rng = np.random.default_rng(0)
    for step in range(2000):  # 2000 pages over 40 windows
        clock.t = T0 + 12 * step
        window.observe_items(rng.integers(0, n, 20).tolist())
    assert window.nbytes == bound
    assert window.stats()["pages"] == 50  # 600 s of pages every 12 s
    with_popularity = ExposureWindow(BigCatalogue(n), popularity={0: 1.0}, clock=clock)
    with_popularity.stats()
    assert with_popularity.nbytes == bound + 8 * n  # and the ranks


@pytest.mark.parametrize("kwargs, message", [
    ({"buckets": 0}, "buckets must be an integer >= 1, got 0"),
    ({"window_seconds": 0}, "window_seconds must be positive, got 0"),
    ({"new_days": -1}, "new_days must be positive, got -1"),
])
def test_bad_settings_say_what_arrived(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExposureWindow(four(), **kwargs)


def test_the_servers_metrics_export_the_window_as_exposure_gauges():
    window = ExposureWindow(four(), clock=Clock())
    window.observe_items([10, 20])
    window.observe_items([10, 30])
    text = Metrics({"exposure": window.stats}).render()[0].decode()
    assert "marquee_exposure_coverage 0.75\n" in text
    assert "marquee_exposure_gini 0.375\n" in text
    assert "marquee_exposure_pages 2.0\n" in text
