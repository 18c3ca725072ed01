"""Calibrate a profile against one real run: what each kind of work costs inside a job, not alone.

    python -m epd.sim.calibrate profile=P/profile.json run=RUN_DIR [out=P/calibrated.json]
        [iterations=8] [tolerance=0.01] [sim.num_gpus=1 ...]

A profile times every kind of work alone (``epd.profile``). Inside a job the same work meets the
job's other processes and threads: on a small shared host a fetch or an engine step runs 1.5-2x
slower among them (``experiments/sim_validation``), on a GPU host the loops' overheads add up.
Calibration measures that once: the real run's records give the mean service time of each kind of
work (below); the same run is simulated from the profile; each factor is real / simulated; the
simulation is repeated with the factors until every stage is within ``tolerance`` (queueing and core
sharing move with the factors, so one pass is not enough). The result is the profile with a
``calibration`` section (``factors``, the run it came from, the real and simulated stage means of
the last pass), which ``epd.sim`` / ``epd.plan`` apply (``epd.sim.costs``). Calibrate on one run
(its own seed), then simulate the others: that is the test ``experiments/sim_validation`` runs.

A calibration holds for the load it saw (on a small host the in-job costs grow with load). Given
several runs (``run=A,B``: e.g. the lowest and the highest rate you will plan for), each is
calibrated apart and kept with its load (``calibration.points``: the busiest device's utilisation
in that run simulated from the profile alone); ``epd.sim`` then finds the load of the run it
simulates the same way and takes the factors on the straight line between the points around it.

Stages (seconds, means over the run's measured requests; a stage the run lacks keeps factor 1):

    frontend      arrival to the request's dispatch (tokenize, probe, the control message to the first
                  rank that takes it in: ``language_arrival`` or ``encode_queue_start``) *
    fetch         an item's fetch and decode on a decode thread (``decode_ms``)
    preprocess    the processor after it (``preprocess_ms``, the processor lock's wait included)
    tower         one tower call (``tower_ms``, once per batch)
    transfer      the last item's encode end to its embeddings at the language instance *
    prefill       ``prefill_start`` to ``first_token``
    kv_transfer   ``kv_transfer_start`` to ``kv_transfer_end`` (prefill/decode split) *
    decode        time per output token after the first (TPOT)

* These end when a receiving rank's loop has taken the message in, so each also holds the wait for
  that loop's current step, which depends on how steps and arrivals happen to interleave, not on the
  work's cost (a 1% change of the step time moves it from nothing to a whole step). For them the
  statistic is the ``TRANSFER_QUANTILE`` quantile: the messages that met an idle loop. Where a loop
  is never idle (one language rank decoding all the time) even that quantile waits, the factor runs
  into ``FACTOR_RANGE`` and the calibration says so (``clamped``, ``converged``: false).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from epd.config import from_dict, to_dict
from epd.metrics.records import RequestRecord, load_records
from epd.sim.config import SimOptions
from epd.sim.costs import CALIBRATED, calibration_factors

USAGE = """usage: python -m epd.sim.calibrate profile=P run=RUN_DIR[,RUN_DIR...] [out=OUT] [iterations=8] [tolerance=0.01] [sim.KEY=V ...]
       (installed: epd-sim-calibrate)
