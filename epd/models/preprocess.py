"""The checkpoint's HF processor with its image and video math on the encoder's device.

transformers' Qwen image and video processors are torchvision code on tensors and take a
``device``: given tensors, they resize, rescale, normalise, duplicate frames for the temporal
patch and patchify where the tensors are, and the processor around them still expands the
placeholder text and tokenizes it on the host. ``DevicePreprocessor`` runs that same code with the
media moved to the device first, so the ``pixel_values`` / grids / ids layout is the processor's
own. One thing differs between torch's CPU and GPU: the uint8 antialiased resize (integer passes
on the CPU, float32 on the GPU), so the processors' final resize is swapped for
``epd.models.resample.resize_uint8``, which gives the CPU's values on any device. With that the
device path equals the host processor bit for bit on images and videos (tests/unit/test_preprocess*).
Audio (Whisper log-mel) takes the same ``device``: transformers computes the STFT and mel there and
returns the features to the host (within ~1e-5 of the host's float32, not bit-equal, on a GPU).

Streams: the threads that preprocess (the encoder's decode threads) issue their work on one side
stream and each waits for an event of its own call before the item is handed to the tower loop, so
preprocessing overlaps the tower's kernels on the default stream instead of queueing behind them.
The tensors it produced are read on the tower's stream (``claim_for_current_stream``). A thread's
upload (``stage``: pinned host copy, then an async copy) runs before it takes the processor's lock.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
from typing import Any

import numpy as np
import torch

from epd.models.resample import resize_uint8

PREPROCESS_MODES = ("auto", "host", "device")
"""Values of ``encoder.preprocess_device`` (``epd.encoder.config`` checks them at the edge)."""
RESAMPLE_MODES = {"BICUBIC": "bicubic", "BILINEAR": "bilinear"}
"""torchvision interpolation modes that ``resize_uint8`` reproduces exactly."""


def resolve_preprocess_device(mode: str, device: torch.device) -> torch.device | None:
    """Where the image math runs for ``encoder.preprocess_device=mode``: ``device`` or None (the HF
    processor on the host). ``auto`` is the device on a GPU and the host processor on the CPU."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"encoder.preprocess_device={mode!r}: choose one of {', '.join(PREPROCESS_MODES)}")
    if mode == "host" or (mode == "auto" and device.type == "cpu"):
        return None
    return device


