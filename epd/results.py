"""``python -m epd.results <run dir>``: rebuild a run's results.json from what it left on disk.

A job whose frontend was killed (SIGKILL, a crash) never wrote results.json, but every request that
finished was appended to ``records.jsonl`` as it ended. This rebuilds results.json from those records,
the run's inputs (``workload.jsonl``) and its config (``epd_config.json``): every request of the
workload appears once, the ones with no record marked ``aborted: the frontend stopped before it
finished``, and the summary says the results were rebuilt. ``python -m epd.report`` does the same
for a run directory that has records but no results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from epd.metrics import RequestRecord, build_logger, load_records, summarize_run
from epd.metrics.writer import RECORDS_FILE

WORKLOAD_FILE = "workload.jsonl"
CONFIG_FILE = "epd_config.json"
ABORTED = "aborted: the frontend stopped before it finished (results rebuilt from records.jsonl)"


def rebuild_results(run_dir: Path) -> dict:
    """Write ``run_dir/results.json`` from its records; returns the summary."""
    from epd.config import load_run_config, to_dict
    from epd.workload import load_requests

    run_dir = Path(run_dir)
    records_path = run_dir / RECORDS_FILE
    if not records_path.exists():
        raise ValueError(f"{run_dir} has no {RECORDS_FILE}: it is not an epd run directory, or nothing ran")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    done: dict[tuple[str, bool], list[RequestRecord]] = {}
    for record in load_records(records_path):
        done.setdefault((record.id, record.warmup), []).append(record)
    requests = load_requests(run_dir / WORKLOAD_FILE) if (run_dir / WORKLOAD_FILE).exists() else []
    ordered = []
    for req in requests:
        found = done.get((req.id, req.warmup))
        if found:
            ordered.append(found.pop(0))
        else:
            ordered.append(RequestRecord(id=req.id, arrival=0.0, warmup=req.warmup, phase=req.phase, error=ABORTED))
    ordered += [r for rest in done.values() for r in rest]  # served requests, or records beyond the workload
    times = [t for r in ordered for t in (r.arrival, *r.token_times) if t > 0]
    duration = max(times) - min(times) if len(times) > 1 else 1e-9
    summary = summarize_run(ordered, max(duration, 1e-9))
    summary.update(status="rebuilt", cut_short_reason="the frontend stopped before writing results", events=[])
    with build_logger(cfg.logger, run_dir) as logger:
        logger.log_run(to_dict(cfg), summary, [r for r in ordered if not r.warmup])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epd.results", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (holds records.jsonl and epd_config.json)")
    args = parser.parse_args(argv)
    try:
        summary = rebuild_results(args.run_dir)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"epd.results: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"rebuilt {args.run_dir / 'results.json'}: {summary['num_requests']} requests, "
        f"{summary['num_failed']} failed or aborted"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
