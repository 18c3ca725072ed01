"""Triton kernels of the embedding merge and the DeepStack add (CUDA; the references are in ``merge.py``).

Bytes moved by the merge: one read of every output row (from the table or from the media
embeddings) and one write of it, 2 * L * H * itemsize; the index map costs 8 bytes a row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_map_kernel(
    rows_ptr,  # [M] int64: prompt rows of the media embeddings
    src_ptr,  # [L] int32, not initialised
    num_mm,
    BLOCK: tl.constexpr,
):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = j < num_mm
    rows = tl.load(rows_ptr + j, mask=mask, other=0)
    tl.store(src_ptr + rows, j.to(tl.int32), mask=mask)


@triton.jit
def _merge_kernel(
    ids_ptr,  # [L] int64 token ids
    src_ptr,  # [L] int32: j for row rows[j]; anything (never initialised) on text rows
    rows_ptr,  # [M] int64: the media rows
    table_ptr,  # [V, H]
    mm_ptr,  # [M, H], same dtype as the table
    out_ptr,  # [L, H]
    num_mm,
    H,
    stride_table,
    stride_mm,
    stride_out,
    BLOCK_H: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    # sparse-set test: row is a media row iff its map entry j is in range and rows[j] points back at it,
    # so text rows need no initialised entry (no fill launch)
    src = tl.load(src_ptr + row).to(tl.int64)
    in_range = (src >= 0) & (src < num_mm)
    safe = tl.where(in_range, src, 0)
    is_mm = in_range & (tl.load(rows_ptr + safe, mask=in_range, other=-1) == row)
    is_text = ~is_mm
    tok = tl.load(ids_ptr + row, mask=is_text, other=0).to(tl.int64)
    # two predicated loads (only one issues memory traffic): plain pointer arithmetic keeps them 16-byte wide
    table_row = table_ptr + tok * stride_table
    mm_row = mm_ptr + safe * stride_mm
    out_row = out_ptr + row * stride_out
    cols = tl.arange(0, BLOCK_H)
    for chunk in tl.static_range(NUM_CHUNKS):
        offs = chunk * BLOCK_H + cols
        mask = offs < H
        text = tl.load(table_row + offs, mask=mask & is_text, eviction_policy="evict_first")
        media = tl.load(mm_row + offs, mask=mask & is_mm, eviction_policy="evict_first")
        tl.store(out_row + offs, tl.where(is_mm, media, text), mask=mask)


@triton.jit
def _deepstack_add_kernel(
    hidden_ptr,  # [T, H]
    rows_ptr,  # [M] int64
    feats_ptr,  # [M, H]
    H,
    stride_hidden,
    stride_feats,
    BLOCK_H: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
):
    j = tl.program_id(0).to(tl.int64)
    row = tl.load(rows_ptr + j).to(tl.int64)
    h_row = hidden_ptr + row * stride_hidden
    f_row = feats_ptr + j * stride_feats
    cols = tl.arange(0, BLOCK_H)
    for chunk in tl.static_range(NUM_CHUNKS):
        offs = chunk * BLOCK_H + cols
        mask = offs < H
        h = tl.load(h_row + offs, mask=mask)
        f = tl.load(f_row + offs, mask=mask)
        # added in float32 and rounded once to hidden's dtype: what torch's bf16 add does
        tl.store(h_row + offs, (h.to(tl.float32) + f.to(tl.float32)).to(h.dtype), mask=mask)


def _blocks(hidden: int) -> tuple[int, int, int]:
    """(BLOCK_H, NUM_CHUNKS, num_warps): one row per program, 16-byte accesses per thread."""
    block = min(triton.next_power_of_2(hidden), 4096)
    return block, triton.cdiv(hidden, block), 8 if block >= 2048 else 4


def _rows_major(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def merge_embeddings_triton(
    token_ids: torch.Tensor,  # [L] int64, on the table's device
    embed_table: torch.Tensor,  # [V, H]
    mm_positions: torch.Tensor,  # [M] int64
    mm_embeds: torch.Tensor,  # [M, H]
    row_map: torch.Tensor | None = None,  # [L] int32 scratch, any contents (reused buffer; tests poison it)
) -> torch.Tensor:  # [L, H]
    num_rows, hidden = token_ids.numel(), embed_table.shape[1]
    device = embed_table.device
    out = torch.empty(num_rows, hidden, dtype=embed_table.dtype, device=device)
    if num_rows == 0:
        return out
    table = _rows_major(embed_table)
    token_ids = token_ids if token_ids.device == device else token_ids.to(device)
    mm_positions = mm_positions if mm_positions.device == device else mm_positions.to(device)
    num_mm = mm_positions.numel()
    # row → media row map: one scatter launch into uninitialised memory (see the sparse-set test)
    src = row_map if row_map is not None else torch.empty(num_rows, dtype=torch.int32, device=device)
    if num_mm:
        _row_map_kernel[(triton.cdiv(num_mm, 1024),)](mm_positions, src, num_mm, BLOCK=1024, num_warps=4)
        mm = _rows_major(mm_embeds.to(device=device, dtype=table.dtype))
    else:
        mm_positions, mm = token_ids, table  # never read
    block, chunks, warps = _blocks(hidden)
    _merge_kernel[(num_rows,)](
        token_ids,
        src,
        mm_positions,
        table,
        mm,
        out,
        num_mm,
        hidden,
        table.stride(0),
        mm.stride(0),
        out.stride(0),
        BLOCK_H=block,
        NUM_CHUNKS=chunks,
        num_warps=warps,
    )
    return out


def deepstack_add_triton(
    hidden: torch.Tensor,  # [T, H]
    rows: torch.Tensor,  # [M] int64, distinct
    feats: torch.Tensor,  # [M, H]
) -> torch.Tensor:
    if rows.numel() == 0:
        return hidden
    if hidden.stride(-1) != 1:
        raise ValueError("deepstack_add_ needs hidden states whose rows are contiguous")
    feats = _rows_major(feats.to(device=hidden.device))
    block, chunks, warps = _blocks(hidden.shape[1])
    _deepstack_add_kernel[(rows.numel(),)](
        hidden,
        rows.to(hidden.device),
        feats,
        hidden.shape[1],
        hidden.stride(0),
        feats.stride(0),
        BLOCK_H=block,
        NUM_CHUNKS=chunks,
        num_warps=warps,
    )
    return hidden