class DevicePreprocessor:
    """``processor(text=..., images=/videos=/audio=...)`` with the media math on ``device``."""

    def __init__(self, processor: Any, device: torch.device | str, integer_resize_on_cpu: bool = False) -> None:
        """``integer_resize_on_cpu``: use ``resize_uint8`` on the CPU too (tests: on the CPU torchvision's
        own kernel is the same computation, and faster)."""
        self.device = torch.device(device)
        self.processor = exact_resize_processor(processor, integer_resize_on_cpu)
        # one side stream for every thread: items' kernels queue in issue order (so state transformers
        # caches on the device, such as the normalisation constants, is written before it is read),
        # apart from the tower's stream; each thread waits on an event of its own last call
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._local = threading.local()

    def __call__(self, **kwargs: Any) -> Any:
        """The processor's ``BatchFeature`` for one item: pixel tensors on the device, ids on the host.
        The device work is queued on the preprocessing stream; ``synchronize`` waits for it."""
        with self._on_stream():
            for key in ("images", "videos"):
                if kwargs.get(key) is not None:
                    kwargs[key] = [self._to_device(x) for x in kwargs[key]]
            out = self.processor(return_tensors="pt", device=self.device, **kwargs)
            if self._stream is not None:
                self._local.done = torch.cuda.Event()
                self._local.done.record(self._stream)
        return out

    def stage(self, inp: Any) -> None:
        """Upload one ``MediaInput``'s image or video frames to the device now, in place (the encoder calls
        this before taking the processor's lock, so the host copy into pinned memory overlaps other items)."""
        with self._on_stream():
            if inp.modality == "image" and isinstance(inp.data, torch.Tensor):
                inp.data = self._to_device(inp.data)
            elif inp.modality == "video" and isinstance(inp.data.frames, np.ndarray):
                inp.data = dataclasses.replace(inp.data, frames=self._to_device(inp.data.frames))

    def synchronize(self) -> None:
        """Wait until the work this thread queued last has finished on the device."""
        done = getattr(self._local, "done", None)
        if done is not None:
            done.synchronize()
            self._local.done = None

    def _on_stream(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self._stream is None else torch.cuda.stream(self._stream)

    def _to_device(self, media: Any) -> Any:
        """An image (uint8 tensor [3, H, W]) or video frames ([T, H, W, 3] array) as a uint8 tensor on the
        device, layout unchanged (the processor reads channels first or last alike); a PIL image as is
        (the processor converts it on the host and moves it)."""
        if isinstance(media, np.ndarray):
            media = torch.from_numpy(media)
        if not isinstance(media, torch.Tensor):
            return media
        if self.device.type != "cuda" or media.device.type != "cpu":
            return media.to(self.device)
        # a pinned copy with the same strides (decoded images are [3, H, W] views of [H, W, 3] memory), so
        # both copies are flat and the upload runs at the link's rate without holding up this thread
        pinned = torch.empty_like(media, pin_memory=True).copy_(media)
        return pinned.to(self.device, non_blocking=True)


def runs_on_device(processor: Any) -> bool:
    """Whether every image / video processor of ``processor`` is torchvision-backed (device-capable)."""
    from transformers.image_processing_backends import TorchvisionBackend

    subs = [getattr(processor, name, None) for name in ("image_processor", "video_processor")]
    return all(isinstance(sub, TorchvisionBackend) for sub in subs if sub is not None)


def claim_for_current_stream(tensors: list[torch.Tensor]) -> None:
    """Tensors made on a preprocessing stream and read on the current one: keep their memory from
    being reused by the preprocessing stream until the current stream's queued work is done."""
    for tensor in tensors:
        if tensor.is_cuda:
            tensor.record_stream(torch.cuda.current_stream(tensor.device))


def exact_resize_processor(processor: Any, on_cpu: bool = False) -> Any:
    """A shallow copy of an HF processor whose image and video processors resize uint8 media off the
    CPU (and on it with ``on_cpu``) with ``resize_uint8`` instead of torchvision's float32 kernel."""
    exact = copy.copy(processor)
    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        if sub is not None:
            setattr(exact, name, _exact_resize_copy(sub))
            getattr(exact, name).integer_resize_on_cpu = on_cpu
    return exact


_EXACT_CLASSES: dict[type, type] = {}


def _exact_resize_copy(sub: Any) -> Any:
    """``sub`` (a torchvision-backed image or video processor) as an instance of a subclass that has
    ``ExactResize`` between its own class and transformers' ``TorchvisionBackend``: the family's
    ``resize`` still picks the size (smart_resize), its ``super().resize`` lands in ``ExactResize``."""
    from transformers.image_processing_backends import TorchvisionBackend

    cls = type(sub)
    if not issubclass(cls, TorchvisionBackend):
        raise ValueError(
            f"{cls.__name__} is not a torchvision-backed processor: its math cannot run on a device; "
            "set encoder.preprocess_device=host"
        )
    if cls not in _EXACT_CLASSES:
        _EXACT_CLASSES[cls] = type(f"Exact{cls.__name__}", (cls, _exact_resize_base()), {})
    exact = copy.copy(sub)
    exact.__class__ = _EXACT_CLASSES[cls]
    return exact


@functools.lru_cache(maxsize=1)
def _exact_resize_base() -> type:
    """``ExactResize(TorchvisionBackend)``, built on first use so importing epd does not import transformers."""
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.image_utils import pil_torch_interpolation_mapping

    class ExactResize(TorchvisionBackend):
        def resize(self, image: torch.Tensor, size: Any, resample: Any = None, antialias: bool = True, **kwargs):
            """uint8 to an explicit (height, width) off the CPU: the integer kernel; else torchvision's."""
            mode = pil_torch_interpolation_mapping.get(resample, resample) if resample is not None else None
            exact = RESAMPLE_MODES.get(getattr(mode, "name", ""))
            off_cpu = image.device.type != "cpu" or getattr(self, "integer_resize_on_cpu", False)
            explicit = getattr(size, "height", None) and getattr(size, "width", None)
            if off_cpu and explicit and image.dtype == torch.uint8 and antialias and exact:
                return resize_uint8(image, (size.height, size.width), exact)
            return super().resize(image, size, resample, antialias=antialias, **kwargs)

    return ExactResize
