"""Run a policy-ablation sweep several times, rotating the order of its arms, then print the report.

    OMP_NUM_THREADS=1 python experiments/policy_ablation/run.py policy_ablation --reps 3
    OMP_NUM_THREADS=1 python experiments/policy_ablation/run.py policy_ablation_cache --reps 2

Repetition i runs ``python -m epd.run -m +experiment=<name>`` into ``<out>/rep<i>`` with the values
of each swept key (other than the topology) rotated by i, so no arm always runs first or last;
the report then gives, per arm, the median over repetitions (``report.py --by-arm``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def swept(experiment: str) -> dict[str, list[str]]:
    """The sweep of ``epd/conf/experiment/<experiment>.yaml``: key → its values."""
    cfg = yaml.safe_load((REPO / "epd" / "conf" / "experiment" / f"{experiment}.yaml").read_text())
    params = cfg["hydra"]["sweeper"]["params"]
    return {key: str(values).split(",") for key, values in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="an epd/conf/experiment/policy_ablation*.yaml name")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: multirun/<experiment>/reps-<time>")
    parser.add_argument("overrides", nargs="*", help="extra epd.run overrides, e.g. workload.num_requests=4")
    args = parser.parse_intermixed_args()
    out = args.out or REPO / "multirun" / args.experiment / f"reps-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    sweep = swept(args.experiment)
    for rep in range(args.reps):
        rotated = [f"{key}={','.join(v[rep % len(v) :] + v[: rep % len(v)])}" for key, v in sweep.items()]
        cmd = [sys.executable, "-m", "epd.run", "-m", f"+experiment={args.experiment}", *rotated, *args.overrides]
        cmd.append(f"hydra.sweep.dir={out / f'rep{rep}'}")
        print("+", " ".join(cmd[1:]), flush=True)
        (out / f"rep{rep}").mkdir(parents=True, exist_ok=True)
        with open(out / f"rep{rep}.log", "w") as log:  # every rank's output, kept beside the runs
            subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    report = [sys.executable, str(Path(__file__).with_name("report.py")), "--by-arm"]
    subprocess.run([*report, *sorted(str(p) for p in out.glob("rep*"))], check=True)


if __name__ == "__main__":
    main()
