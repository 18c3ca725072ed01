"""seed_table: epd's standard experiment, in one command (epd/conf/experiment/seed_table.yaml).

    python experiments/seed_table/run.py --out OUT                       # fit a 480 s device budget
    python experiments/seed_table/run.py --out OUT --budget-s 1200       # a bigger budget: more requests
    python experiments/seed_table/run.py --out OUT --full                # the full table: 64 per rate (~55 min)
    python experiments/seed_table/run.py --out OUT --baseline-requests 3 # + transformers, one request at a time
    python experiments/seed_table/run.py --out OUT --topologies= --phase-requests 3,10,21 --baseline-requests 3
                                                          # only the baseline, for the counts of an earlier plan
    python experiments/seed_table/run.py --dry-run                       # print the plan and the commands

Each configuration (topology) is one epd job whose ranks start once and which plays the rates as
load phases (workload.phase_rates): 0.1 req/s, then 0.3, then 0.6, each phase starting when the
previous one has drained. Within a budget the rates stay and the requests per rate shrink
(plan.py); the plan, every job's output and the report say "REDUCED" when it is not the full
table. Run directories (with the generated 1080p images, ~0.7 MB each) stay in --work-dir; OUT
gets only the small files: <topology>/results.json, epd_config.json, job.log, plan.json,
report.csv/md (+ PNG plots where matplotlib is installed; else run `python -m epd.report OUT` and
`python experiments/seed_table/plot.py OUT` afterwards). Arguments after `--` are Hydra
overrides for every job (e.g. `-- engine.kv_fraction=0.8`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from plan import FULL_REQUESTS, RATES, Plan, budget_plan, fixed_plan

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = ("1e1p_2gpu", "2e1p_2gpu", "colocated")
KEPT_FILES = {
    "results.json": "results.json",
    "epd_config.json": "epd_config.json",
    ".hydra/overrides.yaml": "overrides.yaml",
}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=REPO / "experiments" / "seed_table" / "results" / time.strftime("%Y-%m-%d_%H-%M")
    )
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "epd-seed-table")
    p.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma-separated topology configs")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="request rates (req/s), one phase each")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="64 requests per rate (no budget)")
    size.add_argument("--requests", type=int, help="this many requests per rate (no budget)")
    size.add_argument("--phase-requests", help="requests of each rate, e.g. 3,10,21 (no budget): repeats a plan")
    size.add_argument("--budget-s", type=float, default=480.0, help="device seconds for the whole run (default 480)")
    p.add_argument("--min-requests", type=int, default=3, help="fewest requests per rate in a budgeted run")
    p.add_argument("--job-overhead-s", type=float, default=45.0, help="estimate: start-up + warm-up of one job")
    p.add_argument("--drain-s", type=float, default=10.0, help="estimate: time for a phase's last requests to finish")
    p.add_argument("--baseline-requests", type=int, default=0, help="also time transformers on this many requests")
    p.add_argument("--baseline-request-s", type=float, default=20.0, help="estimate: transformers, one request")
    p.add_argument("--baseline-overhead-s", type=float, default=45.0, help="estimate: transformers load + warm-up")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    return p.parse_args(argv), overrides


def make_plan(args: argparse.Namespace, rates: list[float], jobs: int) -> Plan:
    baseline_s = (
        args.baseline_overhead_s + args.baseline_requests * args.baseline_request_s if args.baseline_requests else 0.0
    )
    estimates = {"job_overhead_s": args.job_overhead_s, "drain_s": args.drain_s, "baseline_s": baseline_s}
    if args.phase_requests:
        counts = [int(n) for n in args.phase_requests.split(",")]
        if len(counts) != len(rates):
            raise SystemExit(f"--phase-requests {args.phase_requests}: give one count per rate of --rates {args.rates}")
        return Plan(rates=rates, requests=counts, jobs=jobs, reduced=min(counts) < FULL_REQUESTS, **estimates)
    if args.full or args.requests:
        return fixed_plan(rates, 64 if args.full else args.requests, jobs, **estimates)
    return budget_plan(rates, args.budget_s, jobs, min_requests=args.min_requests, **estimates)


def job_overrides(topology: str, plan: Plan, work_dir: Path, extra: list[str]) -> list[str]:
    rates = ",".join(f"{r:g}" for r in plan.rates)
    counts = ",".join(str(n) for n in plan.requests)
    return [
        "+experiment=seed_table",
        f"+topology={topology}",
        f"workload.phase_rates=[{rates}]",
        f"workload.phase_requests=[{counts}]",
        f"hydra.run.dir={work_dir / topology}",
        *extra,
    ]


def run_logged(cmd: list[str], log_file: Path, timeout_s: float | None) -> tuple[int, float]:
    """Run `cmd` in its own process group, its output both on our stdout and in `log_file`; kill the
    group at `timeout_s`. Returns (exit code, wall seconds); 124 on timeout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGTERM)

    timer = threading.Timer(timeout_s, kill) if timeout_s is not None else None
    if timer is not None:
        timer.start()
    with log_file.open("w") as log:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    code = proc.wait()
    if timer is not None:
        timer.cancel()
    return (124 if timed_out.is_set() else code), time.monotonic() - start