"""
TRANSFER_QUANTILE = 0.2
WAITS_ON_A_LOOP = ("frontend", "transfer", "kv_transfer")
MAX_STEP = 4.0
"""At most this factor of change per pass."""
FACTOR_RANGE = (0.05, 20.0)
"""Factors are clamped here: a stage 20x off its profile is a broken profile, not contention."""


def stage_means(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Seconds of each calibrated stage over the measured records (warm-up and failed ones left out): the
    mean, or for the stages that wait on a loop the ``TRANSFER_QUANTILE`` quantile; a stage no record went
    through is absent."""
    samples: dict[str, list[float]] = {kind: [] for kind in CALIBRATED}
    batches: set[tuple[Any, Any]] = set()
    for rec in records:
        if rec.warmup or rec.error or not rec.token_times:
            continue
        ts = rec.timestamps
        dispatch = [ts[k] for k in ("language_arrival", "encode_queue_start") if k in ts]
        if dispatch:
            samples["frontend"].append(min(dispatch) - rec.arrival)
        for item in rec.items:
            if item.get("decode_ms") is not None:
                samples["fetch"].append(item["decode_ms"] / 1e3)
            if item.get("preprocess_ms") is not None:
                samples["preprocess"].append(item["preprocess_ms"] / 1e3)
            key = (item.get("encoder"), item.get("batch_id"))
            if item.get("tower_ms") is not None and key[1] is not None and key[1] >= 0 and key not in batches:
                batches.add(key)
                samples["tower"].append(item["tower_ms"] / 1e3)
        for kind, start, end in (("transfer", "encode_end", "transfer_end"), ("prefill", "prefill_start", "first_token"),
                                 ("kv_transfer", "kv_transfer_start", "kv_transfer_end")):  # fmt: skip
            if start in ts and end in ts:
                samples[kind].append(max(0.0, ts[end] - ts[start]))
        if rec.tpot_ms is not None:
            samples["decode"].append(rec.tpot_ms / 1e3)
        elif rec.num_output_tokens > 1:
            samples["decode"].append((rec.token_times[-1] - rec.token_times[0]) / (rec.num_output_tokens - 1))
    return {
        kind: _quantile(values, TRANSFER_QUANTILE) if kind in WAITS_ON_A_LOOP else statistics.fmean(values)
        for kind, values in samples.items()
        if values
    }


def _next_factor(factor: float, sim: float, real: float, before: tuple[float, float] | None) -> float:
    """The next factor for a stage: a secant step through this pass and the one before (a stage is
    roughly ``fixed + factor * work``: its fixed part, e.g. a control message, makes a plain ratio creep
    towards the answer), else the ratio ``real / sim``; clamped to ``FACTOR_RANGE``."""
    lo, hi = FACTOR_RANGE
    guess = factor * real / sim
    if before is not None:
        f0, s0 = before
        slope = (sim - s0) / (factor - f0) if factor != f0 else 0.0
        if slope > 0:
            guess = factor + (real - sim) / slope
    guess = min(factor * MAX_STEP, max(factor / MAX_STEP, guess))  # a noisy slope must not jump to a bound
    return min(hi, max(lo, guess))


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile, interpolated between the closest ranks."""
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _sim_config(run_config: dict, profile_path: str, sim_overrides: dict, run_dir: str):
    from epd.sim import build_sim_config

    raw = copy.deepcopy(run_config)
    for key in ("run_dir", "device", "profile", "sim", "hydra"):
        raw.pop(key, None)
    raw["run_dir"] = run_dir
    raw["profile"] = profile_path
    raw["logger"] = {"name": "jsonl", "options": {}, "quiet": True}  # nothing is written: the records stay in memory
    raw["sim"] = dict(sim_overrides)
    return build_sim_config(raw)


@contextmanager
def _sim_run(run_config: dict, profile: dict, sim_overrides: dict):
    """The simulated run ``run_config`` describes, from ``profile`` (written to a temporary file for it)."""
    with tempfile.TemporaryDirectory(prefix="epd-calibrate-") as tmp:
        path = Path(tmp) / "profile.json"
        path.write_text(json.dumps(profile))
        yield _sim_config(run_config, str(path), sim_overrides, str(Path(tmp) / "run"))


def simulated_stages(run_config: dict, profile: dict, sim_overrides: dict, processor: Any = None) -> dict[str, float]:
    """Simulate the run ``run_config`` describes from ``profile``; the stage means of its records."""
    from epd.sim import Simulation

    with _sim_run(run_config, profile, sim_overrides) as cfg:
        records, _ = Simulation(cfg, profile, processor).run()
    return stage_means(records)


def simulated_load(run_config: dict, profile: dict, sim_overrides: dict, processor: Any = None) -> float:
    """The run's load from ``profile`` alone (``epd.sim.simulation.load_alone``)."""
    from epd.sim.simulation import load_alone

    with _sim_run(run_config, profile, sim_overrides) as cfg:
        return load_alone(cfg, profile, processor)


