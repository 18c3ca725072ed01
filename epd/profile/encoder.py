"""The encoder's part of a profile: media fetch + decode, the family's processor, and tower calls.

Each item is a real file written here (a synthetic JPEG, mp4 or wav) and goes through the code an
encoder runs: ``MediaDecoder.decode`` (fetch and decode), ``TowerEncoder.preprocess`` (the HF
processor), ``TowerEncoder.encode`` (the towers, packed across items). Fetch and processor times
are those of the encoder's own decode threads, ``decode_threads`` items at a time
(``epd.profile.pool``); the times of one item alone are kept beside them (``alone``). Sizes: pixels of an image,
seconds x pixels of a video, seconds of audio (``epd.profile.schema``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from epd.encoder.config import EncoderConfig
from epd.encoder.decode import MediaDecoder
from epd.frontend.chat import MediaRef
from epd.frontend.probe import MediaProbe
from epd.media import MediaConfig
from epd.models import EncodedItem, MediaInput, TowerEncoder
from epd.profile.config import ProfileOptions
from epd.profile.fit import fit_linear, fit_nnls, fit_piecewise
from epd.profile.pool import in_pool_times
from epd.profile.timing import typical_time
from epd.protocol import EncodeItem
from epd.scheduler.config import SchedulerConfig
from epd.workload import parse_resolution
from epd.workload.media import ImageSpec, write_image

TOWER_FEATURES = ("one", "items", "tokens", "tokens_sq")
VIDEO_SIZE = (640, 360)
VIDEO_FPS = 30.0


def media_files(modality: str, opts: ProfileOptions, workdir: Path) -> list[tuple[Path, float]]:
    """(file, size) of each item to time for ``modality``, smallest first."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    if modality == "image":
        for i, res in enumerate(opts.image_sizes):
            w, h = parse_resolution(res)
            path = workdir / f"profile-{w}x{h}.jpg"
            write_image(ImageSpec(path=path, width=w, height=h, image_format="jpeg", seed_keys=(0, 99, i)))
            out.append((path, float(w * h)))
    elif modality == "video":
        from epd.media.synth import write_test_video

        for s in opts.video_seconds:
            path = workdir / f"profile-{s:g}s.mp4"
            if not path.exists():
                write_test_video(path, s, VIDEO_FPS, VIDEO_SIZE, False, 0)
            out.append((path, s * VIDEO_SIZE[0] * VIDEO_SIZE[1]))
    else:
        from epd.media.synth import write_test_audio

        for s in opts.audio_seconds:
            path = workdir / f"profile-{s:g}s.wav"
            if not path.exists():
                write_test_audio(path, s, 16000, "wav", 0)
            out.append((path, float(s)))
    return sorted(out, key=lambda f: f[1])


@dataclass
class ModalityResult:
    costs: dict
    """The modality's ``fetch_s``, ``preprocess_s``, ``tower_s``."""
    probe_s: dict
    """The frontend sizing and hashing one item."""
    shapes: dict
    """Tensor name → shape of one encoded item."""
    sample: EncodedItem
    """An encoded item of the middle size (the language profile merges it into prompts)."""


def measure_modality(
    tower: TowerEncoder, decoder: MediaDecoder, modality: str, opts: ProfileOptions, device: torch.device, workdir: Path,
    encoder_cfg: EncoderConfig,
) -> ModalityResult:  # fmt: skip
    """This modality's costs, the frontend's probe of its items and what its embeddings look like."""
    cpu = torch.device("cpu")
    fetch, prep, probe, tower_points, pool_fetch, pool_prep = [], [], [], [], [], []
    processed: list[MediaInput] = []
    shape: dict = {}
    image_processor = decoder.image_processor
    for path, size in media_files(modality, opts, workdir):
        msg = EncodeItem(request_id="profile", index=0, modality=modality, source=str(path), language_rank=0)
        ref = MediaRef(modality, str(path))
        fresh = lambda r=ref: MediaProbe(decoder.scheduler, decoder.media, True, image_processor).item("p", 0, r)  # noqa: E731
        probe.append([size, typical_time(fresh, cpu, opts.repeats)])
        fetch.append([size, typical_time(lambda m=msg: decoder.decode(m), cpu, opts.repeats)])
        raw = decoder.decode(msg)
        prep.append([size, typical_time(lambda r=raw: tower.preprocess(replace(r, features=None)), cpu, opts.repeats)])
        pooled = in_pool_times(tower, decoder.media, decoder.scheduler, encoder_cfg, modality, str(path),
                               opts.repeats, device)  # fmt: skip
        pool_fetch.append([size, pooled[0]])
        pool_prep.append([size, pooled[1]])
        inp = tower.preprocess(replace(raw, features=None))
        encoded = tower.encode([inp])[0]
        tokens = encoded.meta.num_embeds
        seconds = typical_time(lambda i=inp: tower.encode([i]), device, opts.repeats)
        tower_points.append({"tokens": [tokens], "s": seconds})
        processed.append(inp)
        shape = {name: list(t.shape) for name, t in encoded.tensors.items()}
    middle = processed[len(processed) // 2]
    sample = tower.encode([middle])[0]
    tokens = sample.meta.num_embeds
    for k in opts.batch_items:
        if k > 1:
            seconds = typical_time(lambda k=k: tower.encode([middle] * k), device, opts.repeats)
            tower_points.append({"tokens": [tokens] * k, "s": seconds})
    rows = [[1.0, len(p["tokens"]), sum(p["tokens"]), sum(t * t for t in p["tokens"])] for p in tower_points]
    costs = {
        "size_unit": {"image": "pixels", "video": "seconds x pixels", "audio": "seconds"}[modality],
        "decode_threads": encoder_cfg.decode_threads,
        "fetch_s": _linear(pool_fetch),
        "preprocess_s": _linear(pool_prep),
        "alone": {"fetch_s": _linear(fetch), "preprocess_s": _linear(prep)},
        "tower_s": {"points": tower_points, "fit": fit_nnls(TOWER_FEATURES, rows, [p["s"] for p in tower_points])},
    }
    return ModalityResult(costs=costs, probe_s=_linear(probe), shapes=shape, sample=sample)


def _linear(points: list[list[float]]) -> dict:
    """Times of one size unit: straight lines between the measured sizes (a line through 0 for one)."""
    fit = (
        fit_piecewise([p[0] for p in points], [p[1] for p in points])
        if len(points) > 1
        else fit_linear([0.0, points[0][0]], [0.0, points[0][1]])
    )
    return {"points": points, "fit": fit}


def measure_encoder(
    tower: TowerEncoder, media: MediaConfig, scheduler: SchedulerConfig, opts: ProfileOptions, device: torch.device,
    workdir: Path, encoder_cfg: EncoderConfig | None = None,
) -> dict[str, ModalityResult]:  # fmt: skip
    """Per modality the tower takes: its costs, the frontend's probe, the embeddings' shapes, a sample item."""
    decoder = MediaDecoder(tower, media, scheduler)
    cfg = encoder_cfg or EncoderConfig()
    return {m: measure_modality(tower, decoder, m, opts, device, workdir, cfg) for m in tower.modalities}
