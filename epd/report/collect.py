"""Rows of a report: one per run (or per load phase of a run) found under a directory.

Every ``results.json`` below the directory is a run. A run whose summary has ``phases``
(`workload.phase_rates`) gives one row per phase, at that phase's rate; any other run gives one
row at its ``workload.request_rate``. A row's ``label`` says which variant it is: the run's own
``label`` when results.json has one (e.g. the transformers baseline), else its topology name plus
every other config key that differs between the runs (rate, request count and seed excluded, they
are what a line of the plot runs over), e.g. ``2e1p transfer.backend=zmq``.

A job directory without a results.json (a sweep job that failed or has not finished: it has
Hydra's ``.hydra/overrides.yaml``, or the ``overrides.yaml`` / ``epd_config.json`` / ``job.log`` a
kept run has) gives one row with ``status`` "no results.json", labelled with the job and its
overrides, so a report never silently shows fewer rows than the sweep had jobs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from epd.metrics.breakdown import STAGES

RESULTS_FILE = "results.json"
MISSING = "no results.json"  # the status of a job directory that has none
JOB_MARKERS = ("overrides.yaml", "epd_config.json", "job.log")  # files that make a directory a job
BASELINE = "colocated"  # the configuration every other is compared with: first in tables and plots
STATS = ("mean", "p50", "p90", "p99", "max")
LATENCIES = ("ttft", "tpot", "itl", "e2e")
# config keys that never tell variants apart: what one line of a plot varies, and bookkeeping
NOT_VARIANT = re.compile(
    r"^(run_dir|workload\.(request_rate|num_requests|seed|phase_rates|phase_requests|trace_path)|logger\..*"
    r"|topology\.instances.*|media\.allowed_dirs|server\.api_key.*)$"  # (allowed_dirs holds each job's run dir)
)


def find_results(root: Path) -> list[Path]:
    """Every results.json under `root` (or `root` itself when it is one), in natural path order."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.rglob(RESULTS_FILE), key=lambda p: _natural_key(str(p.relative_to(root))))


def load_rows(root: Path, *, with_missing: bool = False) -> list[dict[str, Any]]:
    """The report's rows for every run under `root` (and, with `with_missing`, one row per job
    directory without results); `ValueError` when there are none."""
    root = Path(root)
    paths = find_results(root)
    missing = missing_rows(root) if with_missing else []
    if not paths and not missing:
        raise ValueError(f"no {RESULTS_FILE} under {root}: point epd.report at a run or sweep directory")
    runs = [(path, json.loads(path.read_text())) for path in paths]
    labels = variant_labels([results for _, results in runs])
    rows = []
    for (path, results), label in zip(runs, labels, strict=True):
        run = str(path.parent.relative_to(root)) if root.is_dir() else str(path.parent)
        rows += run_rows(results, run=run or ".", label=label)
    return rows + missing


def find_missing(root: Path) -> list[Path]:
    """Job directories under `root` (or `root` itself) that have no results.json, in natural order."""
    root = Path(root)
    if not root.is_dir():
        return []
    jobs = {marker.parent for name in JOB_MARKERS for marker in root.rglob(name)}
    jobs = {job.parent if job.name == ".hydra" else job for job in jobs}
    missing = [job for job in jobs if not (job / RESULTS_FILE).is_file()]
    return sorted(missing, key=lambda p: _natural_key(str(p.relative_to(root))))


def missing_rows(root: Path) -> list[dict[str, Any]]:
    """One row per job without results: which job, its overrides, its rate when an override sets it."""
    rows = []
    for job in find_missing(root):
        run = str(job.relative_to(root)) or "."
        overrides = job_overrides(job)
        values = dict(o.lstrip("+").partition("=")[::2] for o in overrides)
        label = f"job {run}" + (f": {' '.join(overrides)}" if overrides else "")
        rate = _number(values.get("workload.request_rate"))
        rows.append({"run": run, "label": label, "status": MISSING, "request_rate": rate})
    return rows


