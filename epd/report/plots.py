"""The report's plots (PNG, matplotlib's Agg backend): latency vs request rate, stage breakdown.

matplotlib is imported only here and only when a plot is drawn, so the CSV and markdown outputs
work on a machine without it (the GPU image).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from epd.metrics.breakdown import STAGES
from epd.report.collect import is_finite_rate

LOG_SCALE_SPREAD = 20.0  # a latency axis spanning more than this factor is drawn log-scale
TITLES = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end latency"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_rate(rows: list[dict[str, Any]], metric: str, path: Path, stat: str = "mean") -> Path | None:
    """`metric` ("ttft", "tpot", "e2e") `stat` against request rate, one line per label.

    Rows at an infinite rate (everything sent at once) have no x value and are left out; returns
    None (and writes nothing) when no row has a finite rate and a value.
    """
    key = f"{metric}_{stat}_ms"
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if is_finite_rate(row) and row.get(key) is not None:
            lines[row["label"]].append((row["request_rate"], row[key]))
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in sorted(lines):
        points = sorted(lines[label])
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    values = [y for points in lines.values() for _, y in points if y > 0]
    if values and max(values) / min(values) > LOG_SCALE_SPREAD:
        ax.set_yscale("log")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel(f"{metric.upper()} {stat} (ms)")
    ax.set_title(f"{TITLES.get(metric, metric)} ({stat}) vs request rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
    ax.set_xlabel("mean time in stage (ms)")
    ax.set_title("where a request's time goes (stage breakdown)")
    ax.legend(
        fontsize="small", ncol=min(len(stages), 4), loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.5 / len(bars))
    )
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _bar_name(row: dict[str, Any]) -> str:
    rate = row.get("request_rate")
    return f"{row['label']} @ {rate:g}/s" if rate is not None else str(row["label"])
