"""Qwen3-VL, dense and MoE: ViT patch 16 with DeepStack mergers + Qwen3 / Qwen3-MoE LM (qk-norm,
interleaved M-RoPE).

DeepStack: the tower also returns one feature map per ``deepstack_visual_indexes`` layer; they
travel as one extra tensor ``deepstack`` [k, tokens, H] per item (only for this family) and are
added to the visual rows after LM layers 0..k-1. Video spans carry per-frame ``<t seconds>`` text,
which the processor writes into the span, so positions need only the grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import ItemMeta, LanguageSide, ModelFamily, TowerEncoder
from epd.models.families.qwen2_5_vl import Qwen25Encoder, Qwen25Language
from epd.models.families.qwen_common import load_hf_model
from epd.models.registry import FAMILIES


class Qwen3VLEncoder(Qwen25Encoder):
    def _extra(self, tower: Any, k: int, counts: list[int]) -> dict[str, torch.Tensor]:
        start = sum(counts[:k])
        feats = [f[start : start + counts[k]] for f in tower.deepstack_features]  # k × [tokens, H]
        return {"deepstack": torch.stack(feats)}


class Qwen3VLLanguage(Qwen25Language):
    def positions(self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, int]:
        if not items:
            return torch.arange(ids.numel()).expand(3, -1), 0
        images = [it.info["grid_thw"] for it in items if it.modality == "image"]
        videos = [it.info["grid_thw"] for it in items if it.modality == "video"]
        pos, delta = self._inner.get_rope_index(
            ids[None],
            mm_token_type_ids=types[None],
            image_grid_thw=torch.tensor(images) if images else None,
            video_grid_thw=torch.tensor(videos) if videos else None,
        )
        return pos[:, 0], int(delta.item())


@FAMILIES.register("qwen3_vl")
class Qwen3VL(ModelFamily):
    name = "qwen3_vl"
    architectures = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
    modalities = ("image", "video")

    def load_encoder(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> TowerEncoder:
        from transformers import AutoProcessor

        model = load_hf_model(ckpt, random_init, device, dtype)
        return Qwen3VLEncoder(model.model.visual, AutoProcessor.from_pretrained(ckpt), model.config, device, dtype)

    def load_language(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> LanguageSide:
        return Qwen3VLLanguage(load_hf_model(ckpt, random_init, device, dtype))
