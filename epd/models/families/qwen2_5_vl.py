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
    load_hf_model,
    processor_kwargs,
    run_vision_tower,
    span_types,
)
from epd.models.registry import FAMILIES

PLACEHOLDER_TEXT = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}


class Qwen25Encoder(TowerEncoder):
    modalities = ("image", "video")

    def __init__(self, visual: torch.nn.Module, processor: Any, config: Any, device: torch.device, dtype):
        self.visual = visual
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.type_of = {config.image_token_id: IMAGE, config.video_token_id: VIDEO}

    def frame_sampling(self, media: Any) -> Any:
        return frame_sampling(self.processor.video_processor, media)

    @torch.inference_mode()
    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        feats = [
            self.processor(text=[PLACEHOLDER_TEXT[inp.modality]], return_tensors="pt", **processor_kwargs(inp))
            for inp in inputs
        ]
        out: list[EncodedItem | None] = [None] * len(inputs)
        for modality, pix_key, grid_key in (
            ("image", "pixel_values", "image_grid_thw"),
            ("video", "pixel_values_videos", "video_grid_thw"),
        ):
            idx = [i for i, inp in enumerate(inputs) if inp.modality == modality]
            if not idx:
                continue
            grids = [feats[i][grid_key] for i in idx]
            tower, counts = run_vision_tower(
                self.visual, [feats[i][pix_key] for i in idx], grids, self.device, self.dtype
            )
            for i, grid, embeds in zip(idx, grids, tower.pooler_output.split(counts), strict=True):
                ids = feats[i]["input_ids"][0].tolist()
                meta = ItemMeta(
                    modality=modality,
                    token_ids=ids,
                    token_types=span_types(ids, self.type_of),
                    info=self._info(feats[i], grid),
                )
                out[i] = EncodedItem(meta=meta, tensors={"embeds": embeds, **self._extra(tower, idx.index(i), counts)})
        return out

    def _info(self, feat: Any, grid: torch.Tensor) -> dict[str, Any]:
        info: dict[str, Any] = {"grid_thw": grid[0].tolist()}
        if "second_per_grid_ts" in feat:  # video: seconds per temporal grid drive the time positions
            info["second_per_grid"] = float(feat["second_per_grid_ts"][0])
        return info

    def _extra(self, tower: Any, k: int, counts: list[int]) -> dict[str, torch.Tensor]:
        """Tensors beyond the merged embeddings (DeepStack families override)."""
        return {}


class Qwen25Language(LanguageSide):
    def __init__(self, model: Any) -> None:
        inner = model.model
        inner.visual = None  # the tower lives on the encoders
        self._inner = inner  # get_rope_index reads only the config
        self.text_model = inner.language_model
        self.lm_head = model.lm_head
        cfg = model.config
        self._spans = {
            "image": [cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id],
            "video": [cfg.vision_start_token_id, cfg.video_token_id, cfg.vision_end_token_id],
        }
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def placeholder_span(self, modality: str) -> list[int]:
        return self._spans[modality]

    def positions(self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, int]:
        if not items:
            return torch.arange(ids.numel()).expand(3, -1), 0
        images = [it.info["grid_thw"] for it in items if it.modality == "image"]
        videos = [it for it in items if it.modality == "video"]
        timing = {}  # Qwen2.5-VL spaces video time by seconds per grid; Qwen3-VL writes timestamps instead
        if videos and "second_per_grid" in videos[0].info:
            timing["second_per_grid_ts"] = torch.tensor([v.info["second_per_grid"] for v in videos])
        pos, delta = self._inner.get_rope_index(
            ids[None],
            mm_token_type_ids=types[None],
            image_grid_thw=torch.tensor(images) if images else None,
            video_grid_thw=torch.tensor([v.info["grid_thw"] for v in videos]) if videos else None,
            **timing,
        )
        return pos[:, 0], int(delta.item())


@FAMILIES.register("qwen2_5_vl")
class Qwen25VL(ModelFamily):
    name = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    modalities = ("image", "video")

    def load_encoder(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> TowerEncoder:
        from transformers import AutoProcessor

        model = load_hf_model(ckpt, random_init, device, dtype)
        return Qwen25Encoder(model.model.visual, AutoProcessor.from_pretrained(ckpt), model.config, device, dtype)

    def load_language(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> LanguageSide:
        return Qwen25Language(load_hf_model(ckpt, random_init, device, dtype))
