"""Encoder role: fetch and decode media, run the processor and the tower, batch by batch."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from epd.media import MediaError, load_image
from epd.models import EncodedItem, VisionEncoder
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

    def __init__(self, encoder: VisionEncoder, max_batch_items: int = 16) -> None:
        self.encoder = encoder
        self.max_batch_items = max_batch_items
        self.queue: deque[tuple[EncodeItem, float]] = deque()

    @property
    def has_work(self) -> bool:
        return bool(self.queue)

    def add(self, msg: EncodeItem) -> None:
        self.queue.append((msg, time.time()))

    def step(self) -> list[EncodeResult]:
        batch = [self.queue.popleft() for _ in range(min(self.max_batch_items, len(self.queue)))]
        results, images = [], []
        for msg, queued in batch:
            res = EncodeResult(msg=msg, timestamps={"encode_queue_start": queued, "fetch_start": time.time()})
            try:
                if msg.modality != "image":
                    raise MediaError(f"modality {msg.modality!r} is not served by this encoder")
                images.append(load_image(msg.source))
                res.timestamps["fetch_end"] = time.time()
            except MediaError as exc:
                res.error = str(exc)
            results.append(res)
        ok = [res for res in results if res.error is None]
        if ok:
            self._encode(ok, images)
        return results

    def _encode(self, results: list[EncodeResult], images: list) -> None:
        start = time.time()
        try:
            encoded = self.encoder.encode_images(images)
        except Exception as exc:  # a bad item must not take the encoder or its batch-mates down
            if len(images) == 1:
                results[0].error = f"encoding failed: {type(exc).__name__}: {exc}"
                return
            for res, image in zip(results, images, strict=True):
                self._encode([res], [image])
            return
        end = time.time()
        for res, item in zip(results, encoded, strict=True):
            res.item = item
            res.timestamps.update(encode_start=start, encode_end=end)
