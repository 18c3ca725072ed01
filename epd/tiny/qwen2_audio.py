"""Tiny Qwen2-Audio: real architecture and processor, toy sizes, seeded random weights.

Whisper-style audio encoder (d_model 64, 2 layers) over 128-bin log-mel features and a Qwen2 text
model (hidden 64, 2 layers). The feature extractor is the released ``WhisperFeatureExtractor``
setup (16 kHz, hop 160, 128 bins) with ``chunk_length=2``: the processor pads or cuts every clip to
one 2 s window = 200 mel frames = ``2 * max_source_positions``. A clip of ``n`` samples has
``L = min(ceil(n / 160), 200)`` valid frames and becomes ``((L - 1) // 2 + 1 - 2) // 2 + 1`` audio
tokens: 25 per second, at most 50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Tokenizer,
    WhisperFeatureExtractor,
)

from epd.tiny.chat_template import chatml_template
from epd.tiny.files import greedy_generation_config, save_processor, save_shape
from epd.tiny.tokenizer import padded_vocab_size, qwen_tokenizer, special_token_ids
from epd.tiny.weights import init_weights_, save_model

# Same tokens, same order as Qwen2-Audio-7B-Instruct (ids 151643.. there, 634.. here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)

# Qwen2-Audio numbers clips and ends each with a newline: "Audio 1: <|audio_bos|>...<|audio_eos|>\n".
PLACEHOLDERS = {"audio": "<|audio_bos|><|AUDIO|><|audio_eos|>\n"}

SAMPLING_RATE = 16000
# Seconds per mel window; released checkpoints use Whisper's 30 s (3000 frames, 750 tokens).
TINY_CHUNK_LENGTH = 2
REAL_CHUNK_LENGTH = 30

# Published sizes of Qwen2-Audio-7B(-Instruct) (config.json): a whisper-large-v3 encoder and a
# Qwen-7B-sized text model with full multi-head attention and an enlarged vocabulary.
REAL_SHAPES = {
    "7b": {
        "audio": {
            "d_model": 1280,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        "text": {
            "vocab_size": 156032,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
}


def build_tokenizer() -> Qwen2Tokenizer:
    """The tiny Qwen2 tokenizer with the Qwen2-Audio special tokens and chat template."""
    return qwen_tokenizer(SPECIAL_TOKENS, chatml_template(PLACEHOLDERS, numbered_audio=True), 8192)


def build_processor(tokenizer: Qwen2Tokenizer, real_budgets: bool = False) -> Qwen2AudioProcessor:
    """Processor with a real ``WhisperFeatureExtractor`` (2 s windows unless ``real_budgets``)."""
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=REAL_CHUNK_LENGTH if real_budgets else TINY_CHUNK_LENGTH,
        padding_value=0.0,
        return_attention_mask=True,
    )
    return Qwen2AudioProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chatml_template(PLACEHOLDERS, numbered_audio=True),
    )


def build_config(tokenizer: Qwen2Tokenizer, shape: str | None = None) -> Qwen2AudioConfig:
    """Qwen2-Audio config whose token ids match ``tokenizer``: tiny sizes, or a released ``shape``."""
    ids = special_token_ids(tokenizer.backend_tokenizer, SPECIAL_TOKENS)
    audio_config: dict[str, Any] = {
        "model_type": "qwen2_audio_encoder",
        "d_model": 64,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "num_mel_bins": 128,
        # The encoder takes exactly 2 * max_source_positions mel frames: one 2 s window.
        "max_source_positions": TINY_CHUNK_LENGTH * SAMPLING_RATE // 160 // 2,
        "activation_function": "gelu",
        "scale_embedding": False,
    }
    text_config: dict[str, Any] = {
        "model_type": "qwen2",
        "vocab_size": padded_vocab_size(len(tokenizer)),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    if shape is not None:
        if shape not in REAL_SHAPES:
            raise ValueError(f"unknown Qwen2-Audio shape {shape!r}; known: {', '.join(sorted(REAL_SHAPES))}")
        audio_config.update(REAL_SHAPES[shape]["audio"])
        text_config.update(REAL_SHAPES[shape]["text"])
    return Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=ids["<|AUDIO|>"],
        tie_word_embeddings=False,
        dtype="float32" if shape is None else "bfloat16",
    )


def write(out_dir: Path, seed: int) -> None:
    """Write a complete tiny Qwen2-Audio checkpoint into ``out_dir`` (which must exist)."""
    tokenizer = build_tokenizer()
    save_processor(build_processor(tokenizer), out_dir)
    with torch.device("cpu"):
        model = Qwen2AudioForConditionalGeneration(build_config(tokenizer))
    init_weights_(model, seed)
    model.generation_config = build_generation_config(tokenizer)
    save_model(model, out_dir)


def write_shape(out_dir: Path, shape: str) -> None:
    """A weightless checkpoint of a released size: real config dims and 30 s mel windows, the tiny
    tokenizer (special-token ids remapped into it). Serves ``model.random_init=true`` runs."""
    if shape not in REAL_SHAPES:
        raise ValueError(f"unknown Qwen2-Audio shape {shape!r}; known: {', '.join(sorted(REAL_SHAPES))}")
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, real_budgets=True)
    save_shape(
        out_dir,
        processor,
        build_config(tokenizer, shape),
        build_generation_config(tokenizer),
        "Qwen2AudioForConditionalGeneration",
    )


def build_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy by default, stopping on the released model's EOS tokens."""
    return greedy_generation_config(tokenizer, SPECIAL_TOKENS, ("<|endoftext|>", "<|im_end|>"))
