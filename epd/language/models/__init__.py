"""epd's own decoders for the families' language models, and their weight loading."""

from epd.language.models.qwen import DecoderSpec, QwenDecoder

__all__ = ["DecoderSpec", "QwenDecoder"]
