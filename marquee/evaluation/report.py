"""Writes an evaluation run to disk: ``metrics.json`` and ``report.md`` (with PNG plots).

``metrics.json`` holds every figure under its flat key, sorted (``ease.recall@20``). ``report.md``
has one table per metric (a row per model, a column per K), plus the fit seconds when given. With
matplotlib installed, each table is followed by a plot of the metric against K (``<metric>.png``);
without it the report says so and holds the tables only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from marquee.evaluation.protocol import METRICS

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
MATPLOTLIB_HINT = "pip install matplotlib"


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parse_key(key: str) -> tuple[str, str, int | None]:
    """``"ease.recall@20"`` -> ``("ease", "recall", 20)``; ``"ease.fit_seconds"`` ->
    ``("ease", "fit_seconds", None)``. Raises ValueError for a key without a model prefix."""
    model, dot, rest = key.rpartition(".")
    if not dot or not model:
        raise ValueError(f"metric key {key!r} has no model prefix; expected '<model>.<metric>@<K>'")
    metric, at, k = rest.partition("@")
    if at and not k.isdigit():
        raise ValueError(f"metric key {key!r}: K must be an integer")
    return model, metric, int(k) if at else None


def _table(models: list[str], columns: list[str], cell) -> list[str]:
    lines = ["| model | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(cell(model, col) for col in columns) + " |")
    return lines


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.4f}"


def write_report(
    metrics: Mapping[str, float],
    out_dir: str | Path,
    title: str = "Offline evaluation",
    notes: Sequence[str] = (),
    plots: bool | None = None,
) -> Path:
    """Writes ``out_dir/metrics.json`` and ``out_dir/report.md``; returns the report's path.

    Args:
      metrics: ``{"<model>.<metric>@<K>": value}`` as returned by ``evaluate_peers``; keys
        without ``@K`` (``<model>.fit_seconds``) go to a table of their own.
      out_dir: created if missing; files there are replaced.
      title: the report's heading.
      notes: lines listed under the heading (dataset, split sizes, tuning choices).
      plots: True to require PNG plots (ImportError with the install hint without matplotlib),
        False for tables only, None for plots when matplotlib is installed.
    """
    plt = None if plots is False else _pyplot()
    if plots and plt is None:
        raise ImportError(f"plots=True needs matplotlib: `{MATPLOTLIB_HINT}`.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")

    models: list[str] = []
    by_metric: dict[str, dict[tuple[str, int | None], float]] = {}
    for key, value in metrics.items():
        model, metric, k = parse_key(key)
        if model not in models:
            models.append(model)
        by_metric.setdefault(metric, {})[(model, k)] = float(value)
    order = [m for m in METRICS if m in by_metric] + sorted(set(by_metric) - set(METRICS))

    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    if plt is None and plots is None:
        lines.append(f"- Plots skipped: matplotlib is not installed (`{MATPLOTLIB_HINT}`).")
    lines.append(f"- Every figure is also in `{METRICS_FILE}` under `<model>.<metric>@<K>`.")
    for metric in order:
        values = by_metric[metric]
        ks = sorted({k for _, k in values if k is not None})
        columns = [f"@{k}" for k in ks] if ks else ["value"]
        lines += ["", f"## {metric}", ""]
        lines += _table(models, columns, lambda model, col, v=values: _fmt(
            v.get((model, int(col[1:]) if col.startswith("@") else None))))
        if plt is not None and ks:
            _plot(plt, metric, models, ks, values, out_dir / f"{metric}.png")
            lines += ["", f"![{metric} against K]({metric}.png)"]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(plt, metric: str, models: list[str], ks: list[int],
          values: Mapping[tuple[str, int | None], float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        points = [(k, values[(model, k)]) for k in ks if (model, k) in values]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=model)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric}@K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
