"""Real vs simulated runs of the same workloads on this machine (CPU, tiny Qwen2.5-VL): the simulator's error.

    python experiments/sim_validation/run.py --out experiments/sim_validation/results
    python experiments/sim_validation/run.py --out OUT --profile OUT/profile/profile.json --repeats 3

1. Per topology (colocated, 1e1p, 2e1p, 1e1p1d): a profile right before its runs (this machine's other
   tenants come and go: a profile is only good for the load it was taken under); per rate x repeat,
   ``python -m epd.run`` for real, then ``python -m epd.sim`` on the same overrides, from that
   profile and from the first one (the error of one profile for everything). A CPU profile carries
   the cores other tenants left free when it was taken (``hardware.effective_cores``), which the
   simulated ranks share; the free cores before and after each real run are recorded.
2. ``table.md`` / ``table.csv``: per topology and rate, the real mean over repeats (min-max) against the
   simulated one, and the relative error of mean and p90 TTFT, mean TPOT and throughput; the ranking
   of topologies per rate. Tables are rewritten after every (topology, rate), so a run cut short keeps
   what it measured.

Every run pins torch to one thread per rank (``OMP_NUM_THREADS=1``): two OpenMP threads spin against
the other tenants of this 2-core machine (a tiny decode step went 0.4 → 40 ms), which is noise, not epd.

On one GPU (the 7B shape, every rank sharing the GPU over shm; run by the lead on the device):

    python experiments/sim_validation/run.py --gpu --out $OUT/sim_validation --topologies colocated,1e1p,1e1p1d \
        --profile P/profile.json --rates 1,2,4 --repeats 1 --calibrate

``--calibrate``: per topology one more real run (the lowest rate, seed ``CALIBRATION_SEED``) on which the
profile is calibrated (``python -m epd.sim.calibrate``); every run is simulated from it too. With
``--calibrate-rates 4,20`` one such run at each of those rates: a calibration at several loads.
``--resimulate``: the real runs (and profiles) already under ``--out`` are kept; calibrations and
simulations are done again with this tree's simulator (``--contention`` picks ``sim.contention``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from epd.profile.host import effective_cores  # noqa: E402

WORKLOAD = ["workload.num_requests=40", "workload.warmup_requests=3", "workload.image_count=2",
            "workload.resolution=720p", "workload.input_len=32", "workload.output_len=64"]  # fmt: skip
TOPOLOGIES = {"colocated": [], "1e1p": ["+topology=1e1p"], "2e1p": ["+topology=2e1p"], "1e1p1d": ["+topology=1e1p1d"]}
CALIBRATION_SEED = 100
SIM_KINDS = ("sim", "sim_one_profile", "sim_cal", "sim_cal_one")
METRICS = {"ttft_mean": ("ttft_ms", "mean"), "ttft_p90": ("ttft_ms", "p90"), "tpot_mean": ("tpot_ms", "mean"),
           "itl_p50": ("itl_ms", "p50"), "throughput": ("request_throughput", None)}  # fmt: skip


GPU = ["model=qwen2_5_vl", "model.random_init=true", "transfer=shm"]
GPU_WORKLOAD = ["workload.num_requests=40", "workload.warmup_requests=3", "workload.image_count=2",
                "workload.resolution=1080p", "workload.input_len=128", "workload.output_len=64"]  # fmt: skip


def env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "kernels"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=900)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def record_cores(out: Path, tag: str, free: float) -> None:
    path = out / "cores.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**known, tag: free}, indent=1))


def summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "results.json").read_text())["summary"]
    return {name: (s[key][stat] if stat else s[key]) for name, (key, stat) in METRICS.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "sim_validation" / "results")
    p.add_argument("--profile", type=Path, help="one existing CPU profile.json for every run (default: profile "
                   "right before each topology's runs)")  # fmt: skip
    p.add_argument("--rates", default="4,10,20")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--quiet-cores", type=float, default=0.0, help="wait for this many free cores before a run")
    p.add_argument("--max-wait-s", type=float, default=120.0, help="longest wait for them")
    p.add_argument("--noisy-below", type=float, default=0.8, help="runs with fewer free cores (before or after) "
                   "count as noise-dominated")  # fmt: skip
    p.add_argument("--gpu", action="store_true", help="one GPU, the 7B shape with random weights, ranks sharing it")
    p.add_argument("--requests", type=int, default=40, help="measured requests per run")
    p.add_argument("--table-only", action="store_true", help="rebuild the tables from the runs under --out")
    p.add_argument("--calibrate", action="store_true", help="per topology, one more real run (lowest rate, its own "
                   "seed) to calibrate the profile on; every run is simulated from the calibrated profile too")  # fmt: skip
    p.add_argument("--calibrate-rates", default=None, help="with --calibrate: calibrate on one run at each of "
                   "these rates (a calibration at several loads, epd.sim.calibrate run=A,B); default: the lowest rate")  # fmt: skip
    p.add_argument("--resimulate", action="store_true", help="keep the real runs (and profiles) under --out; "
                   "calibrate and simulate them again with this tree's simulator")  # fmt: skip
    p.add_argument("--contention", default=None, help="sim.contention for every simulation (default: epd.sim's)")
    args = p.parse_args()
    if args.table_only:
        return rebuild(args)
    if args.gpu:  # a GPU host is not shared: no quiet gate; the sim puts every rank on the one GPU
        args.quiet_cores, args.noisy_below = 0.0, 0.0
        if args.rates == "4,10,20":
            args.rates = "0.5,1,2"
    py = sys.executable
    rows, first, first_cal = [], args.profile, None
    for topo in args.topologies.split(","):
        if args.profile:
            profile = args.profile
        elif args.resimulate:
            profile = args.out / "profiles" / topo / "profile.json"
        else:
            profile = take_profile(py, args.out / "profiles" / topo, args.gpu)
        first = first or profile
        profiles = {"sim": profile, "sim_one_profile": first}
        if args.calibrate:
            cal = calibrate(py, args, topo, profile)
            first_cal = first_cal or cal
            profiles |= {"sim_cal": cal, "sim_cal_one": first_cal}
        for rate in [float(r) for r in args.rates.split(",")]:
            runs, cores = {kind: [] for kind in ("real", *profiles)}, []
            for rep in range(args.repeats):
                tag = f"{topo}_r{rate:g}_{rep}"
                over = overrides(args, topo, rate, rep)
                if args.resimulate:
                    if not (args.out / "real" / tag / "results.json").is_file():
                        continue
                    cores.append(json.loads((args.out / "cores.json").read_text())[tag])
                else:
                    before = wait_for_quiet(args.quiet_cores, args.max_wait_s)
                    run([py, "-m", "epd.run", f"hydra.run.dir={args.out / 'real' / tag}", device(args), *over],
                        args.out / "real" / tag / "job.log")  # fmt: skip
                    cores.append(min(before, effective_cores()["effective_cores"]))
                    record_cores(args.out, tag, cores[-1])
                for kind, prof in profiles.items():
                    simulate(py, args, args.out / kind / tag, prof, over)
                for kind in runs:
                    runs[kind].append(summary(args.out / kind / tag))
                print(f"{tag}: free cores {cores[-1]:.2f}  real {runs['real'][-1]}  sim {runs['sim'][-1]}", flush=True)
            if cores:
                rows.append(row(topo, rate, runs, cores, args.noisy_below))
            write_tables(rows, args.out)  # after every row: a run cut short keeps what it measured


def overrides(args, topo: str, rate: float, seed: int) -> list[str]:
    return [*TOPOLOGIES[topo], *(GPU + GPU_WORKLOAD if args.gpu else WORKLOAD), f"workload.num_requests={args.requests}",
            f"workload.request_rate={rate}", f"workload.seed={seed}", "logger.quiet=true"]  # fmt: skip


def sim_options(args) -> list[str]:
    return [
        *(["sim.num_gpus=1"] if args.gpu else []),
        *([f"sim.contention={args.contention}"] if args.contention else []),
    ]


def simulate(py: str, args, out: Path, profile: Path, over: list[str]) -> None:
    run([py, "-m", "epd.sim", f"hydra.run.dir={out}", f"profile={profile}", *over, *sim_options(args)], out / "job.log")


def calibrate(py: str, args, topo: str, profile: Path) -> Path:
    """One real run of ``topo`` at the lowest rate (or at each of ``--calibrate-rates``) on a seed no measured
    run uses (``CALIBRATION_SEED``); the profile calibrated on it (``python -m epd.sim.calibrate``)."""
    lowest = min(float(r) for r in args.rates.split(","))
    rates = sorted(float(r) for r in args.calibrate_rates.split(",")) if args.calibrate_rates else [lowest]
    dirs = []
    for rate in rates:
        tag = f"{topo}_calibration" if rate == lowest else f"{topo}_calibration_r{rate:g}"
        dirs.append(args.out / "real" / tag)
        if not args.resimulate:
            before = wait_for_quiet(args.quiet_cores, args.max_wait_s)
            run([py, "-m", "epd.run", f"hydra.run.dir={dirs[-1]}", device(args),
                 *overrides(args, topo, rate, CALIBRATION_SEED)], dirs[-1] / "job.log")  # fmt: skip
            record_cores(args.out, tag, min(before, effective_cores()["effective_cores"]))
    out = args.out / "profiles" / topo / "calibrated.json"
    run([py, "-m", "epd.sim.calibrate", f"profile={profile}", f"run={','.join(str(d) for d in dirs)}", f"out={out}",
         *sim_options(args)], args.out / "profiles" / topo / "calibrate.log")  # fmt: skip
    return out


def rebuild(args) -> None:
    """The tables again, from the runs already under ``args.out`` (their free cores from ``cores.json``)."""
    cores = json.loads((args.out / "cores.json").read_text())
    rows = []
    for topo in args.topologies.split(","):
        for rate in [float(r) for r in args.rates.split(",")]:
            tags = [f"{topo}_r{rate:g}_{rep}" for rep in range(args.repeats)]
            tags = [t for t in tags if (args.out / "real" / t / "results.json").is_file()]
            if tags:
                kinds = [k for k in ("real", *SIM_KINDS) if (args.out / k / tags[0] / "results.json").is_file()]
                runs = {kind: [summary(args.out / kind / t) for t in tags] for kind in kinds}
                rows.append(row(topo, rate, runs, [cores[t] for t in tags], args.noisy_below))
    write_tables(rows, args.out)


def wait_for_quiet(cores: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until other tenants leave ``cores`` free; return what is free."""
    deadline = time.time() + max_wait_s
    while True:
        free = effective_cores()["effective_cores"]
        if free >= cores or time.time() > deadline:
            return free
        time.sleep(5)


