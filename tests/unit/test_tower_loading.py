"""Encoders build their towers alone and read only the towers' tensors from the checkpoint.

The reference is the path epd used before: transformers' full model (``from_pretrained``, language
model included) with its towers handed to the same encoder class. For every family and modality the
new loading gives the same ``EncodedItem`` bit for bit (float32, CPU), holds no language-model
weights, loads from a checkpoint stripped of them and from every key layout the families' checkpoints
use, and names the key and the file of a missing or unexpected tower tensor.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from epd.media import AudioClip, MediaConfig
from epd.media.video import VideoClip
from epd.models import MediaInput, detect_family
from epd.tiny import cached_tiny
from tests.kernel_helpers import gpu

CPU = torch.device("cpu")
F32 = torch.float32
FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_audio", "qwen3_omni"]
# the tower tensors' prefixes in each tiny checkpoint (as transformers 5.24 saves them) and another
# layout the family's checkpoints come in (released names vs transformers 5's module names)
SAVED = {
    "qwen2_5_vl": ("visual.",),
    "qwen3_vl": ("model.visual.",),
    "qwen3_vl_moe": ("model.visual.",),
    "qwen2_audio": ("audio_tower.", "multi_modal_projector."),
    "qwen3_omni": ("thinker.visual.", "thinker.audio_tower."),
}
OTHER_LAYOUT = {
    "qwen2_5_vl": ("visual.", "model.visual."),
    "qwen3_vl": ("model.visual.", "visual."),
    "qwen3_vl_moe": ("model.visual.", "visual."),
    "qwen2_audio": ("audio_tower.", "model.audio_tower."),
    "qwen3_omni": ("thinker.visual.", "thinker.model.visual."),
}


def _video(num_frames: int, seed: int) -> VideoClip:
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 112, 140, 3), dtype=np.uint8)
    idx = np.arange(num_frames)
    return VideoClip(
        frames=frames,
        indices=idx,
        timestamps=idx / 2.0,
        fps=2.0,
        num_source_frames=num_frames,
        duration=num_frames / 2.0,
        backend="pyav",
    )


def _audio(seconds: float, rate: int, seed: int) -> AudioClip:
    samples = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
    return AudioClip(samples=samples, sampling_rate=rate, duration=seconds)


def _inputs(encoder) -> list[MediaInput]:
    """Every modality the encoder takes, several items of each (one packed call)."""
    rng = np.random.default_rng(0)
    inputs = []
    if "image" in encoder.modalities:
        for size in [(150, 100), (64, 200)]:
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            inputs.append(MediaInput(modality="image", data=image))
    if "video" in encoder.modalities:
        sampling = encoder.frame_sampling(MediaConfig())
        inputs.append(MediaInput(modality="video", data=_video(4, 1), sampling=sampling))
    if "audio" in encoder.modalities:
        rate = encoder.audio_sampling_rate
        inputs += [MediaInput(modality="audio", data=_audio(s, rate, k)) for k, s in enumerate([1.5, 0.4])]
    if encoder.audio_in_video:
        sampling = encoder.frame_sampling(MediaConfig())
        track = _audio(2.0, encoder.audio_sampling_rate, 5)
        inputs.append(MediaInput(modality="video", data=_video(4, 3), sampling=sampling, audio=track))
    return inputs


def _reference_encoder(name: str, ckpt: Path, device: torch.device = CPU, dtype: torch.dtype = F32):
    """The old loading: transformers' full model, its towers given to the family's encoder class."""
    import transformers
    from transformers import AutoProcessor

    from epd.models.families.qwen2_5_vl import Qwen25Encoder
    from epd.models.families.qwen2_audio import Qwen2AudioEncoder
    from epd.models.families.qwen3_omni import OmniEncoder
    from epd.models.families.qwen3_vl import Qwen3VLEncoder

    processor = AutoProcessor.from_pretrained(ckpt)
    cls = {
        "qwen2_audio": transformers.Qwen2AudioForConditionalGeneration,
        "qwen3_omni": transformers.Qwen3OmniMoeForConditionalGeneration,
    }.get(name, transformers.AutoModelForImageTextToText)
    full = cls.from_pretrained(ckpt, dtype=dtype).to(device).eval()
    if name == "qwen2_audio":
        inner = full.model
        towers = (inner.audio_tower, inner.multi_modal_projector)
        return full, Qwen2AudioEncoder(*towers, processor, full.config, device, dtype)
    if name == "qwen3_omni":
        inner = full.thinker.model
        return full, OmniEncoder(inner.visual, inner.audio_tower, processor, full.thinker.config, device, dtype)
    encoder_cls = Qwen25Encoder if name == "qwen2_5_vl" else Qwen3VLEncoder
    return full, encoder_cls(full.model.visual, processor, full.config, device, dtype)


def _modules(encoder) -> list[torch.nn.Module]:
    return [value for value in vars(encoder).values() if isinstance(value, torch.nn.Module)]


def _num_params(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _assert_same_items(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.meta == w.meta
        assert g.tensors.keys() == w.tensors.keys()
        for key, tensor in g.tensors.items():
            assert tensor.dtype == w.tensors[key].dtype and torch.equal(tensor, w.tensors[key]), key


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    """(family name, checkpoint, reference full model, reference encoder, new encoder)."""
    ckpt = cached_tiny(request.param)
    full, reference = _reference_encoder(request.param, ckpt)
    encoder = detect_family(ckpt).load_encoder(ckpt, False, CPU, F32)
    return request.param, ckpt, full, reference, encoder


def test_same_items_bit_for_bit(pair):
    _, _, _, reference, encoder = pair
    inputs = _inputs(encoder)
    assert {inp.modality for inp in inputs} == set(encoder.modalities)
    _assert_same_items(encoder.encode(inputs), reference.encode(inputs))


def test_holds_only_the_towers(pair):
    """The encoder's modules are exactly the full model's towers: no language-model parameter."""
    _, ckpt, full, reference, encoder = pair
    towers = _modules(encoder)
    assert [type(m) for m in towers] == [type(m) for m in _modules(reference)]
    assert _num_params(towers) == _num_params(_modules(reference))
    language = sum(p.numel() for name, p in full.named_parameters() if "language_model" in name or "lm_head" in name)
    assert language > 0 and _num_params(towers) <= full.num_parameters() - language
    # the same modules built on the meta device (what the memory estimate counts)
    meta = detect_family(ckpt).build_towers(AutoConfig.from_pretrained(ckpt), "meta", F32)
    assert sum(p.numel() for p in meta.parameters()) == _num_params(towers)


def _rewrite(ckpt: Path, out: Path, keep=None, rename=None, extra=None) -> Path:
    """A copy of ``ckpt`` whose model.safetensors keeps the keys ``keep`` accepts, renamed by ``rename``."""
    shutil.copytree(ckpt, out)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors = {(rename(k) if rename else k): v for k, v in tensors.items() if keep is None or keep(k)}
    tensors.update(extra or {})
    save_file(tensors, str(out / "model.safetensors"))
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_towers_only_checkpoint_in_either_layout(name, tmp_path):
    """A checkpoint without any language-model tensor loads (nothing of the LM is read), and so does
    one with the towers under the family's other naming."""
    ckpt = cached_tiny(name)
    want = detect_family(ckpt).load_encoder(ckpt, False, CPU, F32)
    inputs = _inputs(want)
    old, new = OTHER_LAYOUT[name]
    towers_only = _rewrite(ckpt, tmp_path / "towers", keep=lambda k: k.startswith(SAVED[name]))
    renamed = _rewrite(
        ckpt, tmp_path / "renamed", keep=lambda k: k.startswith(SAVED[name]), rename=lambda k: k.replace(old, new, 1)
    )
    for path in (towers_only, renamed):
        got = detect_family(path).load_encoder(path, False, CPU, F32)
        _assert_same_items(got.encode(inputs), want.encode(inputs))


