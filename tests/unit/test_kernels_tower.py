"""Tower attention: epd's registered varlen functions (reference path on CPU) and the fused tower ops
give transformers' eager embeddings for the Qwen2.5-VL, Qwen3-VL and Qwen3-Omni vision towers and
the Qwen3-Omni and Qwen2-Audio audio towers; packed encoder calls equal one call per item. GPU tests
compare the Triton kernels and the bf16 fast path with float32 references."""

from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from epd.models import AUDIO, MODALITY_TYPE, MediaInput
from epd_kernels import attention, tower
from epd_kernels.vision_ops import (
    rms_norm,
    rms_norm_reference,
    rotary,
    rotary_reference,
    silu_mul,
    silu_mul_reference,
)
from tests.kernel_helpers import gpu, run_in_interpreter

CPU = torch.device("cpu")


def _eager_per_segment(q, k, v, bounds, scale):
    out = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (t[start:end].transpose(0, 1).double() for t in (q, k, v))  # [H, n, D]
        weights = torch.softmax(qs @ ks.transpose(1, 2) * scale, dim=-1)
        out.append((weights @ vs).transpose(0, 1))
    return torch.cat(out).float()


@pytest.mark.parametrize("seed", range(3))
def test_attention_reference_equals_per_segment_softmax(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (5,), generator=g)
    bounds = [0, *torch.cumsum(lengths, 0).tolist()]
    q, k, v = (torch.randn(bounds[-1], 3, 8, generator=g) for _ in range(3))
    cu = torch.tensor(bounds, dtype=torch.int32)
    got = attention.attention_reference(q, k, v, cu, 0.3)
    assert torch.allclose(got, _eager_per_segment(q, k, v, bounds, 0.3), atol=1e-5)
    # the CPU fast-path entry point falls back to the same reference (float32 / no CUDA)
    assert torch.allclose(attention.packed_attention(q, k, v, cu, cu, None, None, 0.3), got, atol=0)


