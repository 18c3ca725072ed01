"""Table of policy-ablation sweeps: one row per run of ``multirun/policy_ablation*/...``, or per arm.

    python experiments/policy_ablation/report.py multirun/policy_ablation/2026-12-01/10-00-00 [more dirs...]
    python experiments/policy_ablation/report.py --by-arm <rep0> <rep1> <rep2>

A row: what the run varied (encoder policy with its inner policy, batch cap / max wait, device cache
budget), requests completed, TTFT and E2E (ms), per encoder rank its items, utilisation (tower busy
/ wall), mean queue time and mean items per tower call, and the cache hit rate. ``--by-arm`` folds
the runs of several sweep directories (repetitions) into one row per arm: the median over them of
each number, with the range of the mean TTFT.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HEADER = (
    "| policy | max batch items / wait ms | cache (device) | ok | TTFT mean | TTFT p50 | TTFT p90 | E2E mean "
    "| per encoder: items, utilisation, queue ms, items/call | cache hits |"
)


def load_runs(sweeps: list[Path]) -> list[dict]:
    runs = []
    for sweep in sweeps:
        for results in sorted(sweep.glob("*/results.json"), key=lambda p: int(p.parent.name)):
            runs.append(json.loads(results.read_text()))
    return runs


def arm(run: dict) -> tuple[str, str, str]:
    cfg = run["config"]
    policy = cfg["scheduler"]["encoder_policy"]
    if policy == "modality":
        policy += f"+{cfg['scheduler']['within_group']}"
    enc = cfg["encoder"]
    return policy, f"{enc['max_batch_items']} / {enc['max_wait_ms']:g}", _bytes(enc["cache_device_bytes"])


def row(runs: list[dict]) -> str:
    """One table row: the median over ``runs`` (one run: its own numbers)."""
    s = [run["summary"] for run in runs]

    def med(get) -> float | None:
        values = [v for v in map(get, s) if v is not None]
        return statistics.median(values) if values else None

    ttft_means = [x["ttft_ms"]["mean"] for x in s]
    spread = f" ({min(ttft_means):.0f}–{max(ttft_means):.0f})" if len(runs) > 1 else ""
    per_encoder = "; ".join(
        f"e{rank}: {_f(med(lambda x, r=rank: x['encoders'][r]['items']))} it, "
        f"{_f(med(lambda x, r=rank: x['encoders'][r]['utilization']), pct=True)}, "
        f"q {_f(med(lambda x, r=rank: x['encoders'][r]['queue_ms']['mean']))}, "
        f"b {_f(med(lambda x, r=rank: x['encoders'][r]['batch_size']['mean']), 1)}"
        for rank in s[0].get("encoders", {})
    )
    ok = f"{sum(x['num_completed'] for x in s)}/{sum(x['num_requests'] for x in s)}"
    policy, batching, cache = arm(runs[0])
    return (
        f"| {policy} | {batching} | {cache} | {ok} | {_f(med(lambda x: x['ttft_ms']['mean']))}{spread} "
        f"| {_f(med(lambda x: x['ttft_ms']['p50']))} | {_f(med(lambda x: x['ttft_ms']['p90']))} "
        f"| {_f(med(lambda x: x['e2e_ms']['mean']))} | {per_encoder} | {_f(med(lambda x: x['cache_hit_rate']), pct=True)} |"
    )


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:g} {unit}"
        n /= 1024
    return f"{n:g} GiB"


def _f(value: float | None, digits: int = 0, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if pct else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path, help="multirun directories of policy_ablation* sweeps")
    parser.add_argument("--by-arm", action="store_true", help="one row per arm: medians over the directories")
    args = parser.parse_args()
    runs = load_runs(args.sweeps)
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    if not args.by_arm:
        for run in runs:
            print(row([run]))
        return
    arms: dict[tuple, list[dict]] = {}
    for run in runs:
        arms.setdefault(arm(run), []).append(run)
    for group in arms.values():
        print(row(group))


if __name__ == "__main__":
    main()
