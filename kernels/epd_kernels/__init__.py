"""epd's custom kernels (import name ``epd_kernels``), each beside its pure-torch reference."""

from epd_kernels.merge import merge_embeddings

__all__ = ["merge_embeddings"]
