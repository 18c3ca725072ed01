"""Qwen3-Omni (thinker only, text out): Qwen3-VL vision tower with DeepStack + Whisper-style audio
tower (13 tokens/s) + Qwen3-MoE LM with interleaved M-RoPE.

With ``media.use_audio_in_video`` a video item also carries its audio track: the processor writes
one span ``<|vision_start|><|audio_start|>`` + video and audio pads interleaved by time +
``<|audio_end|><|vision_end|>``, and the item sends ``audio_embeds`` besides the visual ``embeds``.
The thinker's ``get_rope_index`` scans the token ids itself; it needs each video's seconds per
grid and each audio's mel-frame count (``audio_seqlen``), and returns fractional positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import (
    AUDIO,
    IMAGE,
    VIDEO,
    EncodedItem,
    ItemMeta,
    LanguageSide,
    MediaInput,
    ModelFamily,
    TowerEncoder,
)
from epd.models.families.qwen_common import frame_sampling, load_hf_model, processor_kwargs, span_types
from epd.models.registry import FAMILIES

PLACEHOLDER_TEXT = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
    "audio": "<|audio_start|><|audio_pad|><|audio_end|>",
}


def _model_class() -> Any:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    return Qwen3OmniMoeForConditionalGeneration


class OmniEncoder(TowerEncoder):
    modalities = ("image", "video", "audio")
    audio_in_video = True

    def __init__(self, thinker: Any, processor: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.inner = thinker.model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.audio_sampling_rate = processor.feature_extractor.sampling_rate
        cfg = thinker.config
        self.type_of = {cfg.image_token_id: IMAGE, cfg.video_token_id: VIDEO, cfg.audio_token_id: AUDIO}

    def frame_sampling(self, media: Any) -> Any:
        return frame_sampling(self.processor.video_processor, media)

    @torch.inference_mode()
    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        out = []
        for inp in inputs:  # one item per tower call; cross-item packing comes with encoder batching
            feat = self.processor(text=[PLACEHOLDER_TEXT[inp.modality]], return_tensors="pt", **self._kwargs(inp))
            ids = feat["input_ids"][0].tolist()
            tensors: dict[str, torch.Tensor] = {}
            info: dict[str, Any] = {}
            if inp.modality in ("image", "video"):
                key = "image" if inp.modality == "image" else "video"
                pix = feat["pixel_values" if key == "image" else "pixel_values_videos"].to(self.device, self.dtype)
                grid = feat[f"{key}_grid_thw"]
                vis = self.inner.visual(pix, grid_thw=grid.to(self.device))
                tensors["embeds"] = vis.pooler_output
                tensors["deepstack"] = torch.stack(list(vis.deepstack_features))
                info["grid_thw"] = grid[0].tolist()
                if key == "video":
                    info["second_per_grid"] = float(feat["video_second_per_grid"][0])
            if "input_features" in feat:  # an audio clip, or a video's own audio track
                mask = feat["feature_attention_mask"]
                audio = self.inner.get_audio_features(
                    feat["input_features"].to(self.device, self.dtype), mask.to(self.device)
                ).last_hidden_state
                tensors["embeds" if inp.modality == "audio" else "audio_embeds"] = audio
                info["audio_seqlen"] = int(mask.sum())
                info["audio_in_video"] = inp.modality == "video"
            meta = ItemMeta(modality=inp.modality, token_ids=ids, token_types=span_types(ids, self.type_of), info=info)
            out.append(EncodedItem(meta=meta, tensors=tensors))
        return out

    @staticmethod
    def _kwargs(inp: MediaInput) -> dict[str, Any]:
        if inp.modality == "video" and inp.audio is not None:
            kwargs = processor_kwargs(inp)
            kwargs.update(
                audio=[inp.audio.samples],
                sampling_rate=inp.audio.sampling_rate,
                load_audio_from_video=True,
                audio_from_video_indices=[0],
            )
            return kwargs
        return processor_kwargs(inp)


class OmniLanguage(LanguageSide):
    def __init__(self, model: Any, tokenizer: Any) -> None:
        thinker = model.thinker
        inner = thinker.model
        inner.visual = inner.audio_tower = None  # the towers live on the encoders
        self._thinker = thinker  # get_rope_index reads only the config
        self.text_model = inner.language_model
        self.lm_head = thinker.lm_head
        # not every span token is named in the thinker config: read them off the tokenizer (start-up only)
        self._spans = {m: tokenizer(t, add_special_tokens=False)["input_ids"] for m, t in PLACEHOLDER_TEXT.items()}
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def placeholder_span(self, modality: str) -> list[int]:
        return self._spans[modality]

    def positions(self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, float]:
        if not items:
            return torch.arange(ids.numel()).expand(3, -1), 0
        images = [it.info["grid_thw"] for it in items if it.modality == "image"]
        videos = [it for it in items if it.modality == "video"]
        audio_lens = [it.info["audio_seqlen"] for it in items if "audio_seqlen" in it.info]
        pos, delta = self._thinker.get_rope_index(
            ids[None],
            image_grid_thw=torch.tensor(images) if images else None,
            video_grid_thw=torch.tensor([v.info["grid_thw"] for v in videos]) if videos else None,
            attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
            use_audio_in_video=any(v.info.get("audio_in_video") for v in videos),
            audio_seqlens=torch.tensor(audio_lens) if audio_lens else None,
            second_per_grids=torch.tensor([v.info["second_per_grid"] for v in videos]) if videos else None,
        )
        return pos[:, 0], float(delta.item())


@FAMILIES.register("qwen3_omni")
class Qwen3Omni(ModelFamily):
    name = "qwen3_omni"
    architectures = ("Qwen3OmniMoeForConditionalGeneration",)
    modalities = ("image", "video", "audio")

    def load_encoder(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> TowerEncoder:
        from transformers import AutoProcessor

        model = load_hf_model(ckpt, random_init, device, dtype, _model_class())
        return OmniEncoder(model.thinker, AutoProcessor.from_pretrained(ckpt), device, dtype)

    def load_language(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> LanguageSide:
        from transformers import AutoTokenizer

        model = load_hf_model(ckpt, random_init, device, dtype, _model_class())
        return OmniLanguage(model, AutoTokenizer.from_pretrained(ckpt))
