"""epd's kernel microbenchmarks: ``python -m epd_kernels.bench [--only merge,towers,rope,moe] [--json out.json]``.

Per kernel: the median time, the speed-up over transformers' path (and epd's own reference where
that differs), and the fraction of the hardware floor reached (floor time / time; 1.0 = at the
floor). Single kernels are timed back to back (as ``triton.testing.do_bench``; the merge also as one
synchronous call), towers one synchronous call at a time with their host-side preparation. The floors come from this run's own measurements: a 2 GiB device-to-device copy for the
bytes a kernel must move, an 8192³ bf16 matrix product for the FLOPs it must do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from epd_kernels.bench_util import copy_bandwidth_gbs, cuda_ms, matmul_tflops

# the merge shape: 8 Qwen2.5-VL-7B 1080p images (8 x 2691 rows) in a 32768-token prompt
MERGE_TOKENS, MERGE_MM, MERGE_HIDDEN, VOCAB = 32768, 21528, 3584, 152064
DEEPSTACK_HIDDEN = 4096  # Qwen3-VL-8B


def _merge_inputs(hidden: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    pad = VOCAB - 1
    per_image = MERGE_MM // 8
    ids = torch.randint(0, VOCAB - 1, (MERGE_TOKENS,), device="cuda", generator=g)
    gap = (MERGE_TOKENS - MERGE_MM) // 9
    starts = [gap * (i + 1) + per_image * i for i in range(8)]
    rows = torch.cat([torch.arange(s, s + per_image, device="cuda") for s in starts])
    ids[rows] = pad
    table = torch.randn(VOCAB, hidden, device="cuda", generator=g).bfloat16()
    mm = torch.randn(rows.numel(), hidden, device="cuda", generator=g).bfloat16()
    return ids, table, rows, mm, pad


def bench_merge(bandwidth_gbs: float) -> list[dict]:
    from epd_kernels import deepstack_add_, merge_embeddings
    from epd_kernels.merge import deepstack_add_reference, merge_embeddings_reference

    ids, table, rows, mm, pad = _merge_inputs(MERGE_HIDDEN)

    def transformers_path():  # embed every token, then masked_scatter the image rows (Qwen2.5-VL's forward)
        embeds = torch.nn.functional.embedding(ids, table)
        mask = (ids == pad)[:, None].expand_as(embeds)
        return embeds.masked_scatter(mask, mm)

    merge_ok = torch.equal(merge_embeddings(ids, table, rows, mm), transformers_path())
    moved = 2 * MERGE_TOKENS * MERGE_HIDDEN * 2  # every output row read once (table or media) and written once
    floor = moved / (bandwidth_gbs * 1e9) * 1e3
    base = cuda_ms(transformers_path, reps=20, sync_each=False)
    ref = cuda_ms(lambda: merge_embeddings_reference(ids, table, rows, mm), reps=20, sync_each=False)
    ours = cuda_ms(lambda: merge_embeddings(ids, table, rows, mm), reps=20, sync_each=False)
    alone = cuda_ms(lambda: merge_embeddings(ids, table, rows, mm), reps=20, sync_each=True)
    name = f"embedding merge, {MERGE_TOKENS} tokens ({MERGE_MM} media), H={MERGE_HIDDEN}"
    out = [
        _row(name, "transformers embed + masked_scatter", base, base, floor),
        _row(name, "reference: embed + index_copy_", ref, base, floor),
        _row(name, "epd Triton merge", ours, base, floor, equal=merge_ok),
        _row(name, "epd Triton merge, one synchronous call (host launch included)", alone, base, floor),
    ]

    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(MERGE_TOKENS, DEEPSTACK_HIDDEN, device="cuda", generator=g).bfloat16()
    feats = torch.randn(MERGE_MM, DEEPSTACK_HIDDEN, device="cuda", generator=g).bfloat16()
    mask = torch.zeros(1, MERGE_TOKENS, dtype=torch.bool, device="cuda")
    mask[0, rows] = True

    def transformers_deepstack():  # Qwen3-VL's _deepstack_process: clone, gather, add, scatter back
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

        return Qwen3VLTextModel._deepstack_process(None, hidden[None], mask, feats)

    deep_ok = torch.equal(deepstack_add_(hidden.clone(), rows, feats), transformers_deepstack()[0])
    floor = 3 * MERGE_MM * DEEPSTACK_HIDDEN * 2 / (bandwidth_gbs * 1e9) * 1e3  # rows read + added + written
    base = cuda_ms(transformers_deepstack, reps=20, sync_each=False)
    scratch = hidden.clone()
    ref = cuda_ms(lambda: deepstack_add_reference(scratch, rows, feats), reps=20, sync_each=False)
    ours = cuda_ms(lambda: deepstack_add_(scratch, rows, feats), reps=20, sync_each=False)
    name = f"DeepStack add, {MERGE_MM} of {MERGE_TOKENS} rows, H={DEEPSTACK_HIDDEN}"
    out += [
        _row(name, "transformers _deepstack_process", base, base, floor),
        _row(name, "reference: index add in place", ref, base, floor),
        _row(name, "epd Triton add", ours, base, floor, equal=deep_ok),
    ]
    return out


def _row(kernel: str, variant: str, ms: float, baseline_ms: float, floor_ms: float, **extra) -> dict:
    return {
        "kernel": kernel,
        "variant": variant,
        "ms": ms,
        "vs_baseline": baseline_ms / ms,
        "floor_ms": floor_ms,
        **extra,
    }


def _section(name: str, run) -> list[dict]:
    """One part of the bench; a failure is printed and the other parts still run."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - report and go on: one broken part must not hide the rest
        import traceback

        traceback.print_exc()
        print(f"# {name} failed: {type(exc).__name__}: {exc}", flush=True)
        return []


