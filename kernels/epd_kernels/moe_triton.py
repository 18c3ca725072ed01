"""Triton kernels of the fused mixture of experts (CUDA; ``moe.py`` holds the API and the references).

One layer's routed experts in seven launches (the router's GEMM, a memset, four kernels here and
the sum over k), none of which waits for the host, so a decode step is captured whole in a CUDA
graph at any batch size:

1. ``_topk_kernel``: from the router logits (cuBLAS, in the activations' dtype as transformers
   rounds them), softmax over all experts in float32, top-k, renormalised when ``norm_topk_prob``;
   each program adds its experts' pair counts to ``counts`` (one atomic per expert).
2. ``_sort_kernel``: every (token, slot) pair's place in expert order: its expert's start (an
   exclusive prefix sum of the counts, recomputed by every program) plus a ticket drawn atomically
   within the expert.
3. ``_up_kernel``: per tile of ``BLOCK_M`` pairs of one expert, the tokens' rows gathered, gate and
   up columns in two accumulators, SwiGLU in the epilogue: ``act`` [P, I] in expert order.
4. ``_down_kernel``: ``act`` times the expert's down projection, scaled by the pair's routing weight,
   stored at the pair's own row of [N * k, H] (token order); the sum over k follows in torch.

Tiles never straddle experts: an expert with c pairs takes ceil(c / BLOCK_M) tiles, so a launch has
at most ``max_tiles`` = floor((P + min(E, P) * (BLOCK_M - 1)) / BLOCK_M) of them (P = N * k, a
bound known on the host); each program finds its tile's expert from the counts and programs past
the last tile return at once. The order of pairs inside an expert follows the atomics, but no
pair's result depends on its row in a tile, so the output does not either.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def max_tiles(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound on the tiles of ``block_m`` pairs that ``num_pairs`` pairs over ``num_experts`` take."""
    return (num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m


def _precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot``: ignored for 16-bit operands."""
    # float32 operands: full float32 products (the CUDA-graph oracle compares float32 with transformers)
    return "ieee" if dtype == torch.float32 else "tf32"


# ---- launches --------------------------------------------------------------------------------------


SMALL_BATCH = 32
"""Up to this many tokens one program routes and sorts (``route_and_sort_small``): two launches fewer."""


def route(
    logits: torch.Tensor,  # [N, E] router logits in the activations' dtype (F.linear, as transformers)
    top_k: int,
    norm_topk: bool,
    counts: torch.Tensor,  # [E] int32, zeroed: pairs per expert are added here
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [N, k] float32, experts [N, k] int32
    n, num_experts = logits.shape
    weights = torch.empty(n, top_k, dtype=torch.float32, device=logits.device)
    experts = torch.empty(n, top_k, dtype=torch.int32, device=logits.device)
    block_t = 16 if n <= 4096 else 64
    _topk_kernel[(triton.cdiv(n, block_t),)](
        logits, weights, experts, counts, n, num_experts, logits.stride(0),
        TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), NORM=norm_topk,
        E_PAD=triton.next_power_of_2(num_experts), BLOCK_T=block_t,
    )  # fmt: skip
    return weights, experts


def route_and_sort_small(
    logits: torch.Tensor, top_k: int, norm_topk: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # weights [N, k] float32, counts [E], order [P] int32
    """``route`` then ``sort_pairs`` in one program, for at most ``SMALL_BATCH`` tokens (decode steps)."""
    n, num_experts = logits.shape
    assert n <= SMALL_BATCH
    dev = logits.device
    e_pad = triton.next_power_of_2(num_experts)
    weights = torch.empty(n, top_k, dtype=torch.float32, device=dev)
    experts = torch.empty(n, top_k, dtype=torch.int32, device=dev)
    counts = torch.empty(num_experts, dtype=torch.int32, device=dev)
    scratch = torch.empty(2 * e_pad, dtype=torch.int32, device=dev)
    order = torch.empty(n * top_k, dtype=torch.int32, device=dev)
    _route_sort_kernel[(1,)](
        logits, weights, experts, counts, scratch, order, n, num_experts, logits.stride(0),
        TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), NORM=norm_topk, E_PAD=e_pad,
        BLOCK_T=max(16, triton.next_power_of_2(n)),
    )  # fmt: skip
    return weights, counts, order


def sort_pairs(experts: torch.Tensor, counts: torch.Tensor, tickets: torch.Tensor) -> torch.Tensor:
    """[P] int32: the pairs (token * k + slot) grouped by expert, experts in ascending order.
    ``tickets`` [E] int32 must be zero."""
    num_pairs = experts.numel()
    num_experts = counts.numel()
    order = torch.empty(num_pairs, dtype=torch.int32, device=experts.device)
    block = 128
    _sort_kernel[(triton.cdiv(num_pairs, block),)](
        experts, counts, tickets, order, num_pairs, num_experts,
        E_PAD=max(16, triton.next_power_of_2(num_experts)), BLOCK=block,
    )  # fmt: skip
    return order


def up_swiglu(
    x: torch.Tensor,  # [N, H]
    w13: torch.Tensor,  # [E, 2I, H]: gate rows, then up rows
    order: torch.Tensor,  # [P] int32 pairs in expert order
    counts: torch.Tensor,  # [E] int32
    top_k: int,
    tiles,  # epd_kernels.moe.Tiles
) -> torch.Tensor:  # act [P, I]: silu(x W_gate^T) * (x W_up^T), row j for pair order[j]
    num_experts, two_i, hidden = w13.shape
    inter = two_i // 2
    act = torch.empty(order.numel(), inter, dtype=x.dtype, device=x.device)
    assert w13.stride(2) == 1 and x.stride(1) == 1
    n_tiles = triton.cdiv(inter, tiles.block_n)
    grid = (max_tiles(order.numel(), num_experts, tiles.block_m) * n_tiles,)
    _up_kernel[grid](
        x, w13, order, counts, act, hidden, inter, num_experts, n_tiles,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        TOP_K=top_k, E_PAD=max(16, triton.next_power_of_2(num_experts)),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, EVEN_K=hidden % tiles.block_k == 0,
        PRECISION=_precision(x.dtype), num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return act


def down_weighted(
    act: torch.Tensor,  # [P, I] in expert order
    w2: torch.Tensor,  # [E, H, I]
    order: torch.Tensor,  # [P] int32
    counts: torch.Tensor,  # [E] int32
    weights: torch.Tensor,  # [N, k] float32 routing weights
    tiles,
) -> torch.Tensor:  # [P, H]: row p = weight of pair p * (act row of p) W_down^T, in pair (token) order
    num_experts, hidden, inter = w2.shape
    out = torch.empty(order.numel(), hidden, dtype=act.dtype, device=act.device)
    assert w2.stride(2) == 1 and act.stride(1) == 1 and weights.is_contiguous()
    n_tiles = triton.cdiv(hidden, tiles.block_n)
    grid = (max_tiles(order.numel(), num_experts, tiles.block_m) * n_tiles,)
    _down_kernel[grid](
        act, w2, order, counts, weights, out, hidden, inter, num_experts, n_tiles,
        act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        E_PAD=max(16, triton.next_power_of_2(num_experts)),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, EVEN_K=inter % tiles.block_k == 0,
        PRECISION=_precision(act.dtype), num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return out


# ---- kernels ---------------------------------------------------------------------------------------


@triton.jit
def _softmax_topk(
    logits_ptr, weights_ptr, experts_ptr, rows, N, E, stride_l,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, NORM: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """Top-k of ``rows``' softmax, stored; returns (experts [T, K_PAD], valid slots, pairs per expert [E_PAD])."""
    row_ok = rows < N
    cols = tl.arange(0, E_PAD)
    col_ok = cols < E
    logits = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_l + cols[None, :],
                     mask=row_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)  # fmt: skip
    logits = tl.where(row_ok[:, None], logits, 0.0)  # rows past N: finite, never stored
    probs = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    probs = probs / tl.sum(probs, axis=1)[:, None]  # softmax over every expert in float32, as transformers
    slots = tl.arange(0, K_PAD)
    top = tl.zeros((BLOCK_T, K_PAD), dtype=tl.float32)
    ids = tl.zeros((BLOCK_T, K_PAD), dtype=tl.int32)
    for j in tl.static_range(TOP_K):  # k rounds of argmax; a chosen expert drops to -1
        best = tl.argmax(probs, axis=1)
        top = tl.where(slots[None, :] == j, tl.max(probs, axis=1)[:, None], top)
        ids = tl.where(slots[None, :] == j, best[:, None].to(tl.int32), ids)
        probs = tl.where(cols[None, :] == best[:, None], -1.0, probs)
    if NORM:
        top = top / tl.sum(top, axis=1)[:, None]
    out = rows[:, None].to(tl.int64) * TOP_K + slots[None, :]
    keep = row_ok[:, None] & (slots[None, :] < TOP_K)
    tl.store(weights_ptr + out, top, mask=keep)
    tl.store(experts_ptr + out, ids, mask=keep)
    chosen = tl.sum(((probs == -1.0) & row_ok[:, None]).to(tl.int32), axis=0)
    return ids, keep, chosen


