"""The fused MoE (``epd_kernels.moe``): the reference against transformers' Qwen3-MoE block, and every
kernel against the reference on fresh random inputs (Triton in its CPU interpreter, float32; the
real shape in bfloat16 and inside CUDA graphs on a GPU)."""

from __future__ import annotations

import pytest
import torch

from epd_kernels import moe
from tests.kernel_helpers import gpu, run_in_interpreter

REAL = {"hidden": 2048, "inter": 768, "experts": 128, "top_k": 8}  # Qwen3-VL-30B-A3B / Qwen3-Omni thinker


def make_case(n, hidden, inter, experts, device="cpu", dtype=torch.float32, seed=0, dominant=None):
    """x [n, H], router [E, H], w13 [E, 2I, H], w2 [E, H, I]; ``dominant``: an expert every token ranks first."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, hidden, device=device, generator=g)
    gate = torch.randn(experts, hidden, device=device, generator=g) / hidden**0.5  # logits ~ N(0, 1)
    if dominant is not None:  # a shared direction that only expert ``dominant`` follows: its logit + ~10
        x += 1.0
        gate[dominant] += 10.0 / hidden
    w13 = torch.randn(experts, 2 * inter, hidden, device=device, generator=g) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, device=device, generator=g) / inter**0.5
    return [t.to(dtype) for t in (x, gate, w13, w2)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert not a.isnan().any(), "NaN in the output"
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---- references (CPU, in process) ------------------------------------------------------------------


@pytest.mark.parametrize("norm_topk", [True, False])
def test_reference_equals_transformers_block(norm_topk):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3,
                         norm_topk_prob=norm_topk)  # fmt: skip
    cfg._experts_implementation = "eager"
    block = Qwen3MoeSparseMoeBlock(cfg)
    x, gate, w13, w2 = make_case(23, 64, 32, 8, seed=1)
    with torch.no_grad():
        block.gate.weight.copy_(gate)
        block.experts.gate_up_proj.copy_(w13)
        block.experts.down_proj.copy_(w2)
        want = block(x[None])[0]
    got = moe.moe_reference(x, gate, w13, w2, 3, norm_topk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    weights, _ = moe.route_reference(x, gate, 3, norm_topk)
    assert torch.allclose(weights.sum(-1), torch.ones(23)) == norm_topk


def test_sort_reference_groups_pairs_by_expert():
    experts = torch.tensor([[3, 1], [1, 0], [3, 2]])
    counts, order = moe.sort_reference(experts, 5)
    assert counts.tolist() == [1, 2, 1, 2, 0]
    assert order.tolist() == [3, 1, 2, 5, 0, 4]


@pytest.mark.parametrize("n", [1, 37])
def test_grouped_mm_on_cpu(n):
    if not moe.grouped_mm_available(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no grouped GEMM")
    x, gate, w13, w2 = make_case(n, 64, 48, 6, seed=n)
    got = moe.fused_moe(x, gate, w13, w2, 2, True, kernel="grouped_mm")
    assert rel_err(got, moe.moe_reference(x, gate, w13, w2, 2, True)) < 1e-6


def test_bad_arguments_raise():
    x, gate, w13, w2 = make_case(3, 64, 32, 4)
    with pytest.raises(ValueError, match="top_k"):
        moe.fused_moe(x, gate, w13, w2, 5, True)
    with pytest.raises(ValueError, match="unknown MoE kernel"):
        moe.fused_moe(x, gate, w13, w2, 2, True, kernel="magic")
    with pytest.raises(ValueError, match="engine.moe_kernel"):
        moe.resolve_kernel("magic", torch.device("cpu"), torch.float32)
    assert moe.resolve_kernel("triton", torch.device("cpu"), torch.float32) == "reference"


# ---- Triton in its interpreter (CPU, float32) ------------------------------------------------------

# every float output the kernels allocate starts as NaN and every int32 one as -1: unwritten rows show
POISON = """
import torch
_empty = torch.empty
def poisoned(*args, **kwargs):
    t = _empty(*args, **kwargs)
    return t.fill_(float("nan") if t.is_floating_point() else -1)
