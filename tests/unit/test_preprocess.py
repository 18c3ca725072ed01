"""The device path of the processors (``epd.models.preprocess``) equals the checkpoint's HF processor.

On the CPU the integer resize (``integer_resize_on_cpu``) stands in for what runs on a GPU, so every
tensor the tower takes is checked bit for bit here; the ``gpu`` tests repeat the checks on CUDA.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import epd.models.preprocess as preprocess
from epd.bench.preprocess import photo
from epd.encoder.config import EncoderConfig
from epd.media import AudioClip, MediaConfig, VideoClip
from epd.models import MediaInput, detect_family
from epd.models.preprocess import DevicePreprocessor, resolve_preprocess_device, runs_on_device
from epd.tiny import cached_shape, cached_tiny
from tests.kernel_helpers import gpu

CPU = torch.device("cpu")
IMAGE_TEXT = ["<|vision_start|><|image_pad|><|vision_end|>"]
# (width, height): a 1080p photo, a noisy 360p, portrait, an extreme strip; on the GPU also one over
# the released pixel budgets (downscaled; on the CPU the tiny checkpoints' budgets downscale instead)
IMAGES = [(1920, 1080, "photo"), (640, 360, "noise"), (200, 400, "photo"), (1000, 37, "noise")]
OVER_BUDGET = (5000, 3500, "photo")


def pixels(width: int, height: int, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "photo":
        return photo(width, height, seed)
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)  # [3, H, W], as load_image_tensor returns it


GPU_F32_TOL = 1e-6
"""Stated tolerance of the device path's float tensors on a GPU: one float32 rounding of the
normalisation (expected 0: uint8 resize, subtract and divide are exact on both; the bench prints it)."""


AUDIO_TOL = 1e-4
"""Stated tolerance of Whisper log-mel features computed on a GPU (transformers: ~1e-5)."""


def assert_same(host, dev, f32_tol: float = 0.0) -> None:
    """Every tensor of the processor output identical (values on the host), bf16 casts too; with
    ``f32_tol``, float tensors within it and their bf16 casts within one bf16 rounding step."""
    assert set(host) == set(dev)
    for key, want in host.items():
        got = dev[key]
        if not isinstance(want, torch.Tensor):
            assert got == want, key
            continue
        got = got.cpu()
        assert got.dtype == want.dtype and got.shape == want.shape, key
        diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
        if not want.is_floating_point() or not f32_tol:
            assert torch.equal(got, want), f"{key}: max diff {diff}"
        assert diff <= f32_tol, f"{key}: max diff {diff} > {f32_tol}"
        if want.is_floating_point():
            step = want.abs().max().item() * 2**-7  # a bf16 rounding step at the largest magnitude
            bf16 = (got.bfloat16().double() - want.bfloat16().double()).abs().max().item()
            assert bf16 <= (step if f32_tol else 0.0), f"{key}: bf16 max diff {bf16}"


@pytest.fixture
def resize_calls(monkeypatch) -> list[tuple]:
    """Records each call of the integer resize (a spy: the real function still runs)."""
    calls = []
    real = preprocess.resize_uint8

    def spy(images, size, mode="bicubic"):
        calls.append((tuple(images.shape), size, mode))
        return real(images, size, mode)

    monkeypatch.setattr(preprocess, "resize_uint8", spy)
    return calls


@pytest.mark.parametrize(("family", "shape"), [("qwen2_5_vl", "7b"), ("qwen3_vl", "8b")])
def test_images_at_released_budgets_equal_the_processor(family, shape, resize_calls):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(cached_shape(family, shape))
    prep = DevicePreprocessor(processor, CPU, integer_resize_on_cpu=True)
    for width, height, kind in IMAGES:
        image = pixels(width, height, kind)
        host = processor(text=IMAGE_TEXT, images=[Image.fromarray(image)], return_tensors="pt")
        assert_same(host, prep(text=IMAGE_TEXT, images=[as_tensor(image)]))
    assert len(resize_calls) == len(IMAGES)  # every image went through the integer resize


def real_photos() -> list[torch.Tensor]:
    """Grace Hopper's portrait (matplotlib's sample JPEG, 600x512) decoded as the encoder decodes it, whole,
    cropped to a strip and enlarged to 1080p: real content at several sizes and aspect ratios."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from epd.media.image import load_image_tensor

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    whole = load_image_tensor(str(path), cfg=MediaConfig(allowed_dirs=[str(Path(path).parent)]))
    enlarged = Image.fromarray(whole.permute(1, 2, 0).numpy()).resize((1920, 1080), Image.LANCZOS)
    return [whole, whole[:, 200:330, :], torch.from_numpy(np.array(enlarged)).permute(2, 0, 1)]


