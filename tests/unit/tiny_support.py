"""Shared constants, the per-family checkpoint fixture and helpers of the tiny-family tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoProcessor,
    Qwen2AudioForConditionalGeneration,
    Qwen3OmniMoeForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

from epd.tiny import write_tiny

VL_FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
NEW_FAMILIES = (*VL_FAMILIES, "qwen2_audio", "qwen3_omni")
MODEL_CLASSES = {
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration,
    "qwen2_audio": Qwen2AudioForConditionalGeneration,
    "qwen3_omni": Qwen3OmniMoeForConditionalGeneration,
}
COMMON = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
FILES = {
    "qwen3_vl": {
        *COMMON,
        "chat_template.jinja",
        "processor_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    },
    "qwen2_audio": {*COMMON, "chat_template.jinja", "processor_config.json", "preprocessor_config.json"},
    "qwen3_omni": {*COMMON, "chat_template.jinja", "processor_config.json"},
}
FILES["qwen3_vl_moe"] = FILES["qwen3_vl"]

VL_IDS = {
    "<|endoftext|>": 634,
    "<|im_start|>": 635,
    "<|im_end|>": 636,
    "<|vision_start|>": 643,
    "<|vision_end|>": 644,
    "<|image_pad|>": 646,
    "<|video_pad|>": 647,
}
SPECIAL_IDS = {
    "qwen3_vl": VL_IDS,
    "qwen3_vl_moe": VL_IDS,
    "qwen2_audio": {
        "<|endoftext|>": 634,
        "<|im_start|>": 635,
        "<|im_end|>": 636,
        "<|AUDIO|>": 637,
        "<|audio_bos|>": 638,
        "<|audio_eos|>": 639,
    },
    "qwen3_omni": {
        **VL_IDS,
        "<|audio_start|>": 648,
        "<|audio_end|>": 649,
        "<tts_pad>": 650,
        "<tts_text_bos>": 651,
        "<tts_text_eod>": 652,
        "<|audio_pad|>": 654,
    },
}
TOKENIZER_LEN = {"qwen3_vl": 648, "qwen3_vl_moe": 648, "qwen2_audio": 640, "qwen3_omni": 655}
EOS_IDS = {"qwen3_vl": [636, 634], "qwen3_vl_moe": [636, 634], "qwen2_audio": [634, 636], "qwen3_omni": [636, 634]}

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
OMNI_AUDIO = "<|audio_start|><|audio_pad|><|audio_end|>"
QWEN2_AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>\n"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
GEN_PROMPT = "<|im_start|>assistant\n"


@dataclass
class Tiny:
    path: Path
    processor: Any
    model: Any


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Tiny]:
    """Write, load and keep one checkpoint per family (built on first use)."""
    root = tmp_path_factory.mktemp("tiny_families")
    loaded: dict[str, Tiny] = {}

    def get(family: str) -> Tiny:
        if family not in loaded:
            path = write_tiny(family, root / family, seed=0)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = MODEL_CLASSES[family].from_pretrained(path, local_files_only=True).eval()
            loaded[family] = Tiny(path, processor, model)
        return loaded[family]

    return get


def _hashes(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def _prompt(processor, *parts: dict, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": list(parts)})
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _generate(model, inputs, **kwargs) -> torch.Tensor:
    """Greedy 8 new tokens, no EOS stop; returns the new ids. (No time limit: a loaded CI machine
    made a one-second bound fail; speed belongs in benchmarks.)"""
    out = model.generate(**inputs, do_sample=False, max_new_tokens=8, eos_token_id=None, **kwargs)
    new_ids = out[0, inputs["input_ids"].shape[1] :]
    assert new_ids.shape == (8,)
    assert int(new_ids.max()) < model.config.get_text_config().vocab_size
    return new_ids


def _frames(num_frames: int, seed: int = 0) -> np.ndarray:
    # [T, H, W, 3] uint8, as decoded by PyAV / decord.
    return np.random.default_rng(seed).integers(0, 256, (num_frames, 240, 320, 3), dtype=np.uint8)


def _tone(num_samples: int, hz: float = 440.0) -> np.ndarray:
    # float32 mono waveform at 16 kHz.
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(num_samples) / 16000)).astype(np.float32)


def _noise(num_samples: int) -> np.ndarray:
    return (0.3 * np.random.default_rng(1).standard_normal(num_samples)).astype(np.float32)


# ---------------------------------------------------------------- every family
