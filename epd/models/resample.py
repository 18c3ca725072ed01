"""Antialiased uint8 resizing that gives torch's CPU result bit for bit, on any device.

The checkpoints' processors resize uint8 images with bicubic (or bilinear) antialiasing. On the CPU
torch runs that in integers, the way Pillow(-SIMD) does: each pass (horizontal, then vertical) sums
``pixel * weight`` with int16 weights scaled by ``2**precision``, adds half, shifts and clamps to
uint8 between the passes. On a GPU torchvision converts to float32 instead and rounds once at the
end, which moves about one pixel value in five by 1 to 6 levels on a 1080p photo. This module does
the integer computation with plain tensor ops, so the device's result equals the host processor's:
the weights are computed in float64 on the host exactly as torch computes them
(``compute_index_ranges_int16_weights`` in ATen's ``UpSampleKernel.cpp``), the sums are int32.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

CUBIC_A = -0.5
"""Bicubic coefficient of the antialiased filter (Pillow's, which torch follows; plain bicubic uses -0.75)."""
TAPS = {"bicubic": 4, "bilinear": 2}
"""Filter support (interpolation size) of each mode before scaling."""


def resize_uint8(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """``images`` [..., C, H, W] uint8 resized to ``size`` = (height, width) with antialiasing, equal to
    ``torchvision.transforms.v2.functional.resize(images, size, mode, antialias=True)`` on the CPU."""
    if images.dtype != torch.uint8:
        raise ValueError(f"resize_uint8 takes uint8 images, got {images.dtype}")
    if mode not in TAPS:
        raise ValueError(f"resize mode {mode!r}: choose one of {', '.join(TAPS)}")
    out_h, out_w = size
    in_h, in_w = images.shape[-2:]
    if (out_h, out_w) == (in_h, in_w):
        return images.clone()
    pixels = images.to(torch.int32)  # [..., C, H, W]
    if out_w != in_w:  # horizontal first, as torch and Pillow do
        pixels = _resample_dim(pixels, -1, in_w, out_w, mode)
    if out_h != in_h:
        pixels = _resample_dim(pixels, -2, in_h, out_h, mode)
    return pixels.to(torch.uint8)


def _resample_dim(pixels: torch.Tensor, dim: int, in_size: int, out_size: int, mode: str) -> torch.Tensor:
    """One separable pass along ``dim``; int32 in and out, values clamped to [0, 255]."""
    starts, weights, precision = int16_weights(in_size, out_size, mode)
    starts_t = _upload(starts, pixels.device)  # [out]
    weights_t = _upload(weights, pixels.device)  # [out, taps] int32 (int16 range)
    shape = [1] * pixels.dim()
    shape[dim] = out_size
    out_shape = list(pixels.shape)
    out_shape[dim] = out_size
    acc = torch.full(out_shape, 1 << (precision - 1), dtype=torch.int32, device=pixels.device)
    for tap in range(weights.shape[1]):  # taps past a window's end carry weight 0 (index clamped)
        index = (starts_t + tap).clamp_(max=in_size - 1)
        acc += pixels.index_select(dim, index) * weights_t[:, tap].view(shape)
    # floor shift then clamp: the AVX kernels' arithmetic shift and saturating packs
    return acc.bitwise_right_shift_(precision).clamp_(0, 255)


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU through pinned memory, so the copy does not wait for the
    stream's earlier work (a pageable copy would synchronise the stream)."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=256)
def int16_weights(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Window starts [out] (int64), weights [out, taps] (int16 values as int32) and their precision
    (bits) of one antialiased pass from ``in_size`` to ``out_size`` samples, as torch's CPU kernel
    computes them (float64 weights normalised per output, rounded half away from zero)."""
    scale = in_size / out_size  # area_pixel_compute_scale without align_corners or an explicit scale
    taps = TAPS[mode]
    support = taps * 0.5 * scale if scale >= 1.0 else taps * 0.5
    max_taps = math.ceil(support) * 2 + 1
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)  # [out]
    starts = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C casts truncate
    sizes = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - starts
    offsets = np.arange(max_taps, dtype=np.int64)[None, :]  # [1, taps]
    weights = _filter(((offsets + starts[:, None]) - center[:, None] + 0.5) * inv_scale, mode)  # [out, taps]
    weights[offsets >= sizes[:, None]] = 0.0
    total = np.zeros(out_size)
    for tap in range(max_taps):  # left to right, as the C loop adds them (numpy's sum is pairwise)
        total += weights[:, tap]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
    precision = _precision(float(weights.max()))
    scaled = weights * float(1 << precision)
    ints = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    return starts, ints, precision


def _precision(w_max: float) -> int:
    """Most bits (up to 22) with which the largest weight still fits an int16."""
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return precision


def _filter(x: np.ndarray, mode: str) -> np.ndarray:
    """Pillow's antialias filters, evaluated in the same operation order as ATen's."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = CUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
