"""Where a run's checkpoint comes from: a path, a cached tiny one, or (random weights) a released shape."""

from __future__ import annotations

import pytest

from epd.models import ModelConfig, detect_family, resolve_checkpoint

REAL = "Qwen/Qwen2.5-VL-7B-Instruct"


def test_real_name_offline_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"model\.path=.*model\.random_init=true"):
        resolve_checkpoint(ModelConfig(name=REAL, shape="qwen2_5_vl:7b"))


def test_random_init_without_checkpoint_uses_the_released_shape(monkeypatch, tmp_path):
    from transformers import AutoConfig, AutoProcessor

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("EPD_CACHE", str(tmp_path / "cache"))
    path = resolve_checkpoint(ModelConfig(name=REAL, random_init=True, shape="qwen2_5_vl:7b"))
    assert detect_family(path).name == "qwen2_5_vl"
    assert not list(path.glob("*.safetensors"))
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.vision_config.depth) == (3584, 28, 32)
    assert cfg.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    processor = AutoProcessor.from_pretrained(path)
    assert cfg.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # the released pixel budget: a 1080p image is 2691 tokens (BENCH.md)
    from PIL import Image

    grid = processor.image_processor(images=[Image.new("RGB", (1920, 1080))], return_tensors="pt")["image_grid_thw"]
    assert int(grid.prod()) // 4 == 2691


def test_path_must_hold_a_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_checkpoint(ModelConfig(path=str(tmp_path)))
