"""Qwen3-VL, dense and MoE: ViT patch 16 with DeepStack mergers + Qwen3 / Qwen3-MoE LM (qk-norm,
interleaved M-RoPE).

DeepStack: the tower also returns one feature map per ``deepstack_visual_indexes`` layer; they
travel as one extra tensor ``deepstack`` [k, tokens, H] per item (only for this family) and are
added to the visual rows after LM layers 0..k-1. Video spans carry per-frame ``<t seconds>`` text,
which the processor writes into the span, so positions need only the grids (the Qwen2.5-VL
language side serves it unchanged: its items carry no ``second_per_grid``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import LanguageSide, ModelFamily, TowerEncoder
from epd.models.families.qwen2_5_vl import Qwen25Encoder, Qwen25Language, vl_decoder_spec
from epd.models.families.towers import TowerBuilders
from epd.models.registry import FAMILIES


class Qwen3VLEncoder(Qwen25Encoder):
    def _extra(self, tower: Any, k: int, counts: list[int]) -> dict[str, torch.Tensor]:
        start = sum(counts[:k])
        feats = [f[start : start + counts[k]] for f in tower.deepstack_features]  # k × [tokens, H]
        return {"deepstack": torch.stack(feats)}


@FAMILIES.register("qwen3_vl")
class Qwen3VL(ModelFamily):
    name = "qwen3_vl"
    architectures = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
    modalities = ("image", "video")

    def load_encoder(
        self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype, tower_attention: str = "auto"
    ) -> TowerEncoder:
        from transformers import AutoProcessor

        config, towers = self.load_towers(ckpt, random_init, device, dtype)
        processor = AutoProcessor.from_pretrained(ckpt)
        return Qwen3VLEncoder(towers["visual"], processor, config, device, dtype, tower_attention)

    def tower_builders(self, config: Any) -> TowerBuilders:
        """The vision tower with its DeepStack mergers (``visual.deepstack_merger_list``), dense or MoE
        alike, built as the full model builds it."""
        from transformers import AutoModel

        return {"visual": lambda dtype: AutoModel.from_config(config.vision_config, dtype=dtype)}

    def decoder_spec(self, config: Any) -> Any:
        return vl_decoder_spec(config)

    def load_language(self, ckpt: Path, random_init: bool) -> LanguageSide:
        from transformers import AutoConfig

        return Qwen25Language(ckpt, random_init, AutoConfig.from_pretrained(ckpt))
