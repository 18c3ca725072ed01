"""Where a run's checkpoint lives (resolved once before any rank starts), and how its safetensors are read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from epd.models.config import ModelConfig


def resolve_checkpoint(cfg: ModelConfig) -> Path:
    """Local directory of the checkpoint: ``path``, else a cached tiny one, else the HF cache of ``name``,
    else (random weights only) a weightless checkpoint of the released ``shape`` written by epd."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"model.path={cfg.path!r} has no config.json; point it at an HF checkpoint directory")
        return path.resolve()
    if cfg.tiny:
        from epd.tiny import cached_tiny

        return cached_tiny(cfg.tiny, seed=cfg.tiny_seed)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(cfg.name, local_files_only=True))
    except Exception as exc:
        if cfg.random_init and cfg.shape:
            from epd.tiny import cached_shape

            family, _, size = cfg.shape.partition(":")
            return cached_shape(family, size)
        raise ValueError(
            f"model {cfg.name!r} is not in the local Hugging Face cache and epd does not download: pass "
            f"model.path=<local checkpoint dir> (add model.random_init=true for random weights with the real "
            f"architecture), or use a tiny preset such as model=tiny_qwen2_5_vl ({type(exc).__name__})"
        ) from exc


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPU and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


# ---- reading a checkpoint's safetensors -------------------------------------------------------------

TOWER_PREFIXES = ("thinker.model.", "thinker.", "model.", "")
"""What stands before a tower's own name in the families' checkpoints: ``visual.*`` (Qwen2.5-VL on the
hub), ``model.visual.*`` (Qwen3-VL, and transformers 5's module names), ``audio_tower.*`` and
``multi_modal_projector.*`` (Qwen2-Audio), ``thinker.visual.*`` / ``thinker.audio_tower.*`` (Qwen3-Omni),
``thinker.model.visual.*`` (its module names)."""


def module_name(key: str, prefixes: tuple[str, ...], roots: tuple[str, ...] | set[str]) -> str | None:
    """``key`` without the first of ``prefixes`` it starts with, if what is left lies under one of
    ``roots`` (``visual.blocks.0.attn.qkv.weight``); None for a tensor of another part of the model.
    The language loader (``epd.language.models.loader.lm_name``) and the towers share this rule."""
    for prefix in prefixes:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            return rest if rest.split(".", 1)[0] in roots else None
    return None


def safetensors_files(ckpt: Path) -> list[Path]:
    """The checkpoint's weight files: those of ``model.safetensors.index.json``, else every ``*.safetensors``."""
    import json

    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        names = sorted(p.name for p in ckpt.glob("*.safetensors"))
    if not names:
        raise ValueError(f"{ckpt} has no *.safetensors weights (model.random_init=true runs without weights)")
    return [ckpt / name for name in names]


def read_tensors(
    ckpt: Path,
    select: Callable[[str], str | None],
    device: torch.device,
    part: Callable[[str, object], torch.Tensor] | None = None,
) -> Iterator[tuple[Path, str, str, torch.Tensor]]:
    """``(file, key, name, tensor)`` for every tensor whose ``select(key)`` is a name, read one at a time
    straight onto ``device``; no other tensor of the checkpoint is read. ``part(name, slice)`` reads only
    a part of each (a safetensors slice: ``get_shape()`` and indexing read just the bytes asked for)."""
    from safetensors import safe_open

    for file in safetensors_files(ckpt):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                name = select(key)
                if name is not None:
                    yield file, key, name, f.get_tensor(key) if part is None else part(name, f.get_slice(key))
