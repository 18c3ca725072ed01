"""FrameSampling picks the frames transformers' Qwen video processors pick: decoding only those and
passing them with ``do_sample_frames=False`` gives the processor the same input as all frames with
``do_sample_frames=True``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.video_utils import VideoMetadata

from epd.media import FrameSampling, MediaConfig, load_video
from epd.media.synth import write_test_video

SMALL = {"size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 48}, "cap_pixels_per_frame": False}


def reference_indices(method: str, sampling: FrameSampling, total: int, fps: float) -> np.ndarray:
    md = VideoMetadata(total_num_frames=total, fps=fps)
    if method == "qwen2_vl":
        kwargs = {"min_frames": sampling.min_frames, "max_frames": sampling.max_frames, "temporal_patch_size": 2}
        return np.asarray(Qwen2VLVideoProcessor().sample_frames(md, fps=sampling.fps, **kwargs))
    proc = Qwen3VLVideoProcessor(min_frames=sampling.min_frames, max_frames=sampling.max_frames)
    return np.asarray(proc.sample_frames(md, fps=sampling.fps))  # min/max come from attributes only


@pytest.mark.parametrize("method", ["qwen2_vl", "qwen3_vl"])
def test_indices_equal_sample_frames(method):
    checked = 0
    for total in [*range(1, 70), 299, 300, 1799, 9001]:
        for source_fps in (25.0, 30000 / 1001, 60.0):
            for fps, lo, hi in ((2.0, 4, 768), (0.5, 2, 16), (3.3, 4, 9), (1.0, 1, 768)):
                sampling = FrameSampling(fps, lo, hi, method=method)
                got = sampling.indices(total, source_fps)
                assert np.all(np.diff(got) > 0) and got[0] >= 0 and got[-1] < total
                try:
                    ref = reference_indices(method, sampling, total, source_fps)
                except ZeroDivisionError:  # transformers fails; we keep one temporal patch
                    assert method == "qwen2_vl" and len(got) == min(2, total)
                    continue
                np.testing.assert_array_equal(got, ref, err_msg=f"{method} {total} {source_fps} {sampling}")
                checked += 1
    assert checked > 600  # the rest: transformers divides by zero


def test_qwen2_float32_arange_quirk():
    # 30 frames, 26 wanted: torch.arange(0, 30, 30/26) in float32 has 27 elements, and so do we
    got = FrameSampling(fps=26, min_frames=1, max_frames=768).indices(30, 30.0)
    assert len(got) == 27
    np.testing.assert_array_equal(got, torch.arange(0, 30, 30 / 26).int().numpy())


def test_qwen3_counts_are_not_rounded_to_the_patch():
    got = FrameSampling(fps=1.0, min_frames=4, max_frames=768, method="qwen3_vl").indices(150, 30.0)
    np.testing.assert_array_equal(got, [0, 37, 74, 112, 149])  # 5 frames: the processor pads to 6


def test_for_processor_and_overrides():
    assert FrameSampling.for_processor(Qwen2VLVideoProcessor()) == FrameSampling(2.0, 4, 768)
    q3 = FrameSampling.for_processor(Qwen3VLVideoProcessor(fps=1, max_frames=64))
    assert q3 == FrameSampling(1.0, 4, 64, method="qwen3_vl")
    cfg = MediaConfig(video_fps=0.5, video_min_frames=2, video_max_frames=8)
    assert FrameSampling.for_processor(Qwen3VLVideoProcessor(), cfg) == FrameSampling(0.5, 2, 8, method="qwen3_vl")
    for bad in ({"fps": 0}, {"min_frames": 0}, {"min_frames": 9, "max_frames": 8}, {"method": "qwen9"}):
        with pytest.raises(ValueError, match="FrameSampling"):
            FrameSampling(**{"fps": 1.0, "min_frames": 1, "max_frames": 8, **bad})


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("v") / "v.mp4", seconds=3.2, fps=25, size=(112, 84))


def pyav(video) -> MediaConfig:
    """PyAV decoding, with the video's folder allowed."""
    return MediaConfig(video_backend="pyav", allowed_dirs=[str(video.parent)])


def processed(proc, clip, **kwargs):
    out = proc(videos=[clip.frames], video_metadata=[clip.processor_metadata()], return_metadata=True, **kwargs)
    return out["pixel_values_videos"], out["video_grid_thw"], out["video_metadata"][0]


@pytest.mark.parametrize("cls", [Qwen2VLVideoProcessor, Qwen3VLVideoProcessor])
def test_video_processor_sees_the_same_frames(cls, video):
    proc = cls(**SMALL, min_frames=4, max_frames=768)
    sampling = FrameSampling.for_processor(proc, MediaConfig(video_fps=2.5))
    everything, clip = load_video(str(video), pyav(video)), load_video(str(video), pyav(video), sampling)
    ref_pixels, ref_grid, ref_meta = processed(proc, everything, **sampling.processor_kwargs())
    pixels, grid, meta = processed(proc, clip, **sampling.processor_kwargs(presampled=True))
    np.testing.assert_array_equal(np.asarray(ref_meta.frames_indices), clip.indices)
    assert torch.equal(grid, ref_grid) and torch.equal(pixels, ref_pixels)
    assert meta.timestamps == ref_meta.timestamps and meta.sampled_fps == ref_meta.sampled_fps
    shifted = load_video(str(video), pyav(video))  # one frame off: the comparison above would have caught it
    wrong = everything.frames[np.minimum(clip.indices + 1, everything.num_source_frames - 1)]
    object.__setattr__(shifted, "frames", wrong)
    assert not torch.equal(processed(proc, shifted, do_sample_frames=False)[0], ref_pixels)


def tiny_families() -> list[str]:
    from epd.tiny import FAMILIES

    return [name for name in ("qwen2_5_vl", "qwen3_vl", "qwen3_omni") if name in FAMILIES]


@pytest.mark.parametrize("family", tiny_families())
def test_tiny_checkpoint_processor_same_inputs(family, video):
    from transformers import AutoProcessor

    from epd.tiny import cached_tiny

    proc = AutoProcessor.from_pretrained(cached_tiny(family))
    sampling = FrameSampling.for_processor(proc.video_processor)
    everything, clip = load_video(str(video), pyav(video)), load_video(str(video), pyav(video), sampling)
    start, end = (
        getattr(proc, "vision_bos_token", "<|vision_start|>"),
        getattr(proc, "vision_eos_token", "<|vision_end|>"),
    )
    text = [f"{start}{proc.video_token}{end}what happens?"]
    meta = {"total_num_frames": everything.num_source_frames, "fps": everything.fps}
    ref = proc(text=text, videos=[everything.frames], video_metadata=[meta], **sampling.processor_kwargs())
    presampled = sampling.processor_kwargs(presampled=True)
    got = proc(text=text, videos=[clip.frames], video_metadata=[clip.processor_metadata()], **presampled)
    assert set(got) == set(ref) and "pixel_values_videos" in got
    for key in ref:  # input_ids (placeholders, Qwen3-VL timestamps), pixels, grid, second_per_grid_ts
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(ref[key])), key
    if family == "qwen3_omni":  # Omni takes seconds per grid from the fps kwarg (default 1.0), not metadata
        no_fps = proc(
            text=text, videos=[clip.frames], video_metadata=[clip.processor_metadata()], do_sample_frames=False
        )
        assert got["video_second_per_grid"] == [1.0] and no_fps["video_second_per_grid"] == [2.0]
