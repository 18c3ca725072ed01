"""Where a real CPU job's cores go, per process, against the work the simulator books for it.

    python experiments/sim_validation/cpu_use.py --out OUT --topology 1e1p --rates 4,20 \
        --profile results/cpu_calibrated/profiles/1e1p/calibrated.json

Runs ``python -m epd.run`` (the validation workload, ``run.py``'s) while sampling every process of
the job from /proc (user + system CPU time, every 20 ms), takes the CPU each used between the first
measured arrival and the last measured token (interpolated between samples), and simulates the same
run from the profile (``results.json``'s ``sim.work_s``: the profiled work booked per process in
the measured phase). Prints, per process: cores used for real, cores the simulation booked, and the
ratio. The measured phase is short at high rates (40 requests at 20 req/s: about 2 s), so a row is a
few hundred samples; repeat with ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import TOPOLOGIES, WORKLOAD, env  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15 of stat)


def run_queue_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a core (``/proc/PID/task/*/schedstat``)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if pid == ancestor:
            return True
    return False


def role_of(pid: int, launcher: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    if pid == launcher:
        return "launcher"
    envs = dict(e.split(b"=", 1) for e in environ if b"=" in e)
    if b"EPD_LAUNCHER_PID" not in envs or not descends(pid, launcher):
        return None
    if b"epd.frontend" in cmd:
        return "frontend"
    if b"epd.launch.worker" in cmd:
        return f"rank{envs.get(b'RANK', b'?').decode()}"
    return None


class Sampler(threading.Thread):
    """Every ``period`` s: (time.time(), {role: cpu seconds}) of the job's processes."""

    def __init__(self, launcher: int, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.launcher = launcher
        self.period = period
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.roles: dict[int, str | None] = {}  # None: not of the job
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            row: dict[str, float] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                role = self.roles.get(pid, "")
                if role == "":  # not known yet, or a child of the job not yet exec'ed into its role
                    role = role_of(pid, self.launcher)
                    if role is not None or not descends(pid, self.launcher):
                        self.roles[pid] = role
                if role is None:
                    continue
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    row[role] = cpu
                    row[f"{role} wait"] = run_queue_wait(pid)
            self.samples.append((now, row))
            time.sleep(self.period)


def at(samples: list[tuple[float, dict[str, float]]], t: float, role: str) -> float:
    """CPU seconds of ``role`` at time ``t`` (linear between the samples around it)."""
    pts = [(s, row[role]) for s, row in samples if role in row]
    for (t0, c0), (t1, c1) in zip(pts, pts[1:], strict=False):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
    return pts[-1][1] if pts and t > pts[-1][0] else (pts[0][1] if pts else 0.0)


def window(run_dir: Path) -> tuple[float, float]:
    recs = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if not r.get("warmup")]
    start = min(r["arrival"] for r in recs)
    end = max((r["token_times"] or [r["arrival"]])[-1] for r in recs)
    return start, end


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--topology", default="1e1p", choices=sorted(TOPOLOGIES))
    p.add_argument("--rates", default="4,20")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--profile", type=Path, required=True)
    p.add_argument("--sim", nargs="*", default=[], help="extra sim.KEY=V for the simulation")
    p.add_argument("--set", nargs="*", default=[], help="extra KEY=V for the real run and the simulation")
    args = p.parse_args()
    py = sys.executable
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        for rep in range(args.repeats):
            tag = f"{args.topology}_r{rate:g}_s{rep}"
            over = [*TOPOLOGIES[args.topology], *WORKLOAD, f"workload.num_requests={args.requests}",
                    f"workload.request_rate={rate}", f"workload.seed={rep}", "logger.quiet=true", *args.set]  # fmt: skip
            real = args.out / "real" / tag
            real.mkdir(parents=True, exist_ok=True)
            with open(real / "job.log", "w") as log:
                proc = subprocess.Popen([py, "-m", "epd.run", f"hydra.run.dir={real}", *over], env=env(),
                                        stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
                sampler = Sampler(proc.pid)
                sampler.start()
                proc.wait()
                sampler.stop.set()
                sampler.join()
            start, end = window(real)
            span = end - start
            roles = sorted({r for _, row in sampler.samples for r in row if not r.endswith(" wait")})
            waits = {r: (at(sampler.samples, end, f"{r} wait") - at(sampler.samples, start, f"{r} wait")) / span
                     for r in roles}  # fmt: skip
            used = {r: (at(sampler.samples, end, r) - at(sampler.samples, start, r)) / span for r in roles}
            sim = args.out / "sim" / tag
            subprocess.run([py, "-m", "epd.sim", f"hydra.run.dir={sim}", f"profile={args.profile}", *over, *args.sim],
                           env=env(), check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            summary = json.loads((sim / "results.json").read_text())["summary"]
            real_summary = json.loads((real / "results.json").read_text())["summary"]
            sim_span = summary["duration_s"]
            booked: dict[str, float] = {}
            for per in summary["sim"]["work_s"].values():
                for k, v in per.items():
                    booked[k] = booked.get(k, 0.0) + v / sim_span
            row = {"tag": tag, "span_s": span, "sim_span_s": sim_span, "real_cores": used, "real_run_queue_wait": waits, "sim_cores": booked,
                   "real_ttft_ms": real_summary["ttft_ms"]["mean"], "sim_ttft_ms": summary["ttft_ms"]["mean"],
                   "real_breakdown": real_summary.get("breakdown_ms"), "sim_breakdown": summary.get("breakdown_ms")}  # fmt: skip
            rows.append(row)
            print(f"\n{tag}: measured {span:.2f} s (sim {sim_span:.2f} s); mean TTFT real {row['real_ttft_ms']:.1f} "
                  f"sim {row['sim_ttft_ms']:.1f} ms")  # fmt: skip
            print(f"{'process':<10} {'real cores':>10} {'sim cores':>10} {'ratio':>7} {'run-queue wait':>15}")
            for r in sorted(set(used) | set(booked)):
                a, b = used.get(r, 0.0), booked.get(r, 0.0)
                print(f"{r:<10} {a:>10.3f} {b:>10.3f} {a / b if b else float('nan'):>7.2f} {waits.get(r, 0.0):>15.3f}")
            print(f"{'total':<10} {sum(used.values()):>10.3f} {sum(booked.values()):>10.3f}")
    (args.out / "cpu_use.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
