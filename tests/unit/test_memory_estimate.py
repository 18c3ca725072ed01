"""The memory estimate: exact weight and KV bytes from the config, refusal with numbers and advice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from epd.config import build_run_config
from epd.models import detect_family
from epd.models.memory import GiB, check_memory, estimate_memory, measure_available
from epd.tiny import cached_shape, cached_tiny
from tests.kernel_helpers import gpu

CPU = torch.device("cpu")
TWO_E_ONE_P = {"name": "2e1p", "instances": [{"role": "encoder"}, {"role": "encoder"}, {"role": "language"}]}


def _cfg(ckpt: Path, random_init: bool = True, **over):
    return build_run_config({"model": {"path": str(ckpt), "random_init": random_init}, "device": "cpu", **over})


@pytest.fixture(scope="module")
def shape_7b() -> Path:
    return cached_shape("qwen2_5_vl", "7b")


def test_7b_in_float32_on_cpu_is_refused_below_the_estimate(shape_7b):
    cfg = _cfg(shape_7b)
    estimate = estimate_memory(cfg, available={"cpu": 24 * GiB})
    (rank,) = estimate.ranks
    assert rank.place == "cpu" and rank.role == "colocated"
    # Qwen2.5-VL-7B holds 8.29e9 parameters (published): 4 bytes each, towers and decoder
    assert 8.2e9 * 4 < estimate.tower_bytes + estimate.decoder_bytes == rank.weights < 8.4e9 * 4
    need = estimate.needed()["cpu"]
    with pytest.raises(ValueError, match=rf"cpu needs {need / GiB:.1f} GiB, 24\.0 GiB available"):
        check_memory(cfg, available={"cpu": 24 * GiB})
    with pytest.raises(ValueError, match="does not fit"):
        check_memory(cfg, available={"cpu": need - 1})
    check_memory(cfg, available={"cpu": need})  # exactly enough passes
    half = estimate_memory(_cfg(shape_7b, model={"path": str(shape_7b), "random_init": True, "dtype": "bfloat16"}))
    assert half.decoder_bytes * 2 == estimate.decoder_bytes


def test_message_names_the_numbers_and_the_keys_to_change(shape_7b):
    with pytest.raises(ValueError) as err:
        check_memory(_cfg(shape_7b, topology=TWO_E_ONE_P), available={"cpu": 16 * GiB})
    message = str(err.value)
    for key in (
        "model.dtype=bfloat16",
        "device=cuda",
        "engine.kv_tokens",
        "engine.max_batch_tokens",
        "encoder.max_batch_tokens",
        "16.0 GiB available",
        "rank 2 language: weights 28.4",
    ):
        assert key in message, key


def test_ranks_sharing_a_gpu_add_up(shape_7b):
    """bfloat16 on GPUs: the three ranks of 2e1p fit on three 20 GiB GPUs, not on one."""
    cfg = build_run_config(
        {"model": {"path": str(shape_7b), "random_init": True, "dtype": "bfloat16"}, "topology": TWO_E_ONE_P}
    )
    three = {f"cuda:{i}": 20 * GiB for i in range(3)}
    estimate = estimate_memory(cfg, available=three, device_type="cuda")
    assert [r.place for r in estimate.ranks] == ["cuda:0", "cuda:1", "cuda:2"]
    assert estimate.dtype == torch.bfloat16 and not estimate.short()
    language = estimate.ranks[2]
    assert language.kv_tokens == 8192 + 16  # one full-budget step (block 0 is padding)
    check_memory(cfg, available=three, device_type="cuda")
    with pytest.raises(
        ValueError, match=r"cuda:0 needs .* 20\.0 GiB available[\s\S]*fewer ranks on one GPU \(cuda:0\)"
    ):
        check_memory(cfg, available={"cuda:0": 20 * GiB}, device_type="cuda")
    shared = estimate_memory(cfg, available={"cuda:0": 20 * GiB}, device_type="cuda")
    assert shared.needed()["cuda:0"] == sum(r.total for r in estimate.ranks)
    assert "model.dtype=bfloat16" not in str(_refusal(cfg, {"cuda:0": 20 * GiB}))


def _refusal(cfg, available) -> ValueError:
    with pytest.raises(ValueError) as err:
        check_memory(cfg, available=available, device_type="cuda")
    return err.value


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl_moe", "qwen2_audio", "qwen3_omni"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_estimate_is_the_built_modules_bytes(family, dtype):
    """Towers and decoder as the roles really build them (weights loaded): the same bytes; the KV
    cache as the engine allocates it: the same bytes."""
    from epd.language import EngineConfig
    from epd.language.runner import ModelRunner

    ckpt = cached_tiny(family)
    name = str(dtype).removeprefix("torch.")
    cfg = _cfg(ckpt, random_init=False, model={"path": str(ckpt), "dtype": name}, engine={"kv_tokens": 1000})
    estimate = estimate_memory(cfg)
    fam = detect_family(ckpt)
    encoder = fam.load_encoder(ckpt, False, CPU, dtype)
    modules = [m for m in vars(encoder).values() if isinstance(m, torch.nn.Module)]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    assert estimate.tower_bytes == sum(t.numel() * t.element_size() for t in tensors)
    runner = ModelRunner(fam.load_language(ckpt, False), EngineConfig(kv_tokens=1000), CPU, dtype)
    assert estimate.decoder_bytes == sum(p.numel() * p.element_size() for p in runner.model.parameters())
    runner.allocate_kv()
    (rank,) = estimate.ranks
    assert rank.kv_cache == runner.kv_cache.numel() * runner.kv_cache.element_size()
    assert rank.weights == estimate.tower_bytes + estimate.decoder_bytes
    json.dumps(estimate.as_dict())  # plain data for logs


def test_estimate_builds_nothing_for_real(shape_7b):
    cfg = _cfg(shape_7b)
    estimate_memory(cfg)  # imports transformers' modeling modules once
    start = time.perf_counter()
    estimate = estimate_memory(cfg)
    assert time.perf_counter() - start < 1.0
    assert estimate.tower_bytes + estimate.decoder_bytes > 30e9


def test_available_memory_is_measured_on_this_host():
    free = measure_available({"cpu"})["cpu"]
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024  # MemTotal
    assert 0 < free <= total


@gpu
def test_free_gpu_memory_is_measured():
    free = measure_available({"cuda:0"})["cuda:0"]
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    estimate = estimate_memory(build_run_config({"model": {"tiny": "qwen2_5_vl"}, "device": "cuda"}))
    assert estimate.available.keys() == {"cuda:0"} and not estimate.short()