def job_overrides(job: Path) -> list[str]:
    """The command-line overrides a job ran with (Hydra's record of them), or []."""
    import yaml

    for path in (job / ".hydra" / "overrides.yaml", job / "overrides.yaml"):
        if path.is_file():
            loaded = yaml.safe_load(path.read_text())
            return [str(o) for o in loaded] if isinstance(loaded, list) else []
    return []


def run_rows(results: dict, *, run: str, label: str) -> list[dict[str, Any]]:
    """One row per phase of a run (one row when it has no phases)."""
    config = results.get("config") or {}
    summary = results.get("summary") or {}
    workload = config.get("workload") or {}
    base = {
        "run": run,
        "label": label,
        "status": "ok",
        "topology": (config.get("topology") or {}).get("name", ""),
        "peak_mem_gib": _peak_gib(summary.get("peak_memory") or {}),
    }
    phases = summary.get("phases") or [{"phase": "", "request_rate": workload.get("request_rate"), **summary}]
    return [{**base, **metric_columns(phase)} for phase in phases]


def metric_columns(summary: dict) -> dict[str, Any]:
    """A summary (or one phase of it) as flat report columns."""
    row: dict[str, Any] = {
        "request_rate": _rate(summary),
        "phase": summary.get("phase", ""),
        "num_requests": summary.get("num_requests"),
        "num_completed": summary.get("num_completed"),
        "num_failed": summary.get("num_failed"),
        "duration_s": summary.get("duration_s"),
    }
    for metric in LATENCIES:
        stats = summary.get(f"{metric}_ms") or {}
        row.update({f"{metric}_{stat}_ms": stats.get(stat) for stat in STATS})
    for key in ("request_throughput", "input_token_throughput", "output_token_throughput", "total_token_throughput"):
        row[key] = summary.get(key)
    row["goodput"] = summary.get("goodput")
    row["slo_attainment"] = summary.get("slo_attainment")
    slo = summary.get("slo") or {}
    row["slo_ttft_ms"], row["slo_tpot_ms"] = slo.get("ttft_ms"), slo.get("tpot_ms")
    breakdown = summary.get("breakdown_ms") or {}
    row.update({f"stage_{stage}_ms": (breakdown.get(stage) or {}).get("mean") for stage in STAGES})
    return row


def variant_labels(runs: list[dict]) -> list[str]:
    """The label of each run (see the module docstring)."""
    flat = [_flatten(results.get("config") or {}) for results in runs]
    auto = [i for i, results in enumerate(runs) if not results.get("label")]
    keys = sorted({key for i in auto for key in flat[i]})
    differing = [
        key
        for key in keys
        if not NOT_VARIANT.match(key) and key != "topology.name" and len({repr(flat[i].get(key)) for i in auto}) > 1
    ]
    labels = []
    for i, results in enumerate(runs):
        if results.get("label"):
            labels.append(str(results["label"]))
            continue
        parts = [str(flat[i].get("topology.name", "colocated"))]
        parts += [f"{key}={_short(flat[i].get(key))}" for key in differing]
        labels.append(" ".join(parts))
    return labels


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _rate(summary: dict) -> float | None:
    """A summary's request rate; results.json writes an infinite rate (every request at t=0) as null."""
    if "request_rate" in summary and summary["request_rate"] is None:
        return float("inf")
    return _number(summary.get("request_rate"))


def _number(value: Any) -> float | None:
    """Rates as floats; results.json writes an infinite rate as the string "inf"."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _peak_gib(peaks: dict) -> float | None:
    values = [p.get("reserved_gib", p.get("rss_gib")) for p in peaks.values() if isinstance(p, dict)]
    values = [v for v in values if isinstance(v, int | float)]
    return max(values) if values else None


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def is_baseline(label: str) -> bool:
    """Whether a row's label is the colocated baseline (any variant of it)."""
    return label == BASELINE or label.startswith(BASELINE + " ")


def is_finite_rate(row: dict) -> bool:
    """Whether the row has a finite request rate (an x value of the rate plots)."""
    rate = row.get("request_rate")
    return rate is not None and math.isfinite(rate)