def keep_results(run_dir: Path, out_dir: Path) -> None:
    """Copy the run's small files (not its media) into OUT."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, dst in KEPT_FILES.items():
        if (run_dir / src).is_file():
            shutil.copy2(run_dir / src, out_dir / dst)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    topologies = [t for t in args.topologies.split(",") if t]
    rates = [float(r) for r in args.rates.split(",")]
    plan = make_plan(args, rates, len(topologies))
    print(plan.describe(), flush=True)
    commands = {t: [sys.executable, "-m", "epd.run", *job_overrides(t, plan, args.work_dir, extra)] for t in topologies}
    baseline_cmd = [
        sys.executable,
        str(Path(__file__).with_name("baseline.py")),
        f"--out={args.out / 'transformers'}",
        f"--requests={args.baseline_requests}",
        f"--rates={','.join(f'{r:g}' for r in plan.rates)}",
        f"--phase-requests={','.join(str(n) for n in plan.requests)}",
        f"--work-dir={args.work_dir / 'transformers'}",
        "--",
        *extra,
    ]
    if args.dry_run:
        for cmd in [*commands.values(), *([baseline_cmd] if args.baseline_requests else [])]:
            print(" ".join(cmd))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = None if (args.full or args.requests or args.phase_requests) else time.monotonic() + args.budget_s
    status: dict[str, dict] = {}
    overhead_s = plan.job_overhead_s
    for topology, cmd in commands.items():
        expected_s = plan.job_s - plan.job_overhead_s + overhead_s
        left_s = None if deadline is None else deadline - time.monotonic() - plan.baseline_s
        if left_s is not None and left_s < expected_s:
            print(
                f"seed_table: skipping {topology}: ~{expected_s:.0f} s needed, {left_s:.0f} s of budget left",
                flush=True,
            )
            status[topology] = {"skipped": True, "expected_s": expected_s}
            continue
        print(f"\n=== seed_table: {topology} ===\n{' '.join(cmd)}", flush=True)
        code, wall_s = run_logged(cmd, args.out / topology / "job.log", None if left_s is None else left_s + 30)
        keep_results(args.work_dir / topology, args.out / topology)
        status[topology] = {"exit_code": code, "wall_s": wall_s}
        if code == 0:  # learn the real start-up cost for the budget check of the next configuration
            overhead_s = max(0.0, wall_s - (plan.job_s - plan.job_overhead_s))
    if args.baseline_requests:
        left_s = None if deadline is None else max(30.0, deadline - time.monotonic())
        print(f"\n=== seed_table: transformers baseline ===\n{' '.join(baseline_cmd)}", flush=True)
        code, wall_s = run_logged(baseline_cmd, args.out / "transformers" / "job.log", left_s)
        status["transformers"] = {"exit_code": code, "wall_s": wall_s}
    (args.out / "plan.json").write_text(
        json.dumps({**plan.to_dict(), "status": status, "commands": commands}, indent=2)
    )
    finish(args.out, plan)
    return 0 if all(s.get("exit_code", 0) == 0 and not s.get("skipped") for s in status.values()) else 1


def finish(out: Path, plan: Plan) -> None:
    """Write the report (plots only where matplotlib is installed) and print the tables."""
    sys.path.insert(0, str(REPO))
    try:
        from plot import plan_note, seed_table_markdown

        from epd.report import write_report

        written = write_report(out, out)
        print("\n" + written["markdown"].read_text())
        table = seed_table_markdown(out, plan_note(out))
        (out / "seed_table.md").write_text(table)
        print(table)
    except Exception as exc:  # the results are already in OUT; the report can be made again locally
        print(f"seed_table: report not written ({type(exc).__name__}: {exc}); run python -m epd.report {out}")
    print(plan.describe())


if __name__ == "__main__":
    sys.exit(main())
