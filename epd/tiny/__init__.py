"""Tiny Hugging Face checkpoints written by epd itself (no network, no model hub).

``write_tiny("qwen2_5_vl", out_dir)`` writes config.json, model.safetensors, generation_config.json,
a byte-level BPE tokenizer with the family's special tokens and chat template, and the image /
video processor configs; ``AutoProcessor`` and ``AutoModelForImageTextToText`` load the result
offline. Same seed, same bytes.

Adding a family is one module with ``write(out_dir: Path, seed: int) -> None`` plus one
``TinySpec`` line in ``FAMILIES``; modules are imported only when their family is written.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Part of every cache path: bump it whenever any family's output bytes change (corpus, sizes,
# init, file layout), so stale caches are never reused.
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TinySpec:
    """One tiny model family.

    Attributes:
        name: registry key, also the CLI argument (e.g. ``"qwen2_5_vl"``).
        module: module defining ``write(out_dir: Path, seed: int) -> None``; imported lazily.
        description: one line for ``--help`` and error messages.
    """

    name: str
    module: str
    description: str

    def write(self, out_dir: Path, seed: int) -> None:
        """Import the family module and write the checkpoint into existing ``out_dir``."""
        importlib.import_module(self.module).write(out_dir, seed)

    def write_shape(self, out_dir: Path, shape: str) -> None:
        """Write a weightless checkpoint of a released size (``model.random_init=true`` runs)."""
        importlib.import_module(self.module).write_shape(out_dir, shape)


FAMILIES: dict[str, TinySpec] = {
    spec.name: spec
    for spec in [
        TinySpec(
            name="qwen2_5_vl",
            module="epd.tiny.qwen2_5_vl",
            description="Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration), image + video",
        ),
        TinySpec(
            name="qwen3_vl",
            module="epd.tiny.qwen3_vl",
            description="Qwen3-VL (Qwen3VLForConditionalGeneration), image + video, DeepStack",
        ),
        TinySpec(
            name="qwen3_vl_moe",
            module="epd.tiny.qwen3_vl_moe",
            description="Qwen3-VL-MoE (Qwen3VLMoeForConditionalGeneration), image + video, MoE text",
        ),
        TinySpec(
            name="qwen2_audio",
            module="epd.tiny.qwen2_audio",
            description="Qwen2-Audio (Qwen2AudioForConditionalGeneration), audio",
        ),
        TinySpec(
            name="qwen3_omni",
            module="epd.tiny.qwen3_omni",
            description="Qwen3-Omni thinker (Qwen3OmniMoeForConditionalGeneration), image + video + audio",
        ),
    ]
}


def get_spec(family: str) -> TinySpec:
    """Return the registered spec, or raise ``ValueError`` naming the known families."""
    try:
        return FAMILIES[family]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown tiny family {family!r}; known families: {known}") from None


def write_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny checkpoint of ``family`` into ``out_dir`` (created if missing) and return it.

    Files already in ``out_dir`` with the same names are overwritten; others are left alone.
    """
    spec = get_spec(family)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    spec.write(out_path, seed)
    return out_path


def default_cache_root() -> Path:
    """``$EPD_CACHE/tiny`` if ``EPD_CACHE`` is set, else ``~/.cache/epd/tiny``."""
    epd_cache = os.environ.get("EPD_CACHE")
    base = Path(epd_cache) if epd_cache else Path.home() / ".cache" / "epd"
    return base / "tiny"


def cached_tiny(family: str, seed: int = 0, cache_root: str | Path | None = None) -> Path:
    """Return ``<cache_root>/<family>-s<seed>-v<FORMAT_VERSION>``, building it on first use.

    The checkpoint is written into a temporary sibling directory and renamed into place, so the
    final path, once it exists, is always complete. When several processes race, each builds its
    own copy, one rename wins and the others discard theirs. ``cache_root`` defaults to
    ``default_cache_root()``.
    """
    spec = get_spec(family)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return _build_once(root / f"{spec.name}-s{seed}-v{FORMAT_VERSION}", lambda tmp: write_tiny(spec.name, tmp, seed))


def cached_shape(family: str, shape: str, cache_root: str | Path | None = None) -> Path:
    """A weightless checkpoint with the real config of ``family`` at a released ``shape`` (e.g. ``7b``):
    config.json, generation config, processor configs with the real pixel budgets and the tiny
    tokenizer. Built once, like :func:`cached_tiny`."""
    spec = get_spec(family)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return _build_once(root / f"{spec.name}-shape-{shape}-v{FORMAT_VERSION}", lambda tmp: spec.write_shape(tmp, shape))


def _build_once(final: Path, build) -> Path:
    """``final`` if it exists, else ``build(tmp)`` into a temporary sibling renamed into place."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, final)  # atomic on one filesystem; fails if `final` is non-empty
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = [
    "FAMILIES",
    "FORMAT_VERSION",
    "TinySpec",
    "cached_shape",
    "cached_tiny",
    "default_cache_root",
    "get_spec",
    "write_tiny",
]
