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
from epd.models.families.qwen_common import (
    cat_to_device,
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
    "audio": "<|audio_start|><|audio_pad|><|audio_end|>",
}
VISION_KEYS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


class OmniEncoder(TowerEncoder):
    modalities = ("image", "video", "audio")
    audio_in_video = True

    def __init__(
        self,
        visual: torch.nn.Module,
        audio_tower: torch.nn.Module,
        processor: Any,
        thinker_config: Any,
        device: torch.device,
        dtype: torch.dtype,
        tower_attention: str = "auto",
    ) -> None:
        from epd_kernels.tower import prepare_tower

        self.visual = visual
        self.audio_tower = audio_tower
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.audio_sampling_rate = processor.feature_extractor.sampling_rate
        cfg = thinker_config
        self.type_of = {cfg.image_token_id: IMAGE, cfg.video_token_id: VIDEO, cfg.audio_token_id: AUDIO}
        self.n_window = cfg.audio_config.n_window
        self.tower_attention = prepare_tower(self.visual, tower_attention, device, dtype)
        prepare_tower(self.audio_tower, tower_attention, device, dtype)

    def frame_sampling(self, media: Any) -> Any:
        return frame_sampling(self.processor.video_processor, media)

    @torch.inference_mode()
    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        """One packed vision call for the images and videos, one packed audio call for the clips and
        the videos' audio tracks."""
        feats = self._features(inputs)
        tensors: list[dict[str, torch.Tensor]] = [{} for _ in inputs]
        infos: list[dict[str, Any]] = [{} for _ in inputs]
        seen = [k for k, inp in enumerate(inputs) if inp.modality in ("image", "video")]
        if seen:
            keys = [VISION_KEYS[inputs[k].modality] for k in seen]
            grids = [feats[k][grid_key] for k, (_, grid_key) in zip(seen, keys, strict=True)]
            pixels = [feats[k][pix_key] for k, (pix_key, _) in zip(seen, keys, strict=True)]
            vis, counts = run_vision_tower(self.visual, pixels, grids, self.device, self.dtype)
            deep = torch.stack(list(vis.deepstack_features))  # [k, sum tokens, H]
            for k, grid, embeds, layers in zip(
                seen, grids, vis.pooler_output.split(counts), deep.split(counts, dim=1), strict=True
            ):
                tensors[k].update(embeds=embeds, deepstack=layers)
                infos[k]["grid_thw"] = grid[0].tolist()
                if inputs[k].modality == "video":
                    infos[k]["second_per_grid"] = float(feats[k]["video_second_per_grid"][0])
        heard = [k for k, feat in enumerate(feats) if "input_features" in feat]  # audio clips and videos' tracks
        if heard:
            for k, audio in zip(heard, self._audio([feats[k] for k in heard]), strict=True):
                tensors[k]["embeds" if inputs[k].modality == "audio" else "audio_embeds"] = audio
                infos[k]["audio_seqlen"] = int(feats[k]["feature_attention_mask"].sum())
                infos[k]["audio_in_video"] = inputs[k].modality == "video"
        out = []
        for inp, feat, item_tensors, info in zip(inputs, feats, tensors, infos, strict=True):
            ids = feat["input_ids"][0].tolist()
            meta = ItemMeta(modality=inp.modality, token_ids=ids, token_types=span_types(ids, self.type_of), info=info)
            out.append(EncodedItem(meta=meta, tensors=item_tensors))
        return out

    def _audio(self, feats: list[Any]) -> list[torch.Tensor]:
        """The audio tower over several items, packed end to end (mel frames without padding).

        The tower cuts each clip into chunks of 2 * n_window frames and pads every chunk of the call
        to the longest one; a clip shorter than one chunk would see more padding with longer batch-mates
        (its last tokens change), so such clips go in calls of their own length: every item's
        embeddings are what it gets alone."""
        from epd_kernels.rope_index import omni_audio_tokens

        mels = [f["input_features"][0][:, f["feature_attention_mask"][0].bool()] for f in feats]  # [mel, frames_i]
        chunk = 2 * self.n_window
        groups: dict[int, list[int]] = {}
        for k, mel in enumerate(mels):
            groups.setdefault(min(mel.shape[1], chunk), []).append(k)
        out: list[torch.Tensor | None] = [None] * len(mels)
        for members in groups.values():
            lens = [mels[k].shape[1] for k in members]
            features = cat_to_device([mels[k].T for k in members], self.device).T.to(self.dtype)  # [mel, sum frames]
            lengths = torch.tensor(lens, device=self.device)
            hidden = self.audio_tower(features, feature_lens=lengths).last_hidden_state  # [sum tokens, H]
            for k, h in zip(members, hidden.split([omni_audio_tokens(n, self.n_window) for n in lens]), strict=True):
                out[k] = h
        return out

    def _process(self, inp: MediaInput) -> Any:
        return self.run_processor(text=[PLACEHOLDER_TEXT[inp.modality]], **self._kwargs(inp))

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
    def __init__(self, ckpt: Path, random_init: bool, config: Any, tokenizer: Any) -> None:
        self.spec = omni_decoder_spec(config)
        self.weights = None if random_init else ckpt
        self.hf_config = config.thinker_config  # what the rope positions read (grids, merge size, token ids)
        # not every span token is named in the thinker config: read them off the tokenizer (start-up only)
        self._spans = {m: tokenizer(t, add_special_tokens=False)["input_ids"] for m, t in PLACEHOLDER_TEXT.items()}
        self.eos_token_ids = generation_eos(ckpt)

    def placeholder_span(self, modality: str) -> list[int]:
        return self._spans[modality]

    def positions(self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, float]:
        """The thinker's ``get_rope_index``, vectorised (``epd_kernels.rope_index``); reads only ``hf_config``."""
        from epd_kernels.rope_index import OmniItem, omni_rope_index

        if not items:
            return torch.arange(ids.numel()).expand(3, -1), 0
        cfg = self.hf_config
        rope_items = [
            OmniItem(
                modality=it.modality,
                grid_thw=tuple(it.info["grid_thw"]) if "grid_thw" in it.info else None,
                second_per_grid=it.info.get("second_per_grid"),
                audio_seqlen=it.info.get("audio_seqlen"),
            )
            for it in items
        ]
        return omni_rope_index(
            types,
            rope_items,
            cfg.vision_config.spatial_merge_size,
            cfg.position_id_per_seconds,
            cfg.audio_config.n_window,
        )


