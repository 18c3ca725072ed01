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
from epd.tiny.files import greedy_generation_config, save_processor, save_shape
from epd.tiny.tokenizer import qwen_tokenizer, special_token_ids
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

# Released Qwen2.5-VL image budget: 4 to 16384 merged tokens (1920x1080 -> 2691 tokens).
REAL_MIN_PIXELS = 3136
REAL_MAX_PIXELS = 12845056

# Model vocab rounded up past the tokenizer (as real Qwen: 152064 > 151665), so random models
# may emit ids with no token: compare ids, not text.
VOCAB_MULTIPLE = 128


def build_tokenizer() -> Qwen2Tokenizer:
    """The tiny Qwen2 tokenizer: trained BPE + the Qwen2.5-VL special tokens and chat template."""
    return qwen_tokenizer(SPECIAL_TOKENS, chatml_template(PLACEHOLDERS), 32768)


def build_processor(tokenizer: Qwen2Tokenizer, real_budgets: bool = False) -> Qwen2_5_VLProcessor:
    """Processor with real Qwen2.5-VL image/video processors (small pixel budgets unless ``real_budgets``)."""
    if real_budgets:  # the released checkpoints' preprocessor_config.json
        image_processor = Qwen2VLImageProcessor(min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
        video_processor = Qwen2VLVideoProcessor()
    else:
        image_processor = Qwen2VLImageProcessor(min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS)
        video_processor = Qwen2VLVideoProcessor(min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chatml_template(PLACEHOLDERS),
    )


# Published sizes of the released checkpoints (config.json of Qwen2.5-VL-{3B,7B}-Instruct).
REAL_SHAPES = {
    "7b": {
        "text": {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_window_layers": 28,
            "max_position_embeddings": 128000,
            "mrope_section": [16, 24, 24],
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "out_hidden_size": 3584,
        },
    },
    "3b": {
        "text": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "head_dim": 128,
            "max_window_layers": 70,
            "max_position_embeddings": 128000,
            "mrope_section": [16, 24, 24],
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "out_hidden_size": 2048,
        },
    },
}


def build_config(tokenizer: Qwen2Tokenizer, shape: str | None = None) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL config whose token ids match ``tokenizer``: tiny sizes, or a released ``shape``."""
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
    if shape is not None:
        real = REAL_SHAPES[shape]
        text_config.update({k: v for k, v in real["text"].items() if k != "mrope_section"})
        text_config["rope_parameters"]["mrope_section"] = real["text"]["mrope_section"]
        vision_config.update(real["vision"])
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32" if shape is None else "bfloat16",
    )


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen2.5-VL checkpoint into ``out_dir`` (which must exist)."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    # processor_config.json (image + video processor nested, transformers 5 layout), tokenizer
    # files and chat_template.jinja; then the stand-alone preprocessor_config.json and
    # video_preprocessor_config.json that real checkpoints ship and older loaders read.
    save_processor(processor, out_dir)
    with torch.device("cpu"):
        model = Qwen2_5_VLForConditionalGeneration(build_config(tokenizer))
    init_weights_(model, seed)
    model.generation_config = build_generation_config(tokenizer)
    save_model(model, out_dir)


def write_shape(out_dir: Path, shape: str) -> None:
    """A weightless checkpoint of a released size: real config dims and pixel budgets, the tiny
    tokenizer (special-token ids remapped into it). Serves ``model.random_init=true`` runs."""
    if shape not in REAL_SHAPES:
        raise ValueError(f"unknown Qwen2.5-VL shape {shape!r}; known: {', '.join(sorted(REAL_SHAPES))}")
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, real_budgets=True)
    save_shape(
        out_dir,
        processor,
        build_config(tokenizer, shape),
        build_generation_config(tokenizer),
        "Qwen2_5_VLForConditionalGeneration",
    )


def build_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy by default, stopping on the released model's EOS tokens."""
    return greedy_generation_config(tokenizer, SPECIAL_TOKENS, ("<|im_end|>", "<|endoftext|>"))
