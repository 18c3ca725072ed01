"""Fetch and decode one media item into the family processor's input, and size it in tokens.

Runs on the encoder's decode threads (Pillow, PyAV and the codecs release the GIL), so decoding
the next items overlaps the tower working on the current batch.
"""

from __future__ import annotations

from typing import Any

from epd.media import MediaConfig, MediaError, load_audio, load_image, load_video, load_video_audio
from epd.media.image import load_image_tensor
from epd.models import MediaInput, TowerEncoder
from epd.protocol import EncodeItem
from epd.scheduler.config import SchedulerConfig
from epd.scheduler.cost import estimate_tokens


class MediaDecoder:
    """``decode(msg)`` → ``MediaInput``; ``MediaError`` for anything wrong with the item itself."""

    def __init__(self, encoder: TowerEncoder, media: MediaConfig, scheduler: SchedulerConfig | None = None) -> None:
        self.encoder = encoder
        self.media = media
        self.scheduler = scheduler or SchedulerConfig()
        # the family's image processor knows its own resize rules (exact token counts) when it is exposed
        self.image_processor = getattr(getattr(encoder, "processor", None), "image_processor", None)

    def decode(self, msg: EncodeItem) -> MediaInput:
        if msg.modality not in self.encoder.modalities:
            raise MediaError(
                f"this model takes {', '.join(self.encoder.modalities)} input, not {msg.modality} ({msg.source[:64]})"
            )
        if msg.modality == "image":  # straight to a uint8 tensor when the processor's math runs on the device
            load = load_image if self.encoder.preprocess_device is None else load_image_tensor
            return MediaInput(modality="image", data=load(msg.source, cfg=self.media))
        if msg.modality == "video":
            sampling = self.encoder.frame_sampling(self.media)
            if self.media.use_audio_in_video and self.encoder.audio_in_video:
                clip, audio = load_video_audio(msg.source, self.media, sampling, self.encoder.audio_sampling_rate)
                return MediaInput(modality="video", data=clip, sampling=sampling, audio=audio)
            return MediaInput(modality="video", data=load_video(msg.source, self.media, sampling), sampling=sampling)
        return MediaInput(modality="audio", data=load_audio(msg.source, self.media, self.encoder.audio_sampling_rate))

    def num_tokens(self, inp: MediaInput) -> int:
        """Estimated tower output tokens of a decoded item (the batch budget's unit)."""
        if inp.modality == "image":
            height, width = image_hw(inp.data)
            hints = {"width": width, "height": height}
        elif inp.modality == "video":
            frames = inp.data.frames  # [T, H, W, 3]
            hints = {"frames": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2])}
        else:
            hints = {"seconds": float(inp.data.duration)}
        return estimate_tokens(inp.modality, hints, self.scheduler, self.image_processor)


def image_hw(image: Any) -> tuple[int, int]:
    """(height, width) of a decoded image: a PIL image or a tensor [..., H, W]."""
    if hasattr(image, "height"):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])