def omni_decoder_spec(config: Any) -> Any:
    """``DecoderSpec`` of the thinker's language model (Qwen3-MoE: qk-norm, interleaved M-RoPE)."""
    from epd.language.models import DecoderSpec

    thinker = config.thinker_config
    text = thinker.text_config  # Qwen3-MoE
    return DecoderSpec.from_hf_config(
        text,
        rope_style="interleaved",
        qk_norm=True,
        qkv_bias=bool(getattr(text, "attention_bias", False)),
        tie=tied_embeddings(thinker, text),
    )


@FAMILIES.register("qwen3_omni")
class Qwen3Omni(ModelFamily):
    name = "qwen3_omni"
    architectures = ("Qwen3OmniMoeForConditionalGeneration",)
    modalities = ("image", "video", "audio")

    def load_encoder(
        self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype, tower_attention: str = "auto"
    ) -> TowerEncoder:
        from transformers import AutoProcessor

        config, towers = self.load_towers(ckpt, random_init, device, dtype)
        processor = AutoProcessor.from_pretrained(ckpt)
        thinker = config.thinker_config
        return OmniEncoder(towers["visual"], towers["audio_tower"], processor, thinker, device, dtype, tower_attention)

    def tower_builders(self, config: Any) -> TowerBuilders:
        """The thinker's vision tower (with DeepStack mergers) and audio tower; no talker, no code2wav."""
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
            Qwen3OmniMoeAudioEncoder,
            Qwen3OmniMoeVisionEncoder,
        )

        thinker = config.thinker_config
        return {
            "visual": hf_tower(Qwen3OmniMoeVisionEncoder, thinker.vision_config),
            "audio_tower": hf_tower(Qwen3OmniMoeAudioEncoder, thinker.audio_config),
        }

    def decoder_spec(self, config: Any) -> Any:
        return omni_decoder_spec(config)

    def load_language(self, ckpt: Path, random_init: bool) -> LanguageSide:
        from transformers import AutoConfig, AutoTokenizer

        return OmniLanguage(ckpt, random_init, AutoConfig.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt))
