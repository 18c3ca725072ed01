"""Encoder role: media → embeddings (+ metadata) for the language instances."""

from epd.encoder.role import EncodeResult, EncoderRole

__all__ = ["EncodeResult", "EncoderRole"]
