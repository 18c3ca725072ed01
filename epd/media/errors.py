"""The error every media failure raises: it fails one request, never the process."""


class MediaError(ValueError):
    """Bad or unreachable media; the message says what to fix."""
