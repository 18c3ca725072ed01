"""epd.tiny: Qwen3-VL, Qwen3-VL-MoE, Qwen2-Audio and Qwen3-Omni tiny checkpoints written offline
load, template, expand placeholders and generate; released shapes carry the real dims and budgets."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    Qwen2AudioForConditionalGeneration,
    Qwen3OmniMoeForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

from epd.tiny import FAMILIES, cached_shape, write_tiny
from epd.tiny.__main__ import main as cli_main
from epd.tiny.qwen3_omni import VIDEO_SIZE

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
    """Greedy 8 new tokens, no EOS stop; returns the new ids. A warm call takes ~20 ms on 2 CPU
    cores (the first in a process pays one-time setup), so a whole second means something broke."""
    start = time.perf_counter()
    out = model.generate(**inputs, do_sample=False, max_new_tokens=8, eos_token_id=None, **kwargs)
    if id(model) in _WARMED:
        assert time.perf_counter() - start < 1.0
    _WARMED.add(id(model))
    new_ids = out[0, inputs["input_ids"].shape[1] :]
    assert new_ids.shape == (8,)
    assert int(new_ids.max()) < model.config.get_text_config().vocab_size
    return new_ids


_WARMED: set[int] = set()


def _frames(num_frames: int, seed: int = 0) -> np.ndarray:
    # [T, H, W, 3] uint8, as decoded by PyAV / decord.
    return np.random.default_rng(seed).integers(0, 256, (num_frames, 240, 320, 3), dtype=np.uint8)


def _tone(num_samples: int, hz: float = 440.0) -> np.ndarray:
    # float32 mono waveform at 16 kHz.
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(num_samples) / 16000)).astype(np.float32)


def _noise(num_samples: int) -> np.ndarray:
    return (0.3 * np.random.default_rng(1).standard_normal(num_samples)).astype(np.float32)


# ---------------------------------------------------------------- every family


def test_registered() -> None:
    assert set(NEW_FAMILIES) | {"qwen2_5_vl"} == set(FAMILIES)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_files_small_and_readable(tiny, family: str) -> None:
    path = tiny(family).path
    assert {p.name for p in path.iterdir()} == FILES[family]
    assert sum(p.stat().st_size for p in path.iterdir()) < 3 * 2**20
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in path.iterdir())


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_special_tokens_match_config(tiny, family: str) -> None:
    t = tiny(family)
    tok = t.processor.tokenizer
    assert {token: tok.convert_tokens_to_ids(token) for token in SPECIAL_IDS[family]} == SPECIAL_IDS[family]
    assert len(tok) == TOKENIZER_LEN[family]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text_config = t.model.config.get_text_config()
    assert text_config.vocab_size == 768
    assert (text_config.hidden_size, text_config.num_hidden_layers) == (64, 2)
    assert t.model.config.get_text_config(decoder=True) is text_config
    assert getattr(t.model.config, "thinker_config", t.model.config).tie_word_embeddings is False
    assert t.model.generation_config.eos_token_id == EOS_IDS[family]
    assert t.model.dtype == torch.float32
    # Special tokens stay single ids; ordinary text splits into learned merges.
    ids = tok("<|im_start|>user\nDescribe the image.<|im_end|>").input_ids
    assert ids[0] == 635 and ids[-1] == 636 and len(ids) < 12


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_same_seed_same_bytes_other_seed_other_weights(tiny, family: str, tmp_path: Path) -> None:
    base = _hashes(tiny(family).path)
    assert cli_main([family, str(tmp_path / "again")]) == 0
    assert _hashes(tmp_path / "again") == base
    other = _hashes(write_tiny(family, tmp_path / "other", seed=1))
    assert other["model.safetensors"] != base["model.safetensors"]
    assert {k: v for k, v in other.items() if k != "model.safetensors"} == {
        k: v for k, v in base.items() if k != "model.safetensors"
    }


@pytest.mark.parametrize(
    ("family", "part"),
    [
        ("qwen3_vl", {"type": "input_audio", "input_audio": {}}),
        ("qwen3_vl_moe", {"type": "audio"}),
        ("qwen2_audio", {"type": "image"}),
        ("qwen2_audio", {"type": "video_url", "video_url": {"url": "x.mp4"}}),
        ("qwen3_omni", {"type": "weird"}),
        ("qwen3_omni", {"foo": 1}),
    ],
)
def test_chat_template_rejects_unsupported_parts(tiny, family: str, part: dict) -> None:
    with pytest.raises(Exception, match="not supported|unknown content part|neither"):
        tiny(family).processor.apply_chat_template([{"role": "user", "content": [part]}], tokenize=False)


# ---------------------------------------------------------------- Qwen3-VL (dense and MoE)


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_vl_loads(tiny, family: str) -> None:
    t = tiny(family)
    assert type(t.processor).__name__ == "Qwen3VLProcessor"
    assert type(t.processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(t.processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    assert type(AutoModelForImageTextToText.from_pretrained(t.path, local_files_only=True)) is MODEL_CLASSES[family]
    config = AutoConfig.from_pretrained(t.path, local_files_only=True)
    assert (config.image_token_id, config.video_token_id) == (646, 647)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (643, 644)
    rope = config.text_config.rope_parameters
    assert rope["mrope_section"] == [4, 2, 2] and rope["mrope_interleaved"] is True
    assert config.text_config.head_dim == 16 and sum(rope["mrope_section"]) == 16 // 2
    vision = config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (16, 2, 2)
    assert vision.deepstack_visual_indexes == [0, 1] and vision.num_position_embeddings == 8 * 8
    names = set(t.model.state_dict())
    assert "model.language_model.layers.0.self_attn.q_norm.weight" in names  # Qwen3 qk-norm
    if family == "qwen3_vl_moe":
        assert config.text_config.num_experts == 4 and config.text_config.num_experts_per_tok == 2
        assert t.model.state_dict()["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 64)


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_vl_chat_template(tiny, family: str) -> None:
    processor = tiny(family).processor
    messages = [{"role": "user", "content": "Hello there"}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHello there<|im_end|>\n" + GEN_PROMPT  # Qwen3: no default system
    assert processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    prompt = _prompt(processor, {"type": "image"}, _text("and"), {"type": "video"}, _text("?"), system="Be brief.")
    assert (
        prompt
        == f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{IMAGE}and{VIDEO}?<|im_end|>\n{GEN_PROMPT}"
    )


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_vl_image_tokens_expand_to_grid(tiny, family: str) -> None:
    processor = tiny(family).processor
    prompt = _prompt(processor, {"type": "image"}, _text("Describe."))
    grids = {}
    for width, height in [(1920, 1080), (640, 480), (28, 28)]:
        inputs = processor(
            text=[prompt], images=[Image.new("RGB", (width, height), (200, 30, 10))], return_tensors="pt"
        )
        (grid_thw,) = inputs["image_grid_thw"]
        num_tokens = int((inputs["input_ids"] == 646).sum())
        assert num_tokens == int(grid_thw.prod()) // 4
        assert inputs["pixel_values"].shape == (int(grid_thw.prod()), 3 * 2 * 16 * 16)
        assert int((inputs["mm_token_type_ids"] == 1).sum()) == num_tokens
        grids[width] = grid_thw.tolist()
    # Budget 4..64 merged tokens of 32x32 pixels: 1080p -> 192x320 pixels -> 60 tokens.
    assert grids == {1920: [1, 12, 20], 640: [1, 12, 18], 28: [1, 4, 4]}


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_vl_generate_image_with_deepstack(tiny, family: str) -> None:
    t = tiny(family)
    prompt = _prompt(t.processor, {"type": "image"}, _text("Describe."))
    inputs = t.processor(text=[prompt], images=[Image.new("RGB", (1920, 1080), (200, 30, 10))], return_tensors="pt")
    new_ids = _generate(t.model, inputs)
    assert len(set(new_ids.tolist())) >= 3  # random weights must not collapse to one token
    other = t.processor(text=[prompt], images=[Image.new("RGB", (1920, 1080), (10, 30, 200))], return_tensors="pt")
    assert not torch.equal(_generate(t.model, other), new_ids)  # the pixels matter
    # The tower returns merged embeddings plus one DeepStack tensor per tapped block.
    with torch.no_grad():
        features = t.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    (embeds,) = features.pooler_output
    assert embeds.shape == (60, 64)
    assert [tuple(feat[0].shape) for feat in features.deepstack_features] == [(60, 64), (60, 64)]


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_vl_video_frames_get_timestamps(tiny, family: str) -> None:
    t = tiny(family)
    prompt = _prompt(t.processor, {"type": "video"}, _text("Describe."))
    # 16 frames at 8 fps = 2 s; the processor samples 2 fps -> frames 0, 5, 10, 15 -> 2 temporal grids.
    inputs = t.processor(
        text=[prompt],
        videos=[_frames(16)],
        video_metadata=[{"fps": 8.0, "total_num_frames": 16}],
        return_tensors="pt",
    )
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 12]]
    per_frame = 8 * 12 // 4
    assert int((inputs["input_ids"] == 647).sum()) == int((inputs["mm_token_type_ids"] == 2).sum()) == 2 * per_frame
    frame = "<|vision_start|>" + "<|video_pad|>" * per_frame + "<|vision_end|>"
    # transformers 5.x expands only the pad token, so the template's wrapper stays around the frames.
    expected = f"<|vision_start|><0.3 seconds>{frame}<1.6 seconds>{frame}<|vision_end|>Describe."
    assert expected in t.processor.tokenizer.decode(inputs["input_ids"][0])
    position_ids, deltas = t.model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    length = inputs["input_ids"].shape[1]
    assert position_ids.shape == (3, 1, length) and int(position_ids.max()) + 1 - length == int(deltas)
    _generate(t.model, inputs)
    # Frames sampled beforehand: no resampling, and the metadata must name the frame indices.
    presampled = t.processor(
        text=[prompt],
        videos=[_frames(4)],
        video_metadata=[{"fps": 8.0, "total_num_frames": 16, "frames_indices": [0, 5, 10, 15]}],
        do_sample_frames=False,
        return_tensors="pt",
    )
    assert torch.equal(presampled["input_ids"], inputs["input_ids"])


# ---------------------------------------------------------------- Qwen2-Audio


def test_audio_loads(tiny) -> None:
    t = tiny("qwen2_audio")
    assert type(t.processor).__name__ == "Qwen2AudioProcessor"
    assert type(t.processor.feature_extractor).__name__ == "WhisperFeatureExtractor"
    assert (
        type(AutoModelForMultimodalLM.from_pretrained(t.path, local_files_only=True))
        is Qwen2AudioForConditionalGeneration
    )
    config = t.model.config
    assert config.audio_token_id == 637
    audio = config.audio_config
    assert (audio.d_model, audio.encoder_layers, audio.num_mel_bins, audio.max_source_positions) == (64, 2, 128, 100)
    extractor = t.processor.feature_extractor
    assert (extractor.sampling_rate, extractor.feature_size, extractor.hop_length, extractor.n_samples) == (
        16000,
        128,
        160,
        32000,
    )


def test_audio_chat_template(tiny) -> None:
    processor = tiny("qwen2_audio").processor
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == SYSTEM + "<|im_start|>user\nHi<|im_end|>\n" + GEN_PROMPT
    prompt = _prompt(processor, {"type": "audio", "audio": "a.wav"}, {"type": "input_audio"}, _text("Which?"))
    assert prompt == (
        f"{SYSTEM}<|im_start|>user\nAudio 1: {QWEN2_AUDIO}Audio 2: {QWEN2_AUDIO}Which?<|im_end|>\n{GEN_PROMPT}"
    )


def test_audio_tokens_follow_mel_frames(tiny) -> None:
    processor = tiny("qwen2_audio").processor
    prompt = _prompt(processor, {"type": "audio"}, _text("What is it?"))
    counts = {}
    for num_samples in [1600, 16000, 16001, 48000]:
        inputs = processor(text=[prompt], audio=[_tone(num_samples)], sampling_rate=16000, return_tensors="pt")
        assert inputs["input_features"].shape == (1, 128, 200)  # always one padded 2 s window
        frames = int(inputs["feature_attention_mask"].sum())
        assert frames == min(-(-num_samples // 160), 200)
        counts[num_samples] = int((inputs["input_ids"] == 637).sum())
        assert counts[num_samples] == ((frames - 1) // 2 + 1 - 2) // 2 + 1
    assert counts == {1600: 2, 16000: 25, 16001: 25, 48000: 50}  # > 2 s is cut to the window


def test_audio_generate(tiny) -> None:
    t = tiny("qwen2_audio")
    prompt = _prompt(t.processor, {"type": "audio"}, _text("What is it?"))
    inputs = t.processor(text=[prompt], audio=[_tone(16000)], sampling_rate=16000, return_tensors="pt")
    new_ids = _generate(t.model, inputs)
    assert len(set(new_ids.tolist())) >= 3
    other = t.processor(text=[prompt], audio=[_noise(16000)], sampling_rate=16000, return_tensors="pt")
    assert not torch.equal(_generate(t.model, other), new_ids)
    with pytest.raises(ValueError, match="length 200"):  # the tower takes exactly one full window
        t.model.model.audio_tower(inputs["input_features"][..., :100])


# ---------------------------------------------------------------- Qwen3-Omni


def test_omni_loads(tiny) -> None:
    t = tiny("qwen3_omni")
    processor = t.processor
    assert type(processor).__name__ == "Qwen3OmniMoeProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert type(processor.feature_extractor).__name__ == "WhisperFeatureExtractor"
    tok = processor.tokenizer
    assert (tok.image_token_id, tok.video_token_id, tok.audio_token_id) == (646, 647, 654)
    assert (tok.audio_bos_token, tok.vision_bos_token) == ("<|audio_start|>", "<|vision_start|>")
    assert (
        type(AutoModelForMultimodalLM.from_pretrained(t.path, local_files_only=True))
        is Qwen3OmniMoeForConditionalGeneration
    )
    assert not hasattr(t.model, "talker") and t.model.config.enable_audio_output is False
    thinker = t.model.config.thinker_config
    assert (thinker.image_token_id, thinker.video_token_id, thinker.audio_token_id) == (646, 647, 654)
    assert (thinker.vision_start_token_id, thinker.audio_start_token_id) == (643, 648)
    assert thinker.position_id_per_seconds == processor.position_id_per_seconds == 13
    assert thinker.audio_config.n_window == 50 and thinker.audio_config.d_model == 64
    assert thinker.text_config.num_experts == 4 and thinker.vision_config.deepstack_visual_indexes == [0, 1]


def test_omni_chat_template(tiny) -> None:
    processor = tiny("qwen3_omni").processor
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n" + GEN_PROMPT
    prompt = _prompt(processor, {"type": "image"}, {"type": "audio"}, {"type": "video"}, _text("Describe."))
    assert prompt == f"<|im_start|>user\n{IMAGE}{OMNI_AUDIO}{VIDEO}Describe.<|im_end|>\n{GEN_PROMPT}"


def test_omni_generate_image(tiny) -> None:
    t = tiny("qwen3_omni")
    prompt = _prompt(t.processor, {"type": "image"}, _text("Describe."))
    inputs = t.processor(text=[prompt], images=[Image.new("RGB", (1920, 1080), (200, 30, 10))], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 20]]
    assert int((inputs["input_ids"] == 646).sum()) == 60
    new_ids = _generate(t.model.thinker, inputs)
    assert len(set(new_ids.tolist())) >= 3
    # The full model ignores max_new_tokens and stops on the released <|im_end|> id unless told.
    out = t.model.generate(**inputs, thinker_max_new_tokens=8, thinker_eos_token_id=None, return_audio=False)
    assert torch.equal(out[0, inputs["input_ids"].shape[1] :], new_ids)


def test_omni_audio_tokens_and_generate(tiny) -> None:
    t = tiny("qwen3_omni")
    prompt = _prompt(t.processor, {"type": "audio"}, _text("Describe."))
    counts = {}
    for num_samples in [1600, 16000, 24000]:
        inputs = t.processor(text=[prompt], audio=[_tone(num_samples)], return_tensors="pt")
        assert inputs["input_features"].shape == (1, 128, num_samples // 160)  # padded to the longest only
        counts[num_samples] = int((inputs["input_ids"] == 654).sum())
    assert counts == {1600: 2, 16000: 13, 24000: 20}  # 13 per full 100-frame window
    new_ids = _generate(t.model.thinker, inputs)
    other = t.processor(text=[prompt], audio=[_noise(24000)], return_tensors="pt")
    assert not torch.equal(_generate(t.model.thinker, other), new_ids)
    # The tower alone takes padding-stripped [mel, frames] features plus their lengths.
    with torch.no_grad():
        out = t.model.thinker.model.audio_tower(inputs["input_features"][0], feature_lens=torch.tensor([150]))
    assert out.last_hidden_state.shape == (20, 64)


OMNI_SMALL_VIDEO = {"fps": 4.0, "size": VIDEO_SIZE}


def test_omni_video_budget_and_generate(tiny) -> None:
    t = tiny("qwen3_omni")
    prompt = _prompt(t.processor, {"type": "video"}, _text("Describe."))
    # The Omni processor's class-level video size (128..768 tokens per frame) beats the saved one.
    default = t.processor(text=[prompt], videos=[_frames(8)], return_tensors="pt")
    assert int((default["input_ids"] == 647).sum()) >= 2 * 128
    assert default["video_second_per_grid"].tolist() == [2.0]  # fps defaults to 1.0, not the frames' rate
    inputs = t.processor(text=[prompt], videos=[_frames(8)], videos_kwargs=OMNI_SMALL_VIDEO, return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[4, 6, 8]]  # no resampling: 8 frames -> 4 grids
    assert inputs["video_second_per_grid"].tolist() == [0.5]
    assert int((inputs["input_ids"] == 647).sum()) == 4 * 12
    _generate(t.model.thinker, inputs)


def test_omni_video_with_audio_track(tiny) -> None:
    t = tiny("qwen3_omni")
    prompt = _prompt(t.processor, {"type": "video"}, _text("Describe."))
    inputs = t.processor(
        text=[prompt],
        videos=[_frames(8)],
        audio=[_tone(32000)],  # the decoded audio track, 2 s at 16 kHz
        audio_from_video_indices=[0],
        load_audio_from_video=True,
        videos_kwargs=OMNI_SMALL_VIDEO,
        return_tensors="pt",
    )
    ids = inputs["input_ids"][0]
    assert int((ids == 647).sum()) == 48 and int((ids == 654).sum()) == 26
    text = t.processor.tokenizer.decode(ids).replace("<|video_pad|>", "V").replace("<|audio_pad|>", "A")
    # One grid of 12 video tokens every 0.5 s = 6.5 positions, audio tokens (1 position each) between.
    interleaved = "V" * 12 + "A" * 7 + "V" * 12 + "A" * 6 + "V" * 12 + "A" * 7 + "V" * 12 + "A" * 6
    assert f"<|vision_start|><|audio_start|>{interleaved}<|audio_end|><|vision_end|>Describe." in text
    position_ids, _ = t.model.thinker.get_rope_index(
        inputs["input_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
        use_audio_in_video=True,
        audio_seqlens=inputs["feature_attention_mask"].sum(-1),
        second_per_grids=inputs["video_second_per_grid"],
    )
    assert position_ids.dtype == torch.float32 and position_ids.shape == (3, 1, ids.shape[0])
    new_ids = _generate(t.model.thinker, inputs, use_audio_in_video=True)
    out = t.model.generate(
        **inputs, use_audio_in_video=True, thinker_max_new_tokens=8, thinker_eos_token_id=None, return_audio=False
    )
    assert torch.equal(out[0, ids.shape[0] :], new_ids)


# ---------------------------------------------------------------- released shapes


def test_shape_qwen3_vl_8b(tmp_path: Path) -> None:
    path = cached_shape("qwen3_vl", "8b", cache_root=tmp_path)
    assert not (path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (4096, 12288, 36)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim, text.vocab_size) == (32, 8, 128, 151936)
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["rope_theta"] == 5e6
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (27, 1152, 4304, 16)
    assert (vision.out_hidden_size, vision.num_position_embeddings) == (4096, 2304)
    assert vision.deepstack_visual_indexes == [8, 16, 24]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    prompt = _prompt(processor, {"type": "image"})
    inputs = processor(text=[prompt], images=[Image.new("RGB", (1920, 1080))], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 68, 120]]
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 2040


def test_shape_qwen2_audio_7b(tmp_path: Path) -> None:
    path = cached_shape("qwen2_audio", "7b", cache_root=tmp_path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    audio, text = config.audio_config, config.text_config
    assert (audio.d_model, audio.encoder_layers, audio.encoder_attention_heads, audio.encoder_ffn_dim) == (
        1280,
        32,
        20,
        5120,
    )
    assert (audio.num_mel_bins, audio.max_source_positions) == (128, 1500)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (4096, 11008, 32)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (32, 32, 156032)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    prompt = _prompt(processor, {"type": "audio"})
    inputs = processor(text=[prompt], audio=[_tone(16000 * 40)], sampling_rate=16000, return_tensors="pt")
    assert inputs["input_features"].shape == (1, 128, 3000)  # one 30 s window
    assert int((inputs["input_ids"] == config.audio_token_id).sum()) == 750


@pytest.mark.parametrize(("family", "shape"), [("qwen3_vl", "2b"), ("qwen3_vl_moe", "30b"), ("qwen3_omni", "30b")])
def test_unknown_shape_raises(family: str, shape: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        cached_shape(family, shape, cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temp dir left behind