torch.empty = poisoned
"""


def check_interpreted_cases() -> None:
    """Routing, sort and both expert kernels against the references: N = 1, N not a multiple of any
    tile, every token on one expert (the others unused), a dominant expert, tiles of several sizes,
    a reduction not a multiple of the tile's."""
    from epd_kernels import moe_triton

    cases = [  # (n, hidden, inter, experts, top_k, norm, dominant)
        (1, 64, 32, 8, 2, True, None),
        (37, 96, 48, 6, 3, False, None),  # H = 96: not a multiple of block_k 64
        (50, 64, 32, 8, 1, True, 5),  # top-1 and a dominant expert: all pairs on expert 5
        (64, 64, 32, 16, 4, True, 2),  # expert 2 in every token's top 4, several experts unused
        (200, 64, 48, 8, 2, True, None),
    ]
    for seed, (n, hidden, inter, num_experts, top_k, norm, dominant) in enumerate(cases):
        x, gate, w13, w2 = make_case(n, hidden, inter, num_experts, seed=seed, dominant=dominant)
        weights, experts = moe.route_reference(x, gate, top_k, norm)
        counts = torch.zeros(num_experts, dtype=torch.int32)
        got_w, got_e = moe_triton.route(torch.nn.functional.linear(x, gate), top_k, norm, counts)
        assert torch.equal(got_e.long(), experts), (n, "routing")
        assert rel_err(got_w, weights) < 1e-6
        assert torch.equal(counts, torch.bincount(experts.flatten(), minlength=num_experts).int())
        if dominant is not None:
            assert (experts == dominant).any(-1).all()
        order = moe_triton.sort_pairs(got_e, counts, torch.zeros(num_experts, dtype=torch.int32))
        assert torch.equal(order.sort().values, torch.arange(n * top_k, dtype=torch.int32)), "not a permutation"
        assert (experts.flatten()[order.long()].diff() >= 0).all(), "not grouped by expert"
        want = moe.experts_reference(x, weights, experts, w13, w2)
        for tiles in (None, (moe.Tiles(16, 16, 32), moe.Tiles(32, 32, 16))):
            got = moe.fused_moe(x, gate, w13, w2, top_k, norm, kernel="triton", tiles=tiles, triton_routing=True)
            assert rel_err(got, want) < 1e-5, (n, tiles, rel_err(got, want))
        got = moe.fused_moe(x, gate, w13, w2, top_k, norm, kernel="grouped_mm", triton_routing=True)
        assert rel_err(got, want) < 1e-5, (n, "grouped_mm")
    # one program routes and sorts small batches (decode steps)
    for n, top_k, num_experts in ((1, 2, 8), (7, 3, 6), (32, 8, 128)):
        x, gate, _, _ = make_case(n, 64, 32, num_experts, seed=n)
        weights, experts = moe.route_reference(x, gate, top_k, True)
        got_w, counts, order = moe_triton.route_and_sort_small(torch.nn.functional.linear(x, gate), top_k, True)
        assert rel_err(got_w, weights) < 1e-6
        assert torch.equal(counts, torch.bincount(experts.flatten(), minlength=num_experts).int())
        assert torch.equal(order.sort().values, torch.arange(n * top_k, dtype=torch.int32)), "not a permutation"
        assert (experts.flatten()[order.long()].diff() >= 0).all(), "not grouped by expert"
    # hand-made routing: every pair of every token on expert 3 of 8 (the other experts see nothing)
    x, _, w13, w2 = make_case(19, 64, 32, 8, seed=9)
    experts = torch.full((19, 1), 3, dtype=torch.int32)
    weights = torch.rand(19, 1)
    counts = torch.bincount(experts.flatten().long(), minlength=8).int()
    order = moe_triton.sort_pairs(experts, counts, torch.zeros(8, dtype=torch.int32))
    for tiles in (moe.Tiles(16, 16, 32), moe.Tiles(64, 32, 32)):
        act = moe_triton.up_swiglu(x, w13, order, counts, 1, tiles)
        pairs = moe_triton.down_weighted(act, w2, order, counts, weights, tiles)
        assert rel_err(pairs, moe.experts_reference(x, weights, experts.long(), w13, w2)) < 1e-5


