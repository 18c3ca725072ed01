"""Tiny Qwen3-VL-MoE: Qwen3-VL (``epd.tiny.qwen3_vl``) with a sparse MoE text model.

Same tokenizer, processors and vision tower as the dense tiny Qwen3-VL; every text layer is a MoE
block of 4 experts (top-2, expert width 32), as in Qwen3-VL-30B-A3B. The released shape ``30b``
(``REAL_MOE_SHAPES`` in ``epd.tiny.qwen3_vl``) serves ``model=qwen3_vl_moe model.random_init=true``.
"""

from __future__ import annotations

from pathlib import Path

from epd.tiny.qwen3_vl import write_family
from epd.tiny.qwen3_vl import write_shape as write_shape_of


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen3-VL-MoE checkpoint into ``out_dir`` (which must exist)."""
    write_family(out_dir, seed, moe=True)


def write_shape(out_dir: Path, shape: str) -> None:
    """A weightless Qwen3-VL-MoE checkpoint of a released size (``30b``: Qwen3-VL-30B-A3B)."""
    write_shape_of(out_dir, shape, moe=True)
