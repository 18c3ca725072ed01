"""GPU: the eight-1080p Qwen2.5-VL tower call variant by variant, its kernel profile and the clocks.

    python experiments/profiles/tower_variants.py [--old-rotary OLD_vision_triton.py]

Variants of ``auto``: without the fused block adds (the blocks' class forward) and/or with v made
contiguous before the varlen kernel, each timed twice, outputs compared with the first; then the
SM clock and power during a loop of calls (nvidia-smi) and the top kernels of one call. With
``--old-rotary`` (e.g. ``git show 6a18a83:kernels/epd_kernels/vision_triton.py > old.py``), the
vision rotary kernel of that file is timed against today's on 86k tokens.
"""

import argparse
import copy
import importlib.util
import statistics
import subprocess
import time

import torch
from torch.profiler import ProfilerActivity, profile

from epd_kernels import attention
from epd_kernels import tower as tw
from epd_kernels.bench_towers import IMAGE_1080P, build_vision_tower, pixel_patches, rel_err, tower_flops
from epd_kernels.bench_util import copy_bandwidth_gbs, cuda_ms, matmul_tflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-rotary", help="a vision_triton.py whose rotary_triton to time against today's")
    args = parser.parse_args()
    bw, tf = copy_bandwidth_gbs(), matmul_tflops()
    print(f"ceilings: copy {bw:.0f} GB/s, matmul {tf:.0f} TFLOP/s")
    if args.old_rotary:
        spec = importlib.util.spec_from_file_location("old_vision_triton", args.old_rotary)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        from epd_kernels import vision_triton as new

        n, h, d = 86112, 16, 80
        qkv = torch.randn(n, 3 * h * d, device="cuda").bfloat16()
        q, k, _ = qkv.view(n, 3, h, d).permute(1, 0, 2, 3).unbind(0)
        cos, sin = torch.randn(2, n, d, device="cuda").unbind(0)
        same = all(
            torch.equal(a, b)
            for a, b in zip(old.rotary_triton(q, k, cos, sin), new.rotary_triton(q, k, cos, sin), strict=True)
        )
        t_old = cuda_ms(lambda: old.rotary_triton(q, k, cos, sin), reps=50, sync_each=False)
        t_new = cuda_ms(lambda: new.rotary_triton(q, k, cos, sin), reps=50, sync_each=False)
        floor_us = ((2 * n * h * d * 2) * 2 + 2 * n * d * 4) / bw / 1e3
        print(
            f"rotary 86k tokens: old {t_old * 1e3:.0f} us, new {t_new * 1e3:.0f} us, floor {floor_us:.0f} us, equal={same}"
        )

    base = build_vision_tower("qwen2_5_vl")
    varlen = attention._varlen_kernel

    def contiguous_v(q, k, v, *rest):
        return varlen(q, k, v.contiguous(), *rest)

    grid = torch.tensor([IMAGE_1080P["qwen2_5_vl"]] * 8)
    pixels = pixel_patches(base, grid)
    print(f"floor {tower_flops(base, grid) / (tf * 1e9):.1f} ms")
    first = None
    for name, fused_blocks, strided_v in [
        ("no fused block adds, contiguous v", False, False),
        ("fused block adds", True, False),
        ("strided v", False, True),
        ("both (auto)", True, True),
    ]:
        model = copy.deepcopy(base)
        tw.prepare_tower(model, "auto", pixels.device, torch.bfloat16)
        if not fused_blocks:
            for blk in model.blocks:
                del blk.forward  # back to the class's forward
        attention._varlen_kernel = varlen if strided_v else contiguous_v
        gd = grid.cuda()

        @torch.inference_mode()
        def call(model=model, gd=gd):
            return model(pixels, grid_thw=gd, **tw.vision_tower_kwargs(model, grid, pixels.device))

        times = [cuda_ms(call, warmup=3, reps=7) for _ in range(2)]
        out = call().pooler_output
        first = out if first is None else first
        print(f"8 x 1080p | {name} | {times[0]:.1f} / {times[1]:.1f} ms | rel vs first {rel_err(out, first):.2e}")
        if fused_blocks and strided_v:
            smi = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits", "-lms", "50"],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.3)
            for _ in range(10):
                call()
            torch.cuda.synchronize()
            smi.terminate()
            rows = [line.split(",") for line in smi.communicate()[0].strip().splitlines() if line.count(",") == 1]
            clocks = [float(r[0]) for r in rows]
            if clocks:
                print(
                    f"SM clock min/median/max {min(clocks):.0f}/{statistics.median(clocks):.0f}/{max(clocks):.0f} MHz, "
                    f"power max {max(float(r[1]) for r in rows):.0f} W"
                )
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:16]:
                print(f"  {e.self_device_time_total / 1e3:8.2f} ms  x{e.count:4d}  {e.key[:90]}")
        attention._varlen_kernel = varlen
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
