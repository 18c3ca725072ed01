"""file workload: JSONL chat-completions bodies with local, file:// and data: media."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from epd.workload import WorkloadConfig, build_workload

PNG_BYTES = base64.b64encode(b"\x89PNG\r\n\x1a\n not really an image").decode()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "media").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "media" / "red.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "blue.jpg")
    return tmp_path


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def load(path: Path, **overrides):
    return build_workload(WorkloadConfig(name="file", path=str(path), **overrides), path.parent / "unused")


def test_parses_string_and_list_content_and_every_url_form(data_dir):
    blue = data_dir / "blue.jpg"
    lines = [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "media/red.png"}},
                        {"type": "image_url", "image_url": {"url": blue.as_uri()}},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BYTES}"}},
                        {"type": "image_url", "image_url": {"url": str(blue)}},
                        {"type": "text", "text": "Compare them."},
                    ],
                },
            ],
            "max_tokens": 5,
            "temperature": 0.5,
            "id": "chat",
            "model": "ignored",
        },
        "",  # blank lines are skipped but still counted
        {"messages": [{"role": "user", "content": "No limits given"}]},
    ]
    requests = load(write_jsonl(data_dir / "requests.jsonl", lines), num_requests=0, output_len=9)
    assert [r.id for r in requests] == ["chat", "file-3"]
    chat, plain = requests
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user"]
    assert chat.messages[1] == {"role": "user", "content": "Hello"}
    urls = [p["image_url"]["url"] for p in chat.messages[3]["content"] if p["type"] == "image_url"]
    assert urls[0] == str(data_dir / "media" / "red.png")  # relative to the JSONL file
    assert urls[1] == blue.as_uri() and urls[2].startswith("data:image/png;base64,") and urls[3] == str(blue)
    assert chat.messages[3]["content"][-1] == {"type": "text", "text": "Compare them."}
    assert (chat.max_tokens, chat.temperature) == (5, 0.5)
    assert (plain.max_tokens, plain.temperature, plain.ignore_eos) == (9, 0.0, True)
    assert not chat.warmup and chat.arrival_s == 0.0


def test_relative_paths_resolve_against_file_not_cwd(data_dir, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    line = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "blue.jpg"}}]}]}
    (request,) = load(write_jsonl(data_dir / "r.jsonl", [line]))
    assert request.messages[0]["content"][0]["image_url"]["url"] == str(data_dir / "blue.jpg")


def test_num_requests_caps_and_warmup_takes_first_lines(data_dir):
    lines = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(10)]
    path = write_jsonl(data_dir / "r.jsonl", lines)
    assert len(load(path, num_requests=4)) == 4
    assert len(load(path, num_requests=0)) == 10
    assert len(load(path, num_requests=50)) == 10
    requests = load(path, num_requests=3, warmup_requests=2, request_rate=100.0)
    assert [r.warmup for r in requests] == [True, True, False, False, False]
    assert [r.messages[0]["content"] for r in requests] == ["q0", "q1", "q2", "q3", "q4"]
    assert requests[2].arrival_s == 0.0 and requests[4].arrival_s > requests[3].arrival_s > 0


GOOD = {"messages": [{"role": "user", "content": "fine"}]}


def user_parts(*parts: dict) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def audio_part(data: str, audio_format: str | None) -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, **({"format": audio_format} if audio_format else {})}}


WAV_B64 = base64.b64encode(b"RIFF....WAVE not really audio").decode()


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ({"prompt": "hi"}, "missing 'messages'"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\]\.role='robot'"),
        ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content: expected a string or a list"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_file", "input_file": {}}]}]},
            r"messages\[0\]\.content\[0\]\.type='input_file': unknown part type",
        ),
        (user_parts({"type": "video_url", "video_url": {}}), r"content\[0\]: expected \"video_url\": \{\"url\""),
        (user_parts({"type": "audio_url", "audio_url": {"url": ""}}), r"content\[0\]: expected \"audio_url\""),
        (user_parts({"type": "audio_url"}), r"content\[0\]: expected \"audio_url\""),
        (user_parts({"type": "input_audio", "input_audio": {}}), r"content\[0\]: expected \"input_audio\": \{\"data\""),
        (user_parts({"type": "input_audio", "input_audio": "UklGRg=="}), r"content\[0\]: expected \"input_audio\""),
        (user_parts(audio_part(WAV_B64, None)), r"content\[0\]: expected \"input_audio\""),
        (user_parts(audio_part(WAV_B64, "ogg")), r"content\[0\]\.input_audio\.format='ogg': expected one of"),
        (
            user_parts(audio_part("not base64!", "wav")),
            r"content\[0\]\.input_audio\.data 'not base64!' is not valid base64",
        ),
        (user_parts(audio_part("UklGR", "wav")), r"input_audio\.data 'UklGR' is not valid base64"),
        (user_parts(audio_part("", "wav")), r"content\[0\]\.input_audio\.data is empty"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "needs a string 'text'"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file://x/a.png"}}]}
                ]
            },
            "names host 'x'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "s3://b/k.png"}}]}]},
            "unsupported scheme",
        ),
        ({**GOOD, "max_tokens": 0}, "max_tokens=0"),
        ({**GOOD, "temperature": "hot"}, "temperature='hot'"),
        ({**GOOD, "id": "file-1"}, "id 'file-1' already used on line 1"),
    ],
)
def test_bad_line_fails_alone_naming_file_line_and_problem(data_dir, bad_line, message):
    path = write_jsonl(data_dir / "bad.jsonl", [GOOD, "", bad_line])
    good, bad = load(path, num_requests=0)
    assert good.error is None
    assert re.search(f"{path.name}:3: .*{message}", bad.error), bad.error


def test_line_that_is_not_json_fails_the_whole_file(data_dir):
    path = write_jsonl(data_dir / "broken.jsonl", [GOOD, "", '{"messages": [}'])
    with pytest.raises(ValueError, match=f"{path}:3: not valid JSON"):
        load(path, num_requests=0)


def test_file_without_one_valid_request_fails_whole(data_dir):
    path = write_jsonl(data_dir / "none.jsonl", [{**GOOD, "max_tokens": 0}, {"messages": []}])
    with pytest.raises(ValueError, match="no line is a valid request.*max_tokens=0"):
        load(path, num_requests=0)


@pytest.mark.parametrize(
    "field, value",
    [("max_tokens", 2**64), ("seed", 2**64), ("top_k", 2**40), ("temperature", float("nan")), ("id", "\ud800")],
)
def test_out_of_range_values_fail_their_request(data_dir, field, value):
    path = data_dir / "range.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "x", field: value}) + "\n")
    good, bad = load(path, num_requests=0)
    assert good.error is None
    assert field in bad.error or "Unicode" in bad.error, bad.error


def test_missing_file_and_no_measured_requests(data_dir):
    with pytest.raises(ValueError, match="no such file"):
        load(data_dir / "absent.jsonl")
    path = write_jsonl(data_dir / "one.jsonl", [GOOD])
    with pytest.raises(ValueError, match="none left to measure"):
        load(path, warmup_requests=1)


def test_video_audio_and_input_audio_parts(data_dir):
    clip = data_dir / "media" / "clip.mp4"
    mp3_b64 = base64.b64encode(b"ID3 not really an mp3").decode()
    line = user_parts(
        {"type": "video_url", "video_url": {"url": "media/clip.mp4"}},
        {"type": "video_url", "video_url": {"url": clip.as_uri()}},
        {"type": "audio_url", "audio_url": {"url": "sound.flac"}},
        {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
        audio_part(WAV_B64, "wav"),
        audio_part(mp3_b64, "mp3"),
        {"type": "text", "text": "Describe."},
    )
    (request,) = load(write_jsonl(data_dir / "av.jsonl", [line]))
    assert request.messages[0]["content"] == [
        {"type": "video_url", "video_url": {"url": str(clip)}},  # relative to the JSONL file
        {"type": "video_url", "video_url": {"url": clip.as_uri()}},
        {"type": "audio_url", "audio_url": {"url": str(data_dir / "sound.flac")}},
        {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
        {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{WAV_B64}"}},
        {"type": "audio_url", "audio_url": {"url": f"data:audio/mp3;base64,{mp3_b64}"}},
        {"type": "text", "text": "Describe."},
    ]
    data_uri = request.messages[0]["content"][4]["audio_url"]["url"]
    assert base64.b64decode(data_uri.partition(",")[2]) == b"RIFF....WAVE not really audio"


def test_media_is_checked_at_fetch_time_not_load_time(data_dir):
    """A missing file must fail its own request in the encoder, not the whole workload up front."""
    lines = [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "gone.png"}}]}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}
            ]
        },
    ]
    reqs = load(write_jsonl(data_dir / "ok.jsonl", lines))
    assert reqs[0].messages[0]["content"][0]["image_url"]["url"] == str(data_dir / "gone.png")
    assert len(reqs) == 2
