"""Fused elementwise kernels of the language decoder (Triton on GPU, pure torch elsewhere).

``add_rms_norm`` (residual add + norm, 7 ops) and ``rotary_store`` (q and k rotated, ~10 ops each
over strided views, and the new keys and values written into the paged cache: one launch instead of
about 24) are the decoder's own; ``rms_norm`` and ``silu_mul`` are the towers' kernels
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


__all__ = [
    "add_rms_norm",
    "rms_norm",
    "rms_norm_reference",
    "rotary_ref",
    "rotary_store",
    "silu_mul",
    "silu_mul_reference",
]


# ---- references ------------------------------------------------------------------------------------


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [N, heads, D], cos/sin: [N, 1, D]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ---- public ops ------------------------------------------------------------------------------------


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual [+ bias]); on GPU the sum is written into ``residual`` in place.

    ``bias`` is added to the returned sum only, not to what is normalised: a tower block passes its
    MLP's down-projection bias, so that the block's second residual add can ride in the down
    projection's GEMM epilogue (``sum.addmm_(act, W_down.T)``).
    """
    if not _use_triton(x):
        h = x + residual
        return rms_norm_reference(h, weight, eps), (h + bias if bias is not None else h)
    out = torch.empty_like(x)
    n, hidden = x.shape
    if n:
        _add_rms_norm_kernel[(n,)](
            x, residual, weight, bias if bias is not None else weight, out,
            x.stride(0), residual.stride(0), out.stride(0), hidden, eps,
            HAS_BIAS=bias is not None, BLOCK=triton.next_power_of_2(hidden),
        )  # fmt: skip
    return out, residual


def rotary_store(
    q: torch.Tensor,  # [N, heads, D], any row stride
    k: torch.Tensor,  # [N, kv_heads, D]
    v: torch.Tensor,  # [N, kv_heads, D]
    cos: torch.Tensor,  # [N, 1, D]
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [blocks, block_size, kv_heads, D]
    v_cache: torch.Tensor,
    slots: torch.Tensor,  # [N] int64: block * block_size + offset of each token
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k rotated (``x * cos + rotate_half(x) * sin``, contiguous), with the rotated k and v
    written into the caches at ``slots``: one Triton launch on GPU, ``rotary_ref`` + ``index_copy_``
    elsewhere."""
    n, heads, dim = q.shape
    kv_heads = k.shape[1]
    half = dim // 2
    fast = (
        _use_triton(q)
        and all(t.stride(-1) == 1 for t in (q, k, v))
        and half == triton.next_power_of_2(half)
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
    )
    if not fast:
        q_rot, k_rot = rotary_ref(q, cos, sin), rotary_ref(k, cos, sin)
        k_cache.view(-1, kv_heads, dim).index_copy_(0, slots, k_rot.to(k_cache.dtype))
        v_cache.view(-1, kv_heads, dim).index_copy_(0, slots, v.to(v_cache.dtype))
        return q_rot, k_rot
    q_out = torch.empty(n, heads, dim, dtype=q.dtype, device=q.device)
    k_out = torch.empty(n, kv_heads, dim, dtype=k.dtype, device=k.device)
    if n == 0:
        return q_out, k_out
    cos2, sin2 = cos.reshape(n, dim).contiguous(), sin.reshape(n, dim).contiguous()  # one row stride for both
    _rotary_store_kernel[(n,)](
        q, k, v, cos2, sin2, slots, q_out, k_out, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos2.stride(0),
        heads, kv_heads,
        HALF=half, HEADS_PAD=triton.next_power_of_2(heads), KV_PAD=triton.next_power_of_2(kv_heads),
    )  # fmt: skip
    return q_out, k_out


# ---- Triton kernels --------------------------------------------------------------------------------


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, stride_x, stride_r, stride_o, hidden, eps,
        HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < hidden
        x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
        r = tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # h = x + residual, rounded like torch's add
        if HAS_BIAS:
            b = tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
            tl.store(res_ptr + row * stride_r + cols, (x.to(tl.float32) + b).to(x.dtype), mask=ok)
        else:
            tl.store(res_ptr + row * stride_r + cols, x, mask=ok)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        normed = (xf * rstd).to(x.dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (w * normed).to(x.dtype), mask=ok)

    @triton.jit
    def _rotate_rows(x_ptr, stride_h, count, c1, c2, s1, s2, PAD: tl.constexpr, HALF: tl.constexpr):
        """Rotated halves of ``count`` heads of one token (rows of a [PAD, HALF] tile), each product
        rounded to the input dtype like torch's (``rotary_ref`` in the activations' dtype)."""
        h = tl.arange(0, PAD)[:, None]
        d = tl.arange(0, HALF)[None, :]
        ok = h < count
        x1 = tl.load(x_ptr + h * stride_h + d, mask=ok, other=0.0)
        x2 = tl.load(x_ptr + h * stride_h + HALF + d, mask=ok, other=0.0)
        dt = x1.dtype
        f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
        o1 = (f1 * c1).to(dt).to(tl.float32) + (-f2 * s1).to(dt).to(tl.float32)
        o2 = (f2 * c2).to(dt).to(tl.float32) + (f1 * s2).to(dt).to(tl.float32)
        return o1.to(dt), o2.to(dt)

    @triton.jit
    def _rotary_store_kernel(
        q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, slots_ptr, qo_ptr, ko_ptr, kc_ptr, vc_ptr,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_c, heads, kv_heads,
        HALF: tl.constexpr, HEADS_PAD: tl.constexpr, KV_PAD: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        d = tl.arange(0, HALF)[None, :]
        c1 = tl.load(cos_ptr + row * stride_c + d).to(tl.float32)
        c2 = tl.load(cos_ptr + row * stride_c + HALF + d).to(tl.float32)
        s1 = tl.load(sin_ptr + row * stride_c + d).to(tl.float32)
        s2 = tl.load(sin_ptr + row * stride_c + HALF + d).to(tl.float32)
        dim = 2 * HALF
        # q: rotated into a contiguous [N, heads, D]
        hq = tl.arange(0, HEADS_PAD)[:, None]
        o1, o2 = _rotate_rows(q_ptr + row * stride_qn, stride_qh, heads, c1, c2, s1, s2, HEADS_PAD, HALF)
        qo = qo_ptr + row * heads * dim + hq * dim
        tl.store(qo + d, o1, mask=hq < heads)
        tl.store(qo + HALF + d, o2, mask=hq < heads)
        # k: rotated, into a contiguous [N, kv_heads, D] and into the cache slot; v: into the cache slot
        hk = tl.arange(0, KV_PAD)[:, None]
        ok = hk < kv_heads
        k1, k2 = _rotate_rows(k_ptr + row * stride_kn, stride_kh, kv_heads, c1, c2, s1, s2, KV_PAD, HALF)
        ko = ko_ptr + row * kv_heads * dim + hk * dim
        tl.store(ko + d, k1, mask=ok)
        tl.store(ko + HALF + d, k2, mask=ok)
        slot = tl.load(slots_ptr + row).to(tl.int64)
        kc = kc_ptr + slot * kv_heads * dim + hk * dim
        tl.store(kc + d, k1.to(kc_ptr.dtype.element_ty), mask=ok)
        tl.store(kc + HALF + d, k2.to(kc_ptr.dtype.element_ty), mask=ok)
        full = tl.arange(0, 2 * HALF)[None, :]
        vals = tl.load(v_ptr + row * stride_vn + hk * stride_vh + full, mask=ok)
        tl.store(vc_ptr + slot * kv_heads * dim + hk * dim + full, vals.to(vc_ptr.dtype.element_ty), mask=ok)
