"""Pieces shared by the Qwen families: per-item processor runs, packed vision tower calls, the HF reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import TEXT, MediaInput


def load_hf_model(ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype, auto_cls: Any = None) -> Any:
    """The monolithic HF model: weights from ``ckpt``, or random weights built directly on ``device``.
    epd's roles never build it (encoders build their towers alone, ``ModelFamily.load_towers``); it is
    transformers' reference in the oracle tests."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    auto_cls = auto_cls or AutoModelForImageTextToText
    if random_init:
        config = AutoConfig.from_pretrained(ckpt)
        with torch.device(device):
            model = auto_cls.from_config(config, dtype=dtype)
    else:
        model = auto_cls.from_pretrained(ckpt, dtype=dtype).to(device)
    return model.eval()


def generation_eos(ckpt: Path) -> list[int]:
    """End-of-sequence ids of the checkpoint's generation config (none when it sets none)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(ckpt).eos_token_id
    except OSError:  # no generation_config.json
        return []
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def tied_embeddings(*configs: Any) -> bool:
    """Whether lm_head shares the embedding table: the first config that says so decides."""
    for cfg in configs:
        tie = getattr(cfg, "tie_word_embeddings", None)
        if tie is not None:
            return bool(tie)
    return False


def processor_kwargs(inp: MediaInput) -> dict[str, Any]:
    """Keyword arguments that hand one decoded item to a Qwen processor."""
    if inp.modality == "image":
        return {"images": [inp.data]}
    if inp.modality == "video":  # frames epd already sampled: the processor must not sample again
        return {
            "videos": [inp.data.frames],
            "video_metadata": [inp.data.processor_metadata()],
            **inp.sampling.processor_kwargs(presampled=True),
        }
    if inp.modality == "audio":
        return {"audio": [inp.data.samples], "sampling_rate": inp.data.sampling_rate}
    raise ValueError(f"unknown modality {inp.modality!r}")


def span_types(token_ids: list[int], type_of: dict[int, int]) -> list[int]:
    """Token types of an expanded span from its pad ids (everything else is text)."""
    return [type_of.get(tok, TEXT) for tok in token_ids]


def run_vision_tower(visual: torch.nn.Module, pixels: list[torch.Tensor], grids: list[torch.Tensor], device, dtype):
    """One packed tower call over several items (images and videos alike); returns the output object
    and per-item token counts. On epd's tower path the grid-derived indexing is built on the host."""
    from epd_kernels.tower import uses_epd_path, vision_tower_kwargs

    grid_thw = torch.cat(grids)  # [n_items, 3]
    pixel_values = cat_to_device(pixels, device).to(dtype)  # [sum(t*h*w), C*T*P*P]
    kwargs = vision_tower_kwargs(visual, grid_thw, device) if uses_epd_path(visual) else {}
    out = visual(pixel_values, grid_thw=grid_thw.to(device), **kwargs)
    counts = (grid_thw.prod(-1) // visual.spatial_merge_size**2).tolist()
    return out, counts


def cat_to_device(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Tensors concatenated on dim 0, on ``device``. Host tensors go to a GPU through one pinned buffer,
    so the copy runs at the link's rate and does not wait for the host; tensors the device preprocessing
    already left there are claimed for this stream (``epd.models.preprocess``) and concatenated in place."""
    if device.type != "cuda":
        return torch.cat(tensors).to(device)
    if any(t.is_cuda for t in tensors):
        from epd.models.preprocess import claim_for_current_stream

        claim_for_current_stream(tensors)
        return torch.cat([t.to(device) for t in tensors])
    first = tensors[0]
    staged = torch.empty((sum(t.shape[0] for t in tensors), *first.shape[1:]), dtype=first.dtype, pin_memory=True)
    torch.cat(tensors, out=staged)
    return staged.to(device, non_blocking=True)


def frame_sampling(video_processor: Any, media: Any) -> Any:
    """The checkpoint's video sampling (fps, min/max frames, the processor's own rule), with ``media.video_*`` overrides."""
    from epd.media import FrameSampling

    return FrameSampling.for_processor(video_processor, media)
