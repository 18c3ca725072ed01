"""One MoE block's routed experts at the Qwen3-VL-30B-A3B / Qwen3-Omni-30B-A3B shape (H 2048, 128
experts of width 768, 8 active), bf16, for decode-like (1, 8, 32, 128) and prefill-like (2k, 16k)
token counts: epd's Triton kernels and torch's grouped GEMM (eager and, for decode sizes, replayed
from a CUDA graph), epd's reference loop, and transformers' experts implementations.

Floor per call: max(bytes of the experts the routing actually touches (+ x read, out written) ÷
copy rate, active FLOPs ÷ matmul rate), the rates measured in the same run. Four layers' weights
(4.8 GB) are rotated so that a decode call cannot find its experts in L2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from epd_kernels import moe
from epd_kernels.bench_util import cuda_ms

HIDDEN, INTER, EXPERTS, TOP_K = 2048, 768, 128, 8
TOKENS = (1, 8, 32, 128, 2048, 16384)
LAYERS = 4  # weight sets rotated between calls
REFERENCE = "reference: loop over used experts (epd CPU path)"
SWEEP = {  # alternative Triton tiles tried with --sweep, by token count bucket (both GEMMs)
    "decode": [moe.Tiles(16, 64, 128), moe.Tiles(16, 32, 64, num_stages=4), moe.Tiles(16, 128, 64)],
    "mid": [moe.Tiles(64, 128, 64), moe.Tiles(128, 64, 64), moe.Tiles(128, 128, 64, num_stages=4)],
    "prefill": [moe.Tiles(128, 128, 64), moe.Tiles(64, 128, 64), moe.Tiles(128, 64, 64, num_warps=8),
                moe.Tiles(128, 128, 32, num_warps=8, num_stages=4)],
}  # fmt: skip


def _weights(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    gate = (torch.randn(EXPERTS, HIDDEN, device="cuda", generator=g) / HIDDEN**0.5).bfloat16()
    w13 = (torch.randn(EXPERTS, 2 * INTER, HIDDEN, device="cuda", generator=g) / HIDDEN**0.5).bfloat16()
    w2 = (torch.randn(EXPERTS, HIDDEN, INTER, device="cuda", generator=g) / INTER**0.5).bfloat16()
    return gate, w13, w2


def _hf_block(gate, w13, w2, impl: str) -> torch.nn.Module:
    """transformers' Qwen3-MoE block (``experts_implementation=impl``) over the same tensors."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=INTER, num_experts=EXPERTS,
                         num_experts_per_tok=TOP_K, norm_topk_prob=True)  # fmt: skip
    cfg._experts_implementation = impl
    with torch.device("meta"):
        block = Qwen3MoeSparseMoeBlock(cfg)
    block.gate.weight = torch.nn.Parameter(gate, requires_grad=False)
    block.experts.gate_up_proj = torch.nn.Parameter(w13, requires_grad=False)
    block.experts.down_proj = torch.nn.Parameter(w2, requires_grad=False)
    return block.eval()


def _rotating(fns: list[Callable[[], object]]) -> Callable[[], object]:
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]]()

    return call


def _graphed(fns: list[Callable[[], object]]) -> Callable[[], object]:
    """Each call captured once in a CUDA graph; the returned function replays them in turn."""
    graphs = []
    for fn in fns:
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graphs.append(graph)
    return _rotating([graph.replay for graph in graphs])


def _floor_ms(n: int, touched: float, bandwidth_gbs: float, tflops: float) -> float:
    expert_bytes = 3 * HIDDEN * INTER * 2
    moved = touched * expert_bytes + EXPERTS * HIDDEN * 2 + 2 * n * HIDDEN * 2
    flops = 2 * n * TOP_K * 3 * HIDDEN * INTER + 2 * n * HIDDEN * EXPERTS
    return max(moved / (bandwidth_gbs * 1e9), flops / (tflops * 1e12)) * 1e3


def _bucket(n: int) -> str:
    return "decode" if n <= 128 else ("mid" if n <= 2048 else "prefill")


