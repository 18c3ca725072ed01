"""torchcodec (optional): the version built for the installed torch, plus system FFmpeg.

``pip install torchcodec==0.17`` (for torch 2.14) and ``apt-get install -y ffmpeg`` (its shared
libraries). ``seek_mode="exact"`` scans the file once for an exact frame index, then
``get_frames_at`` seeks to the keyframe before each requested frame.
"""

from __future__ import annotations

import numpy as np

from epd.media.video_backends import VIDEO_BACKENDS, VideoInfo, VideoReader


@VIDEO_BACKENDS.register("torchcodec")
class TorchCodecReader(VideoReader):
    """``torchcodec.decoders.VideoDecoder`` on the encoded bytes, CPU, NHWC uint8."""

    name = "torchcodec"
    requires = ("torchcodec.decoders",)  # importing it loads the FFmpeg libraries

    def __init__(self, data: bytes) -> None:
        from torchcodec.decoders import VideoDecoder

        self._decoder = VideoDecoder(data, dimension_order="NHWC", seek_mode="exact")
        meta = self._decoder.metadata
        self.info = VideoInfo(
            num_frames=int(meta.num_frames or 0),
            fps=float(meta.average_fps or 0.0),
        )

    def read(self, indices: np.ndarray) -> np.ndarray:
        batch = self._decoder.get_frames_at([int(i) for i in indices])
        return batch.data.numpy()  # [T, H, W, 3] uint8 RGB

    def close(self) -> None:
        del self._decoder
