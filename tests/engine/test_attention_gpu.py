"""GPU attention backends against the float32 reference over the same paged cache (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from epd.language.attention import AttentionMetadata
from epd.language.attention.torch_ref import attend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HEADS, KV_HEADS, DIM, BLOCK = 28, 4, 128, 16


def _cache(num_blocks: int, dtype) -> torch.Tensor:
    return torch.randn(1, 2, num_blocks, BLOCK, KV_HEADS, DIM, device="cuda", dtype=dtype)


def _tables(lens: list[int], num_blocks: int) -> list[list[int]]:
    perm = torch.randperm(num_blocks - 1).add(1).tolist()  # block 0 stays the padding block
    tables, at = [], 0
    for n in lens:
        need = -(-n // BLOCK)
        tables.append(perm[at : at + need])
        at += need
    return tables


def _slots(table: list[int], start: int, end: int) -> torch.Tensor:
    pos = torch.arange(start, end)
    return torch.tensor(table)[pos // BLOCK] * BLOCK + pos % BLOCK


def _reference(cache: torch.Tensor, q: torch.Tensor, table: list[int], ctx: int) -> torch.Tensor:
    slots = _slots(table, 0, ctx).cuda()
    k = cache[0, 0].reshape(-1, KV_HEADS, DIM)[slots].double()
    v = cache[0, 1].reshape(-1, KV_HEADS, DIM)[slots].double()
    return attend(q.double(), k, v, DIM**-0.5)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("decode", ["triton", "flash"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_paged_decode(decode, dtype):
    from epd.language.attention.cuda import FLASH_PAGED, CudaAttention

    if decode == "flash" and (not FLASH_PAGED or dtype == torch.float32):
        pytest.skip("flash decode needs a torch whose varlen_attn reads a block table, and half precision")
    lens = [1, 17, 300, 1000, 64]
    cache = _cache(200, dtype)
    tables = _tables(lens, 200)
    backend = CudaAttention(DIM**-0.5, decode)
    backend.bind(cache)
    q = torch.randn(len(lens), HEADS, DIM, device="cuda", dtype=dtype)
    width = max(len(t) for t in tables)
    padded = torch.zeros(len(lens), width, dtype=torch.int32)
    for i, t in enumerate(tables):
        padded[i, : len(t)] = torch.tensor(t)
    meta = AttentionMetadata(
        slot_mapping=torch.empty(0, dtype=torch.int64, device="cuda"),
        num_decodes=len(lens),
        decode_block_tables=padded.cuda(),
        decode_context_lens=torch.tensor(lens, dtype=torch.int32, device="cuda"),
        decode_context_lens_host=lens,
    )
    out = backend._decode(0, q, meta)
    torch.cuda.synchronize()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for i, (t, n) in enumerate(zip(tables, lens, strict=True)):
        assert _rel(out[i : i + 1], _reference(cache, q[i : i + 1], t, n)) < tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_chunks_over_cached_context(dtype):
    from epd.language.attention.cuda import CudaAttention

    ctx = [40, 333, 1500]  # tokens already cached before this step's chunk
    chunk = [7, 128, 64]
    cache = _cache(300, dtype)
    tables = _tables([c + n for c, n in zip(ctx, chunk, strict=True)], 300)
    backend = CudaAttention(DIM**-0.5)
    backend.bind(cache)
    total = sum(chunk)
    q = torch.randn(total, HEADS, DIM, device="cuda", dtype=dtype)
    k = torch.randn(total, KV_HEADS, DIM, device="cuda", dtype=dtype)
    v = torch.randn(total, KV_HEADS, DIM, device="cuda", dtype=dtype)
    new_slots = torch.cat([_slots(t, c, c + n) for t, c, n in zip(tables, ctx, chunk, strict=True)]).cuda()
    ctx_slots = torch.cat([_slots(t, 0, c + n) for t, c, n in zip(tables, ctx, chunk, strict=True)]).cuda()
    k_lens = [c + n for c, n in zip(ctx, chunk, strict=True)]
    cu = lambda xs: torch.tensor([0, *torch.tensor(xs).cumsum(0).tolist()], dtype=torch.int32, device="cuda")  # noqa: E731
    meta = AttentionMetadata(
        slot_mapping=new_slots,
        num_prefill_tokens=total,
        prefill_q_lens=chunk,
        prefill_k_lens=k_lens,
        cu_seqlens_q=cu(chunk),
        cu_seqlens_k=cu(k_lens),
        prefill_context_slots=ctx_slots,
        prefill_from_start=False,
    )
    out = torch.full_like(q, float("nan"))
    backend.store(0, k, v, meta)
    out.copy_(backend.forward(0, q, k, v, meta))
    torch.cuda.synchronize()
    assert not out.isnan().any()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    start = 0
    for t, n, kl in zip(tables, chunk, k_lens, strict=True):
        ref = _reference(cache, q[start : start + n], t, kl)
        assert _rel(out[start : start + n], ref) < tol
        start += n
