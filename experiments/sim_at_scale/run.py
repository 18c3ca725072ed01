"""The seed question at sizes this machine cannot run, and the simulator's speed at 1000 GPUs.

    python experiments/sim_at_scale/run.py --out OUT --cpu-profile P.json            # everything
    python experiments/sim_at_scale/run.py --out OUT --cpu-profile P.json --skip-timing
    python experiments/sim_at_scale/run.py --out OUT --cpu-profile P.json --skip-timing --skip-cpu --gpu-profile G.json

1. Timing: 1000 instances (400 encoders + 600 language instances, one per device: a cluster of
   profiled hosts, ``sim.shared_host=false``) and 1,000,000 requests, from the CPU profile.
2. The seed question: 1, 2 and 4 encoders per language instance, colocated, encoders + language
   (E+PD) and encoders + prefill + decode (E+P+D), 8 language-side GPUs, on the seed table's workload
   (8 x 1080p images + 128 text tokens in, 256 out) at the seed table's rates per language-side GPU
   (0.1, 0.3, 0.6 req/s) and beyond, from two profiles: this machine's CPU profile (the tiny model:
   the absolute numbers describe it, not a 7B) and a GPU profile of the 7B shape taken by
   ``python -m epd.profile`` (``--gpu-profile``) or, without one, a sketch of the H200 built from
   BENCHMARKS.md (``h200_sketch.py``; not an ``epd.profile`` run). Goodput counts TTFT <= 4 s and
   TPOT <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = ["workload.image_count=8", "workload.resolution=1080p", "workload.input_len=128", "workload.output_len=256",
        "workload.slo_ttft_ms=4000", "workload.slo_tpot_ms=100", "logger.quiet=true"]  # fmt: skip
LANGUAGE_GPUS = 8
CONFIGS = {  # name -> instance counts for 8 language-side GPUs
    "colocated x8": ["sim.colocated=8"],
    "8E + 8L (1 per L)": ["sim.encoders=8", "sim.language=8"],
    "16E + 8L (2 per L)": ["sim.encoders=16", "sim.language=8"],
    "32E + 8L (4 per L)": ["sim.encoders=32", "sim.language=8"],
    "16E + 4P + 4D": ["sim.encoders=16", "sim.prefill=4", "sim.decode=4"],
    "32E + 4P + 4D": ["sim.encoders=32", "sim.prefill=4", "sim.decode=4"],
}
RATES = {
    "cpu": [0.1, 0.3, 0.6, 1.2, 2.4, 4.8],
    "h200": [0.1, 0.3, 0.6, 1.2, 2.4],
    "gpu": [0.1, 0.3, 0.6, 1.2, 2.4],
}  # per language-side GPU


def env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "kernels"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }


def sim(out: Path, profile: Path, *over: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "epd.sim",
        f"hydra.run.dir={out}",
        f"profile={profile}",
        "sim.shared_host=false",
        *over,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "results.json").read_text())["summary"]
    summary["process_s"] = time.perf_counter() - start
    return summary


def timing(out: Path, profile: Path, requests: int) -> dict:
    import resource

    s = sim(out / "timing", profile, "sim.encoders=400", "sim.language=600", f"workload.num_requests={requests}",
            "workload.request_rate=20000", "workload.output_len=64", "logger.quiet=true")  # fmt: skip
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    return {"requests": requests, "instances": 1000, "sim": s["sim"], "process_s": s["process_s"], "peak_gb": peak_gb,
            "ttft_mean_ms": s["ttft_ms"]["mean"], "tpot_mean_ms": s["tpot_ms"]["mean"],
            "throughput": s["request_throughput"]}  # fmt: skip


def seed_grid(out: Path, profile: Path, rates: list[float], seconds: float) -> list[dict]:
    rows = []
    for name, counts in CONFIGS.items():
        for per_gpu in rates:
            rate = per_gpu * LANGUAGE_GPUS
            n = max(200, round(rate * seconds))
            tag = f"{name.split()[0]}_{counts[-1].split('=')[0][4:]}_{per_gpu:g}".replace(" ", "")
            s = sim(out / tag, profile, *counts, *SEED, f"workload.request_rate={rate}", f"workload.num_requests={n}")
            gpus = s["sim"]["num_gpus"]
            rows.append({"config": name, "gpus": gpus, "rate_per_language_gpu": per_gpu, "rate": rate, "requests": n,
                         "ttft_mean_ms": s["ttft_ms"]["mean"], "ttft_p90_ms": s["ttft_ms"]["p90"],
                         "tpot_mean_ms": s["tpot_ms"]["mean"], "goodput": s["goodput"],
                         "goodput_per_gpu": (s["goodput"] or 0) / gpus, "slo_attainment": s["slo_attainment"],
                         "sim_wall_s": s["sim"]["wall_s"]})  # fmt: skip
            print(
                f"  {name:<22} {per_gpu:>4g}/GPU  TTFT {rows[-1]['ttft_mean_ms']:9.0f} ms  TPOT "
                f"{rows[-1]['tpot_mean_ms']:7.1f} ms  goodput/GPU {rows[-1]['goodput_per_gpu']:.3f}",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    rates = sorted({r["rate_per_language_gpu"] for r in rows})
    head = "| config | GPUs | " + " | ".join(f"{r:g} req/s per L-GPU" for r in rates) + " |"
    lines = [head, "|---|---|" + "---|" * len(rates)]
    for name in CONFIGS:
        at = {r["rate_per_language_gpu"]: r for r in rows if r["config"] == name}
        cells = [f"{at[r]['ttft_mean_ms']:.0f} / {at[r]['tpot_mean_ms']:.1f} ms, {at[r]['goodput_per_gpu']:.3f}"
                 for r in rates]  # fmt: skip
        lines.append(f"| {name} | {at[rates[0]]['gpus']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NCCL_FIXED_S, NCCL_154MIB_S = 0.4e-3, 0.705e-3
"""BENCHMARKS.md's nccl transfer between two H200 ranks: ~0.4 ms fixed, 0.705 ms for 154 MiB."""


