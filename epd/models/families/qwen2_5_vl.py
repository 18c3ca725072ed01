"""Qwen2.5-VL: window-attention ViT (patch 14, merge 2) + Qwen2 LM with sectioned M-RoPE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import EncodedItem, ItemMeta, LanguageSide, ModelFamily, VisionEncoder
from epd.models.registry import FAMILIES

MODALITY_TYPE = {"image": 1, "video": 2}  # transformers' mm_token_type_ids


def load_hf_model(ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """The monolithic HF model: weights from ``ckpt``, or random weights built directly on ``device``."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    if random_init:
        config = AutoConfig.from_pretrained(ckpt)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    else:
        model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype).to(device)
    return model.eval()


class Qwen25VisionEncoder(VisionEncoder):
    def __init__(self, visual: torch.nn.Module, image_processor: Any, device: torch.device, dtype: torch.dtype):
        self.visual = visual
        self.image_processor = image_processor
        self.device = device
        self.dtype = dtype
        self.merge = visual.spatial_merge_size

    @torch.inference_mode()
    def encode_images(self, images: list[Any]) -> list[EncodedItem]:
        batch = self.image_processor(images=images, return_tensors="pt")
        grid_thw = batch["image_grid_thw"]  # [n_images, 3]
        pixels = batch["pixel_values"].to(self.device, self.dtype)  # [sum(t*h*w), C*T*P*P]
        embeds = self.visual(pixels, grid_thw=grid_thw.to(self.device)).pooler_output  # [sum(tokens), H]
        counts = (grid_thw.prod(-1) // self.merge**2).tolist()
        return [
            EncodedItem(embeds=e, grid_thw=g.tolist(), num_tokens=n)
            for e, g, n in zip(embeds.split(counts), grid_thw, counts, strict=True)
        ]


class Qwen25Language(LanguageSide):
    def __init__(self, model: Any) -> None:
        inner = model.model
        inner.visual = None  # the tower lives on the encoders
        self._inner = inner  # get_rope_index reads only the config
        self.text_model = inner.language_model
        self.lm_head = model.lm_head
        cfg = model.config
        self._placeholder = {"image": cfg.image_token_id, "video": cfg.video_token_id}
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def placeholder_id(self, modality: str) -> int:
        return self._placeholder[modality]

    def expand(self, prompt_ids: list[int], items: list[ItemMeta]) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        types: list[int] = []
        pending = iter(items)
        placeholders = set(self._placeholder.values())
        for tok in prompt_ids:
            if tok not in placeholders:
                ids.append(tok)
                types.append(0)
                continue
            item = next(pending, None)
            if item is None or self._placeholder[item.modality] != tok:
                raise ValueError("prompt placeholders do not match the request's media items")
            ids.extend([tok] * item.num_tokens)
            types.extend([MODALITY_TYPE[item.modality]] * item.num_tokens)
        if next(pending, None) is not None:
            raise ValueError("the request has more media items than placeholders in its prompt")
        return torch.tensor(ids, dtype=torch.long), torch.tensor(types, dtype=torch.int32)

    def positions(self, ids: torch.Tensor, mm_types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, int]:
        if not items:
            pos = torch.arange(ids.numel()).expand(3, -1)
            return pos, 0
        grids = torch.tensor([it.grid_thw for it in items if it.modality == "image"], dtype=torch.long)
        pos, delta = self._inner.get_rope_index(
            ids[None], mm_token_type_ids=mm_types[None], image_grid_thw=grids if len(grids) else None
        )
        return pos[:, 0], int(delta.item())


@FAMILIES.register("qwen2_5_vl")
class Qwen25VL(ModelFamily):
    name = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    modalities = ("image",)

    def load_encoder(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> VisionEncoder:
        from transformers import AutoProcessor

        model = load_hf_model(ckpt, random_init, device, dtype)
        visual = model.model.visual
        processor = AutoProcessor.from_pretrained(ckpt)
        return Qwen25VisionEncoder(visual, processor.image_processor, device, dtype)

    def load_language(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> LanguageSide:
        return Qwen25Language(load_hf_model(ckpt, random_init, device, dtype))
