"""random_image workload, arrivals, prompt lengths and WorkloadConfig validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from epd.workload import RESOLUTIONS, WorkloadConfig, arrival_times, build_workload
from epd.workload.text import WORDS, count_tokens, make_prompt


def image_urls(request) -> list[str]:
    return [part["image_url"]["url"] for part in request.messages[0]["content"] if part["type"] == "image_url"]


def prompt_text(request) -> str:
    return "".join(part["text"] for part in request.messages[0]["content"] if part["type"] == "text")


@pytest.fixture(scope="module")
def bpe_tokenizer() -> Tokenizer:
    """A byte-level BPE whose small vocabulary splits many words into several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS[i::7]) for i in range(7)] * 3, trainer=trainer)
    return tokenizer


def test_arrivals_all_zero_for_infinite_rate():
    assert arrival_times(50, math.inf, np.random.default_rng(0)) == [0.0] * 50


@pytest.mark.parametrize("burstiness", [1.0, 0.5])
def test_arrivals_mean_gap_matches_rate(burstiness):
    rate = 4.0
    times = arrival_times(20000, rate, np.random.default_rng(1), burstiness)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert abs(gaps.mean() - 1 / rate) < 0.03 / rate
    # exponential gaps have coefficient of variation 1; gamma(k) has 1/sqrt(k)
    assert abs(gaps.std() / gaps.mean() - 1 / math.sqrt(burstiness)) < 0.05


def test_workload_arrivals_seeded_and_warmup_first(tmp_path):
    cfg = WorkloadConfig(num_requests=6, warmup_requests=2, request_rate=10.0, seed=3, image_count=0)
    requests = build_workload(cfg, tmp_path)
    assert [r.warmup for r in requests] == [True] * 2 + [False] * 6
    assert [r.id for r in requests[:3]] == ["warmup-0", "warmup-1", "req-0"]
    measured = [r.arrival_s for r in requests[2:]]
    assert measured[0] == 0.0 and measured == sorted(measured) and measured[-1] > 0
    assert all(r.arrival_s == 0.0 for r in requests[:2])
    assert [r.arrival_s for r in build_workload(cfg, tmp_path)[2:]] == measured


def test_same_seed_same_workload_different_seed_differs(tmp_path):
    cfg = dict(num_requests=3, image_count=2, request_rate=5.0)
    first = build_workload(WorkloadConfig(**cfg, seed=7), tmp_path / "a")
    again = build_workload(WorkloadConfig(**cfg, seed=7), tmp_path / "b")
    other = build_workload(WorkloadConfig(**cfg, seed=8), tmp_path / "c")
    assert [prompt_text(r) for r in first] == [prompt_text(r) for r in again]
    assert [r.arrival_s for r in first] == [r.arrival_s for r in again]
    first_bytes = [Path(u).read_bytes() for r in first for u in image_urls(r)]
    assert first_bytes == [Path(u).read_bytes() for r in again for u in image_urls(r)]
    assert [prompt_text(r) for r in first] != [prompt_text(r) for r in other]
    assert [r.arrival_s for r in first] != [r.arrival_s for r in other]
    other_bytes = [Path(u).read_bytes() for r in other for u in image_urls(r)]
    assert not set(first_bytes) & set(other_bytes)


@pytest.mark.parametrize(("resolution", "image_format"), [("360p", "jpeg"), ("1080p", "png"), ("4k", "jpeg")])
def test_images_decode_at_preset_resolution(tmp_path, resolution, image_format):
    cfg = WorkloadConfig(num_requests=2, image_count=2, resolution=resolution, image_format=image_format)
    requests = build_workload(cfg, tmp_path)
    urls = [u for r in requests for u in image_urls(r)]
    assert len(urls) == 4 and len(set(urls)) == 4  # distinct files by default
    for url in urls:
        with Image.open(url) as image:
            assert image.format == image_format.upper()
            assert image.size == RESOLUTIONS[resolution]
            image.load()
    assert len({Path(u).read_bytes() for u in urls}) == 4  # and distinct content


def test_custom_resolution_and_message_shape(tmp_path):
    (request,) = build_workload(WorkloadConfig(num_requests=1, image_count=1, resolution="320x200"), tmp_path)
    assert request.max_tokens == 16 and request.ignore_eos and request.seed is None
    content = request.messages[0]["content"]
    assert request.messages[0]["role"] == "user"
    assert [p["type"] for p in content] == ["image_url", "text"]
    assert Image.open(image_urls(request)[0]).size == (320, 200)
    assert len(prompt_text(request).split()) == 32  # one word per token without a tokenizer


def test_image_pool_repeats_images(tmp_path):
    cfg = WorkloadConfig(num_requests=4, image_count=3, num_distinct_images=5)
    urls = [u for r in build_workload(cfg, tmp_path) for u in image_urls(r)]
    assert len(urls) == 12 and len(set(urls)) == 5


@pytest.mark.parametrize("num_tokens", [1, 7, 32, 257])
def test_prompt_exact_length_with_bpe(bpe_tokenizer, num_tokens):
    for seed in range(3):
        text = make_prompt(np.random.default_rng(seed), num_tokens, bpe_tokenizer)
        assert count_tokens(bpe_tokenizer, text) == num_tokens
    # the tokenizer splits words, so one word per token would miss the target
    assert count_tokens(bpe_tokenizer, " ".join(WORDS[:50])) > 50


def test_input_len_exact_with_transformers_tokenizer(tmp_path, bpe_tokenizer):
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer)
    cfg = WorkloadConfig(num_requests=4, image_count=0, input_len=45)
    for request in build_workload(cfg, tmp_path, tokenizer=hf_tokenizer):
        assert len(hf_tokenizer.encode(prompt_text(request), add_special_tokens=False)) == 45


def test_input_len_exact_with_word_level(tmp_path):
    vocab = {word: i for i, word in enumerate(("[UNK]", *WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = WorkloadConfig(num_requests=2, image_count=1, input_len=20)
    for request in build_workload(cfg, tmp_path, tokenizer=tokenizer):
        assert len(tokenizer.encode(prompt_text(request)).ids) == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "nope"}, "workload.name='nope'"),
        ({"num_requests": 0}, "workload.num_requests=0"),
        ({"request_rate": 0.0}, "workload.request_rate=0.0"),
        ({"request_rate": float("nan")}, "workload.request_rate=nan"),
        ({"resolution": "huge"}, "workload.resolution='huge'"),
        ({"resolution": "0x10"}, "workload.resolution='0x10'"),
        ({"image_format": "gif"}, "workload.image_format='gif'"),
        ({"output_len": 0}, "workload.output_len=0"),
        ({"image_count": -1}, "workload.image_count=-1"),
        ({"temperature": -0.5}, "workload.temperature=-0.5"),
        ({"name": "file"}, "workload.path"),
        ({"image_count": 0, "input_len": 0}, "both 0"),
    ],
)
def test_config_errors_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        WorkloadConfig(**overrides)


def test_large_workload_is_fast_enough(tmp_path):
    import time

    start = time.perf_counter()
    requests = build_workload(WorkloadConfig(num_requests=16, image_count=4, resolution="720p"), tmp_path)
    assert len({u for r in requests for u in image_urls(r)}) == 64
    assert time.perf_counter() - start < 20  # ~64 x 10 ms on one core
