"""Vision towers at released shapes with random weights, their FLOP counts, and their timings.

Qwen2.5-VL-7B's ViT (window attention, 4 full-attention blocks) and Qwen3-VL-8B's ViT (DeepStack
mergers), built from the released config numbers epd keeps in ``epd.tiny``; the input is the pixel
patches of 1080p images after the processor's resize (Qwen2.5-VL: 1092x1932 → 78x138 patches of 14;
Qwen3-VL: 1088x1920 → 68x120 patches of 16).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from epd_kernels import attention
from epd_kernels import tower as tw
from epd_kernels.bench_util import cuda_ms

IMAGE_1080P = {"qwen2_5_vl": (1, 78, 138), "qwen3_vl": (1, 68, 120)}
VARIANTS = {
    "sdpa": "transformers sdpa",
    "varlen": "epd varlen attention only",
    "auto+varlen": "epd fused ops + varlen everywhere",
    "auto": "epd auto (fused ops, dense SDPA for equal segments)",
}


def vision_config(family: str, depth: int | None = None) -> Any:
    """The released vision config (Qwen2.5-VL-7B / Qwen3-VL-8B), optionally with fewer blocks."""
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLVisionConfig

        from epd.tiny.qwen2_5_vl import REAL_SHAPES

        fields = dict(REAL_SHAPES["7b"]["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        fields.update(window_size=112, tokens_per_second=2)
        if depth is not None:  # keep full-attention blocks in the shortened tower
            fields.update(depth=depth, fullatt_block_indexes=list(range(1, depth, 2)))
        return Qwen2_5_VLVisionConfig(**fields)
    if family == "qwen3_vl":
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

        from epd.tiny.qwen3_vl import REAL_SHAPES

        fields = dict(REAL_SHAPES["8b"]["vision"], spatial_merge_size=2, temporal_patch_size=2)
        if depth is not None:
            fields.update(depth=depth, deepstack_visual_indexes=list(range(depth))[:3])
        return Qwen3VLVisionConfig(**fields)
    raise ValueError(f"no vision tower bench for {family!r}")


def build_vision_tower(family: str, depth: int | None = None, dtype=torch.bfloat16, device="cuda") -> torch.nn.Module:
    """The released-shape tower with random weights, built directly on ``device``."""
    from transformers import AutoModel

    config = vision_config(family, depth)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype)
    return model.eval()


def tower_flops(tower: torch.nn.Module, grid: torch.Tensor) -> float:
    """Matrix-product FLOPs of one tower call (GEMMs of every block, attention within its segments,
    patch embedding and mergers); the element-wise work is left out of the floor."""
    cfg = tower.config
    kw = tw.vision_tower_kwargs(tower, grid, torch.device("cpu"))
    n = int(grid.prod(-1).sum())
    c = cfg.hidden_size
    inter = cfg.intermediate_size
    gated = hasattr(tower.blocks[0].mlp, "gate_proj")
    per_block = 2 * n * c * 3 * c + 2 * n * c * c + (3 if gated else 2) * 2 * n * c * inter

    def attn(cu: torch.Tensor) -> float:
        lens = (cu[1:] - cu[:-1]).double()
        return float(4 * (lens**2).sum() * c)

    full = set(getattr(tower, "fullatt_block_indexes", range(cfg.depth)))
    total = cfg.depth * per_block
    for i in range(cfg.depth):
        total += attn(kw["cu_seqlens"] if i in full else kw["cu_window_seqlens"])
    total += 2 * n * tower.patch_embed.proj.weight[0].numel() * c
    mergers = 1 + len(getattr(tower, "deepstack_visual_indexes", []))
    merged, wide = n // 4, 4 * c
    total += mergers * (2 * merged * wide * wide + 2 * merged * wide * cfg.out_hidden_size)
    return total


def pixel_patches(tower: torch.nn.Module, grid: torch.Tensor, device="cuda") -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    n = int(grid.prod(-1).sum())
    return torch.randn(n, tower.patch_embed.proj.weight[0].numel(), device=device, generator=g).bfloat16()


def time_tower(base: torch.nn.Module, mode: str, grid: torch.Tensor, pixels: torch.Tensor, reps: int) -> tuple:
    """(median ms, output) of ``base`` prepared for ``mode`` (a copy), host-side indexing included."""
    model = copy.deepcopy(base)
    device = pixels.device
    tw.prepare_tower(model, mode.removesuffix("+varlen"), device, torch.bfloat16)
    if mode.endswith("+varlen"):  # the ablation: fused ops, but the varlen kernel for every block
        tw.set_attention(model, attention.VARLEN)
    grid_dev = grid.to(device)

    @torch.inference_mode()
    def call():
        kwargs = tw.vision_tower_kwargs(model, grid, device) if tw.uses_epd_path(model) else {}
        return model(pixels, grid_thw=grid_dev, **kwargs)

    ms = cuda_ms(call, warmup=2, reps=reps)
    out = call().pooler_output
    return ms, out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def bench_towers(matmul_tflops: float, quick: bool = False) -> list[dict]:
    """Rows of the tower table: transformers' SDPA, epd varlen only, epd auto (and the bf16 error of
    each against the float32 tower, for one image)."""
    rows = []
    cases = [("qwen2_5_vl", 1), ("qwen2_5_vl", 8), ("qwen3_vl", 1)]
    for family, images in cases:
        base = build_vision_tower(family)
        grid = torch.tensor([IMAGE_1080P[family]] * images)
        pixels = pixel_patches(base, grid)
        floor_ms = tower_flops(base, grid) / (matmul_tflops * 1e9)
        ref = None
        if images == 1:  # the float32 tower, SDPA (the eager path's math without its [H, N, N] matrix)
            ref_tower = copy.deepcopy(base).float()
            with torch.inference_mode():
                ref = ref_tower(pixels.float(), grid_thw=grid.cuda()).pooler_output
            del ref_tower
            torch.cuda.empty_cache()
        reps = 3 if images > 1 else (5 if quick else 10)
        times = {}
        for mode in ("sdpa", "varlen", "auto+varlen", "auto"):
            try:
                ms, out = time_tower(base, mode, grid, pixels, reps)
            except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others
                print(f"# {family} x{images} {mode} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            times[mode] = ms
            rows.append(
                {
                    "kernel": f"{family} tower, {images}x1080p ({int(grid.prod(-1).sum()) // 4} tokens)",
                    "variant": VARIANTS[mode],
                    "ms": ms,
                    "vs_baseline": times.get("sdpa", float("nan")) / ms,
                    "floor_ms": floor_ms,
                    "rel_err_vs_fp32": rel_err(out, ref) if ref is not None else None,
                }
            )
        del base, pixels
        torch.cuda.empty_cache()
    return rows


def profile_auto(family: str = "qwen2_5_vl") -> str:
    """The top CUDA kernels of one ``auto`` tower call on one 1080p image (where the remaining time goes)."""
    base = build_vision_tower(family)
    grid = torch.tensor([IMAGE_1080P[family]])
    pixels = pixel_patches(base, grid)
    model = copy.deepcopy(base)
    tw.prepare_tower(model, "auto", pixels.device, torch.bfloat16)

    @torch.inference_mode()
    def call():
        return model(pixels, grid_thw=grid.cuda(), **tw.vision_tower_kwargs(model, grid, pixels.device))

    for _ in range(2):
        call()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=50)
