"""marquee: retrieval -> ranking -> re-ranking for a video-streaming service, on TFX.

Importing this package sets ``TF_USE_LEGACY_KERAS=1``. TensorFlow Recommenders needs Keras 2
(``tf-keras``); TensorFlow 2.16 picks Keras 3 unless the variable is set before TensorFlow is first
imported. This is the only place the project sets it: every entry point (the ``marquee`` command,
the test suite, the TFX module files) imports ``marquee`` before TensorFlow.
"""

import os
import warnings

if os.environ.get("TF_USE_LEGACY_KERAS", "1") != "1":
    raise RuntimeError(
        "TF_USE_LEGACY_KERAS is set to "
        f"{os.environ['TF_USE_LEGACY_KERAS']!r}, but TensorFlow Recommenders needs Keras 2. "
        "Unset it or set TF_USE_LEGACY_KERAS=1."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# google-api-core warns on every import under Python 3.10, which TFX 1.16 requires. The
# environment variable carries the filter into Beam's worker processes.
_PY310_NOTICE = "You are using a non-supported Python version"
warnings.filterwarnings("ignore", message=_PY310_NOTICE)
if _PY310_NOTICE not in os.environ.get("PYTHONWARNINGS", ""):
    os.environ["PYTHONWARNINGS"] = ",".join(
        w for w in (os.environ.get("PYTHONWARNINGS"), f"ignore:{_PY310_NOTICE}") if w)

__version__ = "0.1.0"
