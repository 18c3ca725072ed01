"""random_video and random_audio workloads: real encoded files PyAV opens, seeded and reused."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from epd.workload import WorkloadConfig, build_workload

AAC_FRAME = 1024  # samples per AAC frame; decoders hand back priming and padding frames too


def urls(request, part_type: str) -> list[str]:
    return [part[part_type]["url"] for part in request.messages[0]["content"] if part["type"] == part_type]


def all_urls(requests, part_type: str) -> list[str]:
    return [url for request in requests for url in urls(request, part_type)]


def file_bytes(requests, part_type: str) -> list[bytes]:
    return [Path(url).read_bytes() for url in all_urls(requests, part_type)]


def relative(requests, media_dir: Path) -> list:
    """Ids and messages with the media directory cut out, to compare runs in different dirs."""
    return [(r.id, str(r.messages).replace(str(media_dir.absolute()), "<dir>"), r.arrival_s) for r in requests]


def video_cfg(**overrides) -> WorkloadConfig:
    knobs = dict(name="random_video", num_requests=2, video_seconds=1.0, video_fps=10.0, resolution="96x64")
    return WorkloadConfig(**{**knobs, **overrides})


def audio_cfg(**overrides) -> WorkloadConfig:
    return WorkloadConfig(**{**dict(name="random_audio", num_requests=2, audio_seconds=1.0), **overrides})


@pytest.mark.parametrize("with_audio", [False, True])
@pytest.mark.parametrize(("seconds", "fps", "resolution"), [(1.0, 10.0, "160x120"), (1.0, 29.97, "360p")])
def test_video_files_have_duration_fps_size_and_streams(tmp_path, with_audio, seconds, fps, resolution):
    cfg = video_cfg(
        num_requests=1,
        video_count=2,
        video_seconds=seconds,
        video_fps=fps,
        resolution=resolution,
        video_with_audio=with_audio,
    )
    (request,) = build_workload(cfg, tmp_path)
    assert [p["type"] for p in request.messages[0]["content"]] == ["video_url", "video_url", "text"]
    paths = urls(request, "video_url")
    assert len(set(paths)) == 2 and all(p.endswith(".mp4") and Path(p).is_absolute() for p in paths)
    for path in paths:
        with av.open(path) as container:
            assert [s.type for s in container.streams] == (["video", "audio"] if with_audio else ["video"])
            video = container.streams.video[0]
            assert (video.codec_context.width, video.codec_context.height) == cfg.image_size
            assert float(video.average_rate) == pytest.approx(fps, rel=1e-3)
            num_frames = sum(1 for _ in container.decode(video))
            assert abs(num_frames - seconds * fps) <= 1
            assert container.duration / 1e6 == pytest.approx(seconds, abs=max(1 / fps, 0.01 * seconds))
        if with_audio:
            with av.open(path) as container:
                audio = container.streams.audio[0]
                assert audio.codec_context.name == "aac" and audio.channels == 1
                assert float(audio.duration * audio.time_base) == pytest.approx(seconds, rel=0.01)
                num_samples = sum(frame.samples for frame in container.decode(audio))
                assert 0 <= num_samples - seconds * audio.sample_rate <= 2 * AAC_FRAME


@pytest.mark.parametrize(("audio_format", "codec"), [("wav", "pcm_s16le"), ("flac", "flac"), ("mp3", "mp3")])
def test_audio_files_have_duration_rate_and_format(tmp_path, audio_format, codec):
    requests = build_workload(audio_cfg(audio_count=2, audio_seconds=2.0, audio_format=audio_format), tmp_path)
    assert [p["type"] for p in requests[0].messages[0]["content"]] == ["audio_url", "audio_url", "text"]
    paths = all_urls(requests, "audio_url")
    assert len(set(paths)) == 4 and all(p.endswith(f".{audio_format}") for p in paths)
    for path in paths:
        with av.open(path) as container:
            assert [s.type for s in container.streams] == ["audio"]
            audio = container.streams.audio[0]
            assert audio.codec_context.name.startswith(codec)  # mp3 decodes as "mp3float"
            assert (audio.sample_rate, audio.channels) == (16000, 1)
            num_samples = sum(frame.samples for frame in container.decode(audio))
            assert num_samples / 16000 == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize(
    "cfg_of", [lambda **kw: video_cfg(video_with_audio=True, **kw), audio_cfg], ids=["video", "audio"]
)
def test_same_seed_same_files_and_messages_other_seed_differs(tmp_path, cfg_of):
    part_type = "video_url" if cfg_of(seed=0).name == "random_video" else "audio_url"
    first = build_workload(cfg_of(seed=7, warmup_requests=1, request_rate=4.0), tmp_path / "a")
    again = build_workload(cfg_of(seed=7, warmup_requests=1, request_rate=4.0), tmp_path / "b")
    other = build_workload(cfg_of(seed=8, warmup_requests=1, request_rate=4.0), tmp_path / "c")
    assert relative(first, tmp_path / "a") == relative(again, tmp_path / "b")
    assert file_bytes(first, part_type) == file_bytes(again, part_type)
    assert relative(first, tmp_path / "a") != relative(other, tmp_path / "c")
    assert file_bytes(first, part_type) != file_bytes(other, part_type)
    assert [r.warmup for r in first] == [True, False, False]
    assert set(all_urls(first[:1], part_type)).isdisjoint(all_urls(first[1:], part_type))


def test_every_video_of_a_run_is_distinct(tmp_path):
    requests = build_workload(video_cfg(num_requests=4, video_count=2, video_seconds=0.5, video_fps=4.0), tmp_path)
    assert len(set(file_bytes(requests, "video_url"))) == 8


def test_every_audio_clip_of_a_run_is_distinct(tmp_path):
    requests = build_workload(audio_cfg(num_requests=6, audio_count=2, audio_seconds=0.25), tmp_path)
    assert len(set(file_bytes(requests, "audio_url"))) == 12


def test_existing_files_are_reused_and_no_temp_files_left(tmp_path):
    cfg = video_cfg(num_requests=1, video_seconds=0.5, video_fps=4.0)
    (path,) = all_urls(build_workload(cfg, tmp_path), "video_url")
    Path(path).write_bytes(b"stand-in")  # a file of the same name is taken to be the same video
    assert all_urls(build_workload(cfg, tmp_path), "video_url") == [path]
    assert Path(path).read_bytes() == b"stand-in"
    longer = all_urls(
        build_workload(video_cfg(num_requests=1, video_seconds=1.0, video_fps=4.0), tmp_path), "video_url"
    )
    assert longer != [path] and Path(longer[0]).stat().st_size > 100  # other knobs, other name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_text_only_and_text_less_requests(tmp_path):
    (text_only,) = build_workload(audio_cfg(num_requests=1, audio_count=0, input_len=5), tmp_path)
    assert [p["type"] for p in text_only.messages[0]["content"]] == ["text"]
    (no_text,) = build_workload(audio_cfg(num_requests=1, input_len=0), tmp_path)
    assert [p["type"] for p in no_text.messages[0]["content"]] == ["audio_url"]
    assert no_text.max_tokens == 16 and no_text.ignore_eos
