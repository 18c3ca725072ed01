"""Tiny Qwen2.5-VL: real architecture and processors, toy sizes, seeded random weights.

Sizes follow shared/NOTES-transformers.md (text hidden 64, 2 layers, vision depth 2); the image
and video processors keep the real defaults except a small pixel budget, so a 1080p image
becomes at most 64 tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from epd.tiny.chat_template import chatml_template
from epd.tiny.tokenizer import special_token_ids, train_bpe
from epd.tiny.weights import init_weights_, save_model

# Same tokens, same order as the real checkpoints (ids 151643.. there, 634.. here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

PLACEHOLDERS = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}

# One merged token covers 28x28 pixels (patch 14, spatial merge 2).
IMAGE_MIN_PIXELS = 4 * 28 * 28
IMAGE_MAX_PIXELS = 64 * 28 * 28
VIDEO_MIN_PIXELS = 4 * 28 * 28
VIDEO_MAX_PIXELS = 32 * 28 * 28  # per frame pair

# Model vocab rounded up past the tokenizer (as real Qwen: 152064 > 151665), so random models
# may emit ids with no token: compare ids, not text.
VOCAB_MULTIPLE = 128


def build_tokenizer() -> Qwen2Tokenizer:
    """The tiny Qwen2 tokenizer: trained BPE + the Qwen2.5-VL special tokens and chat template."""
    backend = train_bpe(SPECIAL_TOKENS)
    return Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        chat_template=chatml_template(PLACEHOLDERS),
    )


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor:
    """Processor with real Qwen2.5-VL image/video processors (small pixel budgets)."""
    image_processor = Qwen2VLImageProcessor(min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chatml_template(PLACEHOLDERS),
    )


def build_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """Tiny Qwen2.5-VL config whose token ids match ``tokenizer``."""
    ids = special_token_ids(tokenizer.backend_tokenizer, SPECIAL_TOKENS)
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        # mrope_section sums to head_dim / 2 (temporal, height, width frequency slots).
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [2, 3, 3],
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,  # the real 2.5-VL value
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64,  # = text hidden
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy by default; stops on ``<|im_end|>`` or ``<|endoftext|>`` like real Qwen."""
    ids = special_token_ids(tokenizer.backend_tokenizer, SPECIAL_TOKENS)
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen2.5-VL checkpoint into ``out_dir`` (which must exist)."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    # processor_config.json (image + video processor nested, transformers 5 layout), tokenizer
    # files and chat_template.jinja; then the stand-alone preprocessor_config.json and
    # video_preprocessor_config.json that real checkpoints ship and older loaders read.
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    processor.video_processor.save_pretrained(out_dir)
    with torch.device("cpu"):
        model = Qwen2_5_VLForConditionalGeneration(build_config(tokenizer))
    init_weights_(model, seed)
    model.generation_config = build_generation_config(tokenizer)
    save_model(model, out_dir)
