"""Audio decoding: every format PyAV encodes round-trips in time and value, resampling and downmix are
the documented ones, and broken or over-long audio fails with a clear MediaError."""

from __future__ import annotations

import av
import numpy as np
import pytest

import epd.media.audio as audio_mod
from epd.media import AudioClip, MediaConfig, MediaError, load_audio
from epd.media.container import Probe
from epd.media.synth import AUDIO_FORMATS, audio_samples, write_test_audio, write_test_video

RATE = 16000


def local(folder, **kwargs) -> MediaConfig:
    """A config that lets media in ``folder`` be read."""
    return MediaConfig(allowed_dirs=[str(folder)], **kwargs)


@pytest.mark.parametrize("fmt", sorted(AUDIO_FORMATS))
def test_formats_round_trip(fmt, tmp_path):
    path = write_test_audio(tmp_path / f"a.{fmt}", seconds=1.5, sampling_rate=RATE, fmt=fmt, seed=2)
    clip = load_audio(str(path), local(tmp_path), sampling_rate=RATE)
    assert isinstance(clip, AudioClip) and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.sampling_rate == RATE and clip.duration == len(clip.samples) / RATE
    ref = audio_samples(1.5, RATE, seed=2)[0]
    lossless = fmt in ("wav", "flac")
    assert clip.duration == (1.5 if lossless else pytest.approx(1.5, abs=0.07))  # lossy codecs pad
    n = min(len(ref), len(clip.samples))
    if lossless:  # s16 quantization only
        np.testing.assert_allclose(clip.samples, ref, atol=2 / 32768)
    else:  # same signal at the same time: a shift of one sample of a 2 kHz chirp drops this a lot
        assert np.corrcoef(ref[:n], clip.samples[:n])[0, 1] > 0.99
        assert np.corrcoef(ref[: n - 4], clip.samples[4:n])[0, 1] < 0.9


def test_resampling_is_libswresample(tmp_path):
    path = write_test_audio(tmp_path / "a.wav", seconds=1, sampling_rate=44100)
    clip = load_audio(str(path), local(tmp_path), sampling_rate=RATE)
    assert len(clip.samples) == RATE and clip.duration == 1.0
    ref = audio_samples(1, RATE)[0]  # the same band-limited signal, sampled at 16 kHz directly
    assert np.abs(clip.samples - ref)[100:-100].max() < 1e-3
    with av.open(str(path)) as container:  # exactly what the documented resampler gives
        resampler = av.AudioResampler(format="fltp", rate=RATE)
        frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
        frames += resampler.resample(None)
    np.testing.assert_array_equal(clip.samples, np.concatenate([f.to_ndarray()[0] for f in frames]))


def test_stereo_is_mean_of_channels(tmp_path):
    path = write_test_audio(tmp_path / "s.flac", seconds=0.5, sampling_rate=RATE, fmt="flac", channels=2)
    clip = load_audio(str(path), local(tmp_path), sampling_rate=RATE)
    stereo = audio_samples(0.5, RATE, channels=2)
    assert not np.allclose(stereo[0], stereo[1])
    np.testing.assert_allclose(clip.samples, stereo.mean(axis=0), atol=2 / 32768)


def test_audio_track_of_a_video_file(tmp_path):
    path = write_test_video(tmp_path / "v.mp4", seconds=1, fps=10, size=(32, 32), with_audio=True)
    clip = load_audio(path.as_uri(), local(tmp_path), sampling_rate=RATE)
    assert clip.duration == pytest.approx(1.0, abs=0.07)
    with pytest.raises(MediaError, match=r"silent\.mp4 has no audio stream \(streams found: video\)"):
        load_audio(str(write_test_video(tmp_path / "silent.mp4", seconds=0.2, fps=10, size=(32, 32))), local(tmp_path))


def test_broken_audio(tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnonsense" * 10)
    with pytest.raises(MediaError, match=r"cannot open .*garbage\.wav"):
        load_audio(str(tmp_path / "garbage.wav"), local(tmp_path))
    data = write_test_audio(tmp_path / "a.mp3", seconds=1, sampling_rate=RATE, fmt="mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2 + 7])  # ends inside a frame
    with pytest.raises(MediaError, match=r"cannot decode audio .*cut\.mp3: corrupt or truncated"):
        load_audio(str(tmp_path / "cut.mp3"), local(tmp_path))
    empty = write_test_audio(tmp_path / "empty.wav", seconds=0, sampling_rate=RATE)
    with pytest.raises(MediaError, match=r"audio .*empty\.wav has no audio samples \(zero length\)"):
        load_audio(str(empty), local(tmp_path))


def test_audio_duration_limit(tmp_path, monkeypatch):
    path = write_test_audio(tmp_path / "long.flac", seconds=2, sampling_rate=RATE, fmt="flac")
    cfg = local(tmp_path, max_audio_seconds=1.5)
    with pytest.raises(MediaError, match=r"audio .*long\.flac is 2\.0 s long, over media.max_audio_seconds=1\.5$"):
        load_audio(str(path), cfg)
    # a header without a duration: the limit still holds while decoding, long before the end
    monkeypatch.setattr(audio_mod, "probe", lambda data, label: Probe(("audio",), None, None, None, None))
    with pytest.raises(MediaError, match=r"is more than 1\.5 s long, over media.max_audio_seconds=1\.5$"):
        load_audio(str(path), cfg)
    assert load_audio(str(path), local(tmp_path, max_audio_seconds=2.0)).duration == 2.0


def test_bad_sampling_rate(tmp_path):
    with pytest.raises(ValueError, match="sampling_rate must be positive"):
        load_audio(str(write_test_audio(tmp_path / "a.wav", 0.1, RATE)), local(tmp_path), sampling_rate=0)
