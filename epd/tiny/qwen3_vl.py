"""Tiny Qwen3-VL (dense, and the MoE variant): real architecture and processors, toy sizes.

Sizes follow shared/NOTES-transformers.md: text hidden 64, 2 layers, qk-norm, interleaved M-RoPE
``[4, 2, 2]``; vision depth 2, patch 16, a learned 8x8 position grid, DeepStack taps after both
vision blocks. The image and video processors keep the released defaults (mean/std 0.5, patch 16,
merge 2, temporal patch 2, 2 fps sampling) except small pixel budgets: a 1080p image becomes 60
tokens. ``epd.tiny.qwen3_vl_moe`` writes the MoE variant through :func:`write_family`.

Videos are frames ``[T, H, W, 3]`` uint8 plus ``video_metadata=[{"fps", "total_num_frames"}]``: the
video processor samples 2 fps itself (at least 4 frames) and the processor writes one
``<t seconds><|vision_start|>...<|vision_end|>`` block per temporal grid, inside the template's own
``<|vision_start|>...<|vision_end|>``. Frames sampled beforehand need ``do_sample_frames=False`` and
``frames_indices`` in the metadata (without them transformers 5.24 fails in the timestamp code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    PreTrainedConfig,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from epd.tiny.chat_template import chatml_template
from epd.tiny.files import greedy_generation_config, save_processor, save_shape
from epd.tiny.qwen2_5_vl import SPECIAL_TOKENS
from epd.tiny.tokenizer import padded_vocab_size, qwen_tokenizer, special_token_ids
from epd.tiny.weights import init_weights_, save_model

# Qwen3 chat format: no default system message.
PLACEHOLDERS = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}

IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]

# One merged token covers 32x32 pixels (patch 16, spatial merge 2).
IMAGE_MIN_PIXELS = 4 * 32 * 32
IMAGE_MAX_PIXELS = 64 * 32 * 32
# Qwen3VLVideoProcessor budgets count pixels over all sampled frames (t * h * w), not per frame.
VIDEO_MIN_PIXELS = 8 * 32 * 32
VIDEO_MAX_PIXELS = 128 * 32 * 32

# Released Qwen3-VL budgets (preprocessor_config.json / video_preprocessor_config.json): images
# 64 to 16384 merged tokens (1920x1080 -> 2040 tokens); videos 4 to 24576 token-equivalents of
# pixels over the sampled frames.
REAL_IMAGE_MIN_PIXELS = 64 * 32 * 32
REAL_IMAGE_MAX_PIXELS = 16384 * 32 * 32
REAL_VIDEO_MIN_PIXELS = 4 * 32 * 32
REAL_VIDEO_MAX_PIXELS = 24576 * 32 * 32

# Published sizes of Qwen3-VL-8B-Instruct (config.json).
REAL_SHAPES = {
    "8b": {
        "text": {
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        "vision": {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "patch_size": 16,
            "out_hidden_size": 4096,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
    },
}

# Published sizes of Qwen3-VL-30B-A3B-Instruct (config.json; the same numbers in Megatron-Bridge's
# Qwen3-VL-30B-A3B training arguments): a Qwen3-MoE text model of 48 sparse layers (128 experts of
# width 768, 8 active, renormalised top-k) and the 8B's vision tower projecting to hidden 2048.
REAL_MOE_SHAPES = {
    "30b": {
        "text": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,  # no dense layer uses it: every layer is sparse
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "decoder_sparse_step": 1,
            "norm_topk_prob": True,
            "mlp_only_layers": [],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        "vision": {**REAL_SHAPES["8b"]["vision"], "out_hidden_size": 2048},
    },
}

# MoE text sizes (Qwen3-VL-30B-A3B layout, toy counts).
TINY_MOE = {
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "decoder_sparse_step": 1,
    "norm_topk_prob": True,
    "mlp_only_layers": [],
}


def build_tokenizer() -> Qwen2Tokenizer:
    """The tiny Qwen2 tokenizer with the Qwen-VL special tokens and the Qwen3-VL chat template."""
    return qwen_tokenizer(SPECIAL_TOKENS, chatml_template(PLACEHOLDERS, default_system=None), 262144)


def build_processor(tokenizer: Qwen2Tokenizer, real_budgets: bool = False) -> Qwen3VLProcessor:
    """Processor with real Qwen3-VL image/video processors (small pixel budgets unless ``real_budgets``)."""
    image_min, image_max = (
        (REAL_IMAGE_MIN_PIXELS, REAL_IMAGE_MAX_PIXELS) if real_budgets else (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    )
    video_min, video_max = (
        (REAL_VIDEO_MIN_PIXELS, REAL_VIDEO_MAX_PIXELS) if real_budgets else (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    )
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        size={"shortest_edge": image_min, "longest_edge": image_max},
    )
    video_processor = Qwen3VLVideoProcessor(
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        size={"shortest_edge": video_min, "longest_edge": video_max},
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chatml_template(PLACEHOLDERS, default_system=None),
    )


def build_config(tokenizer: Qwen2Tokenizer, shape: str | None = None, moe: bool = False) -> PreTrainedConfig:
    """Qwen3-VL (``moe=False``) or Qwen3-VL-MoE config whose token ids match ``tokenizer``: tiny
    sizes, or a released ``shape`` (``REAL_SHAPES``, ``REAL_MOE_SHAPES``)."""
    ids = special_token_ids(tokenizer.backend_tokenizer, SPECIAL_TOKENS)
    text_config: dict[str, Any] = {
        "vocab_size": padded_vocab_size(len(tokenizer)),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        # mrope_section sums to head_dim / 2; interleaved: frequency slots cycle t, h, w.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision_config: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,  # = text hidden
        "num_position_embeddings": 64,  # a square: the learned grid is 8x8, resampled per image
        "deepstack_visual_indexes": [0, 1],  # taps after each block, added to LM layers 0 and 1
    }
    if moe:
        text_config.update(TINY_MOE)
    if shape is not None:
        shapes = _shapes(moe)
        if shape not in shapes:
            raise ValueError(f"unknown Qwen3-VL{'-MoE' * moe} shape {shape!r}; known: {', '.join(sorted(shapes))}")
        text_config.update(shapes[shape]["text"])
        vision_config.update(shapes[shape]["vision"])
    config_class = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32" if shape is None else "bfloat16",
    )


def write_family(out_dir: Path, seed: int, moe: bool) -> None:
    """Write a complete tiny Qwen3-VL (or Qwen3-VL-MoE) checkpoint into existing ``out_dir``."""
    tokenizer = build_tokenizer()
    save_processor(build_processor(tokenizer), out_dir)
    model_class = Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration
    with torch.device("cpu"):
        model = model_class(build_config(tokenizer, moe=moe))
    init_weights_(model, seed)
    model.generation_config = build_generation_config(tokenizer)
    save_model(model, out_dir)


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen3-VL checkpoint into ``out_dir`` (which must exist)."""
    write_family(out_dir, seed, moe=False)


def write_shape(out_dir: Path, shape: str, moe: bool = False) -> None:
    """A weightless checkpoint of a released size: real config dims and pixel budgets, the tiny
    tokenizer (special-token ids remapped into it). Serves ``model.random_init=true`` runs."""
    shapes = _shapes(moe)
    if shape not in shapes:
        raise ValueError(f"unknown Qwen3-VL{'-MoE' * moe} shape {shape!r}; known: {', '.join(sorted(shapes))}")
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, real_budgets=True)
    save_shape(
        out_dir,
        processor,
        build_config(tokenizer, shape, moe=moe),
        build_generation_config(tokenizer),
        "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration",
    )


def _shapes(moe: bool) -> dict[str, dict[str, dict[str, Any]]]:
    return REAL_MOE_SHAPES if moe else REAL_SHAPES


def build_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy by default, stopping on the released model's EOS tokens."""
    return greedy_generation_config(tokenizer, SPECIAL_TOKENS, ("<|im_end|>", "<|endoftext|>"))