def calibrate_at_loads(
    profile: dict,
    run_dirs: Sequence[str | Path],
    sim_overrides: dict | None = None,
    iterations: int = 8,
    tolerance: float = 0.01,
    processor: Any = None,
    log=print,
) -> dict:
    """``profile`` calibrated on each run apart, its factors kept per load (``calibration.points``): the
    load of a run is its busiest device's utilisation simulated from the profile alone, so a simulation
    takes the factors of its own load (``epd.sim.costs.factors_at``). One run: ``calibrate``."""
    base = {k: v for k, v in profile.items() if k != "calibration"}
    if len(run_dirs) == 1:
        return calibrate(base, run_dirs[0], sim_overrides, iterations, tolerance, processor, log)
    points = []
    for run_dir in run_dirs:
        log(f"run {run_dir}:")
        cal = calibrate(base, run_dir, sim_overrides, iterations, tolerance, processor, log)["calibration"]
        load = simulated_load(run_config_of(Path(run_dir)), base, dict(sim_overrides or {}), processor)
        log(f"load (busiest device's utilisation, simulated from the profile alone): {load:.3f}")
        points.append({"load": round(load, 4), **cal})
    points.sort(key=lambda p: p["load"])
    out = copy.deepcopy(base)
    out["calibration"] = {
        "factors": points[0]["factors"],
        "points": points,
        "converged": all(p["converged"] for p in points),
        "clamped": sorted({k for p in points for k in p["clamped"]}),
        "run": [p["run"] for p in points],
        "sim": points[0]["sim"],
        "note": "factors per load (points); epd.sim takes those of its own run's load, straight lines between "
        "the points and the nearest point's outside them; factors = the lowest load's",
    }
    return out


def run_config_of(run_dir: Path) -> dict:
    """The resolved config a run recorded (``epd_config.json``, else results.json's ``config``)."""
    for name in ("epd_config.json", "results.json"):
        path = run_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            return data["config"] if name == "results.json" else data
    raise ValueError(f"{str(run_dir)!r} holds no epd_config.json or results.json: pass the directory of a finished run")


