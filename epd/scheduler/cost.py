"""How much tower work a media item is, in output tokens, before it is decoded.

The frontend sizes items from what it can see cheaply: hints the request carries (``width``,
``height``, ``seconds``, ``num_tokens`` beside the part's ``url``), or an image's header when it has
the bytes at hand; anything else falls back to a per-modality default. The estimate is the unit
of ``least_loaded`` / ``split`` load and of the encoder's batch budget, not a promise: the encoder
reports the real count when it is done.
"""

from __future__ import annotations

import math
from typing import Any

from epd.scheduler.config import SchedulerConfig

VIDEO_FPS = 2.0
"""Frames per second the Qwen video processors keep by default (two frames make one temporal patch)."""


def image_tokens(width: int, height: int, cfg: SchedulerConfig, image_processor: Any = None) -> int:
    """Tokens of a ``width`` x ``height`` image: the processor's own count when it can tell (resize
    rules included), else its area over ``cfg.pixels_per_token``."""
    count = getattr(image_processor, "get_number_of_image_patches", None)
    if count is not None:
        try:
            merge = int(getattr(image_processor, "merge_size", 1) or 1)
            return max(1, int(count(height, width, {})) // merge**2)
        except (TypeError, ValueError):
            pass
    return max(1, math.ceil(width * height / cfg.pixels_per_token))


def estimate_tokens(modality: str, hints: dict[str, Any], cfg: SchedulerConfig, image_processor: Any = None) -> int:
    """Estimated tokens of one item from ``hints`` (any of ``num_tokens``, ``width``/``height``,
    ``seconds``, ``frames``), else ``cfg.item_tokens[modality]``."""
    if _positive(hints.get("num_tokens")):
        return int(hints["num_tokens"])
    default = cfg.item_tokens.get(modality, 1024)
    width, height = hints.get("width"), hints.get("height")
    sized = _positive(width) and _positive(height)
    if modality == "image":
        return image_tokens(int(width), int(height), cfg, image_processor) if sized else default
    if modality == "audio":
        return (
            max(1, math.ceil(hints["seconds"] * cfg.audio_tokens_per_second))
            if _positive(hints.get("seconds"))
            else default
        )
    if modality == "video":
        frames = hints.get("frames")
        if not _positive(frames) and _positive(hints.get("seconds")):
            frames = hints["seconds"] * VIDEO_FPS
        if not (_positive(frames) and sized):
            return default
        per_frame = image_tokens(int(width), int(height), cfg, image_processor)
        return max(1, math.ceil(frames / 2) * per_frame)  # two frames per temporal patch
    return default


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