@triton.jit
def _topk_kernel(
    logits_ptr, weights_ptr, experts_ptr, counts_ptr, N, E, stride_l,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, NORM: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    _, _, chosen = _softmax_topk(logits_ptr, weights_ptr, experts_ptr, rows, N, E, stride_l,
                                 TOP_K, K_PAD, NORM, E_PAD, BLOCK_T)  # fmt: skip
    cols = tl.arange(0, E_PAD)
    tl.atomic_add(counts_ptr + cols, chosen, mask=(cols < E) & (chosen > 0))


@triton.jit
def _route_sort_kernel(
    logits_ptr, weights_ptr, experts_ptr, counts_ptr, scratch_ptr, order_ptr, N, E, stride_l,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, NORM: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """One program for a small batch: top-k, counts and the expert order, with no memset before it."""
    rows = tl.arange(0, BLOCK_T)
    ids, keep, chosen = _softmax_topk(logits_ptr, weights_ptr, experts_ptr, rows, N, E, stride_l,
                                      TOP_K, K_PAD, NORM, E_PAD, BLOCK_T)  # fmt: skip
    cols = tl.arange(0, E_PAD)
    tl.store(counts_ptr + cols, chosen, mask=cols < E)
    tl.store(scratch_ptr + cols, tl.cumsum(chosen, 0) - chosen)  # each expert's first row
    tl.store(scratch_ptr + E_PAD + cols, tl.zeros_like(chosen))  # tickets
    tl.debug_barrier()  # the block's own stores are read back below
    start = tl.load(scratch_ptr + ids, mask=keep, other=0)
    ticket = tl.atomic_add(scratch_ptr + E_PAD + ids, 1, mask=keep)
    pairs = rows[:, None] * TOP_K + tl.arange(0, K_PAD)[None, :]
    tl.store(order_ptr + start + ticket, pairs, mask=keep)


@triton.jit
def _sort_kernel(experts_ptr, counts_ptr, tickets_ptr, order_ptr, P, E, E_PAD: tl.constexpr, BLOCK: tl.constexpr):
    pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = pairs < P
    expert = tl.load(experts_ptr + pairs, mask=ok, other=0)
    cols = tl.arange(0, E_PAD)
    counts = tl.load(counts_ptr + cols, mask=cols < E, other=0)
    starts = tl.cumsum(counts, 0) - counts  # exclusive prefix sum: each expert's first row
    start = tl.sum(tl.where(expert[:, None] == cols[None, :], starts[None, :], 0), axis=1)
    ticket = tl.atomic_add(tickets_ptr + expert, 1, mask=ok)
    tl.store(order_ptr + start + ticket, pairs, mask=ok)


@triton.jit
def _tile(counts_ptr, tile, E, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """This tile's expert (E or more: no tile), its first row in expert order and how many of its
    BLOCK_M rows hold pairs."""
    cols = tl.arange(0, E_PAD)
    counts = tl.load(counts_ptr + cols, mask=cols < E, other=0)
    tiles = (counts + BLOCK_M - 1) // BLOCK_M
    tile_end = tl.cumsum(tiles, 0)
    expert = tl.sum((tile_end <= tile).to(tl.int32), 0)  # experts whose tiles all come before this one
    mine = cols == expert
    first_tile = tl.sum(tl.where(mine, tile_end - tiles, 0), 0)
    first_row = tl.sum(tl.where(mine, tl.cumsum(counts, 0) - counts, 0), 0)
    offset = (tile - first_tile) * BLOCK_M
    valid = tl.sum(tl.where(mine, counts, 0), 0) - offset
    return expert, first_row + offset, valid


@triton.jit
def _up_kernel(
    x_ptr, w_ptr, order_ptr, counts_ptr, act_ptr, H, INTER, E, n_tiles, stride_x, stride_we, stride_wn, stride_a,
    TOP_K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # consecutive programs share a tile's rows and walk the expert's columns: both stay in L2
    pid = tl.program_id(0)
    expert, first_row, valid = _tile(counts_ptr, pid // n_tiles, E, E_PAD, BLOCK_M)
    if expert >= E:
        return
    m = tl.arange(0, BLOCK_M)
    row_ok = m < valid
    pair = tl.load(order_ptr + first_row + m, mask=row_ok, other=0)
    token = (pair // TOP_K).to(tl.int64)  # rows past the expert's pairs read token 0 and are not stored
    n = (pid % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < INTER
    n_safe = tl.where(n_ok, n, 0)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_x + ks[None, :]
    gate_ptrs = w_ptr + expert.to(tl.int64) * stride_we + n_safe[None, :].to(tl.int64) * stride_wn + ks[:, None]
    up_ptrs = gate_ptrs + INTER * stride_wn
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            wg = tl.load(gate_ptrs)
            wu = tl.load(up_ptrs)
        else:
            k_ok = k0 + ks < H
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            wg = tl.load(gate_ptrs, mask=k_ok[:, None], other=0.0)
            wu = tl.load(up_ptrs, mask=k_ok[:, None], other=0.0)
        gate = tl.dot(a, wg, gate, input_precision=PRECISION)
        up = tl.dot(a, wu, up, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
        up_ptrs += BLOCK_K
    act = gate / (1.0 + tl.exp(-gate)) * up  # SwiGLU in float32, rounded once
    rows = (first_row + m).to(tl.int64)
    tl.store(act_ptr + rows[:, None] * stride_a + n[None, :], act.to(act_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])  # fmt: skip


@triton.jit
def _down_kernel(
    act_ptr, w_ptr, order_ptr, counts_ptr, weights_ptr, out_ptr, H, INTER, E, n_tiles,
    stride_a, stride_we, stride_wn, stride_o,
    E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    expert, first_row, valid = _tile(counts_ptr, pid // n_tiles, E, E_PAD, BLOCK_M)
    if expert >= E:
        return
    m = tl.arange(0, BLOCK_M)
    row_ok = m < valid
    rows = tl.where(row_ok, first_row + m, first_row).to(tl.int64)  # spare rows re-read the first one
    n = (pid % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    n_safe = tl.where(n_ok, n, 0)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = act_ptr + rows[:, None] * stride_a + ks[None, :]
    b_ptrs = w_ptr + expert.to(tl.int64) * stride_we + n_safe[None, :].to(tl.int64) * stride_wn + ks[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, INTER, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_ok = k0 + ks < INTER
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    pair = tl.load(order_ptr + rows).to(tl.int64)
    acc = acc * tl.load(weights_ptr + pair)[:, None]  # the routing weight, in float32
    tl.store(out_ptr + pair[:, None] * stride_o + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])  # fmt: skip
