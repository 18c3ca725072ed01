"""random_video workload: `video_count` synthetic mp4 videos plus ~`input_len` random text tokens.

Each video is `video_seconds` long at `video_fps` and `resolution` (H.264, yuv420p, a keyframe a
second, B-frames), with an AAC track when `video_with_audio` is set; frames are random colour
tiles that change every frame (`epd.media.synth.write_test_video`). Like random_image, every
video of a run is distinct, content is seeded by (seed, request, video), and a file already
present under the same name is reused.

Each request is one user message: `[{"type": "video_url", "video_url": {"url": <abs path>}} x
video_count, {"type": "text", "text": ...}]` (the text part is left out when input_len=0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epd.workload.arrivals import VIDEO_STREAM
from epd.workload.base import WorkloadConfig, WorkloadRequest
from epd.workload.media import VideoSpec, synth_seed
from epd.workload.synthetic import build_synthetic, format_number, item_count, item_tag, media_path


def build(cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None) -> list[WorkloadRequest]:
    """Warmup requests, then `num_requests` measured ones, with Poisson arrivals."""
    return build_synthetic(
        cfg,
        tokenizer,
        lambda kind, index: [
            video_spec(cfg, media_dir, kind, index, k) for k in range(item_count(cfg, cfg.video_count, kind, index))
        ],
    )


def video_spec(cfg: WorkloadConfig, media_dir: Path, kind: int, index: int, k: int) -> VideoSpec:
    """Which video the k-th item of request `index` is; the file name encodes everything that
    sets its bytes (with and without audio, the frames are the same)."""
    width, height = cfg.image_size
    seconds, fps = format_number(cfg.video_seconds), format_number(cfg.video_fps)
    audio = "-audio" if cfg.video_with_audio else ""
    name = f"vid-s{cfg.seed}-{item_tag(kind, index, k)}-{width}x{height}-{seconds}s-{fps}fps{audio}.mp4"
    return VideoSpec(
        path=media_path(media_dir, name),
        seconds=cfg.video_seconds,
        fps=cfg.video_fps,
        width=width,
        height=height,
        with_audio=cfg.video_with_audio,
        seed=synth_seed(cfg.seed, VIDEO_STREAM, kind, index, k),
    )