def _load(family: str):
    from transformers import AutoModelForImageTextToText, Qwen2AudioForConditionalGeneration
    from transformers import Qwen3OmniMoeForConditionalGeneration as Omni

    from epd.tiny import cached_tiny

    cls = {"qwen2_audio": Qwen2AudioForConditionalGeneration, "qwen3_omni": Omni}.get(
        family, AutoModelForImageTextToText
    )
    return cls.from_pretrained(cached_tiny(family), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = _load(family)
        return cache[family]

    return get


def _vision(models, family):
    model = models(family)
    return model.thinker.model.visual if family == "qwen3_omni" else model.model.visual


def _pixels(vis, grid, seed=0):
    n = int(grid.prod(-1).sum())
    return torch.randn(n, vis.patch_embed.proj.weight[0].numel(), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_omni"])
def test_vision_tower_epd_path_equals_eager(models, family):
    """Packed images and a video through the registered function (reference attention on CPU), the
    host-built indexing kwargs, and the fused patch-embed / RMSNorm / rotary swaps."""
    base = _vision(models, family)
    grid = torch.tensor([[1, 8, 12], [3, 4, 6], [1, 16, 16], [2, 10, 4]])
    pixels = _pixels(base, grid)
    eager = copy.deepcopy(base)
    tower.set_attention(eager, "eager")
    fast = copy.deepcopy(base)
    assert tower.prepare_tower(fast, "varlen", CPU, torch.float32) == "varlen"
    tower._fuse(fast)  # what auto adds on a GPU; on CPU the fused ops run their references
    if family == "qwen2_5_vl":  # its gated MLP runs as one padded gate-up product (3420 → 3456 wide here: 64)
        assert all(hasattr(blk.mlp, "_epd_gate_up") for blk in fast.blocks)
        # and its blocks run with the residual adds fused (norm kernel, down projection's epilogue)
        assert all(blk.forward.__func__ is tower._block_forward for blk in fast.blocks)
    with torch.no_grad():
        ref = eager(pixels, grid_thw=grid)
        out = fast(pixels, grid_thw=grid, **tower.vision_tower_kwargs(fast, grid, CPU))
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=2e-5, rtol=1e-4)
    for got, want in zip(getattr(out, "deepstack_features", []), getattr(ref, "deepstack_features", []), strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert fast.config._attn_implementation == attention.VARLEN


def test_gated_mlp_fusion_pads_to_an_aligned_width():
    """Qwen2.5-VL's MLP (width 3420 in the 7B) as one gate-up product padded to 64: same outputs."""
    from types import SimpleNamespace

    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLMLP

    torch.manual_seed(0)
    mlp = Qwen2_5_VLMLP(SimpleNamespace(hidden_size=48, intermediate_size=100, hidden_act="silu"), bias=True)
    for param in mlp.parameters():
        torch.nn.init.normal_(param)
    x = torch.randn(37, 48)
    with torch.no_grad():
        want = mlp(x)
        tower._fuse_gated_mlp(mlp)
        got = mlp(x)
    assert mlp._epd_gate_up[0].shape == (256, 48) and mlp._epd_down.shape == (48, 128)
    assert mlp.gate_proj.weight.data_ptr() == mlp._epd_gate_up[0].data_ptr()  # views: no second copy of the weights
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_auto_means_sdpa_on_cpu_and_in_float32(models):
    vis = copy.deepcopy(_vision(models, "qwen2_5_vl"))
    assert tower.prepare_tower(vis, "auto", CPU, torch.float32) == "sdpa"
    assert vis.config._attn_implementation == "sdpa" and not tower.uses_epd_path(vis)
    with pytest.raises(ValueError, match="one of"):
        tower.resolve_mode("flash", CPU, torch.float32)


def test_omni_audio_tower_packed_equals_eager_per_item(models):
    """Clips of at least one chunk (2 * n_window mel frames) packed in one call: each equals its own call."""
    audio = models("qwen3_omni").thinker.model.audio_tower
    g = torch.Generator().manual_seed(0)
    lens = [230, 100, 512]
    mels = [torch.randn(audio.config.num_mel_bins, n, generator=g) for n in lens]
    eager = copy.deepcopy(audio)
    tower.set_attention(eager, "eager")
    fast = copy.deepcopy(audio)
    tower.prepare_tower(fast, "varlen", CPU, torch.float32)
    with torch.no_grad():
        packed = fast(torch.cat(mels, dim=1), feature_lens=torch.tensor(lens)).last_hidden_state
        alone = [eager(m, feature_lens=torch.tensor([m.shape[1]])).last_hidden_state for m in mels]
    torch.testing.assert_close(packed, torch.cat(alone), atol=2e-5, rtol=1e-4)


def test_qwen2_audio_tower_with_epd_attention_equals_eager(models):
    """Padded 30 s windows with a mask (no cu_seqlens): epd's function falls back to SDPA with SDPA's mask."""
    from transformers.masking_utils import create_bidirectional_mask

    audio = models("qwen2_audio").model.audio_tower
    frames = 2 * audio.config.max_source_positions
    features = torch.randn(2, audio.config.num_mel_bins, frames, generator=torch.Generator().manual_seed(1))
    keep = torch.zeros(2, frames // 2, dtype=torch.long)
    keep[0, :70], keep[1, :] = 1, 1
    outs = {}
    for mode in ("eager", "varlen"):
        tw = copy.deepcopy(audio)
        if mode == "eager":
            tower.set_attention(tw, "eager")
        else:
            tower.prepare_tower(tw, mode, CPU, torch.float32)
        mask = create_bidirectional_mask(
            config=tw.config, inputs_embeds=torch.zeros(2, frames // 2, 1), attention_mask=keep
        )
        with torch.no_grad():
            outs[mode] = tw(features, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(outs["varlen"][0, :35], outs["eager"][0, :35], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(outs["varlen"][1], outs["eager"][1], atol=2e-5, rtol=1e-4)


def _video(num_frames: int, seed: int):
    from epd.media.video import VideoClip

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


def _image(seed: int, size=(150, 100)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_omni"])
def test_encoder_packs_items_into_one_call(models, family):
    """Images, videos (and Omni's audio clips and videos' tracks) of one encode call give the same
    items as encoding each alone."""
    from transformers import AutoProcessor

    from epd.media import AudioClip, MediaConfig
    from epd.models.families.qwen2_5_vl import Qwen25Encoder
    from epd.models.families.qwen3_omni import OmniEncoder
    from epd.models.families.qwen3_vl import Qwen3VLEncoder
    from epd.tiny import cached_tiny

    processor = AutoProcessor.from_pretrained(cached_tiny(family))
    model = models(family)
    if family == "qwen3_omni":
        inner = copy.deepcopy(model.thinker.model)
        encoder = OmniEncoder(
            inner.visual, inner.audio_tower, processor, model.thinker.config, CPU, torch.float32, "varlen"
        )
    else:
        cls = Qwen3VLEncoder if family == "qwen3_vl" else Qwen25Encoder
        encoder = cls(copy.deepcopy(model.model.visual), processor, model.config, CPU, torch.float32, "varlen")
    sampling = encoder.frame_sampling(MediaConfig())
    rate = encoder.audio_sampling_rate
    tone = AudioClip(samples=np.sin(np.arange(rate * 3) / 9).astype(np.float32), sampling_rate=rate, duration=3.0)
    inputs = [
        MediaInput(modality="image", data=_image(0)),
        MediaInput(modality="video", data=_video(4, 1), sampling=sampling),
        MediaInput(modality="image", data=_image(2, (64, 200))),
    ]
    if family == "qwen3_omni":
        inputs.append(MediaInput(modality="audio", data=tone))
        blip = AudioClip(samples=tone.samples[: rate // 2], sampling_rate=rate, duration=0.5)  # under one chunk
        inputs.append(MediaInput(modality="audio", data=blip))
        short = AudioClip(samples=tone.samples[: rate * 2], sampling_rate=rate, duration=2.0)
        inputs.append(MediaInput(modality="video", data=_video(4, 3), sampling=sampling, audio=short))
    packed = encoder.encode(inputs)
    for inp, item in zip(inputs, packed, strict=True):
        alone = encoder.encode([inp])[0]
        assert item.meta == alone.meta
        assert item.tensors.keys() == alone.tensors.keys()
        types = item.meta.token_types
        assert item.tensors["embeds"].shape[0] == types.count(MODALITY_TYPE[inp.modality])
        if "audio_embeds" in item.tensors:
            assert item.tensors["audio_embeds"].shape[0] == types.count(AUDIO) > 0
        for key, value in item.tensors.items():
            torch.testing.assert_close(value, alone.tensors[key], atol=2e-5, rtol=1e-4)


def test_vision_kernels_in_interpreter():
    """The rotary and RMSNorm Triton kernels' indexing (one launch for q and k cut from one qkv, two
    otherwise), run by Triton's CPU interpreter in float32, where they must equal the references."""
    script = textwrap.dedent(
        """
        import torch
        from epd_kernels.vision_ops import rotary_reference, rms_norm_reference, silu_mul_reference
        from epd_kernels.vision_triton import rotary_triton, rms_norm_triton, silu_mul_triton
        g = torch.Generator().manual_seed(0)
        n, heads, dim = 37, 3, 20
        qkv = torch.randn(n, 3 * heads * dim, generator=g)
        q, k, _ = qkv.reshape(n, 3, heads, dim).permute(1, 0, 2, 3).unbind(0)
        cos, sin = torch.randn(2, n, dim, generator=g).unbind(0)
        want = rotary_reference(q, k, cos, sin)
        for args in ((q, k), (q.contiguous(), k.contiguous())):
            got = rotary_triton(*args, cos, sin)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), "rotary"
        x, w = torch.randn(5, 7, 48, generator=g), torch.randn(48, generator=g)
        assert torch.allclose(rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6), atol=1e-6), "rms"
        gu = torch.randn(9, 2 * 1500, generator=g)
        assert torch.allclose(silu_mul_triton(gu), silu_mul_reference(gu), atol=1e-6), "silu_mul"
        print("ok")
        """
    )
    run_in_interpreter(script)


# ------------------------------------------------------------------------------------------- GPU


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@gpu
def test_rotary_rms_norm_and_silu_mul_kernels_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    n, heads, dim = 5000, 16, 80
    qkv = torch.randn(n, 3 * heads * dim, device="cuda", generator=g).bfloat16()
    q, k, _ = qkv.view(n, 3, heads, dim).permute(1, 0, 2, 3).unbind(0)  # as the towers cut them
    cos, sin = torch.randn(2, n, dim, device="cuda", generator=g).unbind(0)
    for got, want in zip(rotary(q, k, cos, sin), rotary_reference(q, k, cos, sin), strict=True):
        assert (got.float() - want.float()).abs().max() <= 2**-7 * want.float().abs().max()  # ≤ 1 bf16 ulp apart
        assert _rel(got, want) < 2e-3
    for got, want in zip(
        rotary(q.contiguous(), k.contiguous(), cos, sin), rotary_reference(q, k, cos, sin), strict=True
    ):
        assert _rel(got, want) < 2e-3
    x = torch.randn(n, 1280, device="cuda", generator=g).bfloat16()
    w = torch.randn(1280, device="cuda", generator=g).bfloat16()
    assert _rel(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6)) < 2e-3
    gate_up = torch.randn(n, 2 * 3456, device="cuda", generator=g).bfloat16()
    assert _rel(silu_mul(gate_up), silu_mul_reference(gate_up)) < 2e-3


@gpu
@pytest.mark.parametrize("lengths", [[1024] * 6, [64, 48, 64, 16, 100, 64], [3000]])
def test_packed_attention_bf16_matches_float32_reference(lengths):
    g = torch.Generator(device="cuda").manual_seed(0)
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(sum(lengths), 16, 80, device="cuda", generator=g) for _ in range(3))
    ref = attention.attention_reference(q, k, v, cu)  # float32
    for dense in (True, False):
        out = attention.packed_attention(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, cu, max(lengths), max(lengths), None, dense
        )
        assert _rel(out, ref) < 1e-2


@gpu
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_auto_tower_bf16_close_to_float32_eager(family):
    """A released-width tower (few blocks, random weights): epd's bf16 auto path, entered the way the
    encoders enter it (``run_vision_tower``: per-item host pixels, pinned copy, host-built indexing),
    is as close to the float32 eager tower as transformers' own bf16 SDPA path is."""
    from epd.models.families.qwen_common import run_vision_tower
    from epd_kernels.bench_towers import build_vision_tower

    cuda = torch.device("cuda")
    grids = [torch.tensor([[1, 36, 64]]), torch.tensor([[1, 36, 64]]), torch.tensor([[2, 20, 28]])]
    grid = torch.cat(grids)
    ref_tower = build_vision_tower(family, depth=4, dtype=torch.float32)
    tower.set_attention(ref_tower, "eager")
    pixels = _pixels(ref_tower, grid)  # host, float32, as the processor gives them
    items = list(pixels.split([int(g.prod()) for g in grids]))
    outs = {}
    for mode in ("sdpa", "auto"):
        tw = copy.deepcopy(ref_tower).bfloat16()
        assert tower.prepare_tower(tw, mode, cuda, torch.bfloat16) == mode
        with torch.no_grad():
            out, counts = run_vision_tower(tw, items, grids, cuda, torch.bfloat16)
        outs[mode] = out.pooler_output
        assert counts == [int(g.prod()) // 4 for g in grids]
    with torch.no_grad():
        ref = ref_tower(pixels.cuda(), grid_thw=grid.cuda()).pooler_output
    assert _rel(outs["auto"], ref) < max(1e-2, 1.5 * _rel(outs["sdpa"], ref))
