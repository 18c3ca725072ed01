"""Fused decoder kernels (``epd_kernels.fused``) against their torch references on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from epd_kernels import fused

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert not a.isnan().any()
    rel = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert rel < (1e-6 if a.dtype == torch.float32 else 4e-3), rel


def test_references_match_the_unfused_math():
    x = torch.randn(5, 64)
    w = torch.randn(64)
    expect = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(fused.rms_norm(x, w, 1e-6), expect)
    gu = torch.randn(3, 10)
    torch.testing.assert_close(fused.silu_mul(gu), torch.nn.functional.silu(gu[:, :5]) * gu[:, 5:])
    q, cos, sin = torch.randn(4, 2, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    rot = torch.cat([-q[..., 4:], q[..., :4]], dim=-1)
    torch.testing.assert_close(fused.rotary(q, cos, sin), q * cos + rot * sin)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 37, 4096])
def test_norms(dtype, rows):
    x = torch.randn(rows, 3584, device="cuda", dtype=dtype)
    res = torch.randn_like(x)
    w = torch.randn(3584, device="cuda", dtype=dtype)
    _close(fused.rms_norm(x, w, 1e-6), fused.rms_norm_reference(x, w, 1e-6))
    ref_h = x + res
    out, h = fused.add_rms_norm(x, res.clone(), w, 1e-6)
    _close(h, ref_h)
    _close(out, fused.rms_norm_reference(ref_h, w, 1e-6))


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_mul(dtype):
    gu = torch.randn(300, 2 * 18944, device="cuda", dtype=dtype)
    _close(fused.silu_mul(gu), fused.silu_mul_reference(gu))


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_on_strided_heads(dtype):
    qkv = torch.randn(257, (28 + 8) * 128, device="cuda", dtype=dtype)
    q = qkv[:, : 28 * 128].view(257, 28, 128)  # a strided view, as the decoder's split gives
    angles = torch.rand(257, 1, 128, device="cuda") * 100
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    _close(fused.rotary(q, cos, sin), fused.rotary_ref(q, cos, sin))
