"""Embedding merge and DeepStack add: the references equal transformers' masked_scatter / DeepStack
step on random inputs (CPU); the Triton kernels equal the references (in Triton's interpreter on
CPU, and compiled on a GPU when there is one)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from epd_kernels import deepstack_add_, merge_embeddings
from epd_kernels.merge import deepstack_add_reference, merge_embeddings_reference
from tests.kernel_helpers import gpu, run_in_interpreter


def _case(seed: int, num_tokens: int, vocab: int, hidden: int, num_mm: int, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (num_tokens,), generator=g)
    table = torch.randn(vocab, hidden, generator=g).to(dtype)
    rows = torch.randperm(num_tokens, generator=g)[:num_mm]
    mm = torch.randn(num_mm, hidden, generator=g).to(dtype)
    return [t.to(device) for t in (ids, table, rows, mm)]


@pytest.mark.parametrize("seed", range(4))
def test_merge_reference_equals_masked_scatter(seed):
    """transformers' path: embed every token, then masked_scatter the media rows in prompt order."""
    ids, table, rows, mm = _case(seed, 97, 50, 24, 31)
    sorted_rows, order = rows.sort()  # masked_scatter fills the masked rows in increasing row order
    mask = torch.zeros(ids.numel(), dtype=torch.bool)
    mask[sorted_rows] = True
    expected = table[ids].masked_scatter(mask[:, None].expand(-1, table.shape[1]), mm[order])
    assert torch.equal(merge_embeddings_reference(ids, table, rows, mm), expected)
    assert torch.equal(merge_embeddings(ids, table, rows, mm), expected)  # CPU dispatches to the reference


def test_merge_refuses_count_mismatch():
    ids, table, rows, mm = _case(0, 10, 20, 8, 4)
    with pytest.raises(ValueError, match="placeholder rows"):
        merge_embeddings(ids, table, rows, mm[:3])


@pytest.mark.parametrize("seed", range(3))
def test_deepstack_reference_equals_transformers(seed):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

    ids, hidden, rows, feats = _case(seed, 64, 64, 16, 20)
    hidden = torch.randn(64, 16, generator=torch.Generator().manual_seed(seed + 9))
    rows = rows.sort().values  # transformers addresses the visual rows with a mask: increasing order
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, rows] = True
    expected = Qwen3VLTextModel._deepstack_process(None, hidden[None].clone(), mask, feats)[0]
    got = deepstack_add_(hidden.clone(), rows, feats)
    assert torch.equal(got, expected)


def test_triton_kernels_in_interpreter():
    """The Triton kernels' indexing, run by Triton's CPU interpreter (exact: pure copies, float32 adds)."""
    script = textwrap.dedent(
        """
        import torch
        from epd_kernels.merge import merge_embeddings_reference, deepstack_add_reference
        from epd_kernels.merge_triton import merge_embeddings_triton, deepstack_add_triton
        g = torch.Generator().manual_seed(0)
        for num_tokens, vocab, hidden, num_mm in [(37, 50, 72, 11), (6, 9, 4100, 3), (8, 10, 16, 0)]:
            ids = torch.randint(0, vocab, (num_tokens,), generator=g)
            table = torch.randn(vocab, hidden, generator=g).bfloat16()
            rows = torch.randperm(num_tokens, generator=g)[:num_mm]
            mm = torch.randn(num_mm, hidden, generator=g).bfloat16()
            want = merge_embeddings_reference(ids, table, rows, mm)
            assert torch.equal(merge_embeddings_triton(ids, table, rows, mm), want)
            # the row map is never initialised: stale in-range entries on text rows must not count as media rows
            stale = torch.randint(0, max(num_mm, 1), (num_tokens,), generator=g, dtype=torch.int32)
            assert torch.equal(merge_embeddings_triton(ids, table, rows, mm, row_map=stale), want)
            hid = torch.randn(num_tokens, hidden, generator=g)
            ref = deepstack_add_reference(hid.clone(), rows, mm.float())
            assert torch.equal(deepstack_add_triton(hid.clone(), rows, mm.float()), ref)
        print("ok")
        """
    )
    run_in_interpreter(script)


@gpu
@pytest.mark.parametrize(("num_tokens", "hidden", "num_mm"), [(32768, 3584, 21528), (1000, 4096, 0), (777, 1000, 777)])
def test_merge_triton_equals_reference_on_gpu(num_tokens, hidden, num_mm):
    from epd_kernels.merge_triton import merge_embeddings_triton

    ids, table, rows, mm = _case(1, num_tokens, 5000, hidden, num_mm, torch.bfloat16, "cuda")
    ref = merge_embeddings_reference(ids, table, rows, mm)
    _poison(ref)
    out = merge_embeddings(ids, table, rows, mm)  # dispatches to Triton on CUDA
    assert torch.equal(out, ref)
    mixed = merge_embeddings(ids, table, rows, mm.float())  # media rows of another dtype are cast, as the reference
    assert torch.equal(mixed, merge_embeddings_reference(ids, table, rows, mm.float()))
    stale = torch.randint(0, max(num_mm, 1), (num_tokens,), device="cuda", dtype=torch.int32)  # an old row map
    assert torch.equal(merge_embeddings_triton(ids, table, rows, mm, row_map=stale), ref)


def _poison(like: torch.Tensor) -> None:
    """Leave NaNs in the allocator's next block of this size, so an unwritten output row cannot pass."""
    torch.full_like(like, float("nan"))


@gpu
def test_deepstack_triton_equals_reference_on_gpu():
    _, _, rows, feats = _case(2, 4096, 10, 4096, 2500, torch.bfloat16, "cuda")
    hidden = torch.randn(4096, 4096, device="cuda").bfloat16()
    ref = deepstack_add_reference(hidden.clone(), rows, feats)
    untouched = torch.ones(4096, dtype=torch.bool, device="cuda")
    untouched[rows] = False
    got = deepstack_add_(hidden.clone(), rows, feats)
    assert torch.equal(got, ref)
    assert torch.equal(got[untouched], hidden[untouched])
