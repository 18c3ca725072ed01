"""The seed_table's figure and table: mean TTFT and TPOT against request rate, one line per configuration.

    python experiments/seed_table/plot.py OUT        # writes OUT/seed_table.png and OUT/seed_table.md

OUT is what run.py wrote (one results.json per configuration, phases = rates; plan.json). The
table has the shape of SGLang EPD's published table: a row per rate, "mean TTFT / mean
TPOT" per configuration, so the two read side by side.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from epd.report.collect import is_finite_rate, load_rows  # noqa: E402

ORDER = ("colocated", "1e1p", "2e1p", "transformers")  # label prefixes, in the order columns appear


def plan_note(out: Path) -> str:
    plan_file = out / "plan.json"
    if not plan_file.is_file():
        return ""
    plan = json.loads(plan_file.read_text())
    counts = "/".join(str(n) for n in plan["requests"])
    return f"REDUCED: {counts} requests per rate (full table: 64)" if plan.get("reduced") else "64 requests per rate"


def by_label(out: Path) -> dict[str, dict[float, dict]]:
    table: dict[str, dict[float, dict]] = defaultdict(dict)
    for row in load_rows(out):
        if is_finite_rate(row):
            table[row["label"]][row["request_rate"]] = row
    return dict(sorted(table.items(), key=lambda kv: _rank(kv[0])))


def _rank(label: str) -> tuple[int, str]:
    return next((i for i, prefix in enumerate(ORDER) if label.startswith(prefix)), len(ORDER)), label


def workload_shape(out: Path) -> str:
    """ "Qwen/Qwen2.5-VL-7B-Instruct (random bf16), 8 x 1080p + 128 in / 256 out" from the first epd run's config."""
    for path in sorted(out.glob("*/epd_config.json")):
        cfg = json.loads(path.read_text())
        model, wl = cfg["model"], cfg["workload"]
        weights = f"random {model['dtype']}" if model.get("random_init") else model["dtype"]
        name = model.get("path") or model.get("tiny") or model["name"]
        return f"{name} ({weights}), {wl['image_count']} x {wl['resolution']} + {wl['input_len']} in / {wl['output_len']} out"
    return ""


def seed_table_markdown(out: Path, note: str = "") -> str:
    """Rows = rates, cells = "mean TTFT / mean TPOT (ms)" [requests ok/total] per configuration."""
    table = by_label(out)
    rates = sorted({rate for rows in table.values() for rate in rows})
    labels = list(table)
    lines = [f"seed_table: mean TTFT / mean TPOT (ms){f' - {note}' if note else ''}", ""]
    lines.append("| rate (req/s) | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---|" * len(labels))
    for rate in rates:
        cells = []
        for label in labels:
            row = table[label].get(rate)
            if row is None or row.get("ttft_mean_ms") is None:
                cells.append("-")
                continue
            tpot = row.get("tpot_mean_ms")
            cells.append(
                f"{row['ttft_mean_ms']:.0f} / {tpot:.1f}" if tpot is not None else f"{row['ttft_mean_ms']:.0f} / -"
            )
            cells[-1] += f" [{row['num_completed']}/{row['num_requests']}]"
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_table_figure(out: Path, note: str = ""):
    """Mean TTFT and mean TPOT against rate, side by side: the axes start at 0, colocated first (black,
    dashed), one legend right of both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from epd.report.plots import plot_lines

    table = by_label(out)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, name) in zip(
        axes, (("ttft_mean_ms", "mean TTFT (ms)"), ("tpot_mean_ms", "mean TPOT (ms)")), strict=True
    ):
        lines = {
            label: [(rate, row[key]) for rate, row in rows.items() if row.get(key) is not None]
            for label, rows in table.items()
        }
        plot_lines(ax, {label: points for label, points in lines.items() if points})
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(name)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.suptitle(f"seed_table: {workload_shape(out)}" + (f"\n{note}" if note else ""))
    fig.tight_layout()
    return fig


def plot_seed_table(out: Path, path: Path, note: str = "") -> Path:
    from epd.report.plots import save

    return save(seed_table_figure(out, note), path)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    out = Path(argv[0])
    note = plan_note(out)
    markdown = seed_table_markdown(out, note)
    (out / "seed_table.md").write_text(markdown)
    print(markdown)
    print(f"wrote {plot_seed_table(out, out / 'seed_table.png', note)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
