"""epd's custom kernels (import name ``epd_kernels``), each beside its pure-torch reference.

- ``merge_embeddings`` / ``deepstack_add_``: prompt embeddings from the table and the media rows;
  DeepStack features added onto the visual rows (Triton on CUDA).
- ``epd_kernels.attention`` / ``epd_kernels.tower``: packed variable-length attention for the
  vision and audio towers through transformers' registry, and fused rotary / RMSNorm / patch embed.
- ``epd_kernels.rope_index``: vectorised M-RoPE positions (Qwen2.5-VL, Qwen3-VL, Qwen3-Omni).
- ``python -m epd_kernels.bench``: the microbenchmarks (time, ratio to transformers, ratio to the floor).
"""

from epd_kernels.merge import deepstack_add_, merge_embeddings

__all__ = ["deepstack_add_", "merge_embeddings"]
