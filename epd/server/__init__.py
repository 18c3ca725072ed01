"""The OpenAI-compatible HTTP server of ``python -m epd.serve``: a request source of the frontend.

``app`` (routes), ``schemas`` (OpenAI bodies, checked with pydantic), ``source`` (``HttpSource``: the
bridge between the server's event loop and the frontend's), ``responses`` (bodies and stream chunks
out), ``errors`` (OpenAI's error shape), ``metrics`` (Prometheus), ``loop`` (``run_server``: start,
serve, drain, results). Only the config is imported here, so the config schema needs no web stack.
"""

from epd.server.config import ServerConfig

__all__ = ["ServerConfig"]
