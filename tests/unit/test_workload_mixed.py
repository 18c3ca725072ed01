"""mixed workload: seeded modality draws that follow `mix`, and the config keys of every workload."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import av
import pytest
from PIL import Image

from epd.workload import WorkloadConfig, build_workload
from epd.workload.mixed import draw_modalities
from epd.workload.synthetic import MEASURED

MIX = {"image": 0.5, "video": 0.25, "audio": 0.25}
PART_OF = {"image_url": "image", "video_url": "video", "audio_url": "audio"}
SMALL = dict(resolution="64x48", video_seconds=0.5, video_fps=4.0, audio_seconds=0.5, input_len=3)


def mixed_cfg(**overrides) -> WorkloadConfig:
    return WorkloadConfig(**{"name": "mixed", "num_requests": 8, "mix": MIX, **SMALL, **overrides})


def draws(cfg: WorkloadConfig, n: int) -> list[tuple[str, ...]]:
    return [tuple(draw_modalities(cfg, MEASURED, index)) for index in range(n)]


def assert_frequencies(counts: Counter, n: int, expected: dict) -> None:
    for key, p in expected.items():
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(counts[key] / n - p) < 5 * sigma + 1e-9, (key, counts[key] / n, p)  # fails by chance ~1e-6


def test_single_modality_requests_follow_mix():
    n = 6000
    counts = Counter(draws(mixed_cfg(), n))
    assert set(counts) == {("image",), ("video",), ("audio",)}
    assert_frequencies(counts, n, {(m,): p for m, p in MIX.items()})
    # weights are normalized: counts work like probabilities, and give the same draws
    assert draws(mixed_cfg(mix={"image": 2, "video": 1, "audio": 1}), 200) == draws(mixed_cfg(), 200)


def test_default_mix_is_uniform_and_zero_or_missing_weight_is_never_drawn():
    n = 3000
    assert_frequencies(Counter(draws(WorkloadConfig(name="mixed"), n)), n, {(m,): 1 / 3 for m in MIX})
    assert set(draws(mixed_cfg(mix={"video": 1.0, "audio": 0.0}), 200)) == {("video",)}


def test_two_modalities_per_request_drawn_without_replacement():
    n = 6000
    counts = Counter(draws(mixed_cfg(mix_per_request=2), n))
    # P({a, b}) = p_a p_b / (1 - p_a) + p_b p_a / (1 - p_b): a first then b, or b first then a
    expected = {
        (a, b): MIX[a] * MIX[b] / (1 - MIX[a]) + MIX[b] * MIX[a] / (1 - MIX[b])
        for a, b in itertools.combinations(MIX, 2)
    }
    assert set(counts) == set(expected)  # always two distinct modalities, listed image, video, audio
    assert_frequencies(counts, n, expected)
    assert set(draws(mixed_cfg(mix_per_request=3), 50)) == {("image", "video", "audio")}


def test_draws_are_seeded_per_request():
    cfg = mixed_cfg()
    assert draws(cfg, 50) == draws(mixed_cfg(num_requests=1), 50)  # independent of num_requests
    assert draws(cfg, 50) != draws(mixed_cfg(seed=1), 50)


def test_build_follows_draws_with_each_modality_knobs(tmp_path):
    cfg = mixed_cfg(mix_per_request=2, image_count=2, video_with_audio=True, audio_format="flac", warmup_requests=1)
    requests = build_workload(cfg, tmp_path)
    assert [r.id for r in requests] == ["warmup-0"] + [f"req-{i}" for i in range(8)]
    counts = {"image": 2, "video": 1, "audio": 1}
    for request in requests[1:]:
        index = int(request.id.removeprefix("req-"))
        types = [p["type"] for p in request.messages[0]["content"]]
        expected = [f"{m}_url" for m in draw_modalities(cfg, MEASURED, index) for _ in range(counts[m])]
        assert types == [*expected, "text"]
    paths = {p["type"]: p[p["type"]]["url"] for r in requests for p in r.messages[0]["content"] if p["type"] != "text"}
    assert Image.open(paths["image_url"]).size == (64, 48)
    with av.open(paths["video_url"]) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
    with av.open(paths["audio_url"]) as container:
        assert container.streams.audio[0].codec_context.name == "flac"


def test_build_is_deterministic_and_shares_files_with_single_modality_workloads(tmp_path):
    first = build_workload(mixed_cfg(seed=3), tmp_path / "a")
    again = build_workload(mixed_cfg(seed=3), tmp_path / "b")
    as_text = [str(r.messages).replace(str((tmp_path / "a").absolute()), "<dir>") for r in first]
    assert as_text == [str(r.messages).replace(str((tmp_path / "b").absolute()), "<dir>") for r in again]
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    videos = build_workload(
        WorkloadConfig(**{**SMALL, "name": "random_video", "num_requests": 8, "seed": 3}), tmp_path / "a"
    )
    mixed_videos = {p["video_url"]["url"] for r in first for p in r.messages[0]["content"] if p["type"] == "video_url"}
    assert mixed_videos and mixed_videos <= {r.messages[0]["content"][0]["video_url"]["url"] for r in videos}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) != names  # only the missing ones were added


def test_new_defaults():
    cfg = WorkloadConfig()
    assert (cfg.video_count, cfg.video_seconds, cfg.video_fps, cfg.video_with_audio) == (1, 4.0, 30.0, False)
    assert (cfg.audio_count, cfg.audio_seconds, cfg.audio_format) == (1, 10.0, "wav")
    assert (cfg.mix, cfg.mix_per_request) == ({"image": 1.0, "video": 1.0, "audio": 1.0}, 1)
    assert cfg.mix_probabilities == pytest.approx({"image": 1 / 3, "video": 1 / 3, "audio": 1 / 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"video_count": -1}, "workload.video_count=-1"),
        ({"audio_count": -2}, "workload.audio_count=-2"),
        ({"video_seconds": 0.0}, "workload.video_seconds=0.0"),
        ({"video_fps": math.inf}, "workload.video_fps=inf"),
        ({"audio_seconds": math.nan}, "workload.audio_seconds=nan"),
        ({"video_seconds": 0.01, "video_fps": 30.0}, "less than one frame"),
        ({"audio_format": "ogg"}, "workload.audio_format='ogg'"),
        ({"mix": {"text": 1.0}}, "workload.mix has unknown modality 'text'"),
        ({"mix": {"image": -1.0}}, "workload.mix.image=-1.0"),
        ({"mix": {"image": "lots"}}, "workload.mix.image='lots'"),
        ({"mix": {"image": 0, "video": 0}}, "every weight is 0"),
        ({"mix": {}}, "every weight is 0"),
        ({"mix_per_request": 0}, "workload.mix_per_request=0"),
        ({"mix": {"image": 1, "video": 1}, "mix_per_request": 3}, r"workload.mix_per_request=3.*\(2: image, video\)"),
        ({"name": "mixed", "video_count": 0}, "workload.video_count=0, but workload.mix gives video"),
        ({"name": "random_video", "video_count": 0, "input_len": 0}, "workload.video_count and workload.input_len"),
        ({"name": "random_audio", "audio_count": 0, "input_len": 0}, "workload.audio_count and workload.input_len"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        WorkloadConfig(**overrides)


def test_zero_count_is_fine_where_the_modality_is_not_drawn(tmp_path):
    cfg = mixed_cfg(num_requests=3, mix={"image": 1.0, "video": 0.0}, video_count=0)
    assert all(r.messages[0]["content"][0]["type"] == "image_url" for r in build_workload(cfg, tmp_path))