def device(args) -> str:
    return "device=cuda" if args.gpu else "device=cpu"


def take_profile(py: str, out: Path, gpu: bool = False) -> Path:
    if gpu:
        run([py, "-m", "epd.profile", f"hydra.run.dir={out}", "device=cuda", *GPU[:2]], out / "job.log")
    else:
        wait_for_quiet(1.8, 300)
        run([py, "-m", "epd.profile", f"hydra.run.dir={out}", "device=cpu", "profile.repeats=7"], out / "job.log")
    return out / "profile.json"


def row(topo: str, rate: float, runs: dict[str, list[dict]], cores: list[float], noisy_below: float) -> dict:
    """Real vs simulated over the repeats the host left quiet (all of them, flagged, when none was).
    ``runs`` maps ``real`` and each simulated kind (``SIM_KINDS``) to one summary per repeat."""
    quiet = [i for i, c in enumerate(cores) if c >= noisy_below] or list(range(len(cores)))
    runs = {kind: [values[i] for i in quiet] for kind, values in runs.items()}
    out = {"topology": topo, "rate": rate, "repeats": len(cores), "quiet_repeats": len(quiet),
           "noisy": all(c < noisy_below for c in cores), "free_cores": min(cores)}  # fmt: skip
    for name in METRICS:  # medians over repeats: one repeat hit by another tenant does not move them
        r = [x[name] for x in runs["real"]]
        s = statistics.median(x[name] for x in runs["sim"])
        out |= {f"real_{name}": statistics.median(r), f"real_{name}_min": min(r), f"real_{name}_max": max(r),
                f"sim_{name}": s, f"err_{name}": s / statistics.median(r) - 1}  # fmt: skip
        if "sim_cal" in runs:
            c = statistics.median(x[name] for x in runs["sim_cal"])
            out |= {f"cal_{name}": c, f"err_cal_{name}": c / statistics.median(r) - 1}
    real_ttft = out["real_ttft_mean"]
    out["err_ttft_mean_one_profile"] = (
        statistics.median(x["ttft_mean"] for x in runs["sim_one_profile"]) / real_ttft - 1
    )
    if "sim_cal_one" in runs:
        out["err_cal_one_ttft_mean"] = statistics.median(x["ttft_mean"] for x in runs["sim_cal_one"]) / real_ttft - 1
    return out