ON_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize(("family", "shape"), [("qwen2_5_vl", "7b"), ("qwen3_vl", "8b")])
def test_a_real_photo_equals_the_processor(family, shape, device, resize_calls):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(cached_shape(family, shape))
    prep = DevicePreprocessor(processor, device, integer_resize_on_cpu=True)
    photos = real_photos()
    for image in photos:
        host = processor(text=IMAGE_TEXT, images=[Image.fromarray(image.permute(1, 2, 0).numpy())], return_tensors="pt")
        dev = prep(text=IMAGE_TEXT, images=[image])
        prep.synchronize()
        assert_same(host, dev, GPU_F32_TOL if device == "cuda" else 0.0)
    assert len(resize_calls) == len(photos)


def tiny_encoder(family: str):
    ckpt = cached_tiny(family)
    return detect_family(ckpt).load_encoder(ckpt, False, CPU, torch.float32)


def video_clip(frames: int, width: int, height: int, fps: float = 4.0) -> VideoClip:
    stack = np.stack([pixels(width, height, "photo" if i % 2 else "noise", seed=i) for i in range(frames)])
    indices = np.arange(frames, dtype=np.int64) * 2
    return VideoClip(
        frames=stack,
        indices=indices,
        timestamps=indices / (2 * fps),
        fps=2 * fps,
        num_source_frames=2 * frames,
        duration=frames / fps,
        backend="pyav",
    )


