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
# TensorFlow's C++ log: 3 keeps its start-up "Unable to register cuDNN/cuFFT/cuBLAS factory"
# errors (a CPU-only machine; once per process, Beam workers included) out of every command;
# TensorFlow's Python errors still raise. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Notices every process prints on import, none of them actionable here: google-api-core warns
# under Python 3.10 (which TFX 1.16 requires); google-cloud-aiplatform (a TFX dependency) about
# a google-cloud-storage version TFX pins. The environment variable carries the filters into
# Beam's worker processes.
_IMPORT_NOTICES = ("You are using a non-supported Python version",
                   "Support for google-cloud-storage < 3.0.0 will be removed")
for _notice in _IMPORT_NOTICES:
    warnings.filterwarnings("ignore", message=_notice)
    if _notice not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(
            w for w in (os.environ.get("PYTHONWARNINGS"), f"ignore:{_notice}") if w)

from marquee import logs as _logs  # noqa: E402

_logs.install_hook()  # TensorFlow's shut-down TypeError in Beam workers (marquee/logs.py)

__version__ = "0.1.0"