def write_tables(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps({"rows": rows}, indent=1))
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| topology | req/s | quiet runs (least free cores) | mean TTFT real (min-max) / sim, err | p90 TTFT real / sim, err "
             "| mean TPOT real (min-max) / sim, err | median ITL real / sim, err | throughput real / sim, err "
             "| mean TTFT err, one profile |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['topology']} | {r['rate']:g} | {r['quiet_repeats']}/{r['repeats']} ({r['free_cores']:.2f})"
            f"{' NOISY' if r['noisy'] else ''} "
            f"| {r['real_ttft_mean']:.1f} ({r['real_ttft_mean_min']:.1f}-{r['real_ttft_mean_max']:.1f}) / "
            f"{r['sim_ttft_mean']:.1f} ms, {r['err_ttft_mean']:+.0%} "
            f"| {r['real_ttft_p90']:.1f} / {r['sim_ttft_p90']:.1f} ms, {r['err_ttft_p90']:+.0%} "
            f"| {r['real_tpot_mean']:.3f} ({r['real_tpot_mean_min']:.3f}-{r['real_tpot_mean_max']:.3f}) / "
            f"{r['sim_tpot_mean']:.3f} ms, {r['err_tpot_mean']:+.0%} "
            f"| {r['real_itl_p50']:.3f} / {r['sim_itl_p50']:.3f} ms, {r['err_itl_p50']:+.0%} "
            f"| {r['real_throughput']:.2f} / {r['sim_throughput']:.2f} req/s, {r['err_throughput']:+.0%} "
            f"| {r['err_ttft_mean_one_profile']:+.0%} |"
        )
    lines += ["", "Ranking by mean TTFT (best first), per rate:", ""]
    lines += ranking(rows, "sim_ttft_mean")
    quiet = [r for r in rows if not r["noisy"]] or rows
    errors = {m: statistics.mean(abs(r[f"err_{m}"]) for r in quiet) for m in METRICS}
    errors["ttft_mean (one profile)"] = statistics.mean(abs(r["err_ttft_mean_one_profile"]) for r in quiet)
    lines += ["", f"Mean absolute error over the {len(quiet)} rows not dominated by noise: "
              + ", ".join(f"{m} {e:.0%}" for m, e in errors.items()), ""]  # fmt: skip
    if all("cal_ttft_mean" in r for r in rows):
        lines += calibrated_table(rows, quiet)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ranking(rows: list[dict], sim_key: str) -> list[str]:
    """Per rate, the topologies by real mean TTFT and by ``sim_key`` (best first), and whether they differ."""
    lines = []
    for rate in sorted({r["rate"] for r in rows}):
        at = [r for r in rows if r["rate"] == rate]
        real = [r["topology"] for r in sorted(at, key=lambda r: r["real_ttft_mean"])]
        sim = [r["topology"] for r in sorted(at, key=lambda r: r[sim_key])]
        lines.append(f"- {rate:g} req/s: real {' < '.join(real)}; sim {' < '.join(sim)}"
                     f"{'' if real == sim else ' (differs)'}")  # fmt: skip
    return lines