def with_nccl(profile: Path, out: Path) -> Path:
    """``profile`` as is if it measured nccl; else (one GPU: epd.profile cannot time nccl between two
    ranks of one device) a copy at ``out`` whose ``transfer.nccl`` is BENCHMARKS.md's two-rank figure,
    marked ``source``. The grid's instances sit on GPUs of their own and move embeddings over nccl."""
    data = json.loads(profile.read_text())
    if "nccl" in data["transfer"]:
        return profile
    per_byte = (NCCL_154MIB_S - NCCL_FIXED_S) / (154 * 2**20)
    data["transfer"]["nccl"] = {
        "points": [],
        "fit": {"kind": "linear", "a": NCCL_FIXED_S, "b": per_byte},
        "source": "BENCHMARKS.md, nccl between two H200 ranks (0.4 ms fixed, 154 MiB in 0.705 ms): not in this "
        "one-GPU profile",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--cpu-profile", type=Path, required=True, help="python -m epd.profile device=cpu (its profile.json)"
    )
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=120.0, help="seconds of arrivals per point of the seed grid")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true", help="no seed grid from the CPU profile")
    ap.add_argument("--gpu-profile", type=Path, help="a GPU profile (python -m epd.profile device=cuda ...): "
                    "its seed grid replaces the H200 sketch's")  # fmt: skip
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if not args.skip_timing:
        result["timing"] = timing(args.out, args.cpu_profile, args.requests)
        print(json.dumps(result["timing"], indent=1), flush=True)
    profiles = {}
    if not args.skip_cpu:
        profiles["cpu"] = args.cpu_profile
    if args.gpu_profile is not None:  # measured by epd.profile on a GPU: it replaces the sketch
        profiles["gpu"] = with_nccl(args.gpu_profile, args.out / "gpu_profile.json")
    else:
        sketch = args.out / "h200_sketch" / "profile.json"
        subprocess.run([sys.executable, str(Path(__file__).with_name("h200_sketch.py")), str(sketch),
                        "--cpu-profile", str(args.cpu_profile)], cwd=REPO, env=env(), check=True)  # fmt: skip
        profiles["h200"] = sketch
    for name, profile in profiles.items():
        print(f"seed grid, {name} profile", flush=True)
        result[name] = seed_grid(args.out / name, profile, RATES[name], args.seconds)
        (args.out / f"table_{name}.md").write_text(table(result[name]) + "\n")
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
    for name in profiles:
        print(f"\n{name}: mean TTFT / mean TPOT, goodput per GPU (req/s)\n" + table(result[name]))


if __name__ == "__main__":
    main()
