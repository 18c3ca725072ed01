"""Write a report: the combined CSV, the markdown tables and the plots of every run under a directory."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from epd.metrics.breakdown import STAGES
from epd.report.collect import MISSING, is_baseline, load_rows

log = logging.getLogger("epd.report")

CSV_FILE = "report.csv"
MARKDOWN_FILE = "report.md"
PLOTS = {"ttft": "ttft_vs_rate.png", "tpot": "tpot_vs_rate.png"}
BREAKDOWN_PLOT = "breakdown.png"


def write_report(root: Path, out_dir: Path | None = None, stat: str = "mean") -> dict[str, Path]:
    """Write report.csv, report.md, ttft_vs_rate.png, tpot_vs_rate.png and breakdown.png for the runs
    under `root` into `out_dir` (default `root`); returns {name: path} of what was written.

    A job directory without results.json gets a row saying so (status "no results.json").
    Plots need matplotlib; without it they are skipped with a warning and the tables still written.
    """
    rows = sort_rows(load_rows(root, with_missing=True))
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else (root if root.is_dir() else root.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"csv": write_csv(rows, out_dir / CSV_FILE)}
    written["markdown"] = out_dir / MARKDOWN_FILE
    written["markdown"].write_text(markdown_report(rows, source=Path(root)))
    try:
        from epd.report.plots import plot_breakdown, plot_latency_vs_rate
    except ImportError as exc:  # pragma: no cover - plots is pure Python; matplotlib fails below
        log.warning("plots skipped: %s", exc)
        return written
    try:
        for metric, name in PLOTS.items():
            if plot_latency_vs_rate(rows, metric, out_dir / name, stat=stat) is not None:
                written[metric] = out_dir / name
        if plot_breakdown(rows, out_dir / BREAKDOWN_PLOT) is not None:
            written["breakdown"] = out_dir / BREAKDOWN_PLOT
    except ModuleNotFoundError as exc:
        log.warning("plots skipped (%s): pip install matplotlib", exc)
    return written


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The colocated baseline first, then by label, then rate (an infinite or unknown rate last); jobs
    without results at the end, in the order they were found."""
    done = [r for r in rows if r.get("status") != MISSING]
    done.sort(key=lambda r: (not is_baseline(r["label"]), r["label"], _rate_key(r["request_rate"])))
    return done + [r for r in rows if r.get("status") == MISSING]


def _rate_key(rate: float | None) -> float:
    return rate if rate is not None else float("inf")


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Every column of every row; empty cells for missing values."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    return path


def markdown_report(rows: list[dict[str, Any]], source: Path) -> str:
    """The latency/throughput table and the stage-breakdown table, in markdown."""
    slos = {(r.get("slo_ttft_ms"), r.get("slo_tpot_ms")) for r in rows if r.get("slo_attainment") is not None}
    lines = [f"# Report of `{source}`", "", f"{len(rows)} row(s). Latencies in ms; rates in requests/s."]
    missing = [r["run"] for r in rows if r.get("status") == MISSING]
    if missing:
        lines.append(f"**{len(missing)} job(s) without results.json** (failed or unfinished): {', '.join(missing)}.")
    if len(slos) == 1:
        ttft, tpot = next(iter(slos))
        targets = [f"{name} <= {value:g} ms" for name, value in (("TTFT", ttft), ("TPOT", tpot)) if value is not None]
        lines.append(f"Goodput and SLO attainment under {' and '.join(targets)}.")
    lines += ["", *latency_table(rows), "", "## Stage breakdown (mean ms in each stage)", "", *breakdown_table(rows)]
    return "\n".join(lines) + "\n"


def latency_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| config | rate | ok/total | TTFT mean | TTFT p50 | TTFT p99 | TPOT mean | TPOT p50 | TPOT p99 "
        "| E2E mean | req/s | out tok/s | goodput | SLO met | peak GiB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("status") == MISSING:
            cells = [r["label"], _rate(r["request_rate"]), MISSING] + ["-"] * (head.count("|") - 4)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [
            r["label"],
            _rate(r["request_rate"]),
            f"{r.get('num_completed')}/{r.get('num_requests')}",
            *(_num(r.get(f"ttft_{s}_ms")) for s in ("mean", "p50", "p99")),
            *(_num(r.get(f"tpot_{s}_ms")) for s in ("mean", "p50", "p99")),
            _num(r.get("e2e_mean_ms")),
            _num(r.get("request_throughput"), 3),
            _num(r.get("output_token_throughput")),
            _num(r.get("goodput"), 3),
            _percent(r.get("slo_attainment")),
            _num(r.get("peak_mem_gib"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def breakdown_table(rows: list[dict[str, Any]]) -> list[str]:
    stages = [s for s in STAGES if any(r.get(f"stage_{s}_ms") is not None for r in rows)]
    if not stages:
        return ["(no stage timestamps in these runs)"]
    head = "| config | rate | " + " | ".join(stages) + " | E2E mean |"
    lines = [head, "|" + "---|" * (len(stages) + 3)]
    for r in (r for r in rows if r.get("status") != MISSING):
        cells = [r["label"], _rate(r["request_rate"]), *(_num(r.get(f"stage_{s}_ms")) for s in stages)]
        lines.append("| " + " | ".join([*cells, _num(r.get("e2e_mean_ms"))]) + " |")
    return lines


def _num(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