def calibrated_table(rows: list[dict], quiet: list[dict]) -> list[str]:
    """The same runs simulated from the profile calibrated on each topology's calibration run, and on the
    first topology's (``--calibrate``)."""
    lines = ["", "Simulated from the calibrated profile (calibrated on more runs of the same topology, seed "
             f"{CALIBRATION_SEED}: at the lowest rate, or at each of --calibrate-rates; the last column: calibrated on "
             "the first topology's runs):", "",
             "| topology | req/s | mean TTFT real / calibrated sim, err | p90 TTFT real / sim, err | mean TPOT real / "
             "sim, err | median ITL real / sim, err | throughput real / sim, err | mean TTFT err, first topology's "
             "calibration |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [f"{r[f'real_{m}']:.{d}f} / {r[f'cal_{m}']:.{d}f}{u}, {r[f'err_cal_{m}']:+.0%}"
                 for m, d, u in (("ttft_mean", 1, " ms"), ("ttft_p90", 1, " ms"), ("tpot_mean", 3, " ms"),
                                 ("itl_p50", 3, " ms"), ("throughput", 2, " req/s"))]  # fmt: skip
        lines.append(f"| {r['topology']} | {r['rate']:g} | {' | '.join(cells)} | {r['err_cal_one_ttft_mean']:+.0%} |")
    lines += ["", "Ranking by mean TTFT (best first), calibrated:", ""]
    lines += ranking(rows, "cal_ttft_mean")
    errors = {m: statistics.mean(abs(r[f"err_cal_{m}"]) for r in quiet) for m in METRICS}
    errors["ttft_mean (first topology's calibration)"] = statistics.mean(abs(r["err_cal_one_ttft_mean"]) for r in quiet)
    lines += ["", f"Mean absolute error, calibrated, over the {len(quiet)} rows not dominated by noise: "
              + ", ".join(f"{m} {e:.0%}" for m, e in errors.items()), ""]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
