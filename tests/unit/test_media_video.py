"""Video decoding: every installed backend returns the frames a plain PyAV decode does, decodes few
frames for sparse indices, and fails with clear MediaErrors; synthetic media is what it claims."""

from __future__ import annotations

import re
import tempfile
import time

import av
import numpy as np
import pytest

from epd.media import FrameSampling, MediaConfig, MediaError, installed_backends, load_video, load_video_audio
from epd.media.synth import audio_samples, video_frame, write_test_audio, write_test_video
from epd.media.video_backends import VIDEO_BACKENDS, get_backend

BACKENDS = ["pyav", "decord", "torchcodec"]


def backend_or_skip(name: str, **kwargs) -> MediaConfig:
    if not VIDEO_BACKENDS.get(name).available():
        pytest.skip(f"video backend {name} is not installed")
    return local(video_backend=name, **kwargs)


def local(**kwargs) -> MediaConfig:
    """A config that lets files under the system's temporary folder (where ``tmp_path*`` live) be read."""
    return MediaConfig(allowed_dirs=[tempfile.gettempdir()], **kwargs)


def decode_all(path) -> np.ndarray:
    """Reference: every frame, in the order a plain PyAV decode yields them."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        # 2 s, B-frames, keyframe every 30 frames; 29.97 fps; mpeg4; long GOP for seeking
        "h264": write_test_video(root / "h264.mp4", seconds=2, fps=30, size=(96, 64), with_audio=True),
        "ntsc": write_test_video(root / "ntsc.mp4", seconds=1, fps=30000 / 1001, size=(80, 48), seed=3),
        "mpeg4": write_test_video(root / "mpeg4.mp4", seconds=1, fps=25, size=(64, 48), codec="mpeg4", seed=1),
        "sparse": write_test_video(root / "sparse.mp4", seconds=10, fps=10, size=(64, 48), gop=10, seed=2),
    }


def test_synth_frames_are_what_was_written_and_differ(tmp_path):
    start = time.perf_counter()
    path = write_test_video(tmp_path / "a.mp4", seconds=2, fps=30, size=(320, 240), with_audio=True)
    assert time.perf_counter() - start < 1.0
    frames = decode_all(path)
    assert frames.shape == (60, 240, 320, 3)
    for i in (0, 1, 29, 59):
        err = np.abs(frames[i].astype(int) - video_frame(i, (320, 240))).mean()
        assert err < 4, (i, err)
        for j in {max(i - 1, 0), i + 1} - {i}:  # a neighbour's content is far off: a wrong index is caught
            assert np.abs(frames[i].astype(int) - video_frame(j, (320, 240))).mean() > 30
    again = write_test_video(tmp_path / "b.mp4", seconds=2, fps=30, size=(320, 240), with_audio=True)
    assert again.read_bytes() == path.read_bytes()  # deterministic
    assert not np.array_equal(video_frame(0, (32, 32), seed=1), video_frame(0, (32, 32), seed=0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["h264", "ntsc", "mpeg4"])
def test_backend_equals_plain_decode(backend, name, videos):
    cfg = backend_or_skip(backend)
    ref = decode_all(videos[name])
    whole = load_video(str(videos[name]), cfg)
    assert whole.backend == backend and whole.num_source_frames == len(ref)
    np.testing.assert_array_equal(whole.frames, ref)
    with av.open(str(videos[name])) as container:
        assert whole.fps == float(container.streams.video[0].average_rate)
    sampling = FrameSampling(fps=4, min_frames=4, max_frames=768)
    clip = load_video(videos[name].as_uri(), cfg, sampling)
    np.testing.assert_array_equal(clip.indices, sampling.indices(len(ref), whole.fps))
    np.testing.assert_array_equal(clip.frames, ref[clip.indices])
    np.testing.assert_allclose(clip.timestamps, clip.indices / whole.fps)
    assert clip.duration == pytest.approx(len(ref) / whole.fps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_reads_any_order_and_repeats(backend, videos):
    backend_or_skip(backend)
    ref = decode_all(videos["sparse"])
    indices = np.array([97, 3, 55, 55, 10, 0, 99, 42])
    with get_backend(backend)(videos["sparse"].read_bytes()) as reader:
        assert reader.info.num_frames == 100 and reader.info.fps == 10.0
        np.testing.assert_array_equal(reader.read(indices), ref[indices])
        np.testing.assert_array_equal(reader.read(indices[:2]), ref[indices[:2]])  # read again


def test_pyav_seeks_instead_of_decoding_everything(videos):
    reader = get_backend("pyav")(videos["sparse"].read_bytes())  # 100 frames, keyframe every 10
    decoded = []
    container = reader._container
    real_decode = container.decode

    class Counting:
        def __getattr__(self, name):
            return getattr(container, name)

        def decode(self, *args, **kwargs):
            for frame in real_decode(*args, **kwargs):
                decoded.append(frame.pts)
                yield frame

    reader._container = Counting()
    frames = reader.read(np.array([5, 95]))
    reader._container = container
    reader.close()
    ref = decode_all(videos["sparse"])
    np.testing.assert_array_equal(frames, ref[[5, 95]])
    assert len(decoded) < 25, len(decoded)  # ~6 + ~6 (+ B-frame lookahead), not 96


def test_backends_agree_on_sampled_frames(videos):
    sampling = FrameSampling(fps=2, min_frames=4, max_frames=16)
    clips = [load_video(str(videos["h264"]), local(video_backend=b), sampling) for b in installed_backends()]
    for clip in clips[1:]:
        np.testing.assert_array_equal(clip.indices, clips[0].indices)
        np.testing.assert_array_equal(clip.frames, clips[0].frames)
        assert (clip.fps, clip.num_source_frames) == (clips[0].fps, clips[0].num_source_frames)
    assert (
        "pyav" in installed_backends() and load_video(str(videos["mpeg4"]), local()).backend == installed_backends()[0]
    )


def test_audio_track_of_video(videos):
    clip, audio = load_video_audio(str(videos["h264"]), local(video_backend="pyav"), sampling_rate=16000)
    assert clip.num_source_frames == 60 and audio.sampling_rate == 16000
    assert audio.duration == pytest.approx(2.0, abs=0.05)  # AAC pads its last frame
    ref = audio_samples(2, 16000)[0]
    n = min(len(ref), len(audio.samples))
    assert np.corrcoef(ref[:n], audio.samples[:n])[0, 1] > 0.99  # aligned in time, not just similar
    with pytest.raises(MediaError, match="mpeg4.mp4 has no audio stream"):
        load_video_audio(str(videos["mpeg4"]), local())


@pytest.fixture(scope="module")
def broken(tmp_path_factory, videos):
    root = tmp_path_factory.mktemp("broken")
    data = videos["h264"].read_bytes()
    (root / "half.mp4").write_bytes(data[: len(data) // 2])
    (root / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"nonsense" * 100)
    write_test_audio(root / "audio_only.m4a", 1, 16000, fmt="m4a")
    with av.open(str(root / "empty.avi"), "w", format="avi") as out:  # a video stream with no frames
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    return root


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("half.mp4", r"cannot open .*half\.mp4: not a media file FFmpeg can read, or truncated"),
        ("garbage.mp4", r"cannot open .*garbage\.mp4"),
        ("audio_only.m4a", r"audio_only\.m4a has no video stream \(streams found: audio\)"),
        ("empty.avi", r"video .*empty\.avi has no frames"),
        ("missing.mp4", r"cannot read media file"),
    ],
)
def test_broken_videos(backend, name, message, broken):
    cfg = backend_or_skip(backend)
    with pytest.raises(MediaError, match=message):
        load_video(str(broken / name), cfg, FrameSampling(2, 4, 768))


@pytest.fixture(scope="module")
def cut_faststart(tmp_path_factory, videos):
    """``sparse`` remuxed with the index (moov) first, then cut at 60%: the header lists frames that are gone."""
    root = tmp_path_factory.mktemp("cut")
    whole, path = root / "whole.mp4", root / "cut.mp4"  # faststart rewrites the file: not a BytesIO
    with av.open(str(videos["sparse"])) as src, av.open(str(whole), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = whole.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[:4096]
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_sample_data(backend, cut_faststart):
    cfg = backend_or_skip(backend)
    with pytest.raises(MediaError, match=r"cut\.mp4") as err:
        load_video(str(cut_faststart), cfg)
    if backend == "pyav":
        assert re.search(r"truncated or corrupt: its header lists 100 frames, \d\d are there", str(err.value))


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_duration_limit(backend, videos):
    cfg = backend_or_skip(backend)
    limited = local(video_backend=backend, max_video_seconds=1.5)
    with pytest.raises(MediaError, match=r"video .*h264\.mp4 is 2\.0 s long, over media.max_video_seconds=1\.5$"):
        load_video(str(videos["h264"]), limited)
    assert load_video(str(videos["mpeg4"]), limited).duration == 1.0
    assert cfg.video_backend == backend


def test_unavailable_backend_is_a_config_error(monkeypatch):
    monkeypatch.setattr(VIDEO_BACKENDS.get("decord"), "available", classmethod(lambda cls: False))
    with pytest.raises(
        ValueError, match=r"media.video_backend='decord' is not installed \(needs decord\); installed: "
    ):
        get_backend("decord")
    assert "decord" not in installed_backends() and get_backend("auto").name == installed_backends()[0]


def test_one_frame_video(tmp_path):
    path = write_test_video(tmp_path / "one.mp4", seconds=0.1, fps=10, size=(32, 32))
    clip = load_video(str(path), local(video_backend="pyav"), FrameSampling(2, 4, 768))
    assert clip.num_source_frames == 1 and clip.indices.tolist() == [0] and clip.frames.shape == (1, 32, 32, 3)
