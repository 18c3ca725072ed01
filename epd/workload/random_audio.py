"""random_audio workload: `audio_count` synthetic audio clips plus ~`input_len` random text tokens.

Each clip is `audio_seconds` of 16 kHz mono audio (a chirp plus a seeded tone,
`epd.media.synth.write_test_audio`) encoded as `audio_format` (wav, flac or mp3). Content is
seeded by (seed, request, clip) and a file already present under the same name is reused.

Each request is one user message: `[{"type": "audio_url", "audio_url": {"url": <abs path>}} x
audio_count, {"type": "text", "text": ...}]` (the text part is left out when input_len=0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epd.workload.arrivals import AUDIO_STREAM
from epd.workload.base import WorkloadConfig, WorkloadRequest
from epd.workload.media import AudioSpec, synth_seed
from epd.workload.synthetic import build_synthetic, format_number, item_count, item_tag, media_path

SAMPLING_RATE = 16000  # what Whisper-style audio towers (Qwen2-Audio, Qwen3-Omni) take in


def build(cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None) -> list[WorkloadRequest]:
    """Warmup requests, then `num_requests` measured ones, with Poisson arrivals."""
    return build_synthetic(
        cfg,
        tokenizer,
        lambda kind, index: [
            audio_spec(cfg, media_dir, kind, index, k) for k in range(item_count(cfg, cfg.audio_count, kind, index))
        ],
    )


def audio_spec(cfg: WorkloadConfig, media_dir: Path, kind: int, index: int, k: int) -> AudioSpec:
    """Which clip the k-th item of request `index` is; the file name encodes its content."""
    seconds = format_number(cfg.audio_seconds)
    name = f"aud-s{cfg.seed}-{item_tag(kind, index, k)}-{seconds}s-{SAMPLING_RATE // 1000}khz.{cfg.audio_format}"
    return AudioSpec(
        path=media_path(media_dir, name),
        seconds=cfg.audio_seconds,
        sampling_rate=SAMPLING_RATE,
        audio_format=cfg.audio_format,
        seed=synth_seed(cfg.seed, AUDIO_STREAM, kind, index, k),
    )
