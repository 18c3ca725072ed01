"""Preprocessing benchmark: the checkpoint's HF processor on the host vs epd's device path, one run.

    python -m epd.bench.preprocess                      # GPU if there is one, else CPU (labelled)
    python -m epd.bench.preprocess --device cpu --repeats 3

Rows (Qwen2.5-VL-7B and Qwen3-VL-8B processors with the released pixel budgets): one 1080p image
and eight, one at a time as the encoder's decode threads take them; a 16-frame 720p video; a 30 s
audio clip (Whisper log-mel); decoding a 1080p JPEG (Pillow, torchvision on the CPU, nvjpeg on a
GPU). The host path is what the encoder ran before: a decoded PIL image (frames, samples) handed to
``processor(...)``. The device path is ``epd.models.preprocess.DevicePreprocessor``: a uint8 tensor
uploaded, resized / normalised / patchified on the device, placeholders tokenized on the host,
timed until its device work is done. Each row also gives the largest difference of the device
path's tensors from the host's (float32 and bf16) and whether grids and ids are identical; the floor
is the upload of the uint8 pixels plus one write of ``pixel_values`` at the rates measured here.
On the CPU the device path is the same transformers code on CPU tensors: its ratio says only that
nothing was lost, not what a GPU gains.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

FAMILIES = {"qwen2_5_vl": "7b", "qwen3_vl": "8b"}
PLACEHOLDER = {"image": "<|vision_start|><|image_pad|><|vision_end|>", "video": "<|vision_start|><|video_pad|><|vision_end|>"}  # fmt: skip


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image [H, W, 3] uint8: smooth colour fields, hard-edged shapes and fine grain,
    the structure resampling meets in photographs (pure noise is the worst case; tests use both)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 90), max(2, width // 90), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):  # discs and bars with sharp edges
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(2, max(3, min(width, height) // 4)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r // 3, x + r, y + r), fill=colour)
    grain = rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
    return np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def median_ms(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call, the device drained around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compare(host: Any, dev: Any, pixel_key: str, grid_key: str) -> str:
    """Max |device - host| of the pixel tensor in float32 and bf16, and whether grids and ids match."""
    a, b = host[pixel_key].float(), dev[pixel_key].float().cpu()
    f32 = (a - b).abs().max().item()
    bf16 = (a.bfloat16().float() - b.bfloat16().float()).abs().max().item()
    same = torch.equal(host[grid_key], dev[grid_key].cpu()) and torch.equal(host["input_ids"], dev["input_ids"])
    return f"{f32:.2g} / {bf16:.2g} | {'yes' if same else 'NO'}"


def link_rates(device: torch.device) -> tuple[float, float]:
    """(host→device GB/s from pinned memory, device copy GB/s counting read + write), measured now."""
    if device.type != "cuda":
        return float("inf"), float("inf")
    host = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(host, device=device)
    up = median_ms(lambda: dev.copy_(host, non_blocking=True), 5, device)
    other = torch.empty_like(dev)
    copy = median_ms(lambda: other.copy_(dev), 5, device)
    return host.numel() / up / 1e6, 2 * host.numel() / copy / 1e6


def image_rows(family: str, device: torch.device, repeats: int, rates: tuple[float, float]) -> list[str]:
    from transformers import AutoProcessor

    from epd.models.preprocess import DevicePreprocessor
    from epd.tiny import cached_shape

    processor = AutoProcessor.from_pretrained(cached_shape(family, FAMILIES[family]))
    prep = DevicePreprocessor(processor, device)
    text = [PLACEHOLDER["image"]]
    images = [photo(1920, 1080, seed) for seed in range(8)]
    pils = [Image.fromarray(x) for x in images]
    tensors = [torch.from_numpy(x).permute(2, 0, 1) for x in images]  # [3, H, W] views, as decoded

    def host(n: int) -> list[Any]:
        return [processor(text=text, images=[img], return_tensors="pt") for img in pils[:n]]

    def dev(n: int) -> list[Any]:
        outs = [prep(text=text, images=[img]) for img in tensors[:n]]
        prep.synchronize()
        return outs

    rows = []
    for n in (1, 8):
        t_host, t_dev = median_ms(lambda n=n: host(n), repeats, device), median_ms(lambda n=n: dev(n), repeats, device)
        out = dev(1)[0]
        floor = n * (images[0].nbytes / rates[0] + out["pixel_values"].numel() * 4 / rates[1]) / 1e6
        floor_text = f"{floor:.2f}" if device.type == "cuda" else "—"
        check = compare(host(1)[0], out, "pixel_values", "image_grid_thw")
        rows.append(
            f"| {family} image 1080p ×{n} | {t_host:.1f} | {t_dev:.2f} | {t_host / t_dev:.1f}× | {floor_text} | {check} |"
        )
    return rows


def video_row(family: str, device: torch.device, repeats: int) -> str:
    from transformers import AutoProcessor

    from epd.models.preprocess import DevicePreprocessor
    from epd.tiny import cached_shape

    processor = AutoProcessor.from_pretrained(cached_shape(family, FAMILIES[family]))
    prep = DevicePreprocessor(processor, device)
    frames = np.stack([photo(1280, 720, seed) for seed in range(16)])  # [T, H, W, 3]
    kwargs = {"text": [PLACEHOLDER["video"]], "do_sample_frames": False, "fps": 2.0}

    def dev() -> Any:
        out = prep(videos=[frames], **kwargs)
        prep.synchronize()
        return out

    t_host = median_ms(lambda: processor(videos=[frames], return_tensors="pt", **kwargs), repeats, device)
    t_dev = median_ms(dev, repeats, device)
    host = processor(videos=[frames], return_tensors="pt", **kwargs)
    check = compare(host, dev(), "pixel_values_videos", "video_grid_thw")
    return f"| {family} video 16×720p | {t_host:.1f} | {t_dev:.2f} | {t_host / t_dev:.1f}× | — | {check} |"


def audio_row(device: torch.device, repeats: int) -> str:
    """Qwen2-Audio's Whisper features of a 30 s clip (128 mel bins): host numpy/torch vs the device."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128)
    samples = np.random.default_rng(0).standard_normal(30 * 16000).astype(np.float32) * 0.1
    kwargs = {"sampling_rate": 16000, "return_attention_mask": True, "padding": "max_length", "return_tensors": "pt"}
    t_host = median_ms(lambda: extractor([samples], **kwargs), repeats, device)
    t_dev = median_ms(lambda: extractor([samples], device=str(device), **kwargs), repeats, device)
    diff = (extractor([samples], **kwargs)["input_features"] - extractor([samples], device=str(device), **kwargs)["input_features"]).abs().max().item()  # fmt: skip
    return f"| audio 30 s log-mel | {t_host:.1f} | {t_dev:.2f} | {t_host / t_dev:.1f}× | — | {diff:.2g} / — | — |"


