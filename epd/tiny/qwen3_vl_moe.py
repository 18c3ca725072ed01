"""Tiny Qwen3-VL-MoE: Qwen3-VL (``epd.tiny.qwen3_vl``) with a sparse MoE text model.

Same tokenizer, processors and vision tower as the dense tiny Qwen3-VL; every text layer is a MoE
block of 4 experts (top-2, expert width 32), as in Qwen3-VL-30B-A3B.
"""

from __future__ import annotations

from pathlib import Path

from epd.tiny.qwen3_vl import write_family


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen3-VL-MoE checkpoint into ``out_dir`` (which must exist)."""
    write_family(out_dir, seed, moe=True)


def write_shape(out_dir: Path, shape: str) -> None:
    """No released Qwen3-VL-MoE shape is registered; always raises ``ValueError``."""
    raise ValueError(f"unknown Qwen3-VL-MoE shape {shape!r}; no released shapes are registered")
