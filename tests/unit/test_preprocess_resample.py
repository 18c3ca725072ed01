"""``epd.models.resample.resize_uint8``: torch's CPU uint8 antialiased resize, bit for bit, on any device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F

from epd.models.resample import int16_weights, resize_uint8
from tests.kernel_helpers import gpu

MODES = {"bicubic": F.InterpolationMode.BICUBIC, "bilinear": F.InterpolationMode.BILINEAR}
# (in H, W) -> (out H, W): the processors' own cases (1080p up to 1092x1932 / 1088x1920), strong
# downscales (4000 wide to 1333), one axis only, tiny images enlarged, extreme aspect ratios
FIXED = [
    ((1080, 1920), (1092, 1932)),
    ((1080, 1920), (1088, 1920)),
    ((1080, 1920), (540, 960)),
    ((3000, 4000), (1000, 1333)),
    ((90, 130), (84, 140)),
    ((400, 200), (400, 196)),
    ((57, 3000), (56, 2968)),
    ((17, 23), (56, 56)),
    ((1000, 1000), (112, 112)),
]


def torchvision_cpu(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    return F.resize(images, list(size), interpolation=MODES[mode], antialias=True)


def random_cases(seed: int, n: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    return [((int(a), int(b)), (int(c), int(d))) for a, b, c, d in rng.integers(4, 700, (n, 4))]


@pytest.mark.parametrize("mode", list(MODES))
def test_equals_torch_cpu_on_noise(mode):
    """Noise is the worst case for resampling: every output pixel equals torchvision's CPU kernel."""
    rng = np.random.default_rng(1)
    for (h, w), size in FIXED + random_cases(2, 12):
        images = torch.from_numpy(rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8))
        want = torchvision_cpu(images, size, mode)
        got = resize_uint8(images, size, mode)
        assert got.dtype == torch.uint8 and got.shape == want.shape
        assert torch.equal(got, want), f"{mode} {(h, w)} -> {size}: {(got != want).sum()} pixels differ"


def test_float_resize_is_not_the_same_computation():
    """Why this module exists: resizing in float32 and rounding once (what torchvision does off the CPU)
    differs from the integer passes; the integer result is what the host processor produces."""
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 3, 270, 480), dtype=np.uint8))
    size = (276, 476)
    floated = F.resize(images.float(), list(size), interpolation=MODES["bicubic"], antialias=True)
    floated = floated.round().clamp(0, 255).to(torch.uint8)
    assert not torch.equal(floated, torchvision_cpu(images, size, "bicubic"))
    assert torch.equal(resize_uint8(images, size), torchvision_cpu(images, size, "bicubic"))


def test_leading_dims_and_layouts():
    """Video batches [B, T, C, H, W] and channels-last views resize like the contiguous single image."""
    rng = np.random.default_rng(4)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 3, 60, 80, 3), dtype=np.uint8)).permute(0, 1, 4, 2, 3)
    got = resize_uint8(frames, (56, 84))
    assert got.shape == (2, 3, 3, 56, 84)
    for b in range(2):
        assert torch.equal(got[b], torchvision_cpu(frames[b].contiguous(), (56, 84), "bicubic"))


def test_same_size_is_a_copy_and_bad_input_is_refused():
    images = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (3, 8, 8), dtype=np.uint8))
    same = resize_uint8(images, (8, 8))
    assert torch.equal(same, images) and same.data_ptr() != images.data_ptr()
    with pytest.raises(ValueError, match="uint8"):
        resize_uint8(images.float(), (4, 4))
    with pytest.raises(ValueError, match="bicubic, bilinear"):
        resize_uint8(images, (4, 4), "lanczos")


def test_weights_are_int16_and_sum_to_one():
    """Each output's int16 weights sum to 2**precision within rounding; the largest fits an int16."""
    for in_size, out_size in [(1920, 1932), (4000, 1333), (17, 56)]:
        starts, weights, precision = int16_weights(in_size, out_size, "bicubic")
        assert weights.max() < 2**15 and weights.min() >= -(2**15)
        sums = weights.sum(axis=1)
        assert np.abs(sums - 2**precision).max() <= weights.shape[1]
        assert starts.min() >= 0 and starts.max() < in_size


@gpu
@pytest.mark.parametrize("mode", list(MODES))
def test_gpu_equals_torch_cpu(mode):
    """On the GPU the integer passes give the CPU's pixels exactly (torchvision's GPU kernel does not)."""
    rng = np.random.default_rng(6)
    for (h, w), size in FIXED + random_cases(7, 8):
        images = torch.from_numpy(rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8))
        got = resize_uint8(images.cuda(), size, mode)
        torch.cuda.synchronize()
        assert torch.equal(got.cpu(), torchvision_cpu(images, size, mode)), f"{mode} {(h, w)} -> {size}"
