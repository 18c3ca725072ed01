"""Which frames of a video to keep: the same indices transformers' Qwen video processors choose.

Decoding only ``FrameSampling.indices(...)`` and calling the processor with
``do_sample_frames=False`` and ``video_metadata=clip.processor_metadata()`` gives it exactly the
frames (and timestamps) it would pick itself from all frames with ``do_sample_frames=True``.

Two rules exist in transformers 5.24 (read off ``sample_frames`` of each processor):

- ``qwen2_vl`` (``Qwen2VLVideoProcessor``: Qwen2-VL, Qwen2.5-VL, Qwen3-Omni):
  ``n = total / source_fps * fps`` clamped to ``[min_frames, min(max_frames, total)]`` (the upper
  bound first floored to a multiple of the temporal patch), floored to a multiple of the temporal
  patch; indices ``torch.arange(0, total, total / n).int()``. Float32 rounding makes that arange
  one element longer for some ``(total, n)`` (e.g. 30 frames, n=26 gives 27 indices); we keep
  that so both sides agree. Where ``n`` floors to 0 (a video shorter than one temporal patch, or
  ``min_frames`` below it with few frames per second) transformers divides by zero; we keep
  ``min(temporal_patch_size, total)`` frames instead (the processor pads a short one by repetition).
- ``qwen3_vl`` (``Qwen3VLVideoProcessor``): ``n = int(total / source_fps * fps)`` clamped to
  ``[min_frames, min(max_frames, total)]``, no rounding to the temporal patch (odd counts are
  padded with the last frame by the processor); indices
  ``np.linspace(0, total - 1, n).round()``. It reads min/max frames from the processor's own
  attributes, not from call kwargs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from epd.media.config import MediaConfig

METHODS = ("qwen2_vl", "qwen3_vl")
DEFAULT_FPS = 2.0  # qwen-vl-utils' FPS, used when the processor config names none (Qwen2.5-VL's does not)


@dataclass(frozen=True)
class FrameSampling:
    """Keep frames uniformly spaced at ``fps`` per second, ``min_frames..max_frames`` of them.

    ``method`` picks the processor whose index rule is reproduced (module docstring);
    ``temporal_patch_size`` is the number of frames one temporal patch holds (2 for Qwen).
    """

    fps: float
    min_frames: int
    max_frames: int
    temporal_patch_size: int = 2
    method: str = "qwen2_vl"

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"FrameSampling.fps must be positive, got {self.fps!r}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"FrameSampling needs 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
            )
        if self.temporal_patch_size < 1:
            raise ValueError(f"FrameSampling.temporal_patch_size must be >= 1, got {self.temporal_patch_size}")
        if self.method not in METHODS:
            raise ValueError(f"FrameSampling.method={self.method!r}; choose one of {', '.join(METHODS)}")

    def indices(self, num_frames: int, source_fps: float) -> np.ndarray:
        """Sorted indices ``[T]`` (int64) of the frames to keep out of ``num_frames`` at ``source_fps``."""
        if num_frames < 1:
            raise ValueError(f"cannot sample frames from a video of {num_frames} frames")
        if self.method == "qwen3_vl":
            count = int(num_frames / source_fps * self.fps)
            count = min(max(count, self.min_frames), self.max_frames, num_frames)
            return np.linspace(0, num_frames - 1, count).round().astype(np.int64)
        patch = self.temporal_patch_size
        upper = math.floor(min(self.max_frames, num_frames) / patch) * patch
        count = min(max(num_frames / source_fps * self.fps, self.min_frames), upper, num_frames)
        count = math.floor(count / patch) * patch
        if count == 0:  # transformers divides by zero here; keep one temporal patch's worth
            count = min(patch, num_frames)
        import torch  # lazily: epd.media stays light for the frontend and workload generators

        step = num_frames / count  # float32 arange, exactly as Qwen2VLVideoProcessor.sample_frames
        return torch.arange(0, num_frames, step, dtype=torch.float32).int().numpy().astype(np.int64)

    @classmethod
    def for_processor(cls, video_processor: Any, cfg: MediaConfig | None = None) -> FrameSampling:
        """The sampling ``video_processor`` (a transformers video processor) applies, with ``cfg``'s overrides.

        ``cfg.video_fps`` / ``video_min_frames`` / ``video_max_frames`` win over the processor's
        ``fps`` / ``min_frames`` / ``max_frames``; with no fps anywhere, 2.0 (qwen-vl-utils').
        """
        cfg = cfg or MediaConfig()
        name = type(video_processor).__name__
        method = "qwen3_vl" if name.startswith("Qwen3VL") else "qwen2_vl"
        return cls(
            fps=float(_first(cfg.video_fps, getattr(video_processor, "fps", None), DEFAULT_FPS)),
            min_frames=int(_first(cfg.video_min_frames, getattr(video_processor, "min_frames", None), 4)),
            max_frames=int(_first(cfg.video_max_frames, getattr(video_processor, "max_frames", None), 768)),
            temporal_patch_size=int(getattr(video_processor, "temporal_patch_size", None) or 2),
            method=method,
        )

    def processor_kwargs(self, presampled: bool = False) -> dict[str, Any]:
        """Video kwargs for a transformers processor call that matches this sampling.

        ``presampled=False``: the processor samples all frames itself (the reference side).
        ``presampled=True``: frames from ``load_video`` with ``clip.processor_metadata()``; ``fps`` is
        still passed because Qwen3-Omni's processor takes ``video_second_per_grid`` from the ``fps``
        kwarg (default 1.0), not from the metadata. Qwen3-VL reads min/max frames from the
        processor's attributes, not from these kwargs.
        """
        if presampled:
            return {"do_sample_frames": False, "fps": self.fps}
        return {"do_sample_frames": True, "fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames}


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)
