"""profile.json: what ``python -m epd.profile`` writes and ``epd.sim`` / ``epd.plan`` read.

Top-level keys (``FORMAT``, version ``VERSION``); times in seconds, sizes in bytes or tokens. Every
measured quantity keeps its points next to the model fitted on them (``epd.profile.fit``):

    format, version, created
    hardware    device ("cpu" or the GPU's name), device_count, cpu_count, threads, memory_bytes,
                effective_cores (what a shared host really gives: ``epd.profile.host``)
    software    python, torch, transformers, cuda, git_commit, git_dirty
    model       name, family, checkpoint, dtype, dtype_bytes, hidden_size, num_layers, num_heads,
                num_kv_heads, head_dim, vocab_size, weight_bytes, embed_rows (1 + DeepStack layers),
                modalities, config (the ModelConfig)
    config      engine, encoder, scheduler (the configs measured with), quick
    frontend    prompt: prefix_ids, suffix_ids, placeholder_ids[modality], pad_ids[modality];
                tokenize_s: points [[prompt tokens, s]], fit linear; probe_s (per modality): sizing and
                hashing one item (MediaProbe), points [[size, s]], fit piecewise
    encoder     per modality: size_unit, decode_threads, fetch_s and preprocess_s (points [[size, s]], fit
                piecewise; size = pixels of an image, seconds x pixels of a video, seconds of audio; as
                the encoder's decode threads run them, decode_threads items at a time: epd.profile.pool;
                ``alone``: the same, one item at a time),
                tower_s (points [{"tokens": [per item], "s"}], fit nnls over items, tokens,
                tokens_sq = sum of squared per-item tokens, one = 1)
    transfer    per backend: points [[bytes, s]], fit linear (a = fixed cost, b = s per byte)
    control     latency_s: a control message between two processes (half a round trip); send_s: sending one
                RequestOutput (encode + send), recv_s: receiving and decoding one, poll_s: an empty inbox
                poll (once per turn of a rank's loop); all with epd's own Channel
    language    block_size, kv_capacity_tokens, kv_bytes_per_token, max_batch_tokens, max_num_seqs;
                prefill_s: points [[tokens, context, s]], fit {"knots": [[tokens, s]], "attn_s"}
                  (a prefill of n tokens after c cached ones: piecewise(knots, n) + attn_s*n*(c + n/2));
                decode_s: points [[batch, context, s]], fit {"knots": [[batch, s]], "ctx_s"}
                  (a decode step of B sequences holding C tokens in all: piecewise(knots, B) + ctx_s*C);
                mixed_check: measured vs predicted steps that mix a prefill chunk with decodes;
                prepare_s: points [[prompt tokens, s]], fit linear (a request's prompt expanded, its
                positions computed and its embeddings merged once its items are in)
    parallel    allreduce_bw_bytes_per_s, allreduce_latency_s, source (assumed, not measured on one GPU)
    calibration (optional, ``epd.sim.calibrate``) factors {frontend, fetch, preprocess, tower, transfer,
                kv_transfer, prefill, decode}: each kind of work's cost inside a real job / alone; run,
                sim (the sim.* options calibrated with), real_stage_s, sim_stage_s
"""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "epd-profile"
VERSION = 1
REQUIRED = ("hardware", "software", "model", "config", "frontend", "encoder", "transfer", "control", "language",
            "parallel")  # fmt: skip


def load_profile(path: str | Path) -> dict:
    """The profile at ``path``, checked for format, version and its sections; ``ValueError`` names what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"profile {str(path)!r} is not a readable JSON file: {exc}") from exc
    check_profile(data, str(path))
    return data


def check_profile(data: dict, where: str = "profile") -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f'{where} is not an epd profile (no "format": "{FORMAT}"); make one with python -m epd.profile'
        )
    if data.get("version") != VERSION:
        raise ValueError(f"{where} has profile version {data.get('version')!r}; this epd reads version {VERSION}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ValueError(f"{where} lacks section(s) {', '.join(missing)}")
    lang = data["language"]
    for key in ("block_size", "kv_capacity_tokens", "kv_bytes_per_token", "prefill_s", "decode_s"):
        if key not in lang:
            raise ValueError(f"{where}: language.{key} is missing")
