"""decord (optional, x86-64 wheels only): its own FFmpeg build, keyframe-aware ``get_batch``.

``pip install decord==0.6.0``. decord seeks to the keyframe before each requested frame and
decodes forward; frame ``i`` is the i-th frame in presentation order, as with the other backends.
"""

from __future__ import annotations

import io

import numpy as np

from epd.media.video_backends import VIDEO_BACKENDS, VideoInfo, VideoReader


@VIDEO_BACKENDS.register("decord")
class DecordReader(VideoReader):
    """``decord.VideoReader`` on an in-memory file, CPU context."""

    name = "decord"
    requires = ("decord",)

    def __init__(self, data: bytes) -> None:
        import decord

        self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
        self.info = VideoInfo(
            num_frames=len(self._reader),
            fps=float(self._reader.get_avg_fps()),
        )

    def read(self, indices: np.ndarray) -> np.ndarray:
        batch = self._reader.get_batch([int(i) for i in indices])
        return batch.asnumpy()  # [T, H, W, 3] uint8 RGB

    def close(self) -> None:
        del self._reader
