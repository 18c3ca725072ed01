"""The media source policy (``epd.media.source``) on local files: allowed folders, symlinks, devices,
FIFOs, folders, huge files, and ``data:`` URIs; every entry point (reader, probe, hasher) agrees.

http(s) hops, private addresses and TLS are in test_media_policy_http.py.
"""

from __future__ import annotations

import base64
import os
import time
from urllib.parse import quote_from_bytes

import pytest
from PIL import Image

from epd.frontend.chat import MediaRef
from epd.frontend.probe import MediaProbe
from epd.media import MediaConfig, MediaError, check_source, content_digest, fetch_bytes, image_size, load_image
from epd.media.errors import short
from epd.scheduler import SchedulerConfig
from epd.scheduler.content_hash import ContentHasher


def entry_points(cfg: MediaConfig) -> dict:
    """Every public way a source is opened: the encoders' reader and decoder, the frontend's probe and hasher."""
    probe = MediaProbe(SchedulerConfig(), cfg, hash_content=True)

    def probe_item(source: str):
        return probe.item("r", 0, MediaRef("image", source))

    return {
        "fetch_bytes": lambda s: fetch_bytes(s, cfg=cfg),
        "load_image": lambda s: load_image(s, cfg=cfg),
        "check_source": lambda s: check_source(s, cfg),
        "content_digest": lambda s: content_digest(s, cfg),
        "image_size": lambda s: image_size(s, cfg),
        "ContentHasher": ContentHasher(cfg).hash,
        "MediaProbe.item": probe_item,
    }


def error_of(call, source: str) -> str:
    with pytest.raises(MediaError) as err:
        call(source)
    return str(err.value)


@pytest.fixture
def folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    Image.new("RGB", (12, 8), (1, 2, 3)).save(allowed / "in.png")
    Image.new("RGB", (12, 8), (4, 5, 6)).save(outside / "secret.png")
    return allowed, outside


def test_inside_is_read_by_every_entry_point(folders):
    allowed, _ = folders
    for name, call in entry_points(MediaConfig(allowed_dirs=[str(allowed)])).items():
        assert call(str(allowed / "in.png")) is not None, name
        assert call((allowed / "in.png").as_uri()) is not None, name


@pytest.mark.parametrize("dirs", [None, []])
def test_no_allowed_dirs_means_no_local_files(folders, dirs):
    allowed, _ = folders
    for name, call in entry_points(MediaConfig(allowed_dirs=dirs)).items():
        assert "inside media.allowed_dirs" in error_of(call, str(allowed / "in.png")), name


def test_refusal_does_not_tell_whether_the_file_exists(folders):
    allowed, outside = folders
    cfg = MediaConfig(allowed_dirs=[str(allowed)])
    up = "/.." * len(allowed.parts)  # from allowed/ up to /
    pairs = [  # (exists, missing): the same message once the name is swapped
        (f"{allowed}{up}/etc/passwd", f"{allowed}{up}/etc/no-such-file"),
        ("file:///etc/shadow", "file:///etc/no-such-shadow"),
        ("../../etc/passwd", "../../etc/no-such-file"),
        (f"{allowed}/../outside/secret.png", f"{allowed}/../outside/gone.png"),
    ]
    for name, call in entry_points(cfg).items():
        for there, missing in pairs:
            got = error_of(call, there)
            assert "media.allowed_dirs" in got, (name, got)
            assert got == error_of(call, missing).replace(short(missing), short(there)), (name, got)
        # the very same path, before and after the file is gone: not one character differs
        before = error_of(call, str(outside / "secret.png"))
        os.rename(outside / "secret.png", outside / "moved.png")
        assert error_of(call, str(outside / "secret.png")) == before, name
        os.rename(outside / "moved.png", outside / "secret.png")


def test_symlinks_are_resolved_before_the_check(folders):
    allowed, outside = folders
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "inner.png").symlink_to(allowed / "in.png")
    (allowed / "sub").symlink_to(outside, target_is_directory=True)
    link_to_allowed = allowed.parent / "allowed-link"
    link_to_allowed.symlink_to(allowed, target_is_directory=True)
    cfg = MediaConfig(allowed_dirs=[str(allowed)])
    for name, call in entry_points(cfg).items():
        assert "inside media.allowed_dirs" in error_of(call, str(allowed / "link.png")), name
        assert "inside media.allowed_dirs" in error_of(call, str(allowed / "sub" / "secret.png")), name
        assert call(str(allowed / "inner.png")) is not None, name  # a link that stays inside is fine
        assert call(str(link_to_allowed / "in.png")) is not None, name  # a path through a link to it too
    via_link = MediaConfig(allowed_dirs=[str(link_to_allowed)])  # an allowed folder named through a link
    assert fetch_bytes(str(allowed / "in.png"), cfg=via_link) == (allowed / "in.png").read_bytes()


