"""Routed experts of Qwen3-MoE in one fused pass: top-k routing, pairs grouped by expert, grouped
GEMMs with SwiGLU, and the weighted sum back in token order.

``fused_moe(x, gate_weight, w13, w2, top_k, norm_topk, kernel)`` runs one MoE block's experts:

- ``reference``: pure torch, one matmul pair per used expert in ascending order (transformers'
  eager loop). The CPU path: float32-exact against transformers. Reads the counts on the host, so
  never inside a CUDA graph.
- ``triton``: epd's kernels (``moe_triton``): routing, sort, gate/up GEMM with SwiGLU in its
  epilogue, down GEMM scaled by the routing weights; no host sync, any batch in a CUDA graph.
- ``grouped_mm``: epd's routing and sort, then torch's grouped GEMM (``F.grouped_mm`` in torch
  >= 2.10, else ``torch._grouped_mm``; torch 2.14 here and 2.11 on the GPU machine have both):
  [P, K] rows times ``w.transpose(1, 2)`` [E, K, N] with int32 group ends ``offs``. On CUDA its
  CUTLASS path (no host sync) takes bfloat16 on sm90/sm100 only; other dtypes fall back to a host
  loop over the groups, so the engine refuses them. On CPU any float (tests).

Weights: ``gate_weight`` [E, H] (the router), ``w13`` [E, 2I, H] (gate rows then up rows:
transformers 5's ``gate_up_proj``), ``w2`` [E, H, I]. Routing is transformers' Qwen3-MoE router:
softmax over all experts in float32, top-k, divided by the top-k sum when ``norm_topk_prob``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

MOE_KERNELS = ("auto", "triton", "grouped_mm", "reference")
"""Choices of ``engine.moe_kernel``; ``auto`` is ``triton`` on CUDA (the measured default, BENCHMARKS.md)."""


@dataclass(frozen=True)
class Tiles:
    """One grouped GEMM's Triton tile: ``block_m`` pairs of one expert by ``block_n`` output columns,
    stepping ``block_k`` along the reduction."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


def default_tiles(num_tokens: int, top_k: int, num_experts: int, dtype: torch.dtype) -> tuple[Tiles, Tiles]:
    """(gate/up tile, down tile) by pairs per expert. Up to a few thousand tokens the experts'
    weights dominate (each expert's pairs should fit one tile, so its weights are read once), and
    thin tiles put many column blocks in flight; past that the tiles grow towards 128 x 128."""
    per_expert = num_tokens * top_k / num_experts
    if per_expert <= 16:  # decode batches up to ~256 tokens at the flagship shape
        up, down = Tiles(16, 32, 128, num_stages=4), Tiles(16, 64, 128)
    elif per_expert <= 64:
        up = down = Tiles(64, 64, 64)
    else:
        up = down = Tiles(128, 128, 64, num_warps=8)
    if dtype == torch.float32:  # full-precision products run on FMAs from registers: small tiles, two stages
        up, down = (replace(t, block_m=min(t.block_m, 64), block_n=min(t.block_n, 64), block_k=32, num_warps=4,
                            num_stages=2) for t in (up, down))  # fmt: skip
    return up, down


# ---- references ------------------------------------------------------------------------------------


