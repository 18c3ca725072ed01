"""Encoder role: fetch and decode media, run the family's processor and towers, batch by batch."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from epd.media import MediaConfig, MediaError, load_audio, load_image, load_video, load_video_audio
from epd.models import EncodedItem, MediaInput, TowerEncoder
from epd.protocol import EncodeItem


@dataclass
class EncodeResult:
    """One item's outcome: embeddings or an error, plus the stage timestamps of its encoding."""

    msg: EncodeItem
    item: EncodedItem | None = None
    error: str | None = None
    timestamps: dict[str, float] = field(default_factory=dict)


class EncoderRole:
    """Queues ``EncodeItem`` messages and encodes up to ``max_batch_items`` of them per step."""

    def __init__(self, encoder: TowerEncoder, media: MediaConfig, max_batch_items: int = 16) -> None:
        self.encoder = encoder
        self.media = media
        self.max_batch_items = max_batch_items
        self.queue: deque[tuple[EncodeItem, float]] = deque()

    @property
    def has_work(self) -> bool:
        return bool(self.queue)

    def warm_up(self) -> None:
        """One small pass through the towers, so the first request does not pay for lazy init."""
        import numpy as np
        from PIL import Image

        from epd.media import AudioClip

        rate = self.encoder.audio_sampling_rate
        samples = {
            "image": Image.new("RGB", (64, 64)),
            "audio": AudioClip(samples=np.zeros(rate, dtype=np.float32), sampling_rate=rate, duration=1.0),
        }
        self.encoder.encode([MediaInput(modality=m, data=samples[m]) for m in self.encoder.modalities if m in samples])

    def add(self, msg: EncodeItem) -> None:
        self.queue.append((msg, time.time()))

    def step(self) -> list[EncodeResult]:
        batch = [self.queue.popleft() for _ in range(min(self.max_batch_items, len(self.queue)))]
        results, inputs = [], []
        for msg, queued in batch:
            res = EncodeResult(msg=msg, timestamps={"encode_queue_start": queued, "fetch_start": time.time()})
            try:
                inputs.append(self._decode(msg))
                res.timestamps["fetch_end"] = time.time()
            except MediaError as exc:
                res.error = str(exc)
            results.append(res)
        ok = [res for res in results if res.error is None]
        if ok:
            self._encode(ok, inputs)
        return results

    def _decode(self, msg: EncodeItem) -> MediaInput:
        if msg.modality not in self.encoder.modalities:
            raise MediaError(
                f"this model takes {', '.join(self.encoder.modalities)} input, not {msg.modality} ({msg.source[:64]})"
            )
        if msg.modality == "image":
            return MediaInput(modality="image", data=load_image(msg.source, cfg=self.media))
        if msg.modality == "video":
            sampling = self.encoder.frame_sampling(self.media)
            if self.media.use_audio_in_video and self.encoder.audio_in_video:
                clip, audio = load_video_audio(msg.source, self.media, sampling, self.encoder.audio_sampling_rate)
                return MediaInput(modality="video", data=clip, sampling=sampling, audio=audio)
            return MediaInput(modality="video", data=load_video(msg.source, self.media, sampling), sampling=sampling)
        return MediaInput(modality="audio", data=load_audio(msg.source, self.media, self.encoder.audio_sampling_rate))

    def _encode(self, results: list[EncodeResult], inputs: list[MediaInput]) -> None:
        start = time.time()
        try:
            encoded = self.encoder.encode(inputs)
        except Exception as exc:  # a bad item must not take the encoder or its batch-mates down
            if len(inputs) == 1:
                results[0].error = f"encoding failed: {type(exc).__name__}: {exc}"
                return
            for res, inp in zip(results, inputs, strict=True):
                self._encode([res], [inp])
            return
        end = time.time()
        for res, item in zip(results, encoded, strict=True):
            res.item = item
            res.timestamps.update(encode_start=start, encode_end=end)
