"""CLI: ``python -m epd.tiny <family> <out_dir> [--seed N]`` writes a tiny HF checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from epd.tiny import FAMILIES, write_tiny


def build_parser() -> argparse.ArgumentParser:
    """Argument parser; ``family`` is checked against ``FAMILIES`` (exit code 2 if unknown)."""
    families = "\n".join(f"  {spec.name}: {spec.description}" for spec in FAMILIES.values())
    parser = argparse.ArgumentParser(
        prog="python -m epd.tiny",
        description="Write a tiny Hugging Face checkpoint (random weights, offline).",
        epilog=f"families:\n{families}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("family", help="model family, one of: " + ", ".join(sorted(FAMILIES)))
    parser.add_argument("out_dir", help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.family not in FAMILIES:
        # parser.error prints usage + message to stderr and exits with code 2.
        parser.error(f"unknown family {args.family!r}; known families: {', '.join(sorted(FAMILIES))}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    out_dir = write_tiny(args.family, args.out_dir, seed=args.seed)
    print(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
