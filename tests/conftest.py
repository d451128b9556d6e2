"""Shared fixtures. Importing marquee first sets TF_USE_LEGACY_KERAS before TensorFlow loads."""

import warnings
from pathlib import Path

import marquee  # noqa: F401

warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
MOVIELENS_100K = REPO.parent / "shared" / "datasets" / "movielens-100k"
