"""The local Beam runner: Beam's DirectRunner, without its first try of the Prism runner.

Since Beam 2.6x, ``--runner=DirectRunner`` first offers every pipeline it can to the Prism
runner: it converts the whole pipeline to its proto form and downloads a Go binary from GitHub
for it. Where that download fails (no network, as on the development machines), it falls
back to the FnApiRunner after paying for the conversion: 1.8 s of the Transform on MovieLens
100K, 2.7 s over the run's Beam steps. Where it succeeds, the run is on another runner than
the one this project tests and tunes (``beam.direct_running_mode`` means nothing to Prism).

``beam.runner: DirectRunner`` (the default) runs :class:`DirectRunner`: Beam's own
``SwitchingDirectRunner`` with Prism ruled out the way Beam's interactive runner rules it out,
so each pipeline goes to the FnApiRunner (or, for what it cannot run, the bundle-based
runner) as before, with the same options. To try Prism, set ``beam.runner: PrismRunner``.
"""

from __future__ import annotations

from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

# What beam_args passes for beam.runner "DirectRunner".
QUALIFIED_NAME = f"{__name__}.DirectRunner"


class DirectRunner(SwitchingDirectRunner):
    """``SwitchingDirectRunner`` that never offers a pipeline to Prism (module docstring)."""

    # SwitchingDirectRunner.run_pipeline reads this flag only to rule Prism out.
    _is_interactive = True
