"""Qwen2.5-VL: window-attention ViT (patch 14, merge 2) + Qwen2 LM with sectioned M-RoPE.

Video positions advance ``tokens_per_second * second_per_grid`` per temporal grid, so the item
carries ``second_per_grid`` (temporal_patch_size / sampled fps) besides its grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import IMAGE, VIDEO, EncodedItem, ItemMeta, LanguageSide, MediaInput, ModelFamily, TowerEncoder
from epd.models.families.qwen_common import (
    frame_sampling,
    generation_eos,
    processor_kwargs,
    run_vision_tower,
    span_types,
    tied_embeddings,
)
from epd.models.families.towers import TowerBuilders, hf_tower
from epd.models.registry import FAMILIES

PLACEHOLDER_TEXT = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}
VISION_KEYS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


class Qwen25Encoder(TowerEncoder):
    modalities = ("image", "video")

    def __init__(
        self, visual: torch.nn.Module, processor: Any, config: Any, device: torch.device, dtype, tower_attention="auto"
    ):
        from epd_kernels.tower import prepare_tower

        self.visual = visual
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.type_of = {config.image_token_id: IMAGE, config.video_token_id: VIDEO}
        self.tower_attention = prepare_tower(visual, tower_attention, device, dtype)

    def frame_sampling(self, media: Any) -> Any:
        return frame_sampling(self.processor.video_processor, media)

    @torch.inference_mode()
    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        """All images and videos of the call go through the tower in one packed call."""
        feats = self._features(inputs)
        keys = [VISION_KEYS[inp.modality] for inp in inputs]  # (pixels, grid) keys of each item's features
        grids = [feat[grid_key] for feat, (_, grid_key) in zip(feats, keys, strict=True)]
        pixels = [feat[pix_key] for feat, (pix_key, _) in zip(feats, keys, strict=True)]
        tower, counts = run_vision_tower(self.visual, pixels, grids, self.device, self.dtype)
        out = []
        for k, (inp, feat, embeds) in enumerate(zip(inputs, feats, tower.pooler_output.split(counts), strict=True)):
            ids = feat["input_ids"][0].tolist()
            meta = ItemMeta(
                modality=inp.modality,
                token_ids=ids,
                token_types=span_types(ids, self.type_of),
                info=self._info(feat, grids[k]),
            )
            out.append(EncodedItem(meta=meta, tensors={"embeds": embeds, **self._extra(tower, k, counts)}))
        return out

    def _process(self, inp: MediaInput) -> Any:
        return self.run_processor(text=[PLACEHOLDER_TEXT[inp.modality]], **processor_kwargs(inp))

    def _info(self, feat: Any, grid: torch.Tensor) -> dict[str, Any]:
        info: dict[str, Any] = {"grid_thw": grid[0].tolist()}
        if "second_per_grid_ts" in feat:  # video: seconds per temporal grid drive the time positions
            info["second_per_grid"] = float(feat["second_per_grid_ts"][0])
        return info

    def _extra(self, tower: Any, k: int, counts: list[int]) -> dict[str, torch.Tensor]:
        """Tensors beyond the merged embeddings (DeepStack families override)."""
        return {}


class Qwen25Language(LanguageSide):
    """Qwen2.5-VL and Qwen3-VL (dense, MoE): spans from the config's token ids, positions from the grids."""

    def __init__(self, ckpt: Path, random_init: bool, config: Any) -> None:
        self.spec = vl_decoder_spec(config)
        self.weights = None if random_init else ckpt
        self.hf_config = config  # what the rope positions read (grids, merge size, token ids)
        self._spans = {
            "image": [config.vision_start_token_id, config.image_token_id, config.vision_end_token_id],
            "video": [config.vision_start_token_id, config.video_token_id, config.vision_end_token_id],
        }
        self.eos_token_ids = generation_eos(ckpt)

    def placeholder_span(self, modality: str) -> list[int]:
        return self._spans[modality]

    def positions(self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, int]:
        """transformers' ``get_rope_index``, vectorised (``epd_kernels.rope_index``); reads only ``hf_config``."""
        from epd_kernels.rope_index import qwen_vl_rope_index

        if not items:
            return torch.arange(ids.numel()).expand(3, -1), 0
        cfg = self.hf_config
        videos = [it for it in items if it.modality == "video"]
        qwen3 = cfg.model_type.startswith("qwen3")  # Qwen3-VL: per-frame timestamps instead of time positions
        intervals = None
        if not qwen3:  # Qwen2.5-VL: tokens_per_second * seconds per grid, rounded to float32 as transformers does
            steps = torch.tensor([v.info.get("second_per_grid", 1.0) for v in videos], dtype=torch.float32)
            intervals = (steps * cfg.vision_config.tokens_per_second).tolist()
        return qwen_vl_rope_index(
            types,
            [it.info["grid_thw"] for it in items if it.modality == "image"],
            [v.info["grid_thw"] for v in videos],
            cfg.vision_config.spatial_merge_size,
            video_intervals=intervals,
            frames_apart=qwen3,
        )


def vl_decoder_spec(config: Any) -> Any:
    """``DecoderSpec`` of Qwen2.5-VL (Qwen2: qkv bias, sectioned M-RoPE) and Qwen3-VL (qk-norm, interleaved)."""
    from epd.language.models import DecoderSpec

    text = config.text_config
    qwen3 = config.model_type.startswith("qwen3")
    return DecoderSpec.from_hf_config(
        text,
        rope_style="interleaved" if qwen3 else "sectioned",
        qk_norm=qwen3,
        qkv_bias=bool(getattr(text, "attention_bias", False)) if qwen3 else True,
        tie=tied_embeddings(config, text),
    )


@FAMILIES.register("qwen2_5_vl")
class Qwen25VL(ModelFamily):
    name = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    modalities = ("image", "video")

    def load_encoder(
        self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype, tower_attention: str = "auto"
    ) -> TowerEncoder:
        from transformers import AutoProcessor

        config, towers = self.load_towers(ckpt, random_init, device, dtype)
        processor = AutoProcessor.from_pretrained(ckpt)
        return Qwen25Encoder(towers["visual"], processor, config, device, dtype, tower_attention)

    def tower_builders(self, config: Any) -> TowerBuilders:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        return {"visual": hf_tower(Qwen2_5_VisionTransformerPretrainedModel, config.vision_config)}

    def decoder_spec(self, config: Any) -> Any:
        return vl_decoder_spec(config)

    def load_language(self, ckpt: Path, random_init: bool) -> LanguageSide:
        from transformers import AutoConfig

        return Qwen25Language(ckpt, random_init, AutoConfig.from_pretrained(ckpt))