def route_reference(
    x: torch.Tensor, gate_weight: torch.Tensor, top_k: int, norm_topk: bool
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [N, k] float32, experts [N, k] int64
    """transformers' Qwen3-MoE router: logits in x's dtype, softmax in float32, top-k, renormalised."""
    probs = torch.softmax(F.linear(x, gate_weight).float(), dim=-1)  # [N, E]
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if norm_topk:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, experts


def experts_reference(
    x: torch.Tensor,  # [N, H]
    weights: torch.Tensor,  # [N, k] float32
    experts: torch.Tensor,  # [N, k]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
) -> torch.Tensor:  # [N, H]
    """Each used expert in ascending order on its tokens, added into the output in x's dtype
    (transformers' eager ``Qwen3MoeExperts``; routing weights rounded to x's dtype as it does)."""
    top_k = experts.shape[1]
    flat = experts.flatten()
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()  # host sync
    scale = weights.to(x.dtype).flatten()[order]
    out = torch.zeros_like(x)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = token[start : start + n]
        gate, up = F.linear(x[rows], w13[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w2[e]) * scale[start : start + n, None]
        out.index_add_(0, rows, y)
        start += n
    return out


def moe_reference(
    x: torch.Tensor, gate_weight: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int, norm_topk: bool
) -> torch.Tensor:
    """The whole block in pure torch: ``route_reference`` then ``experts_reference``."""
    weights, experts = route_reference(x, gate_weight, top_k, norm_topk)
    return experts_reference(x, weights, experts, w13, w2)


def sort_reference(experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts [E] int32, order [P] int32): pair indices grouped by expert, ascending, stable."""
    flat = experts.flatten().long()
    counts = torch.zeros(num_experts, dtype=torch.int32, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    return counts, torch.argsort(flat, stable=True).to(torch.int32)


# ---- the fused paths -------------------------------------------------------------------------------


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's grouped GEMM runs here without the host: on CUDA only bfloat16 on Hopper or
    Blackwell takes its CUTLASS path (other dtypes and GPUs loop over the groups on the host, which a
    CUDA graph cannot hold); on CPU any float (tests)."""
    if _grouped_mm_fn() is None:
        return False
    if device.type != "cuda":
        return True
    return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] in (9, 10)


def _grouped_mm_fn():
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def route_and_sort(
    x: torch.Tensor, gate_weight: torch.Tensor, top_k: int, norm_topk: bool, use_triton: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights [N, k] float32, counts [E] int32, order [P] int32 pairs grouped by expert).
    Triton: the router's GEMM, then one launch (up to ``SMALL_BATCH`` tokens) or a memset and two,
    no host sync; else the torch references."""
    num_experts = gate_weight.shape[0]
    if not use_triton:
        weights, experts = route_reference(x, gate_weight, top_k, norm_topk)
        counts, order = sort_reference(experts, num_experts)
        return weights, counts, order
    from epd_kernels import moe_triton

    logits = F.linear(x, gate_weight)  # [N, E] in x's dtype, as transformers' router
    if x.shape[0] <= moe_triton.SMALL_BATCH:
        return moe_triton.route_and_sort_small(logits, top_k, norm_topk)
    scratch = torch.zeros(2, num_experts, dtype=torch.int32, device=x.device)  # counts, tickets
    weights, experts = moe_triton.route(logits, top_k, norm_topk, scratch[0])
    return weights, scratch[0], moe_triton.sort_pairs(experts, scratch[0], scratch[1])


def fused_moe(
    x: torch.Tensor,  # [N, H]
    gate_weight: torch.Tensor,  # [E, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    top_k: int,
    norm_topk: bool,
    kernel: str = "triton",
    tiles: tuple[Tiles, Tiles] | None = None,
    triton_routing: bool | None = None,
) -> torch.Tensor:  # [N, H], x's dtype
    """One MoE block's routed experts with ``kernel`` (``triton``, ``grouped_mm`` or ``reference``).
    ``tiles`` overrides the Triton tile choice (benchmarks); ``triton_routing`` forces the Triton
    routing and sort off CUDA too (tests under Triton's interpreter; default: on CUDA)."""
    num_experts = gate_weight.shape[0]
    if not 0 < top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in 1..{num_experts} (the number of experts)")
    if kernel == "reference":
        return moe_reference(x, gate_weight, w13, w2, top_k, norm_topk)
    if kernel not in ("triton", "grouped_mm"):
        raise ValueError(f"unknown MoE kernel {kernel!r}; choose one of {', '.join(MOE_KERNELS[1:])}")
    n, hidden = x.shape
    if n == 0:
        return x.new_empty(0, hidden)
    use_triton = x.is_cuda if triton_routing is None else triton_routing
    weights, counts, order = route_and_sort(x, gate_weight, top_k, norm_topk, use_triton)
    if kernel == "grouped_mm":
        pairs = _experts_grouped_mm(x, weights, counts, order, w13, w2, top_k)
    else:
        from epd_kernels import moe_triton

        up, down = tiles or default_tiles(n, top_k, num_experts, x.dtype)
        act = moe_triton.up_swiglu(x, w13, order, counts, top_k, up)  # [P, I] in expert order
        pairs = moe_triton.down_weighted(act, w2, order, counts, weights, down)  # [P, H] in pair order
    return pairs.view(n, top_k, hidden).sum(1)  # accumulates in float32, rounds once


def _experts_grouped_mm(x, weights, counts, order, w13, w2, top_k) -> torch.Tensor:
    """[P, H] weighted expert outputs in pair order through torch's grouped GEMM."""
    from epd_kernels.fused import silu_mul

    grouped_mm = _grouped_mm_fn()
    if grouped_mm is None:
        raise ValueError("this torch has no grouped GEMM (torch._grouped_mm / F.grouped_mm): use the triton MoE kernel")
    rows = order.long()
    ends = torch.cumsum(counts, 0, dtype=torch.int32)  # [E] each expert's end row
    gate_up = grouped_mm(x.index_select(0, rows // top_k), w13.transpose(1, 2), offs=ends)  # [P, 2I]
    y = grouped_mm(silu_mul(gate_up), w2.transpose(1, 2), offs=ends)  # [P, H] in expert order
    pairs = torch.empty(y.shape, dtype=y.dtype, device=y.device)  # y's rows may be padded for TMA
    pairs[rows] = (y.float() * weights.flatten()[rows, None]).to(y.dtype)
    return pairs


def resolve_kernel(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The MoE kernel ``engine.moe_kernel=name`` gives on ``device``: the reference off CUDA, else
    ``triton`` for ``auto``; a kernel that cannot run here is refused with the key to change."""
    if name not in MOE_KERNELS:
        raise ValueError(f"engine.moe_kernel={name!r} is unknown; choose one of {', '.join(MOE_KERNELS)}")
    if device.type != "cuda":
        return "reference"
    if name == "auto":
        return "triton"
    if name == "grouped_mm" and not grouped_mm_available(device, dtype):
        raise ValueError(
            f"engine.moe_kernel=grouped_mm needs torch's grouped GEMM in bfloat16 on a Hopper/Blackwell GPU "
            f"(this run: {dtype}, torch {torch.__version__}); use engine.moe_kernel=triton"
        )
    return name