def bench_moe(bandwidth_gbs: float, tflops: float, quick: bool = False, sweep: bool = False) -> list[dict]:
    """Rows for ``epd_kernels.bench.format_table``: one per (token count, variant)."""
    sets = [_weights(s) for s in range(LAYERS)]
    rows = []
    for n in TOKENS[:4] if quick else TOKENS:
        rows += _bench_tokens(n, sets, bandwidth_gbs, tflops, reps=5 if quick else 20, sweep=sweep)
        torch.cuda.empty_cache()
    return rows


def _variants(n: int, xs: list, sets: list, kernels: list[str], sweep: bool) -> dict[str, list[Callable[[], object]]]:
    """Label → one call per weight set."""

    def calls(fn):
        return [lambda x=x, s=s: fn(x, *s) for x, s in zip(xs, sets, strict=True)]

    variants = {REFERENCE: calls(lambda x, gt, a, b: moe.fused_moe(x, gt, a, b, TOP_K, True, kernel="reference"))}
    for impl in ("grouped_mm", "batched_mm") if n <= 128 else ("grouped_mm",):  # batched_mm copies weights per pair
        blocks = [_hf_block(*s, impl) for s in sets]
        variants[f"transformers {impl}"] = [lambda x=x, b=b: b(x[None])[0] for x, b in zip(xs, blocks, strict=True)]
    for kernel in kernels:
        variants[f"epd {kernel}"] = calls(
            lambda x, gt, a, b, k=kernel: moe.fused_moe(x, gt, a, b, TOP_K, True, kernel=k)
        )
    for tiles in SWEEP[_bucket(n)] if sweep else ():
        label = (
            f"epd triton, tiles {tiles.block_m}x{tiles.block_n}x{tiles.block_k} w{tiles.num_warps} s{tiles.num_stages}"
        )
        variants[label] = calls(lambda x, gt, a, b, t=tiles: moe.fused_moe(x, gt, a, b, TOP_K, True, tiles=(t, t)))
    return variants


def _bench_tokens(n: int, sets: list, bandwidth_gbs: float, tflops: float, reps: int, sweep: bool) -> list[dict]:
    from epd_kernels import moe_triton

    g = torch.Generator(device="cuda").manual_seed(n)
    xs = [torch.randn(n, HIDDEN, device="cuda", generator=g).bfloat16() for _ in sets]
    touched = 0.0
    for x, weights in zip(xs, sets, strict=True):
        counts = torch.zeros(EXPERTS, dtype=torch.int32, device="cuda")
        moe_triton.route(F.linear(x, weights[0]), TOP_K, True, counts)
        touched += (counts > 0).sum().item() / len(sets)
    x, (gate, w13, w2) = xs[0], sets[0]
    weights, experts = moe_triton.route(F.linear(x, gate), TOP_K, True, torch.zeros_like(counts))
    want = moe.experts_reference(x.float(), weights, experts.long(), w13.float(), w2.float())  # float32, same routing
    kernels = ["triton"] + (["grouped_mm"] if moe.grouped_mm_available(x.device, torch.bfloat16) else [])
    variants = _variants(n, xs, sets, kernels, sweep)
    times, errors = {}, {}
    with torch.inference_mode():
        for label, fns in variants.items():
            errors[label] = ((fns[0]().float() - want).norm() / want.norm()).item()
            times[label] = cuda_ms(_rotating(fns), warmup=3, reps=reps, sync_each=False)
        for kernel in kernels if n <= 128 else ():
            label = f"epd {kernel}, CUDA graph replay"
            try:
                times[label] = cuda_ms(_graphed(variants[f"epd {kernel}"]), warmup=3, reps=reps, sync_each=False)
            except RuntimeError as exc:  # reported, not fatal: the other rows still count
                print(f"# {label} failed: {exc}", flush=True)
                continue
            errors[label] = errors[f"epd {kernel}"]
    hf_best = min(t for label, t in times.items() if label.startswith("transformers"))
    floor = _floor_ms(n, touched, bandwidth_gbs, tflops)
    name = (
        f"MoE experts, {n} tokens ({touched:.0f} of {EXPERTS} experts touched), {str(x.dtype).removeprefix('torch.')}"
    )
    return [
        {
            "kernel": name, "variant": label, "ms": ms, "vs_baseline": hf_best / ms, "floor_ms": floor,
            "rel_err_vs_fp32": errors[label], "note": f"{times[REFERENCE] / ms:.2f}x reference",
        }
        for label, ms in times.items()
    ]  # fmt: skip