def calibrate(
    profile: dict,
    run_dir: str | Path,
    sim_overrides: dict | None = None,
    iterations: int = 8,
    tolerance: float = 0.01,
    processor: Any = None,
    log=print,
) -> dict:
    """``profile`` with a ``calibration`` section fitted to the real run in ``run_dir`` (module docstring)."""
    run_dir = Path(run_dir)
    run_config = run_config_of(run_dir)
    try:
        records = load_records(run_dir / "results.json")
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{str(run_dir)!r}: its results.json cannot be read ({exc}); pass a finished run") from exc
    real = stage_means(records)
    if not real:
        raise ValueError(f"the run in {str(run_dir)!r} has no measured request with tokens: nothing to calibrate on")
    sim_overrides = dict(sim_overrides or {})
    options = {  # every option the passes simulate with (JSON has no infinity)
        k: None if isinstance(v, float) and math.isinf(v) else v
        for k, v in to_dict(from_dict(SimOptions, sim_overrides, "sim")).items()
    }
    out = copy.deepcopy(profile)
    factors = calibration_factors(profile)
    out.pop("calibration", None)
    lo, hi = FACTOR_RANGE
    sim: dict[str, float] = {}
    off: dict[str, float] = {}
    converged = False
    last: dict[str, tuple[float, float]] = {}  # kind -> (factor, simulated stage) of the pass before
    for step in range(1, iterations + 1):
        out["calibration"] = {"factors": factors}
        sim = simulated_stages(run_config, out, sim_overrides, processor)
        kinds = [k for k in real if sim.get(k, 0.0) > 0]
        log(f"pass {step}: " + ", ".join(f"{k} {real[k] * 1e3:.3g}/{sim[k] * 1e3:.3g} ms" for k in kinds))
        off = {k: real[k] / sim[k] for k in kinds if abs(real[k] / sim[k] - 1.0) > tolerance}
        stuck = {k for k, r in off.items() if (factors[k] >= hi and r > 1) or (factors[k] <= lo and r < 1)}
        converged = not off
        if not off or set(off) == stuck or step == iterations:
            break  # the factors kept are the ones this pass simulated
        new = dict(factors)
        for k in off:
            new[k] = _next_factor(factors[k], sim[k], real[k], last.get(k))
            last[k] = (factors[k], sim[k])
        factors = new
    clamped = sorted(k for k in off if factors[k] >= hi or factors[k] <= lo)
    if not converged:
        log(f"warning: not converged; still off by more than {tolerance:.0%}: "
            + ", ".join(f"{k} (real / sim {r:.2f}{', factor clamped' if k in clamped else ''})" for k, r in off.items()))  # fmt: skip
    out["calibration"] = {
        "factors": {k: round(v, 4) for k, v in factors.items()},
        "converged": converged,
        "clamped": clamped,
        "run": str(run_dir.absolute()),
        "sim": options,
        "real_stage_s": real,
        "sim_stage_s": sim,
        "note": "a stage the run lacked keeps factor 1; sim_stage_s is what these factors simulated",
    }
    return out


def _value(text: str) -> Any:
    """A ``sim.KEY=VALUE`` value as Hydra would read it: JSON (numbers, true/false, null, lists) or a plain
    string (``none``, ``anticipate``); Python's True/False too; ``null`` is None."""
    if text in ("True", "False"):
        return text == "True"
    if text.lower() == "null":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            return float(text)  # .5, 1e3
        except ValueError:
            return text
    return value


def _parse(argv: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    args: dict[str, str] = {"iterations": "8", "tolerance": "0.01"}
    sim: dict[str, Any] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(USAGE + __doc__)
            sys.exit(0)
        key, eq, value = arg.partition("=")
        if not eq:
            raise ValueError(f"bad argument {arg!r}: pass key=value (profile=, run=, out=, iterations=, sim.*=)")
        if key.startswith("sim."):
            sim[key[4:]] = _value(value)
        elif key in ("profile", "run", "out", "iterations", "tolerance"):
            args[key] = value
        else:
            raise ValueError(f"unknown argument {key!r}: profile=, run=, out=, iterations=, tolerance=, sim.*=")
    for key in ("profile", "run"):
        if key not in args:
            raise ValueError(f"{key}= is required (python -m epd.sim.calibrate profile=P run=RUN_DIR)")
    return args, sim


def main(argv: list[str] | None = None) -> int:
    from epd.profile.schema import load_profile
    from epd.sim.__main__ import _processor
    from epd.sim.simulation import load_processor

    try:
        args, sim = _parse(sys.argv[1:] if argv is None else argv)
        profile = load_profile(args["profile"])
        out = Path(args.get("out") or Path(args["profile"]).with_name("calibrated.json"))
        runs = [r for r in args["run"].strip("[]").split(",") if r.strip()]
        result = calibrate_at_loads(profile, [r.strip() for r in runs], sim, int(args["iterations"]),
                                    float(args["tolerance"]), _processor(profile, load_processor))  # fmt: skip
    except ValueError as exc:
        print(f"epd.sim.calibrate: error: {exc}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(result, indent=1))
    cal = result["calibration"]
    for point in cal.get("points") or [cal]:
        at = f" at load {point['load']:.3f}" if "load" in point else ""
        print(f"factors{at}: " + ", ".join(f"{k} {v:.3g}" for k, v in point["factors"].items()))
    print(f"calibrated profile: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