def test_missing_unexpected_and_misshapen_tower_tensors_are_named(tmp_path):
    ckpt = cached_tiny("qwen2_5_vl")
    family = detect_family(ckpt)
    gone = "visual.blocks.1.mlp.down_proj.weight"
    missing = _rewrite(ckpt, tmp_path / "missing", keep=lambda k: k != gone)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.down_proj\.weight.*model\.safetensors"):
        family.load_encoder(missing, False, CPU, F32)
    stray = _rewrite(ckpt, tmp_path / "stray", extra={"visual.blocks.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"model\.safetensors.*'visual\.blocks\.0\.extra\.weight'"):
        family.load_encoder(stray, False, CPU, F32)
    shape = "visual.merger.ln_q.weight"
    bad = _rewrite(ckpt, tmp_path / "bad", keep=lambda k: k != shape, extra={shape: torch.zeros(3)})
    with pytest.raises(ValueError, match=r"'visual\.merger\.ln_q\.weight' has shape \(3,\)"):
        family.load_encoder(bad, False, CPU, F32)
    twice = _rewrite(ckpt, tmp_path / "twice", extra={"model." + shape: torch.ones(32)})
    with pytest.raises(ValueError, match="second copy"):
        family.load_encoder(twice, False, CPU, F32)


@pytest.mark.parametrize("name", ["qwen2_audio", "qwen3_omni"])
def test_random_init_needs_no_weights(name, tmp_path):
    """``model.random_init=true``: the towers alone, random, from a checkpoint with no safetensors."""
    ckpt = cached_tiny(name)
    weightless = tmp_path / "weightless"
    shutil.copytree(ckpt, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    encoder = detect_family(weightless).load_encoder(weightless, True, CPU, F32)
    items = encoder.encode(_inputs(encoder))
    assert items and all(torch.isfinite(t).all() for it in items for t in it.tensors.values())
    _, reference = _reference_encoder(name, ckpt)
    assert _num_params(_modules(encoder)) == _num_params(_modules(reference))
    with pytest.raises(ValueError, match="no \\*.safetensors weights.*random_init"):
        detect_family(weightless).load_encoder(weightless, False, CPU, F32)


def test_bfloat16_towers_match_the_full_model(tmp_path):
    """In bfloat16 the towers' parameters and buffers (rotary tables, sinusoids) are those of the full
    model loaded by transformers in bfloat16: same values, same dtypes."""
    import transformers

    ckpt = cached_tiny("qwen3_omni")
    full = transformers.Qwen3OmniMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16)
    _, towers = detect_family(ckpt).load_towers(ckpt, False, CPU, torch.bfloat16)
    for name in ("visual", "audio_tower"):
        want = {
            **dict(getattr(full.thinker.model, name).named_parameters()),
            **dict(getattr(full.thinker.model, name).named_buffers()),
        }
        got = {**dict(towers[name].named_parameters()), **dict(towers[name].named_buffers())}
        assert got.keys() == want.keys()
        for key, tensor in got.items():
            assert tensor.dtype == want[key].dtype and torch.equal(tensor, want[key]), f"{name}.{key}"


@gpu
@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_omni"])
def test_on_gpu_in_bfloat16_the_towers_load_straight_to_the_device(name):
    """On the GPU (the lead's machine): towers read from the safetensors straight onto the device in
    bfloat16 give the full model's items through epd's tower path; nothing of the LM reaches the GPU."""
    ckpt = cached_tiny(name)
    cuda = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    encoder = detect_family(ckpt).load_encoder(ckpt, False, cuda, torch.bfloat16)
    tensors = [t for m in _modules(encoder) for t in (*m.parameters(), *m.buffers())]
    assert all(t.device == cuda for t in tensors)
    own = sum(t.numel() * t.element_size() for t in tensors)
    assert torch.cuda.memory_allocated() - before < own + (8 << 20)  # towers (and fused copies) only
    _, reference = _reference_encoder(name, ckpt, cuda, torch.bfloat16)
    inputs = _inputs(encoder)
    for got, want in zip(encoder.encode(inputs), reference.encode(inputs), strict=True):
        assert got.meta == want.meta and got.tensors.keys() == want.tensors.keys()
        for key, tensor in got.tensors.items():
            torch.testing.assert_close(tensor, want.tensors[key], atol=2e-2, rtol=2e-2)
