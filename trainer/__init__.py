"""trainer package. Importing marquee first sets TF_USE_LEGACY_KERAS before TensorFlow loads."""

import marquee  # noqa: F401
