"""epd.tiny: Qwen3-VL, Qwen3-VL-MoE and Qwen2-Audio tiny checkpoints written offline load, template,
expand placeholders and generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    Qwen2AudioForConditionalGeneration,
)

from epd.tiny import FAMILIES, write_tiny
from epd.tiny.__main__ import main as cli_main
from tests.unit.tiny_support import (
    EOS_IDS,
    FILES,
    GEN_PROMPT,
    IMAGE,
    MODEL_CLASSES,
    NEW_FAMILIES,
    QWEN2_AUDIO,
    SPECIAL_IDS,
    SYSTEM,
    TOKENIZER_LEN,
    VIDEO,
    VL_FAMILIES,
    _frames,
    _generate,
    _hashes,
    _noise,
    _prompt,
    _text,
    _tone,
)


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
