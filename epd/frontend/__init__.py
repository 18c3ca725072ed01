"""Frontend process: chat template, tokenization, encoder assignment, routing, streaming, results."""

from epd.frontend.chat import MediaRef, to_template_messages

__all__ = ["MediaRef", "to_template_messages"]
