"""A profile sketched by hand from the H200 figures in BENCHMARKS.md, for what-if runs until a GPU
profile is taken with ``python -m epd.profile`` (it is not one: every number below names its source).

    python experiments/sim_at_scale/h200_sketch.py OUT/profile.json [--cpu-profile CPU/profile.json]

Qwen2.5-VL-7B shape, bf16. Host-side costs (the frontend's tokenizer, JPEG decoding, probes) come
from a CPU profile of this machine when one is given (they run on the host's cores either way);
the HF processor is BENCHMARKS.md's ~63 ms per 1080p image on the H200 host.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from epd.profile.synthetic import make_profile

MB = 1 << 20
PIXELS_1080P = 1920 * 1080
TOKENS_1080P = 2691  # Qwen2.5-VL, 1920x1080 -> 1092x1932 after smart_resize


def sketch(cpu_profile: dict | None = None) -> dict:
    kv_per_token = 2 * 28 * 4 * 128 * 2  # layers, K and V, KV heads, head dim, bf16
    p = make_profile(
        device="NVIDIA H200 (sketch from BENCHMARKS.md, not measured by epd.profile)",
        cpu_count=16,
        hidden_size=3584, num_layers=28, num_kv_heads=4, head_dim=128, dtype_bytes=2,
        weight_bytes=int(15.2e9),  # "15.2 GB of weights"
        kv_capacity_tokens=2_010_000,  # "KV capacity (2.01 M tokens after weights and a 16k-token warm-up step)"
        latency_s=50e-6,  # ZMQ control message between processes of one host (assumed)
        transfer_fixed_s=0.4e-3,  # nccl: "small transfers are dominated by a ~0.3-0.4 ms fixed cost"
        transfer_per_byte_s=(0.705e-3 - 0.4e-3) / (154 * MB),  # nccl 154 MiB: 0.705 ms
        allreduce_bw_bytes_per_s=350e9, allreduce_latency_s=15e-6,  # NVLink send/recv 350 GB/s; assumed latency
    )  # fmt: skip
    p["model"]["name"] = "Qwen2.5-VL-7B shape (sketch)"
    p["model"]["modalities"] = ["image", "video"]
    p["model"]["vocab_size"] = 152064
    p["language"]["kv_bytes_per_token"] = kv_per_token
    # tower: 36.5 ms for one 1080p image (2691 tokens), 281.4 ms for eight packed (21528): a line in tokens
    per_token = (281.4e-3 - 36.5e-3) / (8 * TOKENS_1080P - TOKENS_1080P)
    tower = {"kind": "nnls", "coef": {"one": 36.5e-3 - TOKENS_1080P * per_token, "tokens": per_token}}
    # the HF processor: ~63 ms per 1080p image on the host, taken as proportional to pixels
    prep = {"kind": "linear", "a": 0.0, "b": 63e-3 / PIXELS_1080P}
    for modality in ("image", "video"):
        p["encoder"][modality]["tower_s"]["fit"] = tower
        p["encoder"][modality]["preprocess_s"]["fit"] = prep
    # decode: 4.69 ms at batch 1, 5.47 ms at batch 32 (128-token prompts); beyond 32 the weights still
    # dominate: +25 us per sequence (assumed); context: KV reads at ~4 TB/s (14 ns per cached token)
    p["language"]["decode_s"]["fit"] = {
        "knots": [[1, 4.69e-3], [32, 5.47e-3], [256, 5.47e-3 + 224 * 25e-6]],
        "ctx_s": kv_per_token / 4.0e12,
    }
    # prefill: 16384 tokens in 425 ms, of which ~100 ms causal attention (profile of that prefill)
    attn = 100e-3 / (16384 * 16384 / 2)
    p["language"]["prefill_s"]["fit"] = {"knots": [[1, 4.69e-3], [16384, 425e-3 - 100e-3]], "attn_s": attn}
    if cpu_profile is not None:  # host work measured on this machine's CPU
        p["frontend"]["tokenize_s"] = cpu_profile["frontend"]["tokenize_s"]
        p["frontend"]["probe_s"] = cpu_profile["frontend"].get("probe_s", {})
        for modality in ("image", "video"):
            p["encoder"][modality]["fetch_s"] = cpu_profile["encoder"][modality]["fetch_s"]
    p["created"] = "sketch"
    p["software"] = {"source": "BENCHMARKS.md (H200, torch 2.11) and ../shared/BENCH.md"}
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cpu-profile", type=Path)
    args = ap.parse_args()
    cpu = json.loads(args.cpu_profile.read_text()) if args.cpu_profile else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(sketch(cpu), indent=1))


if __name__ == "__main__":
    main()
