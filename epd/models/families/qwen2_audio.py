"""Qwen2-Audio: Whisper-style audio encoder (mel windows, stride-2 conv + avg-pool: 25 tokens/s)
+ Qwen2 LM with plain 1-D RoPE.

The tower is run on its own, so the bidirectional padding mask the monolithic forward builds from
``feature_attention_mask`` is rebuilt here (without it the embeddings of short clips differ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from epd.models.base import AUDIO, EncodedItem, ItemMeta, LanguageSide, MediaInput, ModelFamily, TowerEncoder
from epd.models.families.qwen_common import (
    generation_eos,
    processor_kwargs,
    span_types,
    tied_embeddings,
)
from epd.models.families.towers import TowerBuilders
from epd.models.registry import FAMILIES

PLACEHOLDER_TEXT = "<|audio_bos|><|AUDIO|><|audio_eos|>"


class Qwen2AudioEncoder(TowerEncoder):
    modalities = ("audio",)

    def __init__(
        self,
        tower: torch.nn.Module,
        projector: torch.nn.Module,
        processor: Any,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
        tower_attention: str = "auto",
    ) -> None:
        from epd_kernels.tower import prepare_tower

        self.tower = tower
        # padded 30 s windows with a mask: epd's attention falls back to SDPA for them (no cu_seqlens)
        self.tower_attention = prepare_tower(self.tower, tower_attention, device, dtype)
        self.projector = projector  # audio d_model → the LM's hidden size
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.audio_sampling_rate = processor.feature_extractor.sampling_rate
        self.type_of = {config.audio_token_id: AUDIO}

    def _process(self, inp: MediaInput) -> Any:
        return self.run_processor(text=[PLACEHOLDER_TEXT], **processor_kwargs(inp))

    @torch.inference_mode()
    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        from transformers.masking_utils import create_bidirectional_mask

        feats = self._features(inputs)
        features = torch.cat([f["input_features"] for f in feats]).to(self.device, self.dtype)  # [n, mel, frames]
        mel_lens = torch.cat([f["feature_attention_mask"] for f in feats]).sum(-1).to(self.device)  # [n]
        conv_lens, out_lens = self.tower._get_feat_extract_output_lengths(mel_lens)
        max_len = (features.shape[-1] - 2) // 2 + 1  # frames after the stride-2 conv
        keep = (torch.arange(max_len, device=self.device)[None, :] < conv_lens[:, None]).long()  # [n, max_len]
        dummy = torch.zeros(features.shape[0], max_len, 1, dtype=self.dtype, device=self.device)
        mask = create_bidirectional_mask(config=self.tower.config, inputs_embeds=dummy, attention_mask=keep)
        hidden = self.projector(self.tower(features, attention_mask=mask).last_hidden_state)  # [n, T, H]
        out = []
        for f, h, n in zip(feats, hidden, out_lens.tolist(), strict=True):
            ids = f["input_ids"][0].tolist()
            meta = ItemMeta(modality="audio", token_ids=ids, token_types=span_types(ids, self.type_of), info={})
            out.append(EncodedItem(meta=meta, tensors={"embeds": h[:n]}))
        return out


class Qwen2AudioLanguage(LanguageSide):
    def __init__(self, ckpt: Path, random_init: bool, config: Any, tokenizer: Any) -> None:
        self.spec = audio_decoder_spec(config)
        self.weights = None if random_init else ckpt
        self.hf_config = config
        # config.json names only the pad token; the span's bos/eos ids come from the tokenizer (start-up only)
        self._span = tokenizer.convert_tokens_to_ids(["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"])
        self.eos_token_ids = generation_eos(ckpt)

    def placeholder_span(self, modality: str) -> list[int]:
        return self._span

    def positions(self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, int]:
        return torch.arange(ids.numel()).expand(3, -1), 0


def audio_decoder_spec(config: Any) -> Any:
    """``DecoderSpec`` of Qwen2-Audio's language model (Qwen2: qkv bias, 1-D RoPE)."""
    from epd.language.models import DecoderSpec

    text = config.text_config  # Qwen2
    return DecoderSpec.from_hf_config(
        text, rope_style="1d", qk_norm=False, qkv_bias=True, tie=tied_embeddings(config, text)
    )


@FAMILIES.register("qwen2_audio")
class Qwen2Audio(ModelFamily):
    name = "qwen2_audio"
    architectures = ("Qwen2AudioForConditionalGeneration",)
    modalities = ("audio",)

    def load_encoder(
        self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype, tower_attention: str = "auto"
    ) -> TowerEncoder:
        from transformers import AutoProcessor

        config, towers = self.load_towers(ckpt, random_init, device, dtype)
        processor = AutoProcessor.from_pretrained(ckpt)
        return Qwen2AudioEncoder(
            towers["audio_tower"], towers["multi_modal_projector"], processor, config, device, dtype, tower_attention
        )

    def tower_builders(self, config: Any) -> TowerBuilders:
        """The Whisper-style encoder and the projector that ``encode`` applies after it, built as the
        full model builds them."""
        from transformers import AutoModel
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioMultiModalProjector

        return {
            "audio_tower": lambda dtype: AutoModel.from_config(config.audio_config, dtype=dtype),
            "multi_modal_projector": lambda dtype: Qwen2AudioMultiModalProjector(config),
        }

    def decoder_spec(self, config: Any) -> Any:
        return audio_decoder_spec(config)

    def load_language(self, ckpt: Path, random_init: bool) -> LanguageSide:
        from transformers import AutoConfig, AutoTokenizer

        return Qwen2AudioLanguage(
            ckpt, random_init, AutoConfig.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
        )
