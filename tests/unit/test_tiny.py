"""epd.tiny: tiny Qwen2.5-VL checkpoints written offline load, tokenize, template and generate."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
)

import epd.tiny as tiny
from epd.tiny import FAMILIES, FORMAT_VERSION, cached_tiny, write_tiny
from epd.tiny.__main__ import main as cli_main

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", seed=0)


@pytest.fixture(scope="module")
def processor(ckpt: Path):
    return AutoProcessor.from_pretrained(ckpt, local_files_only=True)


@pytest.fixture(scope="module")
def model(ckpt: Path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, local_files_only=True).eval()


def _hashes(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_files_exist_and_small(ckpt: Path) -> None:
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(FILES)
    assert sum(p.stat().st_size for p in ckpt.iterdir()) < 4 * 2**20
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in ckpt.iterdir())  # group/other readable


def test_processor_loads_with_special_tokens(processor, ckpt: Path) -> None:
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    tok = processor.tokenizer
    config = AutoConfig.from_pretrained(ckpt, local_files_only=True)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == 646
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>") == 647
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>") == 643
    assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>") == 644
    assert len(tok) == 648 <= config.text_config.vocab_size == 768
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert config.tie_word_embeddings is False
    # Special tokens stay single ids; ordinary text splits into learned merges, not bytes.
    ids = tok("<|im_start|>user\nDescribe the image.<|im_end|>").input_ids
    assert ids[0] == 635 and ids[-1] == 636 and len(ids) < 12
    text = "Héllo wörld ✓ 日本語\n\tdone"
    assert tok.decode(tok(text).input_ids) == text


def test_models_load(ckpt: Path, model) -> None:
    auto = AutoModelForImageTextToText.from_pretrained(ckpt, local_files_only=True)
    assert type(auto) is Qwen2_5_VLForConditionalGeneration
    for (name, a), (_, b) in zip(auto.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert model.generation_config.eos_token_id == [636, 634]
    assert model.dtype == torch.float32


def test_chat_template_string_message(processor) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == SYSTEM + "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    # The tokenizer alone carries the same template.
    assert processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (prompt)


def test_chat_template_multipart(processor) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "versus"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "Compare."},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And?"}]},
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{VISION}versus{VISION}Compare.<|im_end|>\n"
        "<|im_start|>assistant\nSame.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>And?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = processor.apply_chat_template(messages[:2], tokenize=False)
    assert no_prompt.startswith("<|im_start|>system\nBe brief.") and no_prompt.endswith("<|im_end|>\n")


@pytest.mark.parametrize("part", [{"type": "input_audio", "input_audio": {}}, {"type": "weird"}, {"foo": 1}])
def test_chat_template_rejects_unsupported_parts(processor, part: dict) -> None:
    with pytest.raises(Exception, match="not supported|unknown content part|neither"):
        processor.apply_chat_template([{"role": "user", "content": [part]}], tokenize=False)


def test_image_tokens_expand_to_grid(processor) -> None:
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    sizes = [(1920, 1080), (640, 480), (28, 28)]
    for width, height in sizes:
        image = Image.new("RGB", (width, height), (200, 30, 10))
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        (grid_thw,) = inputs["image_grid_thw"]
        num_tokens = int((inputs["input_ids"] == 646).sum())
        assert num_tokens == int(grid_thw.prod()) // 4
        assert 4 <= num_tokens <= 64  # min_pixels 4*28*28, max_pixels 64*28*28
        assert inputs["pixel_values"].shape == (int(grid_thw.prod()), 3 * 2 * 14 * 14)
        assert int((inputs["mm_token_type_ids"] == 1).sum()) == num_tokens
    assert grid_thw.tolist() == [1, 4, 4]  # 28x28 is raised to the 4-token minimum


def test_generate_two_images(processor, model) -> None:
    prompt = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "then"},
                    {"type": "image"},
                    {"type": "text", "text": "Describe."},
                ],
            }
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    images = [Image.new("RGB", (1920, 1080), (200, 30, 10)), Image.new("RGB", (300, 200), (0, 90, 0))]
    inputs = processor(text=[prompt], images=images, return_tensors="pt")
    assert int((inputs["input_ids"] == 646).sum()) == int(inputs["image_grid_thw"].prod(-1).sum()) // 4
    out = model.generate(**inputs, do_sample=False, max_new_tokens=8, eos_token_id=None)
    new_ids = out[0, inputs["input_ids"].shape[1] :]
    assert new_ids.shape == (8,)
    assert int(new_ids.max()) < model.config.text_config.vocab_size
    assert len(set(new_ids.tolist())) >= 3  # random weights must not collapse to one token
    # The pixels matter: a different first image changes the greedy continuation.
    images[0] = Image.new("RGB", (1920, 1080), (10, 30, 200))
    other = processor(text=[prompt], images=images, return_tensors="pt")
    out_other = model.generate(**other, do_sample=False, max_new_tokens=8, eos_token_id=None)
    assert not torch.equal(out_other[0, inputs["input_ids"].shape[1] :], new_ids)


def test_same_seed_same_bytes_other_seed_other_weights(ckpt: Path, tmp_path: Path) -> None:
    again = write_tiny("qwen2_5_vl", tmp_path / "again", seed=0)
    assert _hashes(again) == _hashes(ckpt)
    other = _hashes(write_tiny("qwen2_5_vl", tmp_path / "other", seed=1))
    base = _hashes(ckpt)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert {k: v for k, v in other.items() if k != "model.safetensors"} == {
        k: v for k, v in base.items() if k != "model.safetensors"
    }


def test_cached_tiny_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPD_CACHE", str(tmp_path / "cache"))
    path = cached_tiny("qwen2_5_vl", seed=3)
    assert path == tmp_path / "cache" / "tiny" / f"qwen2_5_vl-s3-v{FORMAT_VERSION}"
    assert (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert cached_tiny("qwen2_5_vl", seed=3) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dirs left


def test_cached_tiny_loses_race_cleanly(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / f"qwen2_5_vl-s0-v{FORMAT_VERSION}"

    def racing_write(family: str, out_dir: Path, seed: int = 0) -> Path:
        shutil.copytree(ckpt, final)  # another process finishes first ...
        shutil.copytree(ckpt, out_dir, dirs_exist_ok=True)  # ... while we write our own copy
        return Path(out_dir)

    monkeypatch.setattr(tiny, "write_tiny", racing_write)
    assert cached_tiny("qwen2_5_vl", cache_root=tmp_path) == final
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert _hashes(final) == _hashes(ckpt)


def test_unknown_family_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        write_tiny("llama", tmp_path)
    with pytest.raises(ValueError, match="known families"):
        cached_tiny("llama", cache_root=tmp_path)
    assert "qwen2_5_vl" in FAMILIES


def test_cli_writes_dir(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["qwen2_5_vl", str(tmp_path / "cli"), "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert _hashes(tmp_path / "cli") == _hashes(ckpt)


def test_cli_rejects_unknown_family(tmp_path: Path) -> None:
    # A real `python -m` run: epd.tiny's CLI imports no torch before checking the family.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "epd.tiny", "nosuch", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown family 'nosuch'" in result.stderr and "qwen2_5_vl" in result.stderr
    assert not (tmp_path / "x").exists()
