"""Triton kernels of the vision towers' rotary embedding and RMSNorm (references in ``vision_ops.py``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(
    x_ptr,  # [N, X, D] strided (X heads: q's, or q's then k's), last dim contiguous
    cos_ptr,  # [N, D]
    sin_ptr,  # [N, D]
    out_ptr,  # [X // H, N, H, D] contiguous
    num_tokens,
    num_x_heads,  # X
    num_heads,  # H: heads per output tensor
    stride_xt,
    stride_xh,
    stride_ct,
    stride_st,
    HALF: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # a [tokens, heads, half] tile: each token's cos/sin row is read once for BLOCK_H heads
    tok = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None, None]
    head = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H))[None, :, None]
    d = tl.arange(0, BLOCK_D)[None, None, :]
    row_ok = (tok < num_tokens) & (d < HALF)
    mask = row_ok & (head < num_x_heads)
    x = x_ptr + tok * stride_xt + head * stride_xh
    x1 = tl.load(x + d, mask=mask).to(tl.float32)
    x2 = tl.load(x + HALF + d, mask=mask).to(tl.float32)
    c = cos_ptr + tok * stride_ct
    s = sin_ptr + tok * stride_st
    c1 = tl.load(c + d, mask=row_ok).to(tl.float32)
    c2 = tl.load(c + HALF + d, mask=row_ok).to(tl.float32)
    s1 = tl.load(s + d, mask=row_ok).to(tl.float32)
    s2 = tl.load(s + HALF + d, mask=row_ok).to(tl.float32)
    # rotate_half(x) = (-x2, x1)
    out1 = x1 * c1 - x2 * s1
    out2 = x2 * c2 + x1 * s2
    which = head // num_heads
    o = out_ptr + ((which * num_tokens + tok) * num_heads + head % num_heads) * (2 * HALF)
    tl.store(o + d, out1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o + HALF + d, out2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [R, C]
    w_ptr,  # [C]
    out_ptr,  # [R, C]
    C,
    stride_x,
    stride_out,
    eps,
    X_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / C + eps)
    normed = (x * inv).to(X_DTYPE).to(tl.float32)  # rounded to x's dtype before the weight, as the reference
    w = tl.load(w_ptr + cols, mask=mask).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(
    x_ptr,  # [R, 2W]: gate then up
    out_ptr,  # [R, W]
    W,
    stride_x,
    stride_out,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < W
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + W + cols, mask=mask).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)  # silu, rounded as torch's
    tl.store(out_ptr + row * stride_out + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _launch_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, heads: int) -> None:
    num_tokens, num_x_heads, dim = x.shape
    block_t, block_h = 16, min(8, triton.next_power_of_2(num_x_heads))
    grid = (triton.cdiv(num_tokens, block_t), triton.cdiv(num_x_heads, block_h))
    _rotary_kernel[grid](
        x,
        cos,
        sin,
        out,
        num_tokens,
        num_x_heads,
        heads,
        x.stride(0),
        x.stride(1),
        cos.stride(0),
        sin.stride(0),
        HALF=dim // 2,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_D=triton.next_power_of_2(dim // 2),
        num_warps=4,
    )


def rotary_triton(
    q: torch.Tensor,  # [N, H, D], last dim contiguous
    k: torch.Tensor,  # [N, H, D]
    cos: torch.Tensor,  # [N, D]
    sin: torch.Tensor,  # [N, D]
) -> tuple[torch.Tensor, torch.Tensor]:
    num_tokens, heads, dim = q.shape
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    out = torch.empty(2, num_tokens, heads, dim, dtype=q.dtype, device=q.device)
    # q and k cut from one qkv projection ([N, 3, H, D]): k's heads follow q's, so one launch does both
    adjacent = (
        q.stride() == k.stride()
        and q.stride(1) == dim
        and k.data_ptr() == q.data_ptr() + heads * dim * q.element_size()
    )
    if adjacent:
        both = torch.as_strided(q, (num_tokens, 2 * heads, dim), (q.stride(0), dim, 1))
        _launch_rotary(both, cos, sin, out, heads)
    else:
        _launch_rotary(q, cos, sin, out[0], heads)
        _launch_rotary(k, cos, sin, out[1], heads)
    return out[0], out[1]


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    block = triton.next_power_of_2(shape[-1])
    _rms_norm_kernel[(rows.shape[0],)](
        rows,
        weight,
        out,
        shape[-1],
        rows.stride(0),
        out.stride(0),
        eps,
        X_DTYPE=_TL_DTYPE[x.dtype],
        BLOCK_C=block,
        num_warps=4 if block <= 2048 else 8,
    )
    return out.view(shape)


def silu_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    shape = gate_up.shape
    rows = gate_up.reshape(-1, shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    width = shape[-1] // 2
    out = torch.empty(rows.shape[0], width, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows.shape[0], triton.cdiv(width, block))](
        rows, out, width, rows.stride(0), out.stride(0), BLOCK=block, num_warps=4
    )
    return out.view(*shape[:-1], width)
