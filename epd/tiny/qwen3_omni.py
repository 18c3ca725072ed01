"""Tiny Qwen3-Omni (thinker only): real architecture and processors, toy sizes, seeded weights.

``Qwen3OmniMoeForConditionalGeneration`` with ``enable_audio_output=False``, so only the thinker is
built: a Qwen3-VL-MoE-style text model (hidden 64, 2 layers, 4 experts top-2), the Qwen3-VL vision
tower (patch 16, DeepStack taps after both blocks) and the Qwen3-Omni audio encoder (d_model 64,
windows of ``2 * n_window = 100`` mel frames, 13 tokens per full window). The processors keep the
released defaults (Whisper features at 16 kHz with 128 bins, patch 16, merge 2, temporal patch 2)
except small pixel budgets.

The Omni processor reads its placeholder tokens from the tokenizer's ``extra_special_tokens``.
Videos are frames ``[T, H, W, 3]`` uint8, used as given (no resampling); pass
``videos_kwargs={"fps": frames_per_second, "size": VIDEO_SIZE}``: the processor computes
``video_second_per_grid = 2 / fps`` with fps defaulting to 1.0, and its class-level video size
(128..768 merged tokens per temporal grid) overrides the saved one. A video's audio track goes in
``audio=[waveform]`` with ``audio_from_video_indices=[0]`` and ``load_audio_from_video=True``
(``use_audio_in_video=True`` still works in the processor but is deprecated); the model and
``generate`` take ``use_audio_in_video=True``.

Talker-only ids (``system_token_id``, ``user_token_id``, ``assistant_token_id``) keep the released
values: the role words are not single tokens of the tiny BPE and no talker is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3OmniMoeConfig,
    Qwen3OmniMoeForConditionalGeneration,
    Qwen3OmniMoeProcessor,
    WhisperFeatureExtractor,
)

from epd.tiny.chat_template import chatml_template
from epd.tiny.files import greedy_generation_config, save_shape
from epd.tiny.qwen2_5_vl import SPECIAL_TOKENS as QWEN_VL_SPECIAL_TOKENS
from epd.tiny.qwen3_vl import IMAGE_MAX_PIXELS, IMAGE_MEAN, IMAGE_MIN_PIXELS, IMAGE_STD, TINY_MOE
from epd.tiny.tokenizer import padded_vocab_size, qwen_tokenizer, special_token_ids
from epd.tiny.weights import init_weights_, save_model

# The Qwen-VL tokens, then Qwen3-Omni's audio / TTS tokens in their released order (the released
# tokenizer has Qwen3's tool/think tokens in between, which the tiny one leaves out).
SPECIAL_TOKENS = (
    *QWEN_VL_SPECIAL_TOKENS,
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
)

# Attribute names the Omni processor looks up on the tokenizer.
NAMED_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "audio_token": "<|audio_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}

# Qwen3 chat format (no default system message). With the audio track of a video, the processor
# rewrites the video pad into <|audio_start|> video/audio tokens interleaved by time <|audio_end|>.
PLACEHOLDERS = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
    "audio": "<|audio_start|><|audio_pad|><|audio_end|>",
}

SAMPLING_RATE = 16000
# Audio encoder window: 2 * N_WINDOW mel frames (1 s) per conv chunk -> 13 tokens.
N_WINDOW = 50
# Temporal rope positions per second; the processor interleaves video and audio tokens with its
# own default (13), which must agree with the thinker config's value.
POSITION_ID_PER_SECONDS = 13
# Qwen2VLVideoProcessor budgets are per frame; the Omni processor's class default (128 to 768
# merged tokens per temporal grid) overrides the video processor's own size unless a call passes `size`.
VIDEO_MIN_PIXELS = 4 * 32 * 32
VIDEO_MAX_PIXELS = 16 * 32 * 32
VIDEO_SIZE = {"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS}

# Released Qwen3-Omni-30B-A3B preprocessor_config.json: images from 3136 to 12845056 pixels (patch
# 16, merge 2: 4 to 12544 tokens); videos take the Omni processor's own 128..768 tokens per grid.
REAL_IMAGE_MIN_PIXELS = 3136
REAL_IMAGE_MAX_PIXELS = 12845056
REAL_VIDEO_SIZE = {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32}

# Published sizes of the Qwen3-Omni-30B-A3B-Instruct thinker (config.json at revision 26291f79,
# as extracted in qwen3-omni-pretrain's config contract; transformers' Qwen3OmniMoe*Config docs give
# the same audio and vision numbers): a Qwen3-MoE text model like Qwen3-VL-30B-A3B's (48 layers,
# 128 experts of width 768, 8 active) with vocab 152064 and rope theta 1e6, the Qwen3-VL vision
# tower to hidden 2048, and a 32-layer audio encoder of width 1280.
REAL_SHAPES = {
    "30b": {
        "text": {
            "vocab_size": 152064,
            "hidden_size": 2048,
            "intermediate_size": 768,  # no dense layer uses it: every layer is sparse
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_position_embeddings": 65536,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "decoder_sparse_step": 1,
            "norm_topk_prob": True,
            "mlp_only_layers": [],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [24, 20, 20],
                "interleaved": True,
            },
        },
        "vision": {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "patch_size": 16,
            "out_hidden_size": 2048,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        "audio": {
            "d_model": 1280,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "num_mel_bins": 128,
            "n_window": 50,
            "n_window_infer": 800,
            "conv_chunksize": 500,
            "downsample_hidden_size": 480,
            "output_dim": 2048,
            "max_source_positions": 1500,
        },
    },
}


def build_tokenizer() -> Qwen2Tokenizer:
    """The tiny Qwen2 tokenizer with the Qwen3-Omni special tokens, named tokens and chat template."""
    return qwen_tokenizer(
        SPECIAL_TOKENS, chatml_template(PLACEHOLDERS, default_system=None), 65536, extra_special_tokens=NAMED_TOKENS
    )


def build_processor(tokenizer: Qwen2Tokenizer, real_budgets: bool = False) -> Qwen3OmniMoeProcessor:
    """Processor with real Qwen3-Omni sub-processors and small pixel budgets (unless ``real_budgets``)."""
    image_min, image_max = (
        (REAL_IMAGE_MIN_PIXELS, REAL_IMAGE_MAX_PIXELS) if real_budgets else (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    )
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        size={"shortest_edge": image_min, "longest_edge": image_max},
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=16,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        size=dict(REAL_VIDEO_SIZE if real_budgets else VIDEO_SIZE),
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=300,  # released value; the Omni processor pads to the longest clip, no cut
        padding_value=0.0,
        return_attention_mask=True,
    )
    return Qwen3OmniMoeProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chatml_template(PLACEHOLDERS, default_system=None),
    )


def build_config(tokenizer: Qwen2Tokenizer, shape: str | None = None) -> Qwen3OmniMoeConfig:
    """Qwen3-Omni config (thinker only) whose token ids match ``tokenizer``: tiny sizes, or a released
    ``shape`` (``REAL_SHAPES``)."""
    ids = special_token_ids(tokenizer.backend_tokenizer, SPECIAL_TOKENS)
    text_config: dict[str, Any] = {
        "vocab_size": padded_vocab_size(len(tokenizer)),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-6,
        # Sums to head_dim / 2; the Omni thinker always interleaves the t/h/w frequency slots.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [4, 2, 2],
            "interleaved": True,
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **TINY_MOE,
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
        "num_position_embeddings": 64,  # 8x8 learned grid
        "deepstack_visual_indexes": [0, 1],
    }
    audio_config: dict[str, Any] = {
        "d_model": 64,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "num_mel_bins": 128,
        "n_window": N_WINDOW,
        "n_window_infer": 800,
        "downsample_hidden_size": 32,
        "output_dim": 64,  # = text hidden
    }
    if shape is not None:
        if shape not in REAL_SHAPES:
            raise ValueError(f"unknown Qwen3-Omni shape {shape!r}; known: {', '.join(sorted(REAL_SHAPES))}")
        text_config.update(REAL_SHAPES[shape]["text"])
        vision_config.update(REAL_SHAPES[shape]["vision"])
        audio_config.update(REAL_SHAPES[shape]["audio"])
    thinker_config: dict[str, Any] = {
        "text_config": text_config,
        "vision_config": vision_config,
        "audio_config": audio_config,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "audio_token_id": ids["<|audio_pad|>"],
        "audio_start_token_id": ids["<|audio_start|>"],
        # Not dataclass fields of the thinker config, but read by get_rope_index (and by vLLM).
        "audio_end_token_id": ids["<|audio_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "position_id_per_seconds": POSITION_ID_PER_SECONDS,
        "tie_word_embeddings": False,
    }
    return Qwen3OmniMoeConfig(
        thinker_config=thinker_config,
        enable_audio_output=False,
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<tts_pad>"],
        tts_bos_token_id=ids["<tts_text_bos>"],
        tts_eos_token_id=ids["<tts_text_eod>"],
        dtype="float32" if shape is None else "bfloat16",
    )


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen3-Omni checkpoint into ``out_dir`` (which must exist)."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    # processor_config.json (image, video and audio sub-processors nested), tokenizer files, chat
    # template. No stand-alone preprocessor_config.json: the image processor and the feature
    # extractor would both claim that name.
    processor.save_pretrained(out_dir)
    with torch.device("cpu"):
        model = Qwen3OmniMoeForConditionalGeneration(build_config(tokenizer))
    init_weights_(model, seed)
    generation_config = build_generation_config(tokenizer)
    model.generation_config = generation_config
    model.thinker.generation_config = generation_config
    save_model(model, out_dir)


def write_shape(out_dir: Path, shape: str) -> None:
    """A weightless Qwen3-Omni (thinker) checkpoint of a released size (``30b``): real config dims and
    pixel budgets, the tiny tokenizer. Serves ``model=qwen3_omni model.random_init=true`` runs."""
    if shape not in REAL_SHAPES:
        raise ValueError(f"unknown Qwen3-Omni shape {shape!r}; known: {', '.join(sorted(REAL_SHAPES))}")
    tokenizer = build_tokenizer()
    generation_config = build_generation_config(tokenizer)
    config = build_config(tokenizer, shape)
    # processor_config.json only (see ``write``), then config.json and generation_config.json
    save_shape(
        out_dir,
        build_processor(tokenizer, real_budgets=True),
        config,
        generation_config,
        "Qwen3OmniMoeForConditionalGeneration",
        standalone=False,
    )


def build_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy by default, stopping on the released model's EOS tokens."""
    return greedy_generation_config(tokenizer, SPECIAL_TOKENS, ("<|im_end|>", "<|endoftext|>"))
