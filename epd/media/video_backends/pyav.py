"""PyAV (always installed): index packets, then seek to the keyframe before each wanted frame.

Opening demuxes every packet of the video stream (no decoding) to learn the exact frame count and
the presentation timestamp of each frame, so frame ``i`` is the frame with the i-th smallest pts
(B-frames reorder decode order; variable frame rate is fine). Reading seeks to the keyframe at or
before a wanted frame only when that keyframe lies past the frames already decoded, and converts
to RGB only the frames kept. Streams without timestamps are decoded from the start.
"""

from __future__ import annotations

import bisect
from fractions import Fraction

import av
import numpy as np

from epd.media.container import av_open
from epd.media.errors import MediaError
from epd.media.video_backends import VIDEO_BACKENDS, VideoInfo, VideoReader


@VIDEO_BACKENDS.register("pyav")
class PyAVReader(VideoReader):
    """Decode with PyAV's bundled FFmpeg; RGB through ``VideoFrame.to_ndarray(format="rgb24")``."""

    name = "pyav"
    requires = ("av",)

    def __init__(self, data: bytes) -> None:
        self._data = data
        with self._open() as container:
            stream = container.streams.video[0]
            self._pts, self._keys, num_packets = self._index(container, stream)
            if self._pts is not None and stream.frames > num_packets:
                raise MediaError(
                    f"truncated or corrupt: its header lists {stream.frames} frames, {num_packets} are there"
                )
            num_frames = len(self._pts) if self._pts is not None else self._count_by_decoding()
            self.info = VideoInfo(
                num_frames=num_frames,
                fps=_average_fps(stream, self._pts, num_frames),
            )
        self._slot = {pts: i for i, pts in enumerate(self._pts or ())}  # pts -> frame index
        self._container = self._open()
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"

    def _open(self) -> av.container.InputContainer:
        return av_open(self._data)  # the same demuxer whitelist as the probe

    def _count_by_decoding(self) -> int:
        with self._open() as container:
            return sum(1 for _ in container.decode(video=0))

    @staticmethod
    def _index(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[list | None, list, int]:
        """Sorted pts of the frames, indices of keyframes, packets seen (with edit-list discards)."""
        pts, key_pts, num_packets = [], [], 0
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's final empty packet
                continue
            num_packets += 1
            if packet.is_discard:  # dropped by an edit list: never shown
                continue
            if packet.pts is None:
                return None, [], num_packets
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
        pts.sort()
        if len(set(pts)) != len(pts):
            return None, [], num_packets
        slot = {p: i for i, p in enumerate(pts)}
        return pts, sorted(slot[p] for p in key_pts), num_packets

    def read(self, indices: np.ndarray) -> np.ndarray:
        wanted = {int(i) for i in indices}
        out = self._read_seeking(wanted) if self._pts is not None else {}
        if len(out) < len(wanted):  # no timestamps, or a seek landed past a frame
            out = self._read_from_start(wanted)
        missing = sorted(wanted - out.keys())
        if missing:
            raise MediaError(f"frames {missing[:8]} of {self.info.num_frames} could not be decoded")
        return np.stack([out[int(i)] for i in indices])  # [T, H, W, 3]

    def _read_seeking(self, wanted: set[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        frames, decoded_to, first = None, -1, 0  # decoded_to: index of the last frame decoded
        for target in sorted(wanted):
            if target in out:
                continue
            key = self._keys[bisect.bisect_right(self._keys, target) - 1] if self._keys else 0
            if frames is None or key > decoded_to:  # jumping to the keyframe beats decoding up to it
                self._container.seek(self._pts[key], stream=self._stream, backward=True)
                frames, first = self._container.decode(self._stream), key
            for frame in frames:
                idx = self._slot.get(frame.pts)
                if idx is None or idx < first:  # leading frames of an open GOP after a seek
                    continue
                decoded_to = idx
                if idx in wanted and idx not in out:
                    out[idx] = frame.to_ndarray(format="rgb24")
                if idx >= target:
                    break
        return out

    def _read_from_start(self, wanted: set[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        with self._open() as container:
            for position, frame in enumerate(container.decode(video=0)):
                idx = self._slot.get(frame.pts, position) if self._pts is not None else position
                if idx in wanted:
                    out[idx] = frame.to_ndarray(format="rgb24")
        return out

    def close(self) -> None:
        self._container.close()


def _average_fps(stream: av.VideoStream, pts: list | None, num_frames: int) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    if pts and len(pts) > 1 and stream.time_base:  # from the timestamps: (frames - 1) intervals
        return float((num_frames - 1) / (Fraction(pts[-1] - pts[0]) * stream.time_base))
    raise MediaError("has no frame rate in its header and too few timestamps to infer one")