def format_table(rows: list[dict]) -> str:
    lines = [
        "| kernel | variant | time ms | × transformers | floor ms | of floor | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = []
        if r.get("rel_err_vs_fp32") is not None:
            note.append(f"rel err vs fp32 {r['rel_err_vs_fp32']:.1e}")
        if "baseline_ms" in r:
            note.append(f"transformers {r['baseline_ms']:.2f} ms")
        if "equal" in r:
            note.append("equal to transformers" if r["equal"] else "DIFFERS from transformers")
        if "note" in r:
            note.append(r["note"])
        lines.append(
            f"| {r['kernel']} | {r['variant']} | {r['ms']:.3f} | {r['vs_baseline']:.2f} | {r['floor_ms']:.3f} "
            f"| {r['floor_ms'] / r['ms']:.2f} | {'; '.join(note)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m epd_kernels.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="merge,towers,rope",
        help="comma-separated: merge, towers (both need a CUDA GPU), rope (CPU too), moe",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and ceilings here")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--profile", action="store_true", help="also print the top CUDA kernels of the auto tower")
    parser.add_argument("--sweep", action="store_true", help="moe: also time alternative Triton tiles")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    rows: list[dict] = []
    ceilings = {}
    if "rope" in parts:  # host only: runs without a GPU too
        from epd_kernels.bench_rope import bench_rope

        rows += _section("rope", lambda: bench_rope(reps=3 if args.quick else 5))
    if parts & {"merge", "towers", "moe"}:
        if not torch.cuda.is_available():
            raise SystemExit("merge, towers and moe need a CUDA GPU (run with --only rope on CPU)")
        ceilings = {"copy_gbs": copy_bandwidth_gbs(), "matmul_tflops": matmul_tflops()}
        print(
            f"# {torch.cuda.get_device_name()}: copy {ceilings['copy_gbs']:.0f} GB/s (read + write), "
            f"bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s",
            flush=True,
        )
    if "merge" in parts:
        rows = _section("merge", lambda: bench_merge(ceilings["copy_gbs"])) + rows
    if "towers" in parts:
        from epd_kernels.bench_towers import bench_towers

        rows += _section("towers", lambda: bench_towers(ceilings["matmul_tflops"], quick=args.quick))
    if "moe" in parts:
        from epd_kernels.bench_moe import bench_moe

        rows += _section(
            "moe",
            lambda: bench_moe(ceilings["copy_gbs"], ceilings["matmul_tflops"], quick=args.quick, sweep=args.sweep),
        )
    if args.json:
        args.json.write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=1))
    print(format_table(rows), flush=True)
    if args.profile:
        from epd_kernels.bench_towers import profile_auto

        for family in ("qwen2_5_vl", "qwen3_vl"):
            try:
                print(f"# {family}, epd auto, one 1080p image: top CUDA kernels\n{profile_auto(family)}", flush=True)
            except Exception as exc:  # the profiler needs CUPTI, which some sandboxes lack
                print(f"# profile failed: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    main()
