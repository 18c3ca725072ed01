"""Fused elementwise kernels of the language decoder (Triton on GPU, pure torch elsewhere).

``add_rms_norm`` (residual add + norm, 7 ops) and ``rotary`` (q or k rotation, ~10 ops over strided
views) are the decoder's own; ``rms_norm`` and ``silu_mul`` are the towers' kernels
(``epd_kernels.vision_ops``), re-exported here. Roundings follow transformers' bf16 text modules
step by step (each torch op rounds to the activation dtype): the text rotary rounds each product,
unlike the towers' float32 rotary, which is why it is not shared.
"""

from __future__ import annotations

import torch

from epd_kernels.vision_ops import rms_norm, rms_norm_reference, silu_mul, silu_mul_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the references serve
    triton = None


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


__all__ = ["add_rms_norm", "rms_norm", "rms_norm_reference", "rotary", "rotary_ref", "silu_mul", "silu_mul_reference"]


# ---- references ------------------------------------------------------------------------------------


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [N, heads, D], cos/sin: [N, 1, D]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ---- public ops ------------------------------------------------------------------------------------


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual); on GPU the sum is written into ``residual`` in place."""
    if not _use_triton(x):
        h = x + residual
        return rms_norm_reference(h, weight, eps), h
    out = torch.empty_like(x)
    n, hidden = x.shape
    if n:
        _add_rms_norm_kernel[(n,)](
            x, residual, weight, out, x.stride(0), residual.stride(0), out.stride(0), hidden, eps,
            BLOCK=triton.next_power_of_2(hidden),
        )  # fmt: skip
    return out, residual


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [N, heads, D] (any row stride) by cos/sin [N, 1, D] → a contiguous [N, heads, D]."""
    if not _use_triton(x) or x.stride(-1) != 1:
        return rotary_ref(x, cos, sin)
    n, heads, dim = x.shape
    out = torch.empty(n, heads, dim, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    cos2, sin2 = cos.reshape(n, dim), sin.reshape(n, dim)
    _rotary_kernel[(n,)](
        x, cos2, sin2, out, x.stride(0), x.stride(1), cos2.stride(0), heads,
        HALF=dim // 2, HEADS_PAD=triton.next_power_of_2(heads),
    )  # fmt: skip
    return out


# ---- Triton kernels --------------------------------------------------------------------------------


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, stride_x, stride_r, stride_o, hidden, eps, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < hidden
        x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
        r = tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # h = x + residual, rounded like torch's add
        tl.store(res_ptr + row * stride_r + cols, x, mask=ok)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        normed = (xf * rstd).to(x.dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (w * normed).to(x.dtype), mask=ok)

    @triton.jit
    def _rotary_kernel(
        x_ptr, cos_ptr, sin_ptr, out_ptr, stride_xn, stride_xh, stride_c, heads,
        HALF: tl.constexpr, HEADS_PAD: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, HEADS_PAD)[:, None]
        d = tl.arange(0, HALF)[None, :]
        ok = h < heads
        base = x_ptr + row * stride_xn + h * stride_xh
        x1 = tl.load(base + d, mask=ok, other=0.0)
        x2 = tl.load(base + HALF + d, mask=ok, other=0.0)
        c1 = tl.load(cos_ptr + row * stride_c + d).to(tl.float32)
        c2 = tl.load(cos_ptr + row * stride_c + HALF + d).to(tl.float32)
        s1 = tl.load(sin_ptr + row * stride_c + d).to(tl.float32)
        s2 = tl.load(sin_ptr + row * stride_c + HALF + d).to(tl.float32)
        dt = x1.dtype
        f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
        # out = x * cos + rotate_half(x) * sin, each product rounded like torch's
        o1 = (f1 * c1).to(dt).to(tl.float32) + (-f2 * s1).to(dt).to(tl.float32)
        o2 = (f2 * c2).to(dt).to(tl.float32) + (f1 * s2).to(dt).to(tl.float32)
        obase = out_ptr + row * heads * 2 * HALF + h * 2 * HALF
        tl.store(obase + d, o1.to(dt), mask=ok)
        tl.store(obase + HALF + d, o2.to(dt), mask=ok)