@pytest.mark.timeout(20)
def test_devices_fifos_and_folders_are_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # no writer: opening it for reading without O_NONBLOCK would hang
    (tmp_path / "folder").mkdir()
    cases = {
        "/dev/zero": ("/dev", "a character device"),  # reading it never ends
        str(tmp_path / "fifo"): (str(tmp_path), "a named pipe"),
        str(tmp_path / "folder"): (str(tmp_path), "a folder"),
    }
    for source, (folder, what) in cases.items():
        for name, call in entry_points(MediaConfig(allowed_dirs=[folder])).items():
            start = time.monotonic()
            message = error_of(call, source)
            assert time.monotonic() - start < 1.0, (name, source)
            assert f"is not a regular file (it is {what})" in message, (name, message)
        assert "inside media.allowed_dirs" in error_of(entry_points(MediaConfig())["ContentHasher"], source)


@pytest.mark.timeout(30)
def test_a_huge_file_is_refused_by_its_size_without_being_read(tmp_path):
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB of zeros that take no disk
    cfg = MediaConfig(allowed_dirs=[str(tmp_path)])
    for name, call in entry_points(cfg).items():
        start = time.monotonic()
        message = error_of(call, str(huge))
        assert time.monotonic() - start < 0.25, name  # reading (let alone hashing) 4 GiB takes seconds
        assert message.endswith(f"is {4 << 30} bytes, over media.max_bytes={cfg.max_bytes}"), (name, message)


def test_percent_encoded_data_uris(tmp_path):
    Image.new("RGB", (7, 5), (9, 8, 7)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    percent = "data:image/png," + quote_from_bytes(data)
    assert percent.startswith("data:image/png,%89PNG")
    b64 = "data:image/png;base64," + base64.b64encode(data).decode()
    assert fetch_bytes(percent) == fetch_bytes(b64) == data
    assert load_image(percent).getpixel((0, 0)) == (9, 8, 7) and image_size(percent) == (7, 5)
    cfg = MediaConfig(allowed_dirs=[str(tmp_path)])
    assert content_digest(percent) == content_digest(b64) == ContentHasher(cfg).hash(str(tmp_path / "a.png"))
    assert fetch_bytes("data:image/png,%89PNG") == b"\x89PNG"
    assert fetch_bytes("data:text/plain;charset=utf-8,caf%C3%A9 \u00e9") == "café é".encode()
    assert fetch_bytes("data:;BASE64,aGk%3D") == b"hi"  # base64 that was itself %-encoded
    with pytest.raises(MediaError, match="cannot decode image"):
        load_image("data:image/png,%89PNG")  # only a signature: a MediaError, not a crash


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("data:image/png,\ud800", "not valid percent-encoded text"),  # a lone surrogate cannot be encoded
        ("data:image/png;base64,\u00e9\u00e9\u00e9\u00e9", "not valid base64"),
        ("data:image/png;base64,abc", "not valid base64"),
        ("data:image/png", "no ','"),
        ("data:image/png," + "%41" * 40, "data: URI payload is 40 bytes, over media.max_bytes=39"),
        ("data:image/png;base64," + "A" * 4000, "data: URI payload is 3000 bytes, over media.max_bytes=39"),
    ],
)
def test_bad_data_uris_are_media_errors(uri, message):
    cfg = MediaConfig(max_bytes=39)
    for name, call in entry_points(cfg).items():
        got = error_of(call, uri)
        assert message in got, (name, got)
        assert got.isprintable(), got  # the surrogate is escaped, so the message can be printed and logged


def test_odd_sources(tmp_path):
    cfg = MediaConfig(allowed_dirs=[str(tmp_path)])
    for source, message in [
        ("", "names no file"),
        ("a\0b", "names no file"),
        ("/" + "x" * 5000, "inside media.allowed_dirs"),
        ("file://elsewhere/etc/passwd", "names host 'elsewhere'"),
        ("gopher://host/x", "unsupported scheme"),
        (b"/etc/passwd", "must be a string"),
    ]:
        for name, call in entry_points(cfg).items():
            assert message in error_of(call, source), (name, source)