def test_kernels_in_interpreter():
    run_in_interpreter(
        POISON
        + """
from tests.unit.test_kernels_moe import check_interpreted_cases
check_interpreted_cases()
print("ok")
"""
    )


def test_tile_bound_covers_the_worst_spread():
    from epd_kernels.moe_triton import max_tiles

    for pairs, experts, block in [(8, 128, 16), (256, 128, 16), (131072, 128, 128), (5, 3, 4)]:
        used = min(experts, pairs)  # worst case: as many experts as possible, one pair over a tile each
        per = [pairs // used + (i < pairs % used) for i in range(used)]
        assert sum(-(-c // block) for c in per) <= max_tiles(pairs, experts, block)


# ---- GPU -------------------------------------------------------------------------------------------


def _gpu_route(x, gate, top_k):
    from epd_kernels import moe_triton

    counts = torch.zeros(gate.shape[0], dtype=torch.int32, device=x.device)
    return moe_triton.route(torch.nn.functional.linear(x, gate), top_k, True, counts)


@gpu
@pytest.mark.parametrize("kernel", ["triton", "grouped_mm"])
@pytest.mark.parametrize("n", [1, 8, 32, 128, 2048])
def test_real_shape_bf16(kernel, n):
    """bf16 at the released shape against the float32 reference on the same routing."""
    if kernel == "grouped_mm" and not moe.grouped_mm_available(torch.device("cuda"), torch.bfloat16):
        pytest.skip("no grouped GEMM for bf16 here")
    x, gate, w13, w2 = make_case(n, REAL["hidden"], REAL["inter"], REAL["experts"], "cuda", torch.bfloat16, seed=n)
    weights, experts = _gpu_route(x, gate, REAL["top_k"])
    want = moe.experts_reference(x.float(), weights, experts.long(), w13.float(), w2.float())
    got = moe.fused_moe(x, gate, w13, w2, REAL["top_k"], True, kernel=kernel)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want) < 1e-2
    _, ref_e = moe.route_reference(x, gate, REAL["top_k"], True)  # transformers' routing, same bf16 logits
    assert torch.equal(ref_e.sort(-1).values, experts.long().sort(-1).values)


@gpu
@pytest.mark.parametrize("n", [1, 33, 1000])
def test_real_shape_float32_matches_transformers(n):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=REAL["hidden"], moe_intermediate_size=REAL["inter"], num_experts=REAL["experts"],
                         num_experts_per_tok=REAL["top_k"], norm_topk_prob=True)  # fmt: skip
    cfg._experts_implementation = "eager"
    x, gate, w13, w2 = make_case(n, REAL["hidden"], REAL["inter"], REAL["experts"], "cuda", seed=n)
    block = Qwen3MoeSparseMoeBlock(cfg).cuda()
    with torch.no_grad():
        block.gate.weight.copy_(gate)
        block.experts.gate_up_proj.copy_(w13)
        block.experts.down_proj.copy_(w2)
        want = block(x[None])[0]
    got = moe.fused_moe(x, gate, w13, w2, REAL["top_k"], True, kernel="triton")
    assert rel_err(got, want) < 1e-5


@gpu
@pytest.mark.parametrize("kernel", ["triton", "grouped_mm"])
def test_cuda_graph_replay(kernel):
    """Captured once, replayed on new inputs: the eager result, with no host sync inside."""
    if kernel == "grouped_mm" and not moe.grouped_mm_available(torch.device("cuda"), torch.bfloat16):
        pytest.skip("no grouped GEMM for bf16 here")
    x, gate, w13, w2 = make_case(32, REAL["hidden"], REAL["inter"], REAL["experts"], "cuda", torch.bfloat16)
    static = x.clone()
    run = lambda: moe.fused_moe(static, gate, w13, w2, REAL["top_k"], True, kernel=kernel)  # noqa: E731
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for seed in (1, 2):
        fresh = make_case(32, REAL["hidden"], 8, 2, "cuda", torch.bfloat16, seed=seed)[0]
        static.copy_(fresh)
        graph.replay()
        torch.testing.assert_close(out, moe.fused_moe(fresh, gate, w13, w2, REAL["top_k"], True, kernel=kernel))