def audio_clip(seconds: float, rate: int = 16000) -> AudioClip:
    samples = (np.random.default_rng(1).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    return AudioClip(samples=samples, sampling_rate=rate, duration=seconds)


def items(encoder) -> list[MediaInput]:
    """One item of each modality the encoder takes (a video with its audio track where it can)."""
    sampling = encoder.frame_sampling(MediaConfig()) if "video" in encoder.modalities else None
    out = []
    if "image" in encoder.modalities:  # enlarged, and reduced (past the tiny checkpoints' pixel budget)
        out.append(MediaInput(modality="image", data=as_tensor(pixels(130, 90, "photo"))))
        out.append(MediaInput(modality="image", data=as_tensor(pixels(640, 480, "noise"))))
    if "video" in encoder.modalities:
        out.append(MediaInput(modality="video", data=video_clip(6, 160, 120), sampling=sampling))
    if "audio" in encoder.modalities:
        out.append(MediaInput(modality="audio", data=audio_clip(1.5, encoder.audio_sampling_rate)))
    if encoder.audio_in_video:
        clip, track = video_clip(6, 128, 96), audio_clip(3.0, encoder.audio_sampling_rate)
        out.append(MediaInput(modality="video", data=clip, sampling=sampling, audio=track))
    return out


def host_input(inp: MediaInput) -> MediaInput:
    """The same item as the host path gets it (images as PIL)."""
    data = inp.data
    if inp.modality == "image":
        data = Image.fromarray(inp.data.permute(1, 2, 0).numpy())
    return MediaInput(modality=inp.modality, data=data, sampling=inp.sampling, audio=inp.audio)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_audio", "qwen3_omni"])
def test_every_family_and_modality_equals_the_host_processor(family, resize_calls):
    """Through each family's own ``_process`` (placeholder text, video metadata, audio in video)."""
    encoder = tiny_encoder(family)
    inputs = items(encoder)
    hosts = [encoder.preprocess(host_input(inp)).features for inp in inputs]
    encoder._device_preprocessor = DevicePreprocessor(encoder.processor, CPU, integer_resize_on_cpu=True)
    for inp, host in zip(inputs, hosts, strict=True):
        assert_same(host, encoder.preprocess(inp).features)
    visual = sum(inp.modality in ("image", "video") for inp in inputs)
    assert len(resize_calls) == visual


def test_embeddings_equal_on_both_paths():
    """The tower's embeddings from device-path features equal the host path's (float32, CPU)."""
    encoder = tiny_encoder("qwen3_vl")
    host = encoder.encode([host_input(inp) for inp in items(encoder)])
    encoder.set_preprocess_device("device")
    assert encoder.preprocess_device == CPU
    dev = encoder.encode(items(encoder))
    for a, b in zip(host, dev, strict=True):
        assert a.meta == b.meta
        assert set(a.tensors) == set(b.tensors)
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_switch():
    cuda = torch.device("cuda", 0)
    assert resolve_preprocess_device("auto", CPU) is None
    assert resolve_preprocess_device("auto", cuda) == cuda
    assert resolve_preprocess_device("host", cuda) is None
    assert resolve_preprocess_device("device", CPU) == CPU
    with pytest.raises(ValueError, match="encoder.preprocess_device='gpu'"):
        resolve_preprocess_device("gpu", cuda)
    with pytest.raises(ValueError, match="choose one of auto, host, device"):
        EncoderConfig(preprocess_device="cuda")
    assert EncoderConfig().preprocess_device == "auto"


def test_a_pil_backed_processor_stays_on_the_host():
    """transformers' PIL backend has no device math: ``auto`` keeps it on the host, ``device`` refuses it."""
    from transformers import AutoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    encoder = tiny_encoder("qwen2_5_vl")
    assert runs_on_device(encoder.processor)
    processor = AutoProcessor.from_pretrained(cached_tiny("qwen2_5_vl"))
    processor.image_processor = Qwen2VLImageProcessorPil(**processor.image_processor.to_dict())
    assert not runs_on_device(processor)
    encoder.processor = processor
    encoder.device = torch.device("cuda", 0)  # where the towers would run: auto would pick the device
    encoder.set_preprocess_device("auto")
    assert encoder.preprocess_device is None
    with pytest.raises(ValueError, match="set encoder.preprocess_device=host"):
        encoder.set_preprocess_device("device")


# ---- on a GPU ---------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize(("family", "shape"), [("qwen2_5_vl", "7b"), ("qwen3_vl", "8b")])
def test_gpu_images_equal_the_processor(family, shape):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(cached_shape(family, shape))
    prep = DevicePreprocessor(processor, torch.device("cuda"))
    for width, height, kind in [*IMAGES, OVER_BUDGET]:
        image = pixels(width, height, kind)
        host = processor(text=IMAGE_TEXT, images=[Image.fromarray(image)], return_tensors="pt")
        dev = prep(text=IMAGE_TEXT, images=[as_tensor(image)])
        prep.synchronize()
        assert dev["pixel_values"].is_cuda
        assert_same(host, dev, GPU_F32_TOL)


@gpu
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_omni"])
def test_gpu_videos_equal_and_audio_within_tolerance(family):
    """Every family's items on the GPU: images and videos as on the CPU (``GPU_F32_TOL``), Whisper
    log-mel (cuFFT) within ``AUDIO_TOL`` of the host's; ids, grids and masks identical."""
    encoder = tiny_encoder(family)
    inputs = items(encoder)
    hosts = [encoder.preprocess(host_input(inp)).features for inp in inputs]
    encoder._device_preprocessor = DevicePreprocessor(encoder.processor, torch.device("cuda"))
    for inp, host in zip(inputs, hosts, strict=True):
        dev = dict(encoder.preprocess(inp).features)
        mel = host.get("input_features")
        if mel is not None:  # audio clips and videos' tracks: features back on the host, near the host's
            diff = (dev.pop("input_features").double() - mel.double()).abs().max().item()
            assert diff <= AUDIO_TOL, f"{inp.modality}: log-mel max diff {diff}"
            host = {k: v for k, v in host.items() if k != "input_features"}
        assert_same(host, dev, GPU_F32_TOL)


@gpu
def test_gpu_preprocessing_does_not_wait_for_the_tower_stream():
    """With the default stream busy (a ~1 s spin standing in for a tower call), an image is preprocessed
    on the side stream and ready while the default stream is still running."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(cached_shape("qwen2_5_vl", "7b"))
    prep = DevicePreprocessor(processor, torch.device("cuda"))
    image = as_tensor(pixels(1920, 1080, "photo"))
    prep(text=IMAGE_TEXT, images=[image])  # warm-up: caches, pinned blocks
    prep.synchronize()
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of cycles on the default stream
    start = time.perf_counter()
    out = prep(text=IMAGE_TEXT, images=[image])
    prep.synchronize()
    elapsed = time.perf_counter() - start
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy, "the default stream finished first: the spin was too short to tell"
    assert elapsed < 0.25, f"preprocessing took {elapsed:.3f} s behind a busy default stream"
    assert out["pixel_values"].shape == (10764, 1176)
