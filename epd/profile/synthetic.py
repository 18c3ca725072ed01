"""Profiles written by hand: constant, round costs for tests and what-if studies.

``make_profile(tower_s=0.1, prefill_s=0.05, ...)`` gives a valid profile.json whose every cost is a
flat or linear function chosen by the caller, so a simulated outcome can be computed by hand.
"""

from __future__ import annotations

from epd.profile.schema import FORMAT, VERSION

QWEN25_PROMPT = {
    # Qwen2.5-VL's template around one user turn, and its image placeholder <|vision_start|><|image_pad|><|vision_end|>
    "prefix_ids": [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198],
    "suffix_ids": [151645, 198, 151644, 77091, 198],
    "placeholder_ids": {"image": [151652, 151655, 151653], "video": [151652, 151656, 151653]},
    "pad_ids": {"image": 151655, "video": 151656},
}


def flat(seconds: float) -> dict:
    return {"kind": "linear", "a": seconds, "b": 0.0}


def make_profile(
    *,
    device: str = "cpu",
    cpu_count: int = 64,
    tokenize_s: float = 0.0,
    fetch_s: float = 0.0,
    preprocess_s: float = 0.0,
    tower_s: float = 0.0,
    tower_per_token_s: float = 0.0,
    transfer_fixed_s: float = 0.0,
    transfer_per_byte_s: float = 0.0,
    latency_s: float = 0.0,
    prefill_s: float = 0.0,
    prefill_per_token_s: float = 0.0,
    decode_s: float = 0.0,
    decode_per_seq_s: float = 0.0,
    kv_capacity_tokens: int = 1 << 20,
    block_size: int = 16,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    dtype_bytes: int = 2,
    weight_bytes: int = 1 << 20,
    allreduce_bw_bytes_per_s: float = 1e11,
    allreduce_latency_s: float = 0.0,
) -> dict:
    """A profile whose costs are: tokenize, fetch, preprocess flat per item; a tower call
    ``tower_s + tower_per_token_s * tokens``; a transfer ``fixed + bytes * per_byte``; a prefill step
    ``prefill_s + prefill_per_token_s * tokens`` (no attention term); a decode step
    ``decode_s + decode_per_seq_s * batch`` (no context term); control messages ``latency_s``."""
    media = {
        "size_unit": "pixels",
        "fetch_s": {"points": [], "fit": flat(fetch_s)},
        "preprocess_s": {"points": [], "fit": flat(preprocess_s)},
        "tower_s": {"points": [], "fit": {"kind": "nnls", "coef": {"one": tower_s, "tokens": tower_per_token_s}}},
    }
    kv_per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": "synthetic",
        "hardware": {"device": device, "device_count": 1, "cpu_count": cpu_count, "threads": 1, "memory_bytes": 0},
        "software": {"synthetic": True},
        "model": {
            "name": "synthetic",
            "family": "qwen2_5_vl",
            "checkpoint": None,
            "dtype": "bfloat16",
            "dtype_bytes": dtype_bytes,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": 4,
            "num_kv_heads": num_kv_heads,
            "head_dim": head_dim,
            "vocab_size": 152064,
            "weight_bytes": weight_bytes,
            "embed_rows": 1,
            "modalities": ["image", "video"],
            "config": None,
        },  # fmt: skip
        "config": {"synthetic": True},
        "frontend": {"prompt": QWEN25_PROMPT, "tokenize_s": {"points": [], "fit": flat(tokenize_s)}},
        "encoder": {"image": media, "video": media},
        "transfer": {
            name: {"points": [], "fit": {"kind": "linear", "a": transfer_fixed_s, "b": transfer_per_byte_s}}
            for name in ("nccl", "shm", "zmq")
        },
        "control": {"latency_s": latency_s},
        "language": {
            "block_size": block_size,
            "kv_capacity_tokens": kv_capacity_tokens,
            "kv_bytes_per_token": kv_per_token,
            "max_batch_tokens": 8192,
            "max_num_seqs": 256,
            "prefill_s": {
                "points": [],
                "fit": {"knots": [[0, prefill_s], [1, prefill_s + prefill_per_token_s]], "attn_s": 0.0},
            },
            "decode_s": {
                "points": [],
                "fit": {"knots": [[0, decode_s], [1, decode_s + decode_per_seq_s]], "ctx_s": 0.0},
            },
            "mixed_check": [],
        },
        "parallel": {
            "allreduce_bw_bytes_per_s": allreduce_bw_bytes_per_s,
            "allreduce_latency_s": allreduce_latency_s,
            "source": "synthetic",
        },
    }