def decode_rows(device: torch.device, repeats: int) -> list[str]:
    """One 1080p JPEG decoded by Pillow (+ RGB convert), torchvision on the CPU, and nvjpeg on a GPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = jpeg_bytes(photo(1920, 1080))
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def pillow() -> Any:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    t_pil = median_ms(pillow, repeats, torch.device("cpu"))
    rows = [f"| decode 1080p JPEG: Pillow | {t_pil:.1f} | — | — | — | — | — |"]
    ways = [("torchvision (CPU)", "cpu")] + ([("nvjpeg", str(device))] if device.type == "cuda" else [])
    for name, where in ways:
        t = median_ms(lambda where=where: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=where), repeats, device)
        got = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=where).cpu().permute(1, 2, 0).numpy()
        diff = int(np.abs(got.astype(int) - pil.astype(int)).max())
        rows.append(f"| decode 1080p JPEG: {name} | {t_pil:.1f} | {t:.2f} | {t_pil / t:.1f}× | — | {diff} levels | — |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m epd.bench.preprocess", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU: the device path is torch on the CPU"
    rates = link_rates(device)
    print(f"# preprocessing, host HF processor vs epd device path ({label})")
    if device.type == "cuda":
        print(f"# measured: host→device {rates[0]:.0f} GB/s pinned, device copy {rates[1]:.0f} GB/s (read + write)")
    print("| work | host ms | device ms | host/device | floor ms | max abs diff f32 / bf16 | grids, ids equal |")
    print("|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        for row in image_rows(family, device, args.repeats, rates):
            print(row, flush=True)
    print(video_row("qwen2_5_vl", device, max(3, args.repeats // 3)), flush=True)
    print(audio_row(device, args.repeats), flush=True)
    for row in decode_rows(device, args.repeats):
        print(row, flush=True)


if __name__ == "__main__":
    main()
