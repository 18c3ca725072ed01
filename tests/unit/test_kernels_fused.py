"""Fused decoder kernels (``epd_kernels.fused``) against their torch references on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from epd_kernels import fused
from tests.kernel_helpers import gpu, run_in_interpreter


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
    torch.testing.assert_close(fused.rotary_ref(q, cos, sin), q * cos + rot * sin)


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
    b = torch.randn(3584, device="cuda", dtype=dtype)  # a tower block's down bias rides on the sum only
    out_b, hb = fused.add_rms_norm(x, res.clone(), w, 1e-6, bias=b)
    _close(hb, ref_h + b)
    _close(out_b, fused.rms_norm_reference(ref_h, w, 1e-6))


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_mul(dtype):
    gu = torch.randn(300, 2 * 18944, device="cuda", dtype=dtype)
    _close(fused.silu_mul(gu), fused.silu_mul_reference(gu))


def _rotary_store_case(device, dtype, n=37, heads=28, kv_heads=4, dim=128, blocks=12, block_size=16):
    """A decoder step's split qkv (strided views), cos/sin, two caches and distinct slots."""
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * dim, device=device, generator=g).to(dtype)
    q = qkv[:, : heads * dim].view(n, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(n, kv_heads, dim)
    v = qkv[:, (heads + kv_heads) * dim :].view(n, kv_heads, dim)
    angles = torch.rand(n, 1, dim, device=device, generator=g) * 100
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    caches = [torch.randn(blocks, block_size, kv_heads, dim, device=device, generator=g).to(dtype) for _ in range(2)]
    slots = torch.randperm(blocks * block_size, device=device, generator=g)[:n]
    return q, k, v, cos, sin, caches, slots


def _check_rotary_store(device, dtype, exact):
    q, k, v, cos, sin, (kc, vc), slots = _rotary_store_case(device, dtype)
    want_kc, want_vc = kc.clone(), vc.clone()
    want_q, want_k = fused.rotary_ref(q, cos, sin), fused.rotary_ref(k, cos, sin)
    want_kc.view(-1, *k.shape[1:])[slots] = want_k
    want_vc.view(-1, *v.shape[1:])[slots] = v
    got_q, got_k = fused.rotary_store(q, k, v, cos, sin, kc, vc, slots)
    for got, want in ((got_q, want_q), (got_k, want_k), (kc, want_kc), (vc, want_vc)):
        if exact:
            assert torch.equal(got, want)
        else:
            _close(got, want)
    assert got_q.is_contiguous() and got_k.is_contiguous()


def test_rotary_store_reference_path():
    _check_rotary_store("cpu", torch.float32, exact=True)


def test_rotary_store_kernel_in_interpreter():
    """The Triton kernel's indexing (strided heads, padded head counts, cache slots), run by Triton's
    CPU interpreter: bit-equal to the reference."""
    run_in_interpreter(
        """
        import torch
        import epd_kernels.fused as fused
        fused._use_triton = lambda x: True  # the Triton path, on CPU tensors
        from tests.unit.test_kernels_fused import _check_rotary_store
        _check_rotary_store("cpu", torch.float32, exact=True)
        print("ok")
        """
    )


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_store_on_gpu(dtype):
    _check_rotary_store("cuda", dtype, exact=False)  # float32: the GPU may contract products into FMAs
