"""``python -m epd.report <sweep_or_run_dir> [--out DIR] [--stat mean|p50|p90|p99|max]`` (installed: ``epd-report``).

Tabulates and plots every run under a directory (a Hydra sweep, a seed_table run, a single run):
reads each results.json and writes report.csv, report.md, ttft_vs_rate.png, tpot_vs_rate.png and
breakdown.png (into the directory unless --out says otherwise), then prints the markdown table.
A sweep job that left no results.json (it failed, or has not finished) gets a row saying so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from epd.report.write import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epd.report",
        description="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", type=Path, help="a sweep directory, a run directory or a results.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the directory itself)")
    parser.add_argument(
        "--stat", default="mean", choices=("mean", "p50", "p90", "p99", "max"), help="plotted statistic"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the markdown table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="epd.report: %(message)s")
    out = args.out if args.out is not None else (args.root if args.root.is_dir() else args.root.parent)
    try:
        written = write_report(args.root, out, stat=args.stat)
    except ValueError as exc:
        print(f"epd.report: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(written["markdown"].read_text())
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
