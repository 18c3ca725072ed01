"""Fused elementwise kernels of the language decoder (Triton on GPU, pure torch elsewhere).

Each replaces a chain of small torch ops that read and write the activations several times:
``rms_norm`` (6 ops), ``add_rms_norm`` (residual add + norm, 7 ops), ``silu_mul`` (SwiGLU's
activation on the fused gate/up output, 2 ops over strided halves) and ``rotary`` (q and k
rotation, ~10 ops over strided views). Their roundings follow transformers' bf16 modules step by
step (each torch op rounds to the activation dtype), so the fused and reference paths agree to the
last bit in most elements and to one bf16 ulp elsewhere.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the references serve
    triton = None


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


# ---- references ------------------------------------------------------------------------------------


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [N, heads, D], cos/sin: [N, 1, D]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ---- public ops ------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` [N, H]."""
    if not _use_triton(x):
        return rms_norm_ref(x, weight, eps)
    out = torch.empty_like(x)
    _launch_norm(x, None, weight, eps, out)
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual); on GPU the sum is written into ``residual`` in place."""
    if not _use_triton(x):
        h = x + residual
        return rms_norm_ref(h, weight, eps), h
    out = torch.empty_like(x)
    _launch_norm(x, residual, weight, eps, out)
    return out, residual


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for ``gate_up`` [N, 2I] = [gate | up] → [N, I]."""
    if not _use_triton(gate_up):
        return silu_mul_ref(gate_up)
    n, two_i = gate_up.shape
    inter = two_i // 2
    out = torch.empty(n, inter, dtype=gate_up.dtype, device=gate_up.device)
    if n == 0:
        return out
    block = 1024
    _silu_mul_kernel[(n, triton.cdiv(inter, block))](gate_up, out, gate_up.stride(0), inter, BLOCK=block)
    return out


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


def _launch_norm(x, residual, weight, eps, out) -> None:
    n, hidden = x.shape
    if n == 0:
        return
    has_res = residual is not None
    _rms_norm_kernel[(n,)](
        x, residual if has_res else x, weight, out, x.stride(0), (residual if has_res else x).stride(0), out.stride(0),
        hidden, eps, HAS_RESIDUAL=has_res, BLOCK=triton.next_power_of_2(hidden),
    )  # fmt: skip


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, stride_x, stride_r, stride_o, hidden, eps,
        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < hidden
        x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
        if HAS_RESIDUAL:  # h = x + residual, rounded to the activation dtype like torch's add
            r = tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(res_ptr + row * stride_r + cols, x, mask=ok)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        normed = (xf * rstd).to(x.dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (w * normed).to(x.dtype), mask=ok)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, stride_row, inter, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < inter
        g = tl.load(gu_ptr + row * stride_row + cols, mask=ok, other=0.0)
        u = tl.load(gu_ptr + row * stride_row + inter + cols, mask=ok, other=0.0)
        gf = g.to(tl.float32)
        act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)  # torch rounds silu's result first
        tl.store(out_ptr + row * inter + cols, (act * u.to(tl.float32)).to(g.dtype), mask=ok)

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
