"""Fuzzing the public media functions: whatever the bytes or the source string, only MediaError escapes.

Real PNG/JPEG images, WAV/FLAC/MP3 audio and MP4 video (``epd.media.synth``) are mutated (bit
flips, truncation, splices from other files, overwrites) and read back through the decoders, the
frontend's probe and the content hasher, as files and as ``data:`` URIs; arbitrary source strings
and ``data:`` URIs go through the same. Derandomized with no example database, so every run (and
CI) tries the same inputs; the limits are small so a mutated header cannot ask for gigabytes.
"""

from __future__ import annotations

import base64
import io
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from epd.frontend.chat import MediaRef
from epd.frontend.probe import MediaProbe
from epd.media import (
    MediaConfig,
    MediaError,
    check_source,
    content_digest,
    fetch_bytes,
    image_size,
    load_audio,
    load_image,
    load_video,
    load_video_audio,
)
from epd.media.synth import write_test_audio, write_test_video
from epd.scheduler import SchedulerConfig
from epd.scheduler.content_hash import ContentHasher
from tests.unit.test_media_policy_http import serve

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(folder, config, seeds): a folder the config allows, and real media files by kind."""
    root = tmp_path_factory.mktemp("fuzz")
    seeds: dict[str, bytes] = {}
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.effect_noise((24, 16), 64).convert("RGB").save(buf, format=fmt)
        seeds[fmt.lower()] = buf.getvalue()
    for fmt in ("wav", "flac", "mp3"):
        seeds[fmt] = write_test_audio(root / f"seed.{fmt}", 0.25, 16000, fmt=fmt).read_bytes()
    seeds["mp4"] = write_test_video(root / "seed.mp4", 0.5, 8, (32, 24), with_audio=True).read_bytes()
    cfg = MediaConfig(
        allowed_dirs=[str(root)],
        allow_http=False,  # no network from a fuzz test
        max_bytes=1 << 20,
        max_image_pixels=1 << 16,
        max_video_seconds=4.0,
        max_audio_seconds=4.0,
        video_backend="pyav",
    )
    return root, cfg, seeds


EDITS = ["flip"] * 3 + ["overwrite"] * 2 + ["truncate", "splice", "repeat"]  # flips most often


@st.composite
def mutated(draw, seeds: dict[str, bytes], kinds: tuple[str, ...]) -> tuple[str, bytes]:
    """A seed of one of ``kinds``, changed by one to four random edits."""
    kind = draw(st.sampled_from(kinds))
    data = bytearray(seeds[kind])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        end = len(data) - 1
        at = draw(st.one_of(st.integers(0, min(end, 255)), st.integers(0, end)))  # headers are where parsers branch
        edit = draw(st.sampled_from(EDITS))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "truncate":  # anywhere: most cuts inside the header would only test "not media"
            del data[draw(st.integers(0, end)) :]
        elif edit == "splice":  # a piece of another real file: valid structures in the wrong place
            other = seeds[draw(st.sampled_from(sorted(seeds)))]
            start = draw(st.integers(0, len(other) - 1))
            data[at:at] = other[start : start + draw(st.integers(1, 512))]
        elif edit == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(2, 8))
    return kind, bytes(data)


def survives(call, *args, **kwargs) -> None:
    """Run ``call``; returning or a MediaError is fine, any other exception fails the test."""
    try:
        call(*args, **kwargs)
    except MediaError as exc:
        assert " at 0x" not in str(exc), str(exc)  # no object reprs in what the user reads
        str(exc).encode("utf-8")  # printable: no lone surrogates


def frontend_view(source: str, modality: str, cfg: MediaConfig) -> None:
    """What the frontend does with a source: check, probe (size, estimate), hash."""
    survives(check_source, source, cfg)
    survives(image_size, source, cfg)
    survives(content_digest, source, cfg)
    survives(ContentHasher(cfg).hash, source)
    survives(MediaProbe(SchedulerConfig(), cfg, hash_content=True).item, "r", 0, MediaRef(modality, source))


def through_everything(root, cfg, kind: str, data: bytes) -> None:
    path = root / "case.bin"
    path.write_bytes(data)
    percent = "data:application/octet-stream," + quote_from_bytes(data)
    sources = [str(path), path.as_uri(), "data:;base64," + base64.b64encode(data).decode(), percent]
    modality = "image" if kind in ("png", "jpeg") else "audio" if kind in ("wav", "flac", "mp3") else "video"
    for source in sources[:3]:
        frontend_view(source, modality, cfg)
    survives(fetch_bytes, sources[3], cfg=cfg)
    if modality == "image":
        survives(load_image, sources[0], cfg=cfg)
        survives(load_image, sources[3], cfg=cfg)
    elif modality == "audio":
        survives(load_audio, sources[0], cfg)
    else:
        survives(load_video, sources[0], cfg)
        survives(load_video_audio, sources[2], cfg)


@given(data=st.data())
@FUZZ
def test_mutated_images(media, data):
    root, cfg, seeds = media
    kind, content = data.draw(mutated(seeds, ("png", "jpeg")))
    through_everything(root, cfg, kind, content)


@given(data=st.data())
@FUZZ
def test_mutated_audio(media, data):
    root, cfg, seeds = media
    kind, content = data.draw(mutated(seeds, ("wav", "flac", "mp3")))
    through_everything(root, cfg, kind, content)


@given(data=st.data())
@settings(parent=FUZZ, max_examples=100)
def test_mutated_video(media, data):
    root, cfg, seeds = media
    kind, content = data.draw(mutated(seeds, ("mp4",)))
    through_everything(root, cfg, kind, content)
    survives(load_audio, str(root / "case.bin"), cfg)  # a video file handed to the audio decoder
    survives(load_image, str(root / "case.bin"), cfg=cfg)  # ... and to the image decoder


PIECES = ["%", "%8", "%zz", "%89PNG", "%ff", "=", "==", ";base64", ";BASE64", ",", "\ud800", "\x00", "\n", "é"]
text_or_pieces = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(PIECES)), max_size=12).map("".join)


@given(header=text_or_pieces, payload=text_or_pieces)
@settings(parent=FUZZ, max_examples=300)
def test_arbitrary_data_uris(media, header, payload):
    _, cfg, _ = media
    uri = f"data:{header},{payload}"
    for modality in ("image", "audio", "video"):
        frontend_view(uri, modality, cfg)
    survives(fetch_bytes, uri, cfg=cfg)
    survives(load_image, uri, cfg=cfg)
    survives(load_audio, uri, cfg)


SCHEMES = ["", "/", "file://", "file:///", "file://localhost/", "data:", "http://", "https://", "ftp://", "../", "~/"]


@given(scheme=st.sampled_from(SCHEMES), rest=text_or_pieces)
@settings(parent=FUZZ, max_examples=300)
def test_arbitrary_sources(media, scheme, rest):
    root, cfg, _ = media
    for source in (scheme + rest, f"{scheme}{root}/{rest}" if scheme in ("", "file://") else scheme + rest):
        frontend_view(source, "image", cfg)
        survives(fetch_bytes, source, cfg=cfg)
        survives(load_image, source, cfg=cfg)


@pytest.fixture(scope="module")
def redirector():
    """A real server on 127.0.0.1 whose ``/to?<location>`` answers 302 with that Location."""
    with serve("127.0.0.1") as (base, _):
        yield base


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)  # no CR/LF


@given(data=st.data())
@settings(parent=FUZZ, max_examples=100)
def test_arbitrary_redirects(redirector, data):
    """Whatever a server puts in Location: relative, this server, other schemes, malformed, chains."""
    prefix = data.draw(st.sampled_from(["", "/", f"{redirector}/", "/to?", "ftp://", "http://[", "file:", "?", "#"]))
    location = prefix + data.draw(HEADER_TEXT.filter(lambda text: "//" not in text))  # no other hosts: offline
    cfg = MediaConfig(allow_private_addresses=True, max_redirects=2, fetch_timeout_s=5, max_bytes=1 << 16)
    survives(fetch_bytes, f"{redirector}/to?{quote(location)}", cfg=cfg)
    survives(load_image, f"{redirector}/to?{quote(location)}", cfg=cfg)
