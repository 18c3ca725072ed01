"""Language engine knobs (``epd/conf/engine/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class EngineConfig:
    """Batching, KV cache, attention and CUDA-graph settings of the language engine."""

    max_num_seqs: int = 256
    """Most sequences in flight (prefilling or decoding) on one language instance."""
    max_batch_tokens: int = 8192
    """Token budget of one step: decode tokens plus prefill-chunk tokens. Longer prompts are prefilled
    in chunks of at most this many tokens, mixed with the running decodes."""
    policy: str = "fcfs"
    """Admission order of waiting sequences (``epd.language.policies``: fcfs, shortest_first)."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    kv_fraction: float = 0.9
    """Share of the device memory the engine may fill (weights + activations + KV cache); the KV cache
    gets what is left after the weights and a warm-up step at the full token budget, and never more than
    is free on the device at start-up (other ranks may share the GPU)."""
    kv_tokens: int | None = None
    """Absolute KV-cache capacity in tokens (overrides ``kv_fraction``; on CPU the default is 32768)."""
    prefix_cache: bool = True
    """Share KV blocks between prompts with the same prefix (token ids and media content)."""
    attention: str = "auto"
    """``torch`` (per-sequence SDPA, the reference), ``cuda`` (varlen flash prefill + paged decode), ``auto``."""
    decode_attention: str = "triton"
    """Paged decode kernel on GPU: ``triton`` (epd's kernel) or ``flash`` (torch's varlen_attn over the block table)."""
    moe_kernel: str = "auto"
    """Routed experts on GPU (``epd_kernels.moe``): ``triton`` (epd's fused kernels; ``auto``), ``grouped_mm``
    (torch's grouped GEMM, bfloat16) or ``reference`` (a loop over the used experts: eager only, no graphs)."""
    cuda_graphs: bool = True
    """Capture decode steps in CUDA graphs (GPU only)."""
    graph_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128])
    """Decode batch sizes captured; a decode batch runs in the smallest graph that holds it."""
    max_model_len: int = 32768
    """Longest sequence (prompt + output) the CUDA graphs' block tables cover; longer ones run eagerly."""
    overlap_encode_prefill: bool = False
    """Prefill a request's text before its first missing media item while the encoders still work."""

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_batch_tokens", "block_size", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 < self.kv_fraction <= 1:
            raise ValueError(f"engine.kv_fraction must be in (0, 1], got {self.kv_fraction}")
        if self.kv_tokens is not None and self.kv_tokens < self.block_size:
            raise ValueError(f"engine.kv_tokens must hold at least one block ({self.block_size}), got {self.kv_tokens}")
        if self.attention not in ("auto", "torch", "cuda"):
            raise ValueError(f"engine.attention={self.attention!r}: choose auto, torch or cuda")
        if self.decode_attention not in ("triton", "flash"):
            raise ValueError(f"engine.decode_attention={self.decode_attention!r}: choose triton or flash")
        from epd_kernels.moe import MOE_KERNELS

        if self.moe_kernel not in MOE_KERNELS:
            raise ValueError(f"engine.moe_kernel={self.moe_kernel!r}: choose {', '.join(MOE_KERNELS)}")
        if any(b < 1 for b in self.graph_batch_sizes):
            raise ValueError("engine.graph_batch_sizes must be positive")
        from epd.language.policies import ADMISSION_POLICIES

        if self.policy not in ADMISSION_POLICIES:
            raise ValueError(f"engine.policy={self.policy!r} is unknown; known: {', '.join(ADMISSION_POLICIES)}")
