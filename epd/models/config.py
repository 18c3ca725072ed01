"""Which checkpoint a run serves, and how it is loaded."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "bfloat16", "float16")
TOWER_ATTENTION = ("auto", "varlen", "sdpa", "eager")  # = epd_kernels.tower.TOWER_MODES


@dataclass(kw_only=True)
class ModelConfig:
    """``epd/conf/model/*.yaml``. Exactly one source: ``path``, ``tiny`` or ``name`` (in that priority)."""

    name: str | None = None
    """Hugging Face id of the real checkpoint, looked up in the local HF cache (no download)."""
    path: str | None = None
    """Local HF checkpoint directory; overrides ``name`` and ``tiny``."""
    tiny: str | None = None
    """Family of an epd-written tiny checkpoint, built once and cached (tests, default experiment)."""
    tiny_seed: int = 0
    """Seed of the tiny checkpoint's weights."""
    random_init: bool = False
    """Real architecture from the checkpoint's config.json, random weights built on the device."""
    shape: str | None = None
    """``<family>:<size>`` (e.g. ``qwen2_5_vl:7b``): with ``random_init`` and no local checkpoint,
    epd writes the released config and processor settings itself (no weights, tiny tokenizer)."""
    dtype: str = "auto"
    """``auto`` = bfloat16 on GPU, float32 on CPU."""
    tower_attention: str = "auto"
    """Attention of the vision/audio towers (``epd_kernels.tower``): ``auto`` = epd's packed path on a GPU
    in bf16/fp16 (dense SDPA for equal segments, varlen kernel for windows, fused rotary / RMSNorm /
    patch embedding) and transformers' SDPA elsewhere; ``varlen`` = epd's varlen attention alone;
    ``sdpa`` / ``eager`` = transformers' own per-segment loop."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.tower_attention not in TOWER_ATTENTION:
            raise ValueError(
                f"model.tower_attention={self.tower_attention!r} is not one of {', '.join(TOWER_ATTENTION)}"
            )
        if not (self.path or self.tiny or self.name):
            raise ValueError("no model given: set model.path=<dir>, or pick model=<preset>")
        if self.tiny and self.name and not self.path:
            raise ValueError(
                f"model.name={self.name!r} with the tiny preset (model.tiny={self.tiny!r}) would be ignored: pick the "
                "real model's preset (e.g. model=qwen2_5_vl model.name=...) or model.path=<checkpoint dir>"
            )
