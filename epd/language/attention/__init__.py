"""Attention backends over the paged KV cache: ``torch`` (reference, CPU) and ``cuda`` (varlen
flash prefill + paged decode kernel)."""

from epd.language.attention.base import AttentionBackend, AttentionMetadata


def build_attention(name: str, device, scale: float, decode: str = "triton") -> AttentionBackend:
    """``auto`` = ``cuda`` on a GPU, ``torch`` elsewhere."""
    if name == "auto":
        name = "cuda" if device.type == "cuda" else "torch"
    if name == "torch":
        from epd.language.attention.torch_ref import TorchAttention

        return TorchAttention(scale)
    if name == "cuda":
        if device.type != "cuda":
            raise ValueError("engine.attention=cuda needs a GPU; use auto or torch on CPU")
        from epd.language.attention.cuda import CudaAttention

        return CudaAttention(scale, decode)
    raise ValueError(f"engine.attention={name!r} is unknown; known: auto, torch, cuda")


__all__ = ["AttentionBackend", "AttentionMetadata", "build_attention"]
