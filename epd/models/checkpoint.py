"""Where a run's checkpoint lives, resolved once before any rank starts."""

from __future__ import annotations

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
