"""Video decoders behind one interface; one small file per backend, found by ``VIDEO_BACKENDS``.

A backend opens encoded bytes, reports the stream's frame count and average fps, and decodes only
the frames asked for (seeking to the keyframe before each where it can). All backends decode
through FFmpeg and convert to RGB with swscale, so for the same file and indices they return the
same arrays (tested). Adding one is a new module here that registers a ``VideoReader`` subclass.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import ClassVar

import numpy as np

from epd.registry import Registry

VIDEO_BACKENDS: Registry[VideoReader] = Registry("video backend", "epd.media.video_backends")
AUTO_ORDER = ("torchcodec", "decord", "pyav")  # "auto" takes the first installed


@dataclass(frozen=True)
class VideoInfo:
    """The video stream as a decoder sees it: frames in presentation order, average fps."""

    num_frames: int
    fps: float


class VideoReader(ABC):
    """One open video. ``info`` is set by ``__init__``; ``read`` may be called more than once.

    Contract: frame ``i`` is the i-th frame in presentation order; ``read(indices)`` returns
    ``[len(indices), H, W, 3]`` uint8 RGB in the order given. Library errors may propagate; the
    caller turns them into ``MediaError``.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()  # import names that must be installed
    info: VideoInfo

    @abstractmethod
    def __init__(self, data: bytes) -> None: ...

    @abstractmethod
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames ``indices`` ([T] int) as ``[T, H, W, 3]`` uint8 RGB."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the decoder."""

    @classmethod
    def available(cls) -> bool:
        """Whether this backend's libraries import (a broken install, e.g. no system FFmpeg, is absent)."""
        return all(_imports(mod) for mod in cls.requires)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def installed_backends() -> list[str]:
    """Names of the backends whose libraries are installed, in ``auto`` preference order."""
    return [name for name in AUTO_ORDER if VIDEO_BACKENDS.get(name).available()]


def get_backend(name: str) -> type[VideoReader]:
    """The reader class for ``name`` (``auto``: the first installed of ``AUTO_ORDER``)."""
    if name == "auto":
        name = installed_backends()[0]  # pyav is a hard dependency, so never empty
    cls = VIDEO_BACKENDS.get(name)
    if not cls.available():
        raise ValueError(
            f"media.video_backend={name!r} is not installed (needs {', '.join(cls.requires)}); "
            f"installed: {', '.join(installed_backends())}"
        )
    return cls


@cache
def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a native library failing to load (OSError, RuntimeError)
        return False
    return True
