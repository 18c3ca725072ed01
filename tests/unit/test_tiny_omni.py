"""epd.tiny: the Qwen3-Omni tiny checkpoint (image, audio, video, video with its audio track) and the
released shapes, which carry the real dims and budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor, Qwen3OmniMoeForConditionalGeneration

from epd.tiny import cached_shape
from epd.tiny.qwen3_omni import VIDEO_SIZE
from tests.unit.tiny_support import (
    GEN_PROMPT,
    IMAGE,
    OMNI_AUDIO,
    VIDEO,
    _frames,
    _generate,
    _noise,
    _prompt,
    _text,
    _tone,
)

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


def test_shape_qwen3_vl_moe_30b(tmp_path: Path) -> None:
    from epd.models import detect_family

    path = cached_shape("qwen3_vl_moe", "30b", cache_root=tmp_path)
    assert not (path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        2048,
        48,
        32,
        4,
    )
    assert (text.num_experts, text.num_experts_per_tok, text.moe_intermediate_size, text.vocab_size) == (
        128,
        8,
        768,
        151936,
    )
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["rope_theta"] == 5e6
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (27, 1152, 2048)
    assert vision.deepstack_visual_indexes == [8, 16, 24]
    spec = detect_family(path).load_language(path, True).spec
    assert spec.moe_layers == tuple(range(48)) and spec.norm_topk_prob
    assert 30.4e9 < spec.num_params() < 30.6e9  # "30B-A3B": ~30.5 B in the language model
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    inputs = processor(text=[_prompt(processor, {"type": "image"})], images=[Image.new("RGB", (1920, 1080))])
    assert int((torch.as_tensor(inputs["input_ids"]) == config.image_token_id).sum()) == 2040


def test_shape_qwen3_omni_30b(tmp_path: Path) -> None:
    from epd.models import detect_family

    path = cached_shape("qwen3_omni", "30b", cache_root=tmp_path)
    thinker = AutoConfig.from_pretrained(path, local_files_only=True).thinker_config
    text, vision, audio = thinker.text_config, thinker.vision_config, thinker.audio_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_experts, text.num_experts_per_tok) == (2048, 48, 128, 8)
    assert (text.moe_intermediate_size, text.vocab_size, text.rope_parameters["rope_theta"]) == (768, 152064, 1e6)
    assert (vision.depth, vision.out_hidden_size, vision.deepstack_visual_indexes) == (27, 2048, [8, 16, 24])
    assert (audio.d_model, audio.encoder_layers, audio.encoder_attention_heads, audio.output_dim) == (
        1280,
        32,
        20,
        2048,
    )
    spec = detect_family(path).load_language(path, True).spec
    assert spec.num_experts == 128 and spec.rope_style == "interleaved" and spec.vocab_size == 152064
    with torch.device("meta"):  # the whole thinker builds at this size (towers included)
        thinker_model = Qwen3OmniMoeForConditionalGeneration._from_config(
            AutoConfig.from_pretrained(path, local_files_only=True)
        )
    assert 31e9 < sum(p.numel() for p in thinker_model.parameters()) < 32.5e9
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert processor.image_processor.size["longest_edge"] == 12845056


@pytest.mark.parametrize(("family", "shape"), [("qwen3_vl", "2b"), ("qwen3_vl_moe", "8b"), ("qwen3_omni", "7b")])
def test_unknown_shape_raises(family: str, shape: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        cached_shape(family, shape, cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temp dir left behind
