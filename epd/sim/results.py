"""A simulated run's results: the summary of ``epd.run`` (same records, same ``summarize_run``, same
loggers), marked ``simulated``."""

from __future__ import annotations

from pathlib import Path

from epd.metrics import build_logger, format_table, summarize_run
from epd.metrics.summary import STAT_KEYS
from epd.metrics.writer import RecordWriter
from epd.sim.config import SimRunConfig

RECORDS_UP_TO = 100_000
"""``sim.records=auto`` writes every record up to this many requests."""


def summarize_sim(cfg: SimRunConfig, sim, records: list, facts: dict) -> dict:
    """``summarize_run`` over the records, plus ``simulated: true`` and ``sim`` (how it was simulated)."""
    wl = cfg.run.workload
    driver = facts["driver"]
    duration = max(facts["end"] - facts["start"], 1e-9)
    summary = summarize_run(
        records,
        duration,
        phase_starts=driver.phase_starts if driver is not None else (),
        phase_rates=wl.phase_rates,
        slo_ttft_ms=wl.slo_ttft_ms,
        slo_tpot_ms=wl.slo_tpot_ms,
    )
    notes = ["output lengths are max_tokens (no EOS is simulated)"]
    if not facts["all_token_times"]:
        summary["itl_ms"] = dict.fromkeys(STAT_KEYS)
        notes.append("sim.token_times=ends: records keep the first and last token times; ITL not recorded")
    summary["peak_memory"] = {}
    summary["simulated"] = True
    hw = sim.profile["hardware"]
    summary["sim"] = {
        "profile": cfg.profile,
        "profile_device": hw.get("device"),
        "profile_model": sim.profile["model"].get("name"),
        "topology": sim.topology.name,
        "num_gpus": 0 if sim.on_cpu and cfg.sim.shared_host else sim.topology.num_gpus,
        "num_instances": len(sim.topology.instances),
        "events": facts["events"],
        "wall_s": facts["wall_s"],
        "cpu_s": facts["cpu_s"],
        "workload_build_s": facts["build_s"],
        "work_s": {dev: dict(sorted(per.items())) for dev, per in facts.get("work_s", {}).items()},
        "notes": notes,
    }
    return summary


def write_results(cfg: SimRunConfig, sim, records: list, summary: dict) -> None:
    """records.jsonl (``RecordWriter``) and results.json (and W&B) through the configured logger, as
    ``epd.run`` writes them."""
    config = cfg.to_dict()
    config["topology"] = sim.topology.to_dict()
    config["model"] = sim.profile["model"].get("config") or config["model"]
    measured = [r for r in records if not r.warmup]
    keep = cfg.sim.records
    if keep == "none" or (keep == "auto" and len(measured) > RECORDS_UP_TO):
        summary["sim"]["notes"].append(f"sim.records={keep}: {len(measured)} records summarised, not written")
        measured = []
    writer = RecordWriter(Path(cfg.run.run_dir))
    try:
        for record in measured:
            writer.write(record)
    finally:
        writer.close()
    with build_logger(cfg.run.logger, Path(cfg.run.run_dir)) as logger:
        logger.log_run(config, summary, measured)
    if not cfg.run.logger.quiet:
        print(format_table(summary), flush=True)
