"""Feature keys, spelled once, and the transformed-name rule.

Raw keys are the keys of the tf.Examples the ExampleGen writes and of the serving signatures'
inputs; where a raw feature is a contract column it reuses the contract's name. Transformed keys
(``transformed_name``) are what ``preprocessing_fn`` outputs and the towers read.
"""

from __future__ import annotations

from marquee.data import contract as c

# Query side (user and context).
USER_ID = c.USER_ID
COUNTRY = c.COUNTRY
SUBSCRIPTION_TIER = c.SUBSCRIPTION_TIER
AGE_BUCKET = c.AGE_BUCKET
DEVICE = c.DEVICE
HOUR = "hour"  # hour of day, 0-23, UTC
DAY_OF_WEEK = "day_of_week"  # 0 = Monday
HISTORY = "history"  # item ids of the user's last N watches before this one, most recent first

# Candidate side (item).
ITEM_ID = c.ITEM_ID
GENRES = c.GENRES
CAST = c.CAST
DIRECTOR = c.DIRECTOR
RELEASE_YEAR = c.RELEASE_YEAR
DURATION_SECONDS = c.DURATION_SECONDS
TITLE = c.TITLE
KEYWORDS = c.KEYWORDS

# Carried for splitting, labels and analysis; not retrieval inputs.
TIMESTAMP = c.TIMESTAMP
WATCH_SECONDS = c.WATCH_SECONDS  # the ranking labels derive from it
POSITION = c.POSITION  # page slot (0 = unknown); only the ranker's training-time position tower

# Derived by preprocessing_fn.
TITLE_TOKENS = "title_tokens"

QUERY_STRING = (COUNTRY, SUBSCRIPTION_TIER, AGE_BUCKET, DEVICE)
QUERY_INT = (USER_ID, HOUR, DAY_OF_WEEK)
QUERY_INT_LIST = (HISTORY,)
CANDIDATE_STRING = (DIRECTOR, TITLE)
CANDIDATE_INT = (ITEM_ID, RELEASE_YEAR, DURATION_SECONDS)
CANDIDATE_STRING_LIST = (GENRES, CAST, KEYWORDS)
META_INT = (TIMESTAMP, POSITION)
META_FLOAT = (WATCH_SECONDS,)

QUERY_FEATURES = QUERY_INT + QUERY_STRING + QUERY_INT_LIST
CANDIDATE_FEATURES = CANDIDATE_INT + CANDIDATE_STRING + CANDIDATE_STRING_LIST
ALL_FEATURES = QUERY_FEATURES + CANDIDATE_FEATURES + META_INT + META_FLOAT

# Values the ExampleGen writes for a null in the contract (a missing feature breaks Transform).
MISSING_STRING = ""
MISSING_INT = 0
# Integer features the ExampleGen leaves out when unknown instead (a made-up number would enter
# their statistics: docs/monitoring.md); the serving signatures still take MISSING_INT for them.
OPTIONAL_INT = (RELEASE_YEAR,)

# Shared vocabulary for item ids: the candidate id and the history ids use the same one.
ITEM_VOCAB = "item_id_vocab"
USER_VOCAB = "user_id_vocab"


def hour_of_day(ts: int) -> int:
    """The HOUR feature of a UTC-seconds timestamp."""
    return (int(ts) // 3600) % 24


def day_of_week(ts: int) -> int:
    """The DAY_OF_WEEK feature: 0 = Monday (1970-01-01 was a Thursday)."""
    return (int(ts) // 86400 + 3) % 7


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def vocab_name(key: str) -> str:
    return f"{key}_vocab"
