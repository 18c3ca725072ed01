"""Paged decode attention in Triton: one program per (sequence, KV head) walks the sequence's blocks
with an online softmax, serving the KV head's whole group of query heads with one matrix product
per tile (the group is padded to 16 rows, the smallest ``tl.dot`` tile).

Reads each context key and value once per KV head; graph-safe (the loop bound is read on the
device). Reference: ``epd.language.attention.torch_ref.attend`` over the same blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode(
    q_ptr,  # [S, H, D]
    k_ptr,  # [blocks, block_size, H_kv, D]
    v_ptr,
    tables_ptr,  # [S, W] int32
    lens_ptr,  # [S] int32
    out_ptr,  # [S, H, D]
    stride_qs,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_ts,
    stride_os,
    stride_oh,
    scale,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(lens_ptr + seq)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + g
    g_ok = g < GROUP
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :], mask=g_ok[:, None], other=0.0)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    denom = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    t = tl.arange(0, TILE)
    for start in range(0, ctx, TILE):
        pos = start + t
        ok = pos < ctx
        page = tl.load(tables_ptr + seq * stride_ts + pos // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
        off = page * stride_kb + (pos % BLOCK_SIZE) * stride_kt + kv_head * stride_kh  # [TILE]
        k = tl.load(k_ptr + off[:, None] + d[None, :], mask=ok[:, None], other=0.0)  # [TILE, D]
        v = tl.load(v_ptr + off[:, None] + d[None, :], mask=ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [GROUP_PAD, TILE] float32
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        denom = denom * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / denom[:, None]
    o_ptrs = out_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])


def paged_decode_attention(
    q: torch.Tensor,  # [S, H, D]
    k_cache: torch.Tensor,  # [blocks, block_size, H_kv, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [S, W] int32
    context_lens: torch.Tensor,  # [S] int32
    scale: float,
    tile: int = 64,
) -> torch.Tensor:  # [S, H, D]
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    assert k_cache.stride(-1) == 1 and q.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    _paged_decode[(num_seqs, num_kv_heads)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        scale,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=k_cache.shape[1],
        TILE=tile,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # float32 runs are checked to 1e-5
    )
    return out
