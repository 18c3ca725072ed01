"""The report's plots (PNG, matplotlib's Agg backend): latency vs request rate, stage breakdown.

matplotlib is imported only here and only when a plot is drawn, so the CSV and markdown outputs
work on a machine without it (the GPU image). Every plot reads the same way: value axes start at 0
(linear), the colocated baseline comes first and is drawn black and dashed, and the legend sits
outside the axes, clear of the data.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from epd.metrics.breakdown import STAGES
from epd.report.collect import is_baseline, is_finite_rate

BASELINE_COLORS = ("black", "dimgray", "darkgray")  # colocated variants; other lines take matplotlib's cycle
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, "fontsize": "small"}
TITLES = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end latency"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def baseline_first(labels) -> list[str]:
    """Labels in drawing order: the colocated baseline (and its variants) first, then the others sorted."""
    return sorted(labels, key=lambda label: (not is_baseline(label), label))


def line_styles(labels: list[str]) -> dict[str, dict[str, Any]]:
    """matplotlib keyword arguments per label: colocated black (then grays) and dashed, others solid."""
    styles, baselines = {}, 0
    for label in labels:
        if is_baseline(label):
            color = BASELINE_COLORS[min(baselines, len(BASELINE_COLORS) - 1)]
            styles[label] = {"color": color, "linestyle": "--", "marker": "s"}
            baselines += 1
        else:
            styles[label] = {"linestyle": "-", "marker": "o"}
    return styles


def plot_lines(ax, lines: dict[str, list[tuple[float, float]]]) -> None:
    """One line per label (points sorted by x), baseline first; the y axis starts at 0."""
    order = baseline_first(lines)
    styles = line_styles(order)
    for label in order:
        points = sorted(lines[label])
        ax.plot([x for x, _ in points], [y for _, y in points], label=label, **styles[label])
    top = max((y for points in lines.values() for _, y in points), default=0.0)
    ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)  # headroom: a flat line is not drawn on the frame
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)


def latency_figure(rows: list[dict[str, Any]], metric: str, stat: str = "mean"):
    """The figure of `metric` ("ttft", "tpot", "e2e") `stat` against request rate, one line per
    label; None when no row has a finite rate and a value. Rows at an infinite rate (everything sent
    at once) have no x value and are left out."""
    key = f"{metric}_{stat}_ms"
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if is_finite_rate(row) and row.get(key) is not None:
            lines[row["label"]].append((row["request_rate"], row[key]))
    if not lines:
        return None
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    plot_lines(ax, lines)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel(f"{metric.upper()} {stat} (ms)")
    ax.set_title(f"{TITLES.get(metric, metric)} ({stat}) vs request rate")
    ax.legend(**LEGEND_OUTSIDE)
    return fig


def plot_latency_vs_rate(rows: list[dict[str, Any]], metric: str, path: Path, stat: str = "mean") -> Path | None:
    """Write :func:`latency_figure` to `path` (PNG); None (nothing written) when there is no figure."""
    fig = latency_figure(rows, metric, stat)
    return None if fig is None else save(fig, path)


def save(fig, path: Path) -> Path:
    """Save as PNG with the outside legend inside the image, and free the figure."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_breakdown(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Stacked horizontal bars: per row (label @ rate), the mean time in each stage; they add up to
    the mean end-to-end latency. None (nothing written) when no row has a breakdown."""
    stages = [s for s in STAGES if any(row.get(f"stage_{s}_ms") for row in rows)]
    bars = [row for row in rows if any(row.get(f"stage_{s}_ms") is not None for s in stages)]
    if not stages or not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.42 * len(bars)))
    names = [_bar_name(row) for row in bars]
    left = [0.0] * len(bars)
    colors = plt.get_cmap("tab20").colors
    for i, stage in enumerate(stages):
        widths = [row.get(f"stage_{stage}_ms") or 0.0 for row in bars]
        ax.barh(names, widths, left=left, label=stage, color=colors[(2 * i) % len(colors)])
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("mean time in stage (ms)")
    ax.set_title("where a request's time goes (stage breakdown)")
    ax.legend(**LEGEND_OUTSIDE)
    ax.grid(True, axis="x", alpha=0.3)
    return save(fig, path)


def _bar_name(row: dict[str, Any]) -> str:
    rate = row.get("request_rate")
    return f"{row['label']} @ {rate:g}/s" if rate is not None else str(row["label"])
